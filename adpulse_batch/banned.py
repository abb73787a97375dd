"""Banned words: the `--banned-words FILE` list, and finding its words and phrases in an ad.

The file holds one word or phrase a line, matched case-insensitively and as whole words:
`cheap` matches "Cheap" and "CHEAP!" but not "cheaper"; `free shipping` matches "Free
Shipping" and "free-shipping". Words are compared without their punctuation, so `don't`
matches "don’t". Blank lines and lines whose first character (after spaces) is `#` are
skipped. The file is UTF-8.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from adpulse_batch.errors import SettingsError

# A word: a run of letters and digits, in any script. Hyphens, apostrophes and every other
# character separate words. The ad flags use the same words.
WORD = re.compile(r"[^\W_]+")


def words_of(text: str) -> list[str]:
    """The words of `text`, case-folded (so "Straße" and "STRASSE" are the same word)."""
    return WORD.findall(text.casefold())


@dataclass(frozen=True)
class BannedWords:
    """Words and phrases an ad must not contain, in any case and punctuation: `"Free-Shipping!"`
    bans the words "free shipping". `phrases` keeps them as written, less those that repeat
    an earlier one."""

    phrases: tuple[str, ...] = ()
    _by_first_word: dict[str, list[tuple[tuple[str, ...], str]]] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        kept: list[str] = []
        index: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        seen: set[tuple[str, ...]] = set()
        for phrase in self.phrases:
            words = tuple(words_of(phrase))
            if not words:
                raise SettingsError(f"banned word {phrase!r} has no letters or digits; list whole words or phrases")
            if words not in seen:
                seen.add(words)
                kept.append(phrase)
                index.setdefault(words[0], []).append((words, phrase))
        object.__setattr__(self, "phrases", tuple(kept))
        object.__setattr__(self, "_by_first_word", index)

    def __bool__(self) -> bool:
        return bool(self.phrases)

    @property
    def fingerprint(self) -> str:
        """A sha256 of the words banned, whatever their order, casing or punctuation: for the ad cache's key."""
        words = sorted(" ".join(words_of(phrase)) for phrase in self.phrases)
        return hashlib.sha256("\n".join(words).encode()).hexdigest()

    def find(self, text: str) -> list[str]:
        """The banned phrases (as written) that `text` contains, in the order they first appear.

        >>> BannedWords(("cheap", "Free shipping")).find("Cheap shoes, FREE shipping!")
        ['cheap', 'Free shipping']
        """
        return self.find_in_words(words_of(text)) if self.phrases else []

    def find_in_words(self, words: list[str]) -> list[str]:
        """As `find`, for text already split by `words_of`."""
        if self._by_first_word.keys().isdisjoint(words):
            return []
        found: list[str] = []
        for start, word in enumerate(words):
            for phrase_words, phrase in self._by_first_word.get(word, ()):
                if phrase not in found and tuple(words[start : start + len(phrase_words)]) == phrase_words:
                    found.append(phrase)
        return found


def load_banned_words(path: str | Path) -> BannedWords:
    """Read a `--banned-words` file; a line that cannot be used is a SettingsError naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise SettingsError(f"--banned-words {path}: cannot read it ({error.strerror})") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    phrases = []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise SettingsError(f"--banned-words {path} line {number}: not UTF-8 text") from None
        if not line or line.startswith("#"):
            continue
        if not words_of(line):
            raise SettingsError(
                f"--banned-words {path} line {number}: {line!r} has no letters or digits; list whole words or phrases"
            )
        phrases.append(line)
    if not phrases:
        raise SettingsError(f"--banned-words {path} lists no words (only blank lines and # comments)")
    return BannedWords(tuple(phrases))
