"""A tiny randomly initialised BLOOM and a tokenizer trained on the spot, for tests and smoke runs.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on the prompt template
and some product prose, with BLOOM's special-token layout (unk 0, bos 1, eos 2, pad 3).
Both load through the same `from_pretrained` code as the real model.
"""

from __future__ import annotations

from pathlib import Path

from adpulse_batch.prompts import DEFAULT_TEMPLATE_TEXT

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]

_PROSE = """\
Harem pants: A style of pants with a dropped crotch, loose-fitting legs, and a gathered waistband.
Discover Harem Pants! Unique, stylish bohemian vibes with a dropped crotch and loose legs. Shop now!
Lace-up sandals: Sandals with laces that wrap around the ankle for a secure fit.
Introducing our latest Lace-up Sandals, the perfect blend of style and comfort. Walk in elegance!
Sundress: A flowery yellow sundress with blue polka dots. Brighten every summer day.
Wireless earbuds with noise cancellation, twenty hours of battery and a pocket-sized charging case.
Stainless steel water bottle that keeps drinks cold for 24 hours and hot for 12. Stay refreshed!
Organic cotton t-shirt, soft, breathable and made to last. Feel good in what you wear.
Ceramic coffee mug, dishwasher safe, 350 ml. Start your morning right with a cup you love.
Running shoes with a cushioned sole and a breathable mesh upper. Run further, feel lighter.
Leather wallet with six card slots and a coin pocket. Slim, classic and built to last.
Yoga mat, non-slip, six millimetres thick, with a carrying strap. Find your balance today.
Limited stock - order now and save 20%. Free shipping on every order. Don't miss out!
"""


def make_test_model(path: str | Path, *, adapter_path: str | Path | None = None, seed: int = 0) -> None:
    """Write a tiny BLOOM (2 layers, hidden 64) and its tokenizer to `path`; with
    `adapter_path`, also a random LoRA adapter on it whose config records `path` as its base."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM, PreTrainedTokenizerFast

    path = Path(path).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
    )
    tokenizer.save_pretrained(path)
    config = BloomConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        n_layer=2,
        n_head=4,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        initializer_range=0.3,  # wider than BLOOM's 0.02: greedy text varies instead of echoing the last token
    )
    torch.manual_seed(seed)
    BloomForCausalLM(config).save_pretrained(path)
    if adapter_path is not None:
        make_test_adapter(path, adapter_path, seed=seed)


def make_test_adapter(model_path: str | Path, adapter_path: str | Path, *, seed: int = 0) -> None:
    """A LoRA adapter with random (non-zero) weights, so applying it changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(Path(model_path).resolve())
    torch.manual_seed(seed + 1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"], task_type="CAUSAL_LM", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(Path(adapter_path).expanduser())


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [DEFAULT_TEMPLATE_TEXT] * 4 + _PROSE.splitlines()
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer
