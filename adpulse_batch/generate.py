"""Batched generation: length-sorted batches, left padding, stopping, and clean ad text.

Greedy output of a row does not depend on the other rows of its batch: each row is padded
and masked so that it sees only its own prompt, and sampled rows draw from a generator seeded
by the row's own prompt and variant number.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from adpulse_batch.bloom import Bloom, attention_bias
from adpulse_batch.model import LoadedModel
from adpulse_batch.prompts import Prompt, Template, encode, one_line
from adpulse_batch.settings import GenerationSettings

STOP_TEXT = "###"  # a new section of the template: the ad is over


@dataclass(frozen=True)
class Generation:
    """One generated ad: its cleaned text and how many tokens the model produced for it."""

    text: str
    new_tokens: int
    finish: str  # "eos", "stop" (a new ### section) or "length" (hit --max-new-tokens)
    ids: tuple[int, ...] = ()  # the generated token ids, EOS excluded (benchmarks compare them)


class Generator:
    """Writes ads for prompts with a loaded model; one per process, reused for every batch."""

    def __init__(self, loaded: LoadedModel, template: Template, settings: GenerationSettings):
        self.bloom = Bloom(loaded.model)
        self.tokenizer = loaded.tokenizer
        self.settings = settings
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id
        # The prompt text before the first placeholder is the same for every row: run it once.
        # Its last token is left out, since tokenizing it together with a row's text could
        # merge it with what follows; rows whose tokens do not start with the prefix anyway
        # are detected per batch and carry their whole prompt.
        prefix_ids = encode(self.tokenizer, template.prefix)[:-1] if template.prefix else []
        self.prefix = self.bloom.prefix(prefix_ids) if prefix_ids else None
        # Only a token that contains "#" can complete a "###"; the others need no decoding.
        vocabulary = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        self.hash_tokens = {i for i, token in enumerate(vocabulary) if token and "#" in token}

    def generate(self, prompts: list[Prompt], *, batch_size: int, on_batch: Callable[[list[int]], None] | None = None) -> list[list[Generation]]:
        """The ads (one per variant) for each prompt, in the order of `prompts`.

        Prompts are sorted by length so each batch pads little; `on_batch` is called after
        each batch with the indices of the prompts it finished.
        """
        variants = self.settings.num_variants
        requests = [(i, k) for i in range(len(prompts)) for k in range(variants)]
        requests.sort(key=lambda r: -self._tail_length(prompts[r[0]].ids))
        results: list[list[Generation | None]] = [[None] * variants for _ in prompts]
        for first in range(0, len(requests), batch_size):
            batch = requests[first : first + batch_size]
            seeds = [self._seed(prompts[i].text, k) for i, k in batch]
            generations = self._decode([prompts[i].ids for i, _ in batch], seeds)
            finished = []
            for (i, k), generation in zip(batch, generations):
                results[i][k] = generation
                if all(g is not None for g in results[i]):
                    finished.append(i)
            if on_batch is not None:
                on_batch(finished)
        return results

    def _tail_length(self, ids: list[int]) -> int:
        if self.prefix is not None and ids[: len(self.prefix.ids)] == self.prefix.ids:
            return len(ids) - len(self.prefix.ids)
        return len(ids)

    def _seed(self, text: str, variant: int) -> int | None:
        if not self.settings.sampled:
            return None
        digest = hashlib.sha256(f"{self.settings.seed}\0{variant}\0{text}".encode()).digest()
        return int.from_bytes(digest[:8], "little") >> 1

    @torch.inference_mode()
    def _decode(self, rows: list[list[int]], seeds: list[int | None]) -> list[Generation]:
        bloom, settings = self.bloom, self.settings
        device = bloom.device
        prefix_len = len(self.prefix.ids) if self.prefix is not None else 0
        shares = [self.prefix is not None and row[:prefix_len] == self.prefix.ids for row in rows]
        tails = [row[prefix_len:] if shared else row for row, shared in zip(rows, shares)]
        batch, width, steps = len(rows), max(len(t) for t in tails), settings.max_new_tokens
        prompt_end = prefix_len + width
        length = prompt_end + steps

        # Cache slots: [shared prefix | left padding, row's own tokens | generated tokens].
        ids = torch.full((batch, width), self.pad_id, dtype=torch.long)
        valid = torch.zeros((batch, length), dtype=torch.bool)
        for b, (tail, shared) in enumerate(zip(tails, shares)):
            ids[b, width - len(tail) :] = torch.tensor(tail, dtype=torch.long)
            valid[b, :prefix_len] = shared
            valid[b, prompt_end - len(tail) : prompt_end] = True
        valid[:, prompt_end:] = True
        ids, valid = ids.to(device), valid.to(device)
        alibi = bloom.alibi(valid)[:, :, None, :]
        step_bias = attention_bias(alibi, valid[:, None, None, :], bloom.dtype)

        # Prompt tokens attend causally to valid slots; a padding slot attends to itself only,
        # so no row of the softmax is empty (an empty one would be NaN and poison the cache).
        slots = torch.arange(prompt_end, device=device)
        queries = slots[prefix_len:, None]
        allowed = (valid[:, None, :prompt_end] & (slots <= queries)) | (slots == queries)
        bias = attention_bias(alibi[..., :prompt_end], allowed[:, None], bloom.dtype)

        cache = bloom.new_cache(batch, length)
        if self.prefix is not None:
            cache.fill_prefix(self.prefix)
        logits = bloom.logits(bloom.forward(ids, cache, prefix_len, bias)[:, -1])

        generators = [None if s is None else torch.Generator(device=device).manual_seed(s) for s in seeds]
        tokens: list[list[int]] = [[] for _ in rows]
        finish = ["length"] * batch
        active = list(range(batch))  # batch rows still in the cache, in cache order
        done: set[int] = set()
        for step in range(steps):
            if step < settings.min_new_tokens:
                logits[:, self.eos_id] = float("-inf")
            chosen = self._choose(logits, [generators[row] for row in active])
            for row, token in zip(active, chosen.tolist()):
                if row in done:
                    continue
                if token == self.eos_id:
                    finish[row] = "eos"
                    done.add(row)
                    continue
                tokens[row].append(token)
                if token in self.hash_tokens and step >= settings.min_new_tokens and self._stopped(tokens[row]):
                    finish[row] = "stop"
                    done.add(row)
            if len(done) == batch or step == steps - 1:
                break
            # Drop finished rows from the batch once there are enough of them to be worth
            # the copy of the cache; until then they ride along and are ignored.
            finished_here = [j for j, row in enumerate(active) if row in done]
            if len(finished_here) * 4 >= len(active):
                keep = [j for j, row in enumerate(active) if row not in done]
                index = torch.tensor(keep, device=device)
                cache.select(index)
                step_bias, chosen = step_bias.index_select(0, index), chosen.index_select(0, index)
                active = [active[j] for j in keep]
            position = prompt_end + step
            hidden = bloom.forward(chosen[:, None], cache, position, step_bias[..., : position + 1])
            logits = bloom.logits(hidden[:, -1])

        return [
            Generation(
                text=clean_ad(self.tokenizer.decode(tokens[b], skip_special_tokens=True), cut=finish[b] == "length", max_chars=settings.max_chars),
                new_tokens=len(tokens[b]) + (finish[b] == "eos"),
                finish=finish[b],
                ids=tuple(tokens[b]),
            )
            for b in range(batch)
        ]

    def _choose(self, logits: torch.Tensor, generators: list) -> torch.Tensor:
        settings = self.settings
        if not settings.sampled:
            return logits.argmax(-1)
        probs = torch.softmax(logits / settings.temperature, dim=-1)
        if settings.top_p < 1:
            sorted_probs, order = probs.sort(-1, descending=True)
            # Keep the smallest set of tokens whose probability reaches top_p (at least one).
            outside = sorted_probs.cumsum(-1) - sorted_probs >= settings.top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0))
        return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])

    def _stopped(self, tokens: list[int]) -> bool:
        return STOP_TEXT in self.tokenizer.decode(tokens[-8:])


_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*")


def clean_ad(text: str, *, cut: bool = False, max_chars: int | None = None) -> str:
    """Ad text as written to the catalog: up to a new `###` section, without control
    characters or broken bytes, whitespace collapsed. When generation was `cut` by the token
    limit, an unfinished last sentence is dropped (kept when it is all there is);
    `max_chars` then cuts at a word boundary."""
    text = text.split(STOP_TEXT, 1)[0].replace("\ufffd", "")
    text = one_line(text)
    if cut:
        ends = list(_SENTENCE_END.finditer(text))
        if ends and any(ch.isalnum() for ch in text[ends[-1].end() :]):
            text = text[: ends[-1].end()]
    if max_chars is not None and len(text) > max_chars:
        space = text.rfind(" ", 0, max_chars + 1)
        text = (text[:space] if space > 0 else text[:max_chars]).rstrip(" ,;:-–—")
    return text
