"""BLOOM's forward pass for batched generation, over the weights of a loaded transformers model.

Why not call the transformers forward: for every new token it rebuilds the ALiBi tensor and
a 4-D mask from the whole attention mask and grows the key/value cache by concatenation.
Here a batch allocates its cache once and builds its ALiBi-plus-padding bias once, and the
prompt prefix every row shares (the instruction) is run through the model once per job.

ALiBi makes the prefix reusable: a key's bias depends on its position, and positions are
counted over the tokens the mask lets through, so rows can be padded *between* the shared
prefix and their own text and still see exactly what an unpadded prompt sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adpulse_batch.errors import SettingsError


@dataclass
class Prefix:
    """Token ids every prompt starts with, and their keys and values in each layer."""

    ids: list[int]
    keys: list[torch.Tensor]  # per layer: (1, heads, len(ids), head_dim)
    values: list[torch.Tensor]


# A float32 model's cache is kept in float64, the precision its attention is computed in
# (see `attend`), when it takes at most this many bytes: converting every cached key and
# value at every step was 23% of the engine's CPU profile, and the float64 cache measured
# 7-8% faster (benchmarks/README.md). A larger cache (bloom-1b7, 32 rows of ~140 slots: about
# 3.5 GB in float64) stays float32 and is converted as attention reads it, so memory never
# exceeds what a float32 cache takes. Either way attention sees the same float64 values.
FLOAT64_CACHE_BYTES = 2 * 2**30


class KVCache:
    """Keys and values of every layer for a batch, allocated once at full length."""

    def __init__(self, layers: int, batch: int, heads: int, length: int, head_dim: int, *, device, dtype):
        shape = (batch, heads, length, head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(layers)]

    def fill_prefix(self, prefix: Prefix) -> None:
        n = len(prefix.ids)
        for cache, part in zip(self.keys + self.values, prefix.keys + prefix.values):
            cache[:, :, :n] = part

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` of the batch (finished rows stop costing compute)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi's per-head slopes, as BLOOM defines them (heads need not be a power of two)."""
    closest = 2 ** math.floor(math.log2(heads))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest != heads:
        extra = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra ** (2 * i + 1) for i in range(min(closest, heads - closest))]
    return torch.tensor(slopes, dtype=torch.float32)


class Bloom:
    """The forward pass of a `BloomForCausalLM` (adapter already merged), one call per step."""

    def __init__(self, model):
        config = model.config
        if config.apply_residual_connection_post_layernorm:  # load_base_config refuses these earlier
            raise SettingsError("BLOOM variants with post-layernorm residuals are not supported")
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
        dtype = self.dtype
        if dtype == torch.float32 and 2 * len(self.layers) * batch * length * self.heads * self.head_dim * 8 <= FLOAT64_CACHE_BYTES:
            dtype = torch.float64
        return KVCache(len(self.layers), batch, self.heads, length, self.head_dim, device=self.device, dtype=dtype)

    def alibi(self, valid: torch.Tensor) -> torch.Tensor:
        """(batch, heads, length) ALiBi bias; positions count only the keys `valid` lets through."""
        positions = valid.cumsum(-1) - 1
        return self.slopes[None, :, None] * positions[:, None, :].to(torch.float32)

    def forward(self, ids: torch.Tensor, cache: KVCache, start: int, bias: torch.Tensor) -> torch.Tensor:
        """Run `ids` (batch, T) at cache slots start..start+T, attending to slots < start+T
        with additive `bias` (batch, heads, T, start+T). Returns the final hidden states."""
        batch, steps = ids.shape
        end = start + steps
        x = self.embeddings_norm(self.embeddings(ids))
        for layer, keys, values in zip(self.layers, cache.keys, cache.values):
            attention = layer.self_attention
            qkv = attention.query_key_value(layer.input_layernorm(x))
            q, k, v = qkv.view(batch, steps, self.heads, 3, self.head_dim).permute(3, 0, 2, 1, 4)
            keys[:, :, start:end] = k
            values[:, :, start:end] = v
            context = attend(q, keys[:, :, :end], values[:, :, :end], bias)
            x = x + attention.dense(context.transpose(1, 2).reshape(batch, steps, -1))
            mlp = layer.mlp
            x = x + mlp.dense_4h_to_h(F.gelu(mlp.dense_h_to_4h(layer.post_attention_layernorm(x)), approximate="tanh"))
        return self.final_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    @torch.inference_mode()
    def prefix(self, ids: list[int]) -> Prefix:
        """Run the shared prefix once; its keys and values are copied into every batch."""
        n = len(ids)
        cache = self.new_cache(1, n)
        valid = torch.ones(1, n, dtype=torch.bool, device=self.device)
        causal = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
        bias = attention_bias(self.alibi(valid)[:, :, None, :], causal[None, None], self.dtype)
        self.forward(torch.tensor([ids], device=self.device), cache, 0, bias)
        return Prefix(list(ids), cache.keys, cache.values)


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Attention with an additive bias.

    In float32 (the CPU default) it is computed in float64 and rounded back: its sums run
    over the padded key length, which depends on the other rows of the batch, and float32
    sums in a different order round differently. In float64 the difference vanishes in the
    rounding, so a row's ad does not depend on its batch. (A float64 cache makes
    `.double()` a no-op.) Half precision uses the fused kernel.
    """
    if q.dtype != torch.float32:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias)
    scores = q.double() @ keys.double().transpose(-1, -2) * q.shape[-1] ** -0.5 + bias
    return (torch.softmax(scores, dim=-1) @ values.double()).float()


def attention_bias(alibi: torch.Tensor, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ALiBi where attention is allowed, -inf where it is not, in the model's dtype."""
    return alibi.masked_fill(~allowed, float("-inf")).to(dtype)
