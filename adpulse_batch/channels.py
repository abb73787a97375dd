"""Channels: where an ad goes (`--channel NAME`), its length limit, and fitting an ad to it.

Lengths are counted as people count characters (`graphemes.count_characters`): an emoji is
one, an accented letter is one. In the Google Ads presets a double-width character (Chinese,
Japanese, Korean) counts two, as Google Ads counts it (a 30-character headline holds 15 of
them); elsewhere it counts one.

An ad longer than its limit is shortened, preferring, within the limit:
1. the end of its last complete sentence that fits (. ! ? … and 。！？), if that keeps at
   least half the limit;
2. else the end of its last complete phrase (before , ; : 、， or a dash), if that keeps at
   least half the limit;
3. else its last complete word;
4. else (one word longer than the limit) the first characters that fit.
It "had to be cut" (the `too-long` flag) when it ends anywhere but the end of a sentence:
dropping whole sentences leaves a complete ad. Nothing is appended (no "…"): it would take
a character of the limit and most channels reject or reword it anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from adpulse_batch.errors import SettingsError
from adpulse_batch.graphemes import character_width, iter_graphemes, remove_emoji


@dataclass(frozen=True)
class Channel:
    """Where an ad goes: its limit in characters and what it allows."""

    name: str
    max_chars: int
    allows_emoji: bool = True
    double_width: bool = False  # East Asian wide characters count two

    def __post_init__(self):
        if self.max_chars < 1:
            raise SettingsError(f"--max-chars must be at least 1 (got {self.max_chars})")


CHANNELS: dict[str, Channel] = {
    channel.name: channel
    for channel in (
        Channel("google-ads-headline", 30, double_width=True),
        Channel("google-ads-description", 90, double_width=True),
        Channel("merchant-title", 150),
        Channel("meta-primary-text", 125),
        Channel("meta-headline", 40),
        Channel("amazon-title", 200, allows_emoji=False),
    )
}


def find_channel(name: str | None = None, *, max_chars: int | None = None) -> Channel | None:
    """The channel of `--channel NAME`, its limit replaced by `--max-chars` when given; a
    channel of that limit alone for `--max-chars` without `--channel`; None for neither."""
    if name is None:
        return None if max_chars is None else Channel("custom", max_chars)
    channel = CHANNELS.get(name)
    if channel is None:
        raise SettingsError(f"--channel {name}: no such channel; use one of {', '.join(CHANNELS)}")
    return channel if max_chars is None else replace(channel, max_chars=max_chars)


@dataclass(frozen=True)
class FittedAd:
    """An ad as its channel takes it, and what fitting it changed."""

    text: str
    cut: bool = False  # shortened to end mid-sentence: the `too-long` flag
    emoji_removed: bool = False  # the channel allows no emoji and the ad had some: the `emoji` flag


def fit_ad(text: str, channel: Channel) -> FittedAd:
    """`text` fitted to `channel`: emoji removed where it allows none, then shortened to its limit.

    >>> fit_ad("Soft tee. Made to last, in five colours.", CHANNELS["google-ads-headline"])
    FittedAd(text='Soft tee. Made to last', cut=True, emoji_removed=False)
    """
    emoji_removed = False
    if not channel.allows_emoji:
        without = remove_emoji(text)
        emoji_removed = without != text
        text = without
    fitted, cut = fit_to_length(text, channel.max_chars, double_width=channel.double_width)
    return FittedAd(fitted, cut, emoji_removed)


# A sentence ends at . ! ? … followed by a space or the end (not "3.5"), closing quotes or
# brackets included; a CJK full stop needs no space after it.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*(?=\s|$)|[。！？]+[」』”’）]*")
# A phrase ends before , ; : followed by a space, before a CJK comma, or before a dash.
_PHRASE_END = re.compile(r"[,;:](?=\s)|[、，；：]|\s+[-–—]\s|[–—]")
_WORD_END = re.compile(r"\s+")
_TRAILING = " ,;:-–—"


def fit_to_length(text: str, max_chars: int, *, double_width: bool = False) -> tuple[str, bool]:
    """`text` shortened to at most `max_chars` characters as the module docstring says, and
    whether it had to be cut mid-sentence. Text within the limit comes back unchanged."""
    if len(text) <= max_chars and not double_width:
        return text, False  # code points are never fewer than characters
    if text.isascii():  # one code point, one character: no clusters to find
        if len(text) <= max_chars:
            return text, False
        limit = max_chars
        width_at = range(max_chars + 1)
    else:
        width_at = {0: 0}  # code-point offset of each cluster boundary within the limit -> characters before it
        limit = width = 0
        for cluster in iter_graphemes(text):  # only as far as the limit
            width += character_width(cluster) if double_width else 1
            if width > max_chars:
                break
            limit += len(cluster)
            width_at[limit] = width
        else:
            return text, False
    # Only the text up to the limit can hold an ending; two characters more show whether
    # a full stop or comma there is followed by a space.
    head = text[: limit + 2]
    sentence_ends = {m.end() for m in _SENTENCE_END.finditer(head) if m.end() <= limit and m.end() in width_at}
    half = max_chars / 2
    for ends in (sentence_ends, [m.start() for m in _PHRASE_END.finditer(head)]):
        kept = [end for end in ends if end <= limit and end in width_at and width_at[end] >= half]
        if kept:
            return _ending(text, max(kept), sentence_ends)
    words = [m.start() for m in _WORD_END.finditer(head) if 0 < m.start() <= limit]
    if words and text[: max(words)].rstrip(_TRAILING):
        return _ending(text, max(words), sentence_ends)
    return text[:limit].rstrip(), True


def _ending(text: str, end: int, sentence_ends: set[int]) -> tuple[str, bool]:
    kept = text[:end].rstrip(_TRAILING) if end not in sentence_ends else text[:end]
    return kept, end not in sentence_ends
