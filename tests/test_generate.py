"""Batched generation: the same tokens as transformers, independent of the batch, clean text."""

import pytest
import torch

from adpulse_batch import bloom as bloom_module
from adpulse_batch.bloom import Bloom, attention_bias
from adpulse_batch.generate import Generator, clean_ad
from adpulse_batch.model import load_model
from adpulse_batch.prompts import Prompt, Template, encode
from adpulse_batch.settings import GenerationSettings, ModelSettings

PRODUCTS = [
    ("Harem pants", "A style of pants with a dropped crotch, loose-fitting legs, and a gathered waistband."),
    ("Sundress", "A flowery yellow sundress with blue polka dots."),
    ("Mug", ""),
    ("Yoga mat", "Non-slip 6 mm mat in natural rubber with alignment lines and a carrying strap, for home or studio."),
    ("Running shoes", "Cushioned sole."),
    ("Leather wallet", "Six card slots and a coin pocket. Slim and classic."),
    ("E-reader", "6-inch glare-free display, adjustable warm light, weeks of battery life, 16 GB storage."),
]


@pytest.fixture(scope="module")
def loaded(test_model):
    model_dir, adapter_dir = test_model
    return load_model(ModelSettings(model=str(model_dir), adapter=str(adapter_dir)))


@pytest.fixture(scope="module")
def prompts(loaded):
    texts = [Template().render(p, d) for p, d in PRODUCTS]
    return [Prompt(t, encode(loaded.tokenizer, t)) for t in texts]


def generator(loaded, **settings):
    return Generator(loaded, Template(), GenerationSettings(**settings))


def token_ids(loaded, generations):
    return [loaded.tokenizer(g.text, add_special_tokens=False)["input_ids"] for g in generations]


def test_forward_matches_transformers(loaded, prompts):
    bloom = Bloom(loaded.model)
    ids = torch.tensor([prompts[0].ids])
    n = ids.shape[1]
    valid = torch.ones(1, n, dtype=torch.bool)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    with torch.inference_mode():
        ours = bloom.logits(bloom.forward(ids, bloom.new_cache(1, n), 0, attention_bias(bloom.alibi(valid)[:, :, None], causal, torch.float32)))
        theirs = loaded.model(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_greedy_tokens_match_transformers_generate(loaded, prompts):
    # One batch of padded rows with the shared prefix cached must pick the tokens that
    # transformers' own generate picks for each prompt alone.
    steps = 10
    ours = generator(loaded, max_new_tokens=steps, min_new_tokens=steps)
    ours_ids = [[] for _ in prompts]
    # Record the chosen tokens (the cleaned text would lose some of them).
    ours._choose = lambda logits, generators: _record(logits, ours_ids)
    ours._decode([p.ids for p in prompts], [None] * len(prompts))
    with torch.inference_mode():
        for prompt, chosen in zip(prompts, ours_ids):
            out = loaded.model.generate(
                torch.tensor([prompt.ids]), max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=3
            )
            assert chosen == out[0, len(prompt.ids) :].tolist()


def _record(logits, record):
    chosen = logits.argmax(-1)
    for row, token in enumerate(chosen.tolist()):
        record[row].append(token)
    return chosen


def test_greedy_ads_do_not_depend_on_the_batch(loaded, prompts):
    g = generator(loaded, max_new_tokens=24)
    alone = [g.generate([p], batch_size=1)[0][0] for p in prompts]
    for batch_size in (2, 3, 32):
        together = [variants[0] for variants in g.generate(prompts, batch_size=batch_size)]
        assert together == alone
    assert len({a.text for a in alone}) > 3  # the test model writes varied text, so this can fail


def test_shared_prefix_changes_nothing(loaded, prompts):
    g = generator(loaded, max_new_tokens=16)
    assert g.prefix is not None and len(g.prefix.ids) > 30
    with_prefix = g.generate(prompts, batch_size=4)
    g.prefix = None
    assert g.generate(prompts, batch_size=4) == with_prefix


def test_a_float32_cache_gives_the_same_ads(loaded, prompts, monkeypatch):
    # Small caches are float64 (no conversion per step); large ones stay float32 and are
    # converted as attention reads them. Attention sees the same values either way.
    g = generator(loaded, max_new_tokens=16)
    assert g.bloom.new_cache(4, 8).keys[0].dtype == torch.float64
    in_float64 = g.generate(prompts, batch_size=4)
    monkeypatch.setattr(bloom_module, "FLOAT64_CACHE_BYTES", 0)
    assert g.bloom.new_cache(4, 8).keys[0].dtype == torch.float32
    assert g.generate(prompts, batch_size=4) == in_float64


def scripted(g, text, then=()):
    """Make the model emit the tokens of `text`, then `then`, then EOS, whatever it is fed."""
    script = encode(g.tokenizer, text) + list(then) + [g.eos_id]
    vocab = len(g.tokenizer)
    calls = []

    def logits(hidden):
        token = script[min(len(calls), len(script) - 1)]
        calls.append(token)
        out = torch.zeros(hidden.shape[0], vocab)
        out[:, token] = 1.0
        return out

    g.bloom.logits = logits
    return script


def test_stops_at_eos(loaded, prompts):
    g = generator(loaded, max_new_tokens=40)
    script = scripted(g, " Great mug. Buy it today!")
    (ad,) = g.generate(prompts[:1], batch_size=1)[0]
    assert (ad.text, ad.finish, ad.new_tokens) == ("Great mug. Buy it today!", "eos", len(script))


def test_stops_at_a_new_section(loaded, prompts):
    g = generator(loaded, max_new_tokens=40)
    scripted(g, " Great mug!\n\n### Product and Description:\nPen")
    (ad,) = g.generate(prompts[:1], batch_size=1)[0]
    assert (ad.text, ad.finish) == ("Great mug!", "stop")


def test_token_limit_drops_the_unfinished_sentence(loaded, prompts):
    g = generator(loaded, max_new_tokens=8)
    scripted(g, " Great mug. Buy it today and save twenty percent on every order")
    (ad,) = g.generate(prompts[:1], batch_size=1)[0]
    assert (ad.text, ad.finish, ad.new_tokens) == ("Great mug.", "length", 8)


def test_min_new_tokens_holds_eos_back(loaded, prompts):
    g = generator(loaded, max_new_tokens=6, min_new_tokens=6)
    scripted(g, "", then=[])  # EOS at once, unless held back
    (ad,) = g.generate(prompts[:1], batch_size=1)[0]
    assert ad.finish == "length" and ad.new_tokens == 6


def test_sampled_ads_repeat_with_their_seed_whatever_the_batch(loaded, prompts):
    g = generator(loaded, max_new_tokens=12, temperature=1.0, top_p=0.9, num_variants=2, seed=7)
    alone = [g.generate([p], batch_size=1)[0] for p in prompts[:4]]
    assert g.generate(prompts[:4], batch_size=8) == alone
    assert any(v[0].text != v[1].text for v in alone)  # variants differ
    other = generator(loaded, max_new_tokens=12, temperature=1.0, top_p=0.9, num_variants=2, seed=8)
    assert other.generate(prompts[:4], batch_size=8) != alone


@pytest.mark.parametrize(
    "text, cut, max_chars, expected",
    [
        ("  Shop now!\n\n### Ad:\nmore", False, None, "Shop now!"),
        ("Walk in elegance. Shop now", True, None, "Walk in elegance."),
        ("Walk in elegance. Shop now", False, None, "Walk in elegance. Shop now"),
        ("Shop now & make a statement! \ufffd", True, None, "Shop now & make a statement!"),
        ("Fresh look! 🌟", True, None, "Fresh look! 🌟"),  # nothing unfinished after the '!'
        ("Only a fragment without end", True, None, "Only a fragment without end"),
        ("Bold\x07 colours,\tbright\r\ndays.", False, None, "Bold colours, bright days."),
        ("Comfy meets chic, elevate your wardrobe today", False, 25, "Comfy meets chic, elevate"),
        ("Comfy meets chic, elevate your wardrobe today", False, 24, "Comfy meets chic"),
        ("Supercalifragilistic", False, 5, "Super"),
    ],
)
def test_clean_ad(text, cut, max_chars, expected):
    assert clean_ad(text, cut=cut, max_chars=max_chars) == expected
