"""Writing ads with an engine: batches, seeds, where an ad stops, and clean ad text.

This is the policy every engine shares, so that every engine writes ads the same way:
prompts are sorted by length and cut into batches; a sampled request draws from a seed made
of its prompt and variant number (so an ad does not depend on its batch); banned words are
kept out as tokens are chosen; every answer is cut at the first end-of-text id or where its
text starts a new `###` section, whatever the engine did there; the text is cleaned and
fitted to its channel; an answer that comes out empty is asked for once more, made to write
RETRY_MIN_TOKENS tokens before it may stop.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from adpulse_batch.banned import BannedWords
from adpulse_batch.channels import fit_ad
from adpulse_batch.engines import Decoding, Engine, Request, engine_class
from adpulse_batch.prompts import Prompt, PromptBuilder, one_line
from adpulse_batch.settings import GenerationSettings, ModelSettings

STOP_TEXT = "###"  # a new section of the template: the ad is over
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # SentencePiece byte fallback
RETRY_MIN_TOKENS = 8  # an empty answer's retry writes at least a short phrase


@dataclass(frozen=True)
class Generation:
    """One generated ad: its cleaned text and how many tokens the model produced for it."""

    text: str
    new_tokens: int
    finish: str  # "eos", "stop" (a new ### section) or "length" (hit --max-new-tokens)
    ids: tuple[int, ...] = ()  # the generated token ids, EOS excluded (benchmarks compare them)
    flags: tuple[str, ...] = ()  # what fitting it to its channel did: "too-long" (cut mid-sentence), "emoji" (removed)


class StopRule:
    """Where an answer ends: at any of the model's end-of-text `ids`, or at the token that
    completes `###` in the decoded text (however the tokenizer splits it: `###` may be one
    token, three, or byte-fallback tokens)."""

    def __init__(self, tokenizer, ids: frozenset[int]):
        self.tokenizer = tokenizer
        self.ids = ids
        # Only a token whose text holds a "#" can complete a "###"; the others need no decoding.
        vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        candidates = [i for i, token in enumerate(vocabulary) if token and ("#" in token or _BYTE_TOKEN.fullmatch(token))]
        self.triggers = frozenset(i for i in candidates if "#" in tokenizer.decode([i]))

    def stopped(self, tokens: list[int]) -> bool:
        """Whether the text of `tokens` holds the stop text (it ends in its last 8 tokens)."""
        return STOP_TEXT in self.tokenizer.decode(tokens[-8:])

    def cut(self, tokens: list[int]) -> tuple[list[int], str]:
        """The tokens of the ad and why it ended: its tokens up to the first stop (the stop
        text kept, for cleaning to remove; an end-of-text id dropped)."""
        for i, token in enumerate(tokens):
            if token in self.ids:
                return tokens[:i], "eos"
            if token in self.triggers and self.stopped(tokens[: i + 1]):
                return tokens[: i + 1], "stop"
        return tokens, "length"

    def decoding(self, settings: GenerationSettings, *, max_prompt_tokens: int, blocked: Callable[[list[int]], frozenset[int]] | None = None) -> Decoding:
        """What an engine is told for a job with `settings` (and banned words, `blocked`)."""
        return Decoding(
            max_prompt_tokens=max_prompt_tokens,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            stop_ids=self.ids,
            stop_text=STOP_TEXT,
            stop_triggers=self.triggers,
            stopped=self.stopped,
            blocked=blocked,
            banned_words=settings.banned_words,
        )


class Generator:
    """Writes ads for prompts with an engine; one per process, reused for every batch."""

    def __init__(self, engine: Engine, tokenizer, settings: GenerationSettings, stop: StopRule):
        self.engine, self.tokenizer, self.settings, self.stop = engine, tokenizer, settings, stop
        self.channel = settings.target_channel

    def generate(self, prompts: list[Prompt], *, batch_size: int, on_batch: Callable[[list[int]], None] | None = None) -> list[list[Generation]]:
        """The ads (one per variant) for each prompt, in the order of `prompts`.

        Prompts are sorted by length so each batch pads little; `on_batch` is called after
        each batch with the indices of the prompts it finished.
        """
        variants = self.settings.num_variants
        requests = [(i, k) for i in range(len(prompts)) for k in range(variants)]
        requests.sort(key=lambda r: -len(prompts[r[0]].ids))
        results: list[list[Generation | None]] = [[None] * variants for _ in prompts]
        for first in range(0, len(requests), batch_size):
            batch = requests[first : first + batch_size]
            asked = [Request(prompts[i].ids, self._seed(prompts[i].text, k)) for i, k in batch]
            ads = [self._ad(tokens) for tokens in self.engine.generate(asked)]
            empty = [n for n, ad in enumerate(ads) if not ad.text]
            if empty:
                again = self.engine.generate([replace(asked[n], min_new_tokens=RETRY_MIN_TOKENS) for n in empty])
                for n, tokens in zip(empty, again):
                    ads[n] = self._ad(tokens, earlier=ads[n].new_tokens)
            finished = []
            for (i, k), ad in zip(batch, ads):
                results[i][k] = ad
                if all(g is not None for g in results[i]):
                    finished.append(i)
            if on_batch is not None:
                on_batch(finished)
        return results

    def _ad(self, tokens: list[int], *, earlier: int = 0) -> Generation:
        """The ad of an answer; `earlier`: tokens an empty first answer took (they count too)."""
        kept, finish = self.stop.cut(list(tokens))
        text = clean_ad(self.tokenizer.decode(kept, skip_special_tokens=True), cut=finish == "length")
        flags = ()
        if self.channel is not None:
            fitted = fit_ad(text, self.channel)
            text, flags = fitted.text, ("too-long",) * fitted.cut + ("emoji",) * fitted.emoji_removed
        return Generation(text=text, new_tokens=earlier + len(kept) + (finish == "eos"), finish=finish, ids=tuple(kept), flags=flags)

    def _seed(self, text: str, variant: int) -> int | None:
        if not self.settings.sampled:
            return None
        digest = hashlib.sha256(f"{self.settings.seed}\0{variant}\0{text}".encode()).digest()
        return int.from_bytes(digest[:8], "little") >> 1


def load_generator(model: ModelSettings, builder: PromptBuilder, settings: GenerationSettings, *, device) -> Generator:
    """The engine `model.engine` loaded for `model` on `device`, with the prompts' shared
    prefix handed to it, behind a Generator."""
    from adpulse_batch.model import stop_ids

    stop = StopRule(builder.tokenizer, stop_ids(model, builder.tokenizer))
    blocked = None
    if settings.banned_words:
        from adpulse_batch.masking import BannedTokens

        blocked = BannedTokens(builder.tokenizer, BannedWords(settings.banned_words)).blocked
    decoding = stop.decoding(settings, max_prompt_tokens=builder.max_tokens, blocked=blocked)
    engine = engine_class(model.engine).load(model, tokenizer=builder.tokenizer, device=device, decoding=decoding)
    engine.reuse_prefix(builder.prefix_ids())
    return Generator(engine, builder.tokenizer, settings, stop)


_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*")


def clean_ad(text: str, *, cut: bool = False) -> str:
    """Ad text as written to the catalog: up to a new `###` section, without control
    characters or broken bytes, whitespace collapsed. When generation was `cut` by the token
    limit, an unfinished last sentence is dropped (kept when it is all there is)."""
    text = text.split(STOP_TEXT, 1)[0].replace("\ufffd", "")
    text = one_line(text)
    if cut:
        ends = list(_SENTENCE_END.finditer(text))
        if ends and any(ch.isalnum() for ch in text[ends[-1].end() :]):
            text = text[: ends[-1].end()]
    return text
