"""The torch engine on tiny models of each family: the tokens transformers' own `generate`
picks, whatever the batch, with or without the shared prefix, greedy or seeded."""

import json

import pytest
import torch

from adpulse_batch.generate import load_generator
from adpulse_batch.model import load_model, load_tokenizer, stop_ids
from adpulse_batch.prompts import PromptBuilder, Template
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
CPU = torch.device("cpu")


def setup(model_dir, adapter_dir, *, chat=False, **generation):
    model = ModelSettings(model=str(model_dir), adapter=str(adapter_dir), device="cpu", dtype="float32")
    builder = PromptBuilder(Template(chat=chat), load_tokenizer(model), 256)
    generator = load_generator(model, builder, GenerationSettings(**generation), device=CPU)
    return model, builder, generator, [builder.build(p, d) for p, d in PRODUCTS]


def ids(generations):
    return [variants[0].ids for variants in generations]


def transformers_tokens(model, builder, prompts, new_tokens):
    """Greedy tokens of transformers' own model and `generate`, one row at a time, stop ids left out."""
    loaded = load_model(model, tokenizer=builder.tokenizer)
    stops = list(stop_ids(model, builder.tokenizer))
    tokens = []
    with torch.inference_mode():
        for prompt in prompts:
            out = loaded.model.generate(
                torch.tensor([prompt.ids]), attention_mask=torch.ones(1, len(prompt.ids), dtype=torch.long),
                max_new_tokens=new_tokens, do_sample=False, pad_token_id=builder.tokenizer.pad_token_id, eos_token_id=stops,
            )  # fmt: skip
            tokens.append(tuple(t for t in out[0, len(prompt.ids) :].tolist() if t not in stops))
    return tokens


@pytest.mark.parametrize("chat", [False, True])
def test_greedy_tokens_are_those_of_transformers_generate(arch_model, chat):
    arch, model_dir, adapter_dir = arch_model
    if chat and arch == "bloom":
        pytest.skip("the BLOOM test tokenizer has no chat template, like BLOOM's")
    model, builder, generator, prompts = setup(model_dir, adapter_dir, chat=chat, max_new_tokens=16)
    ours = ids(generator.generate(prompts, batch_size=4))
    assert ours == transformers_tokens(model, builder, prompts, 16)  # BOS included, as the tokenizer adds it
    assert len({tuple(t) for t in ours}) > 3  # the test model writes varied text, so this can fail


def test_greedy_ads_do_not_depend_on_the_batch(arch_model):
    _, model_dir, adapter_dir = arch_model
    _, _, generator, prompts = setup(model_dir, adapter_dir, max_new_tokens=24)
    alone = [generator.generate([p], batch_size=1)[0][0] for p in prompts]
    for batch_size in (2, 3, 32):
        assert [v[0] for v in generator.generate(prompts, batch_size=batch_size)] == alone


def test_the_shared_prefix_changes_nothing(arch_model):
    _, model_dir, adapter_dir = arch_model
    _, builder, generator, prompts = setup(model_dir, adapter_dir, max_new_tokens=16)
    assert len(builder.prefix_ids()) > 5
    with_prefix = generator.generate(prompts, batch_size=4)
    generator.engine.reuse_prefix([])
    assert generator.generate(prompts, batch_size=4) == with_prefix


def test_sampled_ads_repeat_with_their_seed_whatever_the_batch(arch_model):
    _, model_dir, adapter_dir = arch_model
    sampling = dict(max_new_tokens=12, temperature=1.0, top_p=0.9, num_variants=2)
    _, _, generator, prompts = setup(model_dir, adapter_dir, seed=7, **sampling)
    alone = [generator.generate([p], batch_size=1)[0] for p in prompts[:4]]
    assert generator.generate(prompts[:4], batch_size=8) == alone
    assert any(v[0].text != v[1].text for v in alone)  # variants differ
    _, _, other, _ = setup(model_dir, adapter_dir, seed=8, **sampling)
    assert other.generate(prompts[:4], batch_size=8) != alone


@pytest.mark.parametrize("arch", ["mistral", "qwen3", "gemma", "gemma2", "phi3"])
def test_every_other_family_matches_transformers_too(arch, tmp_path):
    from adpulse_batch.testmodel import make_test_model

    make_test_model(tmp_path / arch, arch=arch, adapter_path=tmp_path / "adapter")
    model, builder, generator, prompts = setup(tmp_path / arch, tmp_path / "adapter", max_new_tokens=8)
    ours = ids(generator.generate(prompts, batch_size=8))
    assert ours == [v[0].ids for p in prompts for v in generator.generate([p], batch_size=1)]
    assert ours == transformers_tokens(model, builder, prompts, 8)


def test_banned_words_are_never_written(arch_model):
    # The words the model writes most are banned: they vanish from every ad, in any casing,
    # and every row still gets an ad.
    from collections import Counter

    from adpulse_batch.banned import words_of

    _, model_dir, adapter_dir = arch_model
    _, _, generator, prompts = setup(model_dir, adapter_dir, max_new_tokens=24)
    free = [v[0].text for v in generator.generate(prompts, batch_size=8)]
    common = [w for w, _ in Counter(w for ad in free for w in set(words_of(ad)) if len(w) > 2).most_common(3)]
    assert common, free
    _, _, banning, _ = setup(model_dir, adapter_dir, max_new_tokens=24, banned_words=tuple(common))
    ads = [v[0].text for v in banning.generate(prompts, batch_size=8)]
    assert all(ads), ads
    for ad in ads:
        assert not any(word.startswith(tuple(common)) for word in words_of(ad)), (ad, common)
    assert ads != free


# Real models' shapes, from their config.json: the default batch keeps the cache of its
# longest prompt (256 tokens and 64 new ones) within 4 GiB, in rows halved from 128.
BLOOM_1B7 = {"model_type": "bloom", "n_layer": 24, "n_head": 16, "hidden_size": 2048}
MISTRAL_7B = {"model_type": "mistral", "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096}
LLAMA_1B = {"model_type": "llama", "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 2048, "head_dim": 64}


@pytest.mark.parametrize(
    ("config", "dtype", "rows"),
    [(BLOOM_1B7, "bfloat16", 64), (BLOOM_1B7, "float32", 32), (MISTRAL_7B, "bfloat16", 64), (MISTRAL_7B, "float32", 32), (LLAMA_1B, "float32", 128)],
)
def test_the_default_batch_fits_its_cache_in_4_gib(tmp_path, config, dtype, rows):
    from adpulse_batch.engines import engine_class

    (tmp_path / "config.json").write_text(json.dumps(config))
    model = ModelSettings(model=str(tmp_path), adapter=None, device="cpu", dtype=dtype)
    assert engine_class("torch").default_batch_size(model, slots=256 + 64) == rows
