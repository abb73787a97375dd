"""Tiny randomly initialised models of every family, with tokenizers trained on the spot,
for tests and pipelines' smoke runs.

Nothing is downloaded. Each tokenizer is trained here on the prompt template and some
product prose, and has its family's quirks, so that the code that must cope with them is
exercised: BLOOM's byte-level BPE without BOS; Qwen's byte-level BPE without BOS, a ChatML
chat template and two end-of-text ids; the SentencePiece families (Llama, Mistral, Gemma,
Phi-3) a word-start mark, byte fallback (`#` is not in their vocabulary: `###` is three
byte tokens), a BOS token, two end-of-text ids and a chat template (Gemma's refuses a system
message, as Gemma's does). Everything loads through the same `from_pretrained` code as a
real model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from adpulse_batch.families import FAMILIES
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

_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Like Llama 3's, it writes today's date into the system message unless given `date_string`.
_LLAMA3 = (
    "{{ bos_token }}{% if not date_string is defined %}{% set date_string = strftime_now('%d %b %Y') %}{% endif %}"
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{% if m['role'] == 'system' %}Today Date: {{ date_string }}\n\n{% endif %}{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_GEMMA = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_MISTRAL = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% endif %}{% endfor %}"
)
_PHI3 = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TokenizerStyle:
    """The tokenizer quirks of a family."""

    sentencepiece: bool  # word-start mark and byte fallback, else byte-level BPE
    bos: bool  # a BOS token is added to every encoding
    turn_end: str | None  # a second end-of-text token (the chat template's end of turn)
    chat_template: str | None
    chat_tokens: tuple[str, ...] = ()


STYLES = {
    "bloom": TokenizerStyle(False, False, None, None),
    "qwen2": TokenizerStyle(False, False, "<|im_end|>", _CHATML, ("<|im_start|>",)),
    "qwen3": TokenizerStyle(False, False, "<|im_end|>", _CHATML, ("<|im_start|>",)),
    "llama": TokenizerStyle(True, True, "<|eot_id|>", _LLAMA3, ("<|start_header_id|>", "<|end_header_id|>")),
    "mistral": TokenizerStyle(True, True, None, _MISTRAL, ()),
    "gemma": TokenizerStyle(True, True, "<end_of_turn>", _GEMMA, ("<start_of_turn>",)),
    "gemma2": TokenizerStyle(True, True, "<end_of_turn>", _GEMMA, ("<start_of_turn>",)),
    "phi3": TokenizerStyle(True, True, "<|end|>", _PHI3, ("<|user|>", "<|assistant|>", "<|system|>")),
}
ARCHES = tuple(STYLES)


def make_test_model(path: str | Path, *, arch: str = "bloom", adapter_path: str | Path | None = None, seed: int = 0) -> None:
    """Write a tiny model of the family `arch` (2 layers, hidden 64, 2 heads of 32) and its tokenizer to
    `path`; with `adapter_path`, also a random LoRA adapter on it whose config records
    `path` as its base."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if arch not in STYLES:
        raise ValueError(f"arch must be one of {', '.join(ARCHES)}, not {arch!r}")
    path = Path(path).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(STYLES[arch])
    tokenizer.save_pretrained(path)
    config = _config(arch, tokenizer)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    eos = [tokenizer.eos_token_id] + ([tokenizer.convert_tokens_to_ids(STYLES[arch].turn_end)] if STYLES[arch].turn_end else [])
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=eos if len(eos) > 1 else eos[0], pad_token_id=tokenizer.pad_token_id).save_pretrained(path)
    if adapter_path is not None:
        make_test_adapter(path, adapter_path, seed=seed)


def make_test_adapter(model_path: str | Path, adapter_path: str | Path, *, seed: int = 0) -> None:
    """A LoRA adapter with random (non-zero) weights on the family's default target
    modules, so applying it changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(Path(model_path).resolve())
    torch.manual_seed(seed + 1)
    targets = list(FAMILIES[model.config.model_type].lora_target_modules)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(Path(adapter_path).expanduser())


def _config(arch: str, tokenizer):
    from transformers import AutoConfig

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    # Weights wider than the families' usual 0.02: greedy text varies instead of echoing the last token.
    shape = dict(vocab_size=len(tokenizer), initializer_range=0.3, **ids)
    # Heads of 32: the smallest vLLM's CPU attention takes. Llama-style families share one
    # key/value head between their two query heads (grouped-query attention).
    if arch == "bloom":
        return AutoConfig.for_model("bloom", hidden_size=64, n_layer=2, n_head=2, **shape)
    rope = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=32, max_position_embeddings=1024, **shape,
    )  # fmt: skip
    extra = {
        "gemma2": dict(query_pre_attn_scalar=32, attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=1024),
        "mistral": dict(sliding_window=1024),
        "phi3": dict(original_max_position_embeddings=1024, sliding_window=1023),
        "qwen2": dict(tie_word_embeddings=True),
    }.get(arch, {})
    return AutoConfig.for_model(arch, **rope, **extra)


def _tokenizer(style: TokenizerStyle):
    from transformers import PreTrainedTokenizerFast

    specials = SPECIAL_TOKENS + ([style.turn_end] if style.turn_end else []) + list(style.chat_tokens)
    backend = _train_sentencepiece(specials, bos=style.bos) if style.sentencepiece else _train_byte_level(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left",
        additional_special_tokens=specials[4:],
    )  # fmt: skip
    tokenizer.chat_template = style.chat_template
    return tokenizer


def _corpus() -> list[str]:
    return [DEFAULT_TEMPLATE_TEXT] * 4 + _PROSE.splitlines()


def _train_byte_level(specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(_corpus(), trainer)
    return tokenizer


def _train_sentencepiece(specials: list[str], *, bos: bool):
    """A Llama-2-style tokenizer: spaces become a word-start mark, text the vocabulary lacks
    falls back to byte tokens `<0x00>`..`<0xFF>` (trained without `#`, so `###` is bytes)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator([line.replace("#", "") for line in _corpus()], trainer)
    # The trainer knows nothing of byte fallback: add the byte tokens and switch it on.
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tokenizer
