"""BLOOM's forward pass for batched generation, over the weights of a loaded transformers model.

Why not call the transformers forward: for every new token it rebuilds the ALiBi tensor and
a 4-D mask from the whole attention mask and grows the key/value cache by concatenation.
Here a batch allocates its cache once, and the prompt prefix every row shares (the
instruction) is run through the model once per job.

ALiBi makes the prefix reusable: a key's bias depends on its position, and positions are
counted over the tokens the mask lets through, so rows can be padded *between* the shared
prefix and their own text and still see exactly what an unpadded prompt sees.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from adpulse_batch.engines.kv import KVCache, allowed_slots, attend


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes, as BLOOM defines them (heads need not be a power of two)."""
    closest = 2 ** math.floor(math.log2(heads))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest != heads:
        extra = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra ** (2 * i + 1) for i in range(min(closest, heads - closest))]
    return torch.tensor(slopes, dtype=torch.float32)


class BloomForward:
    """The forward pass of a `BloomForCausalLM` (adapter already merged), one call per step."""

    def __init__(self, model):
        config = model.config
        transformer = model.transformer
        self.embeddings = transformer.word_embeddings
        self.embeddings_norm = transformer.word_embeddings_layernorm
        self.layers = list(transformer.h)
        self.final_norm = transformer.ln_f
        self.lm_head = model.lm_head
        self.heads = config.n_head
        self.head_dim = config.hidden_size // config.n_head
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.slopes = alibi_slopes(self.heads).to(self.device)

    def new_cache(self, batch: int, length: int) -> KVCache:
        return KVCache(len(self.layers), batch, self.heads, length, self.head_dim, device=self.device, dtype=self.dtype)

    def logits(self, ids: torch.Tensor, cache: KVCache, start: int, valid: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run `ids` (batch, T) at cache slots start..start+T-1; each attends to the `valid`
        slots up to its own, keys biased by their `positions` (both (batch, slots)). Returns
        the float32 logits of the last position."""
        batch, steps = ids.shape
        end = start + steps
        seen = cache.seen(end)
        alibi = self.slopes[None, :, None] * positions[:, None, :seen].to(torch.float32)
        bias = alibi[:, :, None, :].masked_fill(~allowed_slots(valid, start, end, seen)[:, None], float("-inf")).to(self.dtype)
        x = self.embeddings_norm(self.embeddings(ids))
        for layer, keys, values in zip(self.layers, cache.keys, cache.values):
            attention = layer.self_attention
            qkv = attention.query_key_value(layer.input_layernorm(x))
            q, k, v = qkv.view(batch, steps, self.heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
            keys[:, :, start:end] = k
            values[:, :, start:end] = v
            context = attend(q, keys[:, :, :seen], values[:, :, :seen], bias, scale=self.head_dim**-0.5)
            x = x + attention.dense(context.transpose(1, 2).reshape(batch, steps, -1))
            mlp = layer.mlp
            x = x + mlp.dense_4h_to_h(F.gelu(mlp.dense_h_to_4h(layer.post_attention_layernorm(x)), approximate="tanh"))
        return self.lm_head(self.final_norm(x[:, -1])).float()
