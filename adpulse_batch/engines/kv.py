"""The torch engine's key/value cache and attention, shared by every family's forward pass.

A batch allocates its cache once, at full length: [shared prefix | left padding, the row's
own tokens | generated tokens]. Slots a row must not see are masked by an additive bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# A float32 model's cache is kept in float64, the precision its attention is computed in
# (see `attend`), when it takes at most this many bytes: converting every cached key and
# value at every step was 23% of the engine's CPU profile, and the float64 cache measured
# 7-8% faster (benchmarks/README.md). A larger cache (bloom-1b7, 32 rows of ~140 slots: about
# 3.5 GB in float64) stays float32 and is converted as attention reads it, so memory never
# exceeds what a float32 cache takes. Either way attention sees the same float64 values.
FLOAT64_CACHE_BYTES = 2 * 2**30


@dataclass
class Prefix:
    """Token ids every prompt starts with, and their keys and values in each layer."""

    ids: list[int]
    keys: list[torch.Tensor]  # per layer: (1, kv_heads, len(ids), head_dim)
    values: list[torch.Tensor]


class KVCache:
    """Keys and values of every layer for a batch, allocated once at full length.

    `update` is the method transformers' attention layers call: the keys and values of the
    tokens being run are written at slots `start`.. (set by the forward pass before each
    step), and every slot up to them is returned for attention.
    """

    def __init__(self, layers: int, batch: int, heads: int, length: int, head_dim: int, *, device, dtype):
        if dtype == torch.float32 and 2 * layers * batch * heads * length * head_dim * 8 <= FLOAT64_CACHE_BYTES:
            dtype = torch.float64
        shape = (batch, heads, length, head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.start = 0

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer: int, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.start + keys.shape[2]
        self.keys[layer][:, :, self.start : end] = keys
        self.values[layer][:, :, self.start : end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def fill_prefix(self, prefix: Prefix) -> None:
        n = len(prefix.ids)
        for cache, part in zip(self.keys + self.values, prefix.keys + prefix.values):
            cache[:, :, :n] = part

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` of the batch (finished rows stop costing compute)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


def allowed_slots(valid: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """(batch, end - start, end): which slots the queries at slots start..end-1 may attend to.

    A query sees the valid slots up to its own. A padding slot sees itself only, so no row of
    the softmax is empty (an empty one would be NaN and poison the cache); no valid slot ever
    sees a padding slot.
    """
    slots = torch.arange(end, device=valid.device)
    queries = slots[start:, None]
    return (valid[:, None, :end] & (slots <= queries)) | (slots == queries)


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, *, scale: float, softcap: float | None = None) -> torch.Tensor:
    """Attention with an additive bias: q (batch, heads, T, d), keys and values (batch,
    kv_heads, L, d) with heads a multiple of kv_heads (grouped-query attention), bias
    broadcastable to (batch, heads, T, L). Returns (batch, heads, T, d).

    In float32 (the CPU default) it is computed in float64 and rounded back: its sums run
    over the padded key length, which depends on the other rows of the batch, and float32
    sums in a different order round differently. In float64 the difference vanishes in the
    rounding, so a row's ad does not depend on its batch. (A float64 cache makes
    `.double()` a no-op.) Half precision uses the fused kernel where it can.
    """
    batch, heads, steps, dim = q.shape
    groups = heads // keys.shape[1]
    if q.dtype != torch.float32 and softcap is None:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias.to(q.dtype), scale=scale, enable_gqa=groups > 1)
    work = torch.float64 if q.dtype == torch.float32 else q.dtype
    # Group the query heads that share a key head: (batch, kv_heads, groups * T, d).
    grouped = q.to(work).reshape(batch, keys.shape[1], groups * steps, dim)
    scores = (grouped @ keys.to(work).transpose(-1, -2) * scale).view(batch, heads, steps, -1)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    weights = torch.softmax(scores + bias, dim=-1, dtype=torch.float32 if work != torch.float64 else work).to(work)
    out = weights.view(batch, keys.shape[1], groups * steps, -1) @ values.to(work)
    return out.view(batch, heads, steps, dim).to(q.dtype)
