"""Keeping banned words out of ads while they are generated: the tokens that would write one.

At each step of each row, a token is blocked when the ad's text with that token appended
would hold a banned word or phrase starting at a word boundary and ending in the token's
text, in any casing, however the tokenizer splits it. Text is compared as its words:
casefolded, every run of other characters one space (so "Free-Shipping" writes the phrase
"free shipping"). A word that merely starts with a banned word is blocked too — the model
cannot know yet whether "cheap" will become "cheaper" — so generation avoids a little more
than the whole-word `banned-word` flag catches afterwards. Tokens whose text is not whole
characters on their own (byte-fallback pieces of a multi-byte character) cannot be judged
one at a time and are not blocked: what they let through, the flag catches.
"""

from __future__ import annotations

import bisect
import re

from adpulse_batch.banned import BannedWords, words_of

_NOT_WORD = re.compile(r"[\W_]+")
# Enough trailing tokens to hold the longest phrase's partial text (tokens are at least a byte).
_TAIL_TOKENS = 48


def _normal(text: str) -> str:
    """Text as it is compared: casefolded, every run of non-word characters one space."""
    return _NOT_WORD.sub(" ", text.casefold())


class BannedTokens:
    """The token ids that would write a banned word next, for a tokenizer and a word list."""

    def __init__(self, tokenizer, banned: BannedWords):
        self.tokenizer = tokenizer
        self.phrases = sorted({" ".join(words_of(p)) for p in banned.phrases})
        self.longest_words = max(len(p.split()) for p in self.phrases)
        special = set(tokenizer.all_special_ids)
        # A token's own text, as it reads after a word (a lone decode would strip the
        # leading space SentencePiece tokenizers put on a word's first piece).
        anchor = tokenizer("a", add_special_tokens=False)["input_ids"][-1]
        alone = tokenizer.decode([anchor])
        texts = tokenizer.batch_decode([[anchor, i] for i in range(len(tokenizer))])
        pieces = [(_normal(t[len(alone) :]), i) for i, t in enumerate(texts) if i not in special and "\ufffd" not in t]
        self._sorted = sorted((piece, i) for piece, i in pieces if piece.strip())
        self._keys = [piece for piece, _ in self._sorted]
        self._cache: dict[str, frozenset[int]] = {}
        # Tokens that start a banned word after a space of their own (" cheap", and the rare
        # multi-word token "a cheap") are always blocked; tokens that start with one
        # ("cheap"), only where the ad's text is at a word boundary.
        inner = [(piece, i) for piece, i in pieces if " " in piece.strip()]
        self.always = frozenset().union(
            *(self._starting_with(f" {p}") for p in self.phrases),
            (i for piece, i in inner for p in self.phrases if f" {p}" in piece),
        )
        self.at_boundary = self.always.union(*(self._starting_with(p) for p in self.phrases))

    def blocked(self, tokens: list[int]) -> frozenset[int]:
        """The ids that must not follow `tokens` (the ad so far)."""
        # The ad's start is a word boundary, hence the leading space.
        text = _normal(" " + self.tokenizer.decode(tokens[-_TAIL_TOKENS:], skip_special_tokens=True))
        if text.endswith(" "):
            return self.at_boundary
        ids = set(self.always)
        # The partial text since each of the last few word boundaries may be the start of a phrase.
        starts = [m.end() for m in re.finditer(" ", text)][-self.longest_words :]
        for start in starts:
            written = text[start:]
            first = bisect.bisect_left(self.phrases, written)
            for phrase in self.phrases[first:]:
                if not phrase.startswith(written):
                    break
                if len(phrase) > len(written):
                    ids |= self._starting_with(phrase[len(written) :])
        return frozenset(ids)

    def _starting_with(self, rest: str) -> frozenset[int]:
        """Tokens whose text starts with `rest`: each would complete a phrase whose start is
        written. (A token that writes only part of `rest` is let through; the next one is
        judged then.)"""
        if rest not in self._cache:
            first = bisect.bisect_left(self._keys, rest)
            last = bisect.bisect_right(self._keys, rest + "\U0010ffff")
            self._cache[rest] = frozenset(i for _, i in self._sorted[first:last])
        return self._cache[rest]
