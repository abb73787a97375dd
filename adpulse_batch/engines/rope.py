"""The forward pass of the RoPE families (Llama, Mistral, Qwen2/3, Gemma 1/2, Phi-3) for
batched generation, through transformers' own decoder layers.

transformers already knows each family's norms, rotary embedding, grouped-query attention
and soft-capping; what it does not do is what makes our batches fast and exact: one cache
allocated per batch (`KVCache`, which its attention layers write through `update`), the
shared instruction run once per job, rows padded *between* that prefix and their own
tokens, and attention computed so that the padding leaves a row's result alone. Its layers take `position_ids` and
route attention through `AttentionInterface`, so positions come from the mask (a row's
tokens continue the prefix's positions whatever the padding) and attention is ours
(`kv.attend`), given the additive bias as its 4-D mask, which transformers passes through.
"""

from __future__ import annotations

import inspect

import torch

from adpulse_batch.engines.kv import KVCache, allowed_slots, attend

ATTENTION = "adpulse"


def _attention(module, query, key, value, attention_mask, scaling=None, softcap=None, **kwargs):
    """transformers' attention-function signature over `kv.attend`: (batch, T, heads, d) out."""
    scale = scaling if scaling is not None else module.head_dim**-0.5
    return attend(query, key, value, attention_mask, scale=scale, softcap=softcap).transpose(1, 2), None


def register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, _attention)


class RopeForward:
    """A loaded `*ForCausalLM` of a RoPE family (adapter already merged), one call per step."""

    def __init__(self, model):
        register_attention()
        model.set_attn_implementation(ATTENTION)
        config = model.config
        self.decoder = model.model
        self.lm_head = model.lm_head
        self.softcap = getattr(config, "final_logit_softcapping", None)  # Gemma 2
        self.layers = config.num_hidden_layers
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        # transformers 5.24 renamed the decoder's `past_key_values` argument to `cache`.
        self.cache_argument = "cache" if "cache" in inspect.signature(self.decoder.forward).parameters else "past_key_values"

    def new_cache(self, batch: int, length: int) -> KVCache:
        return KVCache(self.layers, batch, self.kv_heads, length, self.head_dim, device=self.device, dtype=self.dtype)

    def logits(self, ids: torch.Tensor, cache: KVCache, start: int, valid: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run `ids` (batch, T) at cache slots start..start+T-1; each attends to the `valid`
        slots up to its own, at its `positions` (both (batch, slots)). Returns the float32
        logits of the last position."""
        end = start + ids.shape[1]
        allowed = allowed_slots(valid, start, end, cache.seen(end))
        bias = torch.zeros(allowed.shape, device=self.device).masked_fill_(~allowed, float("-inf"))[:, None]
        cache.start = start
        hidden = self.decoder(
            input_ids=ids, attention_mask=bias, position_ids=positions[:, start:end], use_cache=True, **{self.cache_argument: cache}
        ).last_hidden_state
        logits = self.lm_head(hidden[:, -1]).float()
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
