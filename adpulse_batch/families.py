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
    example: str
    """A Hub model of the family, for the README and error messages."""


FAMILIES: dict[str, Family] = {
    "bloom": Family("bloom", ("query_key_value",), "bigscience/bloom-1b7"),
    "llama": Family("rope", ("q_proj", "v_proj"), "meta-llama/Llama-3.2-1B"),
    "mistral": Family("rope", ("q_proj", "v_proj"), "mistralai/Mistral-7B-Instruct-v0.3"),
    "qwen2": Family("rope", ("q_proj", "v_proj"), "Qwen/Qwen2.5-1.5B-Instruct"),
    "qwen3": Family("rope", ("q_proj", "v_proj"), "Qwen/Qwen3-1.7B"),
    "gemma": Family("rope", ("q_proj", "v_proj"), "google/gemma-2b"),
    "gemma2": Family("rope", ("q_proj", "v_proj"), "google/gemma-2-2b-it"),
    "phi3": Family("rope", ("qkv_proj",), "microsoft/Phi-3-mini-4k-instruct"),
}


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
