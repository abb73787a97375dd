"""The model families adpulse-batch runs, and the little that differs between them.

A family is a transformers `model_type`. Everything a family needs of its own lives in this
table; the rest is shared. BLOOM (ALiBi positions, fused query-key-value) has a forward pass
of its own (`engines/bloom.py`); the RoPE families run through transformers' own decoder
layers (`engines/rope.py`), which already know each family's norms, rotary embedding,
grouped-query attention and soft-capping.
"""

from __future__ import annotations

from dataclasses import dataclass

from adpulse_batch.errors import SettingsError


@dataclass(frozen=True)
class Family:
    forward: str
    """Which forward pass of the torch engine runs it: "bloom" or "rope"."""
    lora_target_modules: tuple[str, ...]
    """finetune's default --lora-target-modules: PEFT's default for the family (PEFT has none for
    phi3, whose attention is one fused qkv_proj)."""
    vllm_lora: bool = True
    """vLLM applies LoRA adapters to it (it has none for BLOOM: the adapter is merged first)."""


FAMILIES: dict[str, Family] = {
    "bloom": Family("bloom", ("query_key_value",), vllm_lora=False),
    "llama": Family("rope", ("q_proj", "v_proj")),
    "mistral": Family("rope", ("q_proj", "v_proj")),
    "qwen2": Family("rope", ("q_proj", "v_proj")),
    "qwen3": Family("rope", ("q_proj", "v_proj")),
    "gemma": Family("rope", ("q_proj", "v_proj")),
    "gemma2": Family("rope", ("q_proj", "v_proj")),
    "phi3": Family("rope", ("qkv_proj",)),
}


def cache_values_per_token(config: dict) -> int:
    """How many keys and values one token of one row puts in the torch engine's cache, over
    all layers, for a model of this config.json (BLOOM's older configs name its sizes
    differently)."""
    if config.get("model_type") == "bloom":
        layers = config.get("n_layer", config.get("num_hidden_layers"))
        return 2 * layers * config.get("hidden_size", config.get("n_embed"))
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * (config.get("num_key_value_heads") or heads) * head_dim


def family_of(config: dict, name: str) -> Family:
    """The family of a model from its config.json, or a one-line refusal naming the supported ones."""
    kind = config.get("model_type")
    family = FAMILIES.get(kind)
    if family is None:
        raise SettingsError(
            f"--model {name!r} is a {kind!r} model; adpulse-batch runs the model types {', '.join(FAMILIES)}"
        )
    if kind == "bloom" and config.get("apply_residual_connection_post_layernorm"):
        raise SettingsError(f"--model {name!r} is a BLOOM variant with post-layernorm residuals, which adpulse-batch does not run")
    return family
