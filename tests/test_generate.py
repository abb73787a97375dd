"""The policy every engine shares: where an ad stops, seeds, token counts and clean text,
driven by a scripted engine whose answers are fixed token streams."""

import pytest

from adpulse_batch.engines import Engine
from adpulse_batch.generate import Generator, StopRule, clean_ad
from adpulse_batch.model import load_tokenizer, stop_ids
from adpulse_batch.prompts import PromptBuilder, Template, encode
from adpulse_batch.settings import GenerationSettings, ModelSettings


class ScriptedEngine(Engine):
    """Answers every request with `script` (or `script(request)`), and records the requests."""

    name = "scripted"

    def __init__(self, script):
        self.script = script
        self.calls = []

    @classmethod
    def identity(cls, model, device):
        return {"engine": cls.name}

    @classmethod
    def load(cls, model, *, tokenizer, device, decoding):
        raise NotImplementedError

    def generate(self, requests):
        self.calls.append(requests)
        return [list(self.script(r) if callable(self.script) else self.script) for r in requests]


@pytest.fixture(params=["bloom", "llama"])
def tokenizer_setup(request, family_models):
    """(tokenizer, stop rule) of byte-level BLOOM, and of Llama's SentencePiece with byte
    fallback (its `#` is a byte token) and two end-of-text ids."""
    model_dir, _ = family_models(request.param)
    model = ModelSettings(model=str(model_dir), adapter=None, dtype="float32")
    tokenizer = load_tokenizer(model)
    return tokenizer, StopRule(tokenizer, stop_ids(model, tokenizer))


def write(tokenizer_setup, script, *, prompts=1, **settings):
    tokenizer, stop = tokenizer_setup
    engine = ScriptedEngine(script)
    generator = Generator(engine, tokenizer, GenerationSettings(**settings), stop)
    builder = PromptBuilder(Template(), tokenizer, 256)
    texts = [builder.build(f"Mug {i}", "Blue") for i in range(prompts)]
    return generator.generate(texts, batch_size=4), engine


def test_llama_stops_at_each_of_its_end_of_text_ids(family_models):
    model_dir, _ = family_models("llama")
    model = ModelSettings(model=str(model_dir), adapter=None, dtype="float32")
    tokenizer = load_tokenizer(model)
    ids = stop_ids(model, tokenizer)
    assert ids == {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|eot_id|>")}
    for stop_id in ids:
        script = encode(tokenizer, " Great mug. Buy it today!") + [stop_id] + encode(tokenizer, " And more.")
        [[ad]], _ = write((tokenizer, StopRule(tokenizer, ids)), script, max_new_tokens=40)
        assert (ad.text, ad.finish, ad.new_tokens) == ("Great mug. Buy it today!", "eos", script.index(stop_id) + 1)


def test_stops_at_a_new_section(tokenizer_setup):
    tokenizer, stop = tokenizer_setup
    script = encode(tokenizer, " Great mug!\n\n### Product and Description:\nPen")
    assert any(t in stop.triggers for t in script)
    [[ad]], _ = write(tokenizer_setup, script, max_new_tokens=40)
    assert (ad.text, ad.finish) == ("Great mug!", "stop")
    assert ad.new_tokens < len(script)  # counted up to the stop, whatever the engine went on with


def test_token_limit_drops_the_unfinished_sentence(tokenizer_setup):
    tokenizer, _ = tokenizer_setup
    script = encode(tokenizer, " Great mug. Buy it today and save twenty percent on every order")
    limit = len(encode(tokenizer, " Great mug. Buy it today"))
    [[ad]], _ = write(tokenizer_setup, script[:limit], max_new_tokens=limit)
    assert (ad.text, ad.finish, ad.new_tokens) == ("Great mug.", "length", limit)


def test_sampled_requests_get_seeds_of_their_own_whatever_the_batch(tokenizer_setup):
    tokenizer, stop = tokenizer_setup
    settings = dict(max_new_tokens=4, temperature=0.7, num_variants=3, seed=7)
    answer = encode(tokenizer, " Buy it.") + [min(stop.ids)]
    _, batched = write(tokenizer_setup, answer, prompts=5, **settings)
    seeds = {(tuple(r.ids), r.seed) for call in batched.calls for r in call}
    alone = set()
    for i in range(5):  # each prompt on its own
        engine = ScriptedEngine(answer)
        Generator(engine, tokenizer, GenerationSettings(**settings), stop).generate(
            [PromptBuilder(Template(), tokenizer, 256).build(f"Mug {i}", "Blue")], batch_size=1
        )
        alone |= {(tuple(r.ids), r.seed) for call in engine.calls for r in call}
    assert seeds == alone and len({seed for _, seed in seeds}) == 15
    _, other = write(tokenizer_setup, answer, prompts=5, **{**settings, "seed": 8})
    assert not {seed for _, seed in seeds} & {r.seed for call in other.calls for r in call}
    _, greedy = write(tokenizer_setup, answer, prompts=5, max_new_tokens=4)
    assert {r.seed for call in greedy.calls for r in call} == {None}


def test_batches_are_sorted_longest_first(tokenizer_setup):
    tokenizer, stop = tokenizer_setup
    engine = ScriptedEngine(encode(tokenizer, " Buy it.") + [min(stop.ids)])
    builder = PromptBuilder(Template(), tokenizer, 256)
    prompts = [builder.build("Mug", "Blue " * n) for n in (1, 9, 3, 27, 5)]
    Generator(engine, tokenizer, GenerationSettings(), stop).generate(prompts, batch_size=2)
    lengths = [len(r.ids) for call in engine.calls for r in call]
    assert [len(call) for call in engine.calls] == [2, 2, 1]
    assert lengths == sorted(lengths, reverse=True)


def test_an_empty_answer_is_asked_for_again_and_made_to_write(tokenizer_setup):
    tokenizer, stop = tokenizer_setup
    words = encode(tokenizer, " Buy it.")
    # First answer: the stop text at once (an empty ad); asked again with min_new_tokens, it writes.
    [[ad]], engine = write(tokenizer_setup, lambda r: words if r.min_new_tokens else encode(tokenizer, "###"), max_new_tokens=16)
    assert [[r.min_new_tokens for r in call] for call in engine.calls] == [[0], [8]]
    assert ad.text == "Buy it." and ad.new_tokens == len(encode(tokenizer, "###")) + len(words)
    # Still empty the second time: left empty (the run says so in the status).
    [[ad]], engine = write(tokenizer_setup, [min(stop.ids)], max_new_tokens=16)
    assert ad.text == "" and len(engine.calls) == 2


def test_ads_are_fitted_to_their_channel(tokenizer_setup):
    tokenizer, stop = tokenizer_setup
    long_ad = encode(tokenizer, " Soft organic cotton tee. Made to last, in five colours. Order yours today!") + [min(stop.ids)]
    [[ad]], _ = write(tokenizer_setup, long_ad, max_new_tokens=64, channel="google-ads-headline")
    assert (ad.text, ad.flags) == ("Soft organic cotton tee.", ())  # a whole sentence: not cut
    [[ad]], _ = write(tokenizer_setup, long_ad, max_new_tokens=64, channel="meta-headline", max_chars=20)
    assert len(ad.text) <= 20 and ad.flags == ("too-long",)
    emoji = encode(tokenizer, " Comfy tee 🌟 for you.") + [min(stop.ids)]
    [[ad]], _ = write(tokenizer_setup, emoji, max_new_tokens=64, channel="amazon-title")
    assert (ad.text, ad.flags) == ("Comfy tee for you.", ("emoji",))


@pytest.mark.parametrize(
    "text, cut, expected",
    [
        ("  Shop now!\n\n### Ad:\nmore", False, "Shop now!"),
        ("Walk in elegance. Shop now", True, "Walk in elegance."),
        ("Walk in elegance. Shop now", False, "Walk in elegance. Shop now"),
        ("Shop now & make a statement! \ufffd", True, "Shop now & make a statement!"),
        ("Fresh look! 🌟", True, "Fresh look! 🌟"),  # nothing unfinished after the '!'
        ("Only a fragment without end", True, "Only a fragment without end"),
        ("Bold\x07 colours,\tbright\r\ndays.", False, "Bold colours, bright days."),
    ],
)
def test_clean_ad(text, cut, expected):
    assert clean_ad(text, cut=cut) == expected

