"""Engines: the one place where prompt token ids become generated token ids.

An engine implements one small interface. Everything around it — planning prompts, seeds,
where an ad stops, cleaning its text, statuses, the cache, resume, sharding — is the same
for every engine and lives above it (generate.py), so every engine writes ads the same way.
An engine's native stop handling or prefix cache is a speed-up, never a different behaviour:
the caller cuts every answer at the same stop rule itself.

`ENGINES` maps a name to a function returning the engine class; importing an engine
(torch, vLLM, ...) happens only when a run needs it, so `--help` and cached runs stay fast.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    """One generation: the prompt's token ids exactly as the model must see them (special
    tokens included), the seed of its sampler (None: greedy), and how many tokens it must
    write before it may stop (a retry of an answer that came out empty)."""

    ids: list[int]
    seed: int | None = None
    min_new_tokens: int = 0


@dataclass(frozen=True)
class Decoding:
    """What every request of a job shares: how many tokens, how they are picked, where they stop.

    An engine stops a request at any of `stop_ids` (the model's end-of-text tokens) and once
    `stopped(tokens)` is true (the text so far holds the stop text); `stopped` can only turn
    true after a token of `stop_triggers`, so an engine need not call it after other tokens.
    An engine may generate past a stop: its caller cuts there anyway. Before a request's
    `min_new_tokens`, neither stop ids nor stop triggers may be chosen. With `blocked`, the
    ids `blocked(tokens)` returns must not be chosen after `tokens` (banned words: an engine
    that cannot ask per token keeps `banned_words` out its own way). No prompt has more than
    `max_prompt_tokens` tokens.
    """

    max_prompt_tokens: int
    max_new_tokens: int
    temperature: float
    top_p: float
    stop_ids: frozenset[int]
    stop_text: str
    stop_triggers: frozenset[int]
    stopped: Callable[[list[int]], bool]
    blocked: Callable[[list[int]], frozenset[int]] | None = None
    banned_words: tuple[str, ...] = ()

    @property
    def sampled(self) -> bool:
        return self.temperature > 0


class Engine(ABC):
    """Generates token ids for requests, with a model loaded once per process."""

    name: str
    batch_size: int = 32
    """Requests per `generate` call when the user sets none: what keeps this engine busy."""

    @classmethod
    def default_batch_size(cls, model, *, slots: int) -> int:
        """`batch_size`, or what this engine makes of it for `model` (ModelSettings), whose
        prompts with their answers take up to `slots` tokens; known without loading anything."""
        return cls.batch_size

    @classmethod
    @abstractmethod
    def identity(cls, model, device) -> dict:
        """What of this engine decides an ad — its name and version, the device type and
        dtype it would run `model` in, the library versions whose numerics it depends on —
        known without loading anything. Part of every cache key and work fingerprint."""

    @classmethod
    @abstractmethod
    def load(cls, model, *, tokenizer, device, decoding: Decoding) -> Engine:
        """Load `model` (ModelSettings: base, adapter, dtype) for generating with `decoding`."""

    def reuse_prefix(self, ids: list[int]) -> None:
        """A hint: most prompts start with these token ids (the template's instruction). An
        engine may compute them once and reuse them; the answers must not change."""

    @abstractmethod
    def generate(self, requests: list[Request]) -> list[list[int]]:
        """The generated token ids of each request, in order (a stop id may end them)."""

    def close(self) -> None:
        """Let go of what `load` took (an engine process, GPU memory)."""


def _torch() -> type[Engine]:
    from adpulse_batch.engines.torch_engine import TorchEngine

    return TorchEngine


def _vllm() -> type[Engine]:
    from adpulse_batch.engines.vllm_engine import VllmEngine

    return VllmEngine


ENGINES: dict[str, Callable[[], type[Engine]]] = {"torch": _torch, "vllm": _vllm}


def engine_class(name: str) -> type[Engine]:
    return ENGINES[name]()
