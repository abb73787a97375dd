"""The torch engine: our own batched decoding over a transformers model, on CPU or one GPU.

The requests of one `generate` call are one batch. Each row is laid out in one
preallocated cache as [shared prefix | left padding, its own tokens | generated tokens] and
masked so that it sees exactly what it would see alone; positions are counted over the
slots the mask lets through. Finished rows leave the batch. Sampled rows draw from their
own generator, seeded per request, so neither greedy nor sampled ads depend on the batch.
"""

from __future__ import annotations

from importlib import metadata

import torch

from adpulse_batch.engines import Decoding, Engine, Request
from adpulse_batch.engines.kv import Prefix
from adpulse_batch.families import cache_values_per_token
from adpulse_batch.model import base_config, load_model, model_family, resolve_dtype

# Raise when a change to the forward passes or the decoding loop can change an ad: it is
# part of every cache key and work fingerprint.
VERSION = 2  # 2: CPU half-precision attention without the fused kernel, default batch 128

# The default batch's key/value cache at the longest prompt stays within this; a batch of
# rows is one cache, allocated whole (bloom-1b7 at 320 slots: 64 rows in bfloat16, 32 in float32).
DEFAULT_CACHE_BYTES = 4 * 2**30


class TorchEngine(Engine):
    name = "torch"
    # On 2 CPU cores in bfloat16, the benchmark's Llama ran 1.2-1.34x as fast at 128 rows as
    # at 64 (BLOOM 1.04x), and 64 about twice as fast as 32 (benchmarks/README.md).
    batch_size = 128

    def __init__(self, forward, *, pad_id: int, decoding: Decoding):
        self.forward = forward
        self.pad_id = pad_id
        self.decoding = decoding
        self.prefix: Prefix | None = None

    @classmethod
    def identity(cls, model, device) -> dict:
        return {
            "engine": cls.name,
            "version": VERSION,
            "device": device.type,
            "dtype": str(resolve_dtype(model.dtype, device)).removeprefix("torch."),
            "torch": torch.__version__,
            "transformers": metadata.version("transformers"),
        }

    @classmethod
    def default_batch_size(cls, model, *, slots: int) -> int:
        """128 rows, halved (down to 8) while their cache at `slots` tokens would pass 4 GiB."""
        # Not resolve_device: a Spark or Ray driver checks settings for GPU workers without a GPU.
        on_cpu = model.device == "cpu" or (model.device == "auto" and not torch.cuda.is_available())
        if on_cpu:
            itemsize = resolve_dtype(model.dtype, torch.device("cpu")).itemsize
        else:  # a GPU's auto is bfloat16 or float16
            itemsize = 4 if model.dtype == "float32" else 2
        row_bytes = cache_values_per_token(base_config(model)) * itemsize * slots
        rows = cls.batch_size
        while rows > 8 and rows * row_bytes > DEFAULT_CACHE_BYTES:
            rows //= 2
        return rows

    @classmethod
    def load(cls, model, *, tokenizer, device, decoding: Decoding) -> TorchEngine:
        loaded = load_model(model, device=device, tokenizer=tokenizer)
        if model_family(model).forward == "bloom":
            from adpulse_batch.engines.bloom import BloomForward as forward
        else:
            from adpulse_batch.engines.rope import RopeForward as forward
        return cls(forward(loaded.model), pad_id=tokenizer.pad_token_id, decoding=decoding)

    @torch.inference_mode()
    def reuse_prefix(self, ids: list[int]) -> None:
        """Run the shared prefix once; its keys and values are copied into every batch."""
        self.prefix = None
        if not ids:
            return
        forward, n = self.forward, len(ids)
        cache = forward.new_cache(1, n)
        valid = torch.ones(1, n, dtype=torch.bool, device=forward.device)
        forward.logits(torch.tensor([ids], device=forward.device), cache, 0, valid, valid.cumsum(-1) - 1)
        self.prefix = Prefix(list(ids), cache.keys, cache.values)

    @torch.inference_mode()
    def generate(self, requests: list[Request]) -> list[list[int]]:
        forward, decoding = self.forward, self.decoding
        device = forward.device
        prefix_len = len(self.prefix.ids) if self.prefix is not None else 0
        shares = [prefix_len > 0 and r.ids[:prefix_len] == self.prefix.ids for r in requests]
        tails = [r.ids[prefix_len:] if shared else r.ids for r, shared in zip(requests, shares)]
        batch, width, steps = len(requests), max(len(t) for t in tails), decoding.max_new_tokens
        prompt_end = prefix_len + width

        # Cache slots: [shared prefix | left padding, row's own tokens | generated tokens].
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        valid = torch.zeros((batch, prompt_end + steps), dtype=torch.bool)
        for b, (tail, shared) in enumerate(zip(tails, shares)):
            ids[b, width - len(tail) :] = torch.tensor(tail, dtype=torch.long)
            valid[b, :prefix_len] = shared
            valid[b, prompt_end - len(tail) : prompt_end] = True
        valid[:, prompt_end:] = True
        ids, valid = ids.to(device), valid.to(device)
        positions = valid.cumsum(-1) - 1

        cache = forward.new_cache(batch, prompt_end + steps)
        if self.prefix is not None:
            cache.fill_prefix(self.prefix)
        logits = forward.logits(ids, cache, prefix_len, valid, positions)

        generators = [None if r.seed is None else torch.Generator(device=device).manual_seed(r.seed) for r in requests]
        tokens: list[list[int]] = [[] for _ in requests]
        active = list(range(batch))  # batch rows still in the cache, in cache order
        done: set[int] = set()
        for step in range(steps):
            self._mask(logits, [(j, row) for j, row in enumerate(active) if row not in done], requests, tokens, step)
            chosen = self._choose(logits, [generators[row] for row in active])
            for row, token in zip(active, chosen.tolist()):
                if row in done:
                    continue
                tokens[row].append(token)
                if token in decoding.stop_ids or (token in decoding.stop_triggers and decoding.stopped(tokens[row])):
                    done.add(row)
            if len(done) == batch or step == steps - 1:
                break
            # Drop finished rows from the batch once there are enough of them to be worth
            # the copy of the cache; until then they ride along and are ignored.
            finished = sum(row in done for row in active)
            if finished * 4 >= len(active):
                keep = [j for j, row in enumerate(active) if row not in done]
                index = torch.tensor(keep, device=device)
                cache.select(index)
                valid, positions, chosen = valid.index_select(0, index), positions.index_select(0, index), chosen.index_select(0, index)
                active = [active[j] for j in keep]
            logits = forward.logits(chosen[:, None], cache, prompt_end + step, valid, positions)
        return tokens

    def _mask(self, logits: torch.Tensor, rows: list[tuple[int, int]], requests: list[Request], tokens: list[list[int]], step: int) -> None:
        """Rule out, for each (batch position, request) of `rows`, the tokens it may not choose now."""
        decoding = self.decoding
        for j, row in rows:
            ruled_out = decoding.blocked(tokens[row]) if decoding.blocked is not None else frozenset()
            if step < requests[row].min_new_tokens:
                ruled_out = ruled_out | decoding.stop_ids | decoding.stop_triggers
            if ruled_out:
                logits[j, list(ruled_out)] = float("-inf")

    def _choose(self, logits: torch.Tensor, generators: list) -> torch.Tensor:
        decoding = self.decoding
        if not decoding.sampled:
            return logits.argmax(-1)
        probs = torch.softmax(logits / decoding.temperature, dim=-1)
        if decoding.top_p < 1:
            sorted_probs, order = probs.sort(-1, descending=True)
            # Keep the smallest set of tokens whose probability reaches top_p (at least one).
            outside = sorted_probs.cumsum(-1) - sorted_probs >= decoding.top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0))
        return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])
