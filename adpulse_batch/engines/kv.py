"""The torch engine's key/value cache and attention, shared by every family's forward pass.

A batch allocates its cache once, at full length: [shared prefix | left padding, the row's
own tokens | generated tokens]. Slots a row must not see are masked by an additive bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Prefix:
    """Token ids every prompt starts with, and their keys and values in each layer."""

    ids: list[int]
    keys: list[torch.Tensor]  # per layer: (1, kv_heads, len(ids), head_dim)
    values: list[torch.Tensor]


def half_on_cpu(device, dtype) -> bool:
    """Half precision on a CPU: attention there is plain products over the whole cache (see
    `KVCache` and `attend`)."""
    return torch.device(device).type == "cpu" and dtype != torch.float32


class KVCache:
    """Keys and values of every layer for a batch, allocated once at full length.

    `update` is the method transformers' attention layers call: the keys and values of the
    tokens being run are written at slots `start`.. (set by the forward pass before each
    step), and the slots attention reads are returned: those up to them, or, for `whole`
    caches, all of them, the ones not written yet masked out by the caller's bias
    (`seen(end)` says how many).

    Why whole: a slice of a preallocated cache is not contiguous across the batch, and on a
    CPU torch's bfloat16 batched products over such slices ran 4x slower than over the whole
    buffer (benchmarks/README.md). Float32 keeps the slices: there the whole buffer gained
    nothing, and a row's float32 result must not depend on the cache's length. A whole cache
    starts zeroed, so the masked slots hold no NaN that the mask would not cancel.
    """

    def __init__(self, layers: int, batch: int, heads: int, length: int, head_dim: int, *, device, dtype):
        shape = (batch, heads, length, head_dim)
        self.whole = half_on_cpu(device, dtype)
        allocate = torch.zeros if self.whole else torch.empty
        self.keys = [allocate(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [allocate(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.length = length
        self.start = 0

    def seen(self, end: int) -> int:
        """How many slots attention reads when the tokens being run end at slot `end`."""
        return self.length if self.whole else end

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer: int, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.start + keys.shape[2]
        self.keys[layer][:, :, self.start : end] = keys
        self.values[layer][:, :, self.start : end] = values
        seen = self.seen(end)
        return self.keys[layer][:, :, :seen], self.values[layer][:, :, :seen]

    def fill_prefix(self, prefix: Prefix) -> None:
        n = len(prefix.ids)
        for cache, part in zip(self.keys + self.values, prefix.keys + prefix.values):
            cache[:, :, :n] = part

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` of the batch (finished rows stop costing compute)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


def allowed_slots(valid: torch.Tensor, start: int, end: int, seen: int) -> torch.Tensor:
    """(batch, end - start, seen): which of the first `seen` slots (at least `end`) the
    queries at slots start..end-1 may attend to.

    A query sees the valid slots up to its own. A padding slot sees itself only, so no row of
    the softmax is empty (an empty one would be NaN and poison the cache); no valid slot ever
    sees a padding slot.
    """
    slots = torch.arange(seen, device=valid.device)
    queries = torch.arange(start, end, device=valid.device)[:, None]
    return (valid[:, None, :seen] & (slots <= queries)) | (slots == queries)


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor, *, scale: float, softcap: float | None = None) -> torch.Tensor:
    """Attention with an additive bias: q (batch, heads, T, d), keys and values (batch,
    kv_heads, L, d) with heads a multiple of kv_heads (grouped-query attention), bias
    broadcastable to (batch, heads, T, L). Returns (batch, heads, T, d).

    In float32 (the CPU default) a row's result should not depend on the other rows of its
    batch, whose prompts decide how much padding the row's slots hold. Each part is computed
    in a form whose float32 result the padding does not move (measured: see README): the
    scores as keys @ queries, one key per row of the product, as a linear layer's rows are;
    the softmax over the padded slots in float64, since float32 sums over another padding
    run in another order, rounded back to float32; the weighted sum of values, where the
    padding's weights are exactly zero. (Queries @ keys, and attention in float32 through
    the fused kernel, do move: their blocking follows the padded length.) Half precision
    uses the fused kernel on a GPU. On a CPU it uses plain products with a float32 softmax:
    torch's fused CPU kernel in bfloat16, built for long queries, took 5-10x as long for
    these short ones on a CPU without AMX (benchmarks/README.md).
    """
    batch, heads, steps, dim = q.shape
    kv_heads = keys.shape[1]
    groups = heads // kv_heads
    plain = half_on_cpu(q.device, q.dtype)
    if q.dtype != torch.float32 and softcap is None and not plain:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias.to(q.dtype), scale=scale, enable_gqa=groups > 1)
    # Group the query heads that share a key head: (batch, kv_heads, groups * T, d).
    grouped = q.reshape(batch, kv_heads, groups * steps, dim)
    if plain:
        scores = (grouped @ keys.transpose(-1, -2)) * scale
    else:
        scores = (keys @ grouped.transpose(-1, -2)).transpose(-1, -2) * scale
    scores = scores.reshape(batch, heads, steps, -1)
    exact = torch.float64 if q.dtype == torch.float32 else torch.float32
    scores = scores.to(exact)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    weights = torch.softmax(scores + bias, dim=-1).to(q.dtype)
    out = weights.reshape(batch, kv_heads, groups * steps, -1) @ values
    return out.view(batch, heads, steps, dim)
