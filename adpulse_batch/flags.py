"""Ad flags: what an ad says that its row's input does not, and what else a reviewer should see.

`flag_ad` checks one ad against every input cell of its row (all columns, not only product
and description) and returns the codes of `FLAG_CODES` that apply, in that order. "In the
input" means: the same word appears in some cell, compared case-insensitively and by whole
words (`banned.WORD`: runs of letters and digits). The rules, in order:

- `ungrounded-number`: a number the input does not state. Digits are grounded when the input
  has the same digits as a word ("16" in "16 GB" or "16-inch") or the same value ("1,000"
  and "1000", "5.0" and "5"); number words ("three", "twenty-five", "a dozen") likewise, so
  "three" in the ad is grounded by "3" in the input and "3" by "three" (or "twenty five" by
  "twenty-five"). "one" alone is no number ("the one you need"). A percentage ("50%", "50
  percent", "fifty percent") needs a percentage of the same value in the input: "50% off" is
  not grounded by "50 ml", while a plain "50" is grounded by "50%". Digits glued after
  letters belong to a model code ("NX300h"), judged as a name, not a number.
- `ungrounded-color`: a colour word of `wordlists.COLOUR_GROUPS` that the input does not
  use; words of one group are one colour ("gray" is grounded by "grey").
- `ungrounded-name`: a model code (a word that starts with a letter and holds a digit:
  "NX300h", "X5"), anywhere, or a capitalised word in the middle of a sentence ("Zephyr
  Pro"), that is not an input word. A code is also grounded by two or three input words
  written together ("NX 300h" grounds "NX300h"). A sentence starts at the start of the ad
  and after . ! ? … : ; | • · – — 。！？ a spaced hyphen or an emoji. Not names: "I", shouted words
  of 4+ letters (those are `all-caps`), and the words of a Title Case sentence (every word
  capitalised, a short word such as "The" or "For" among them: `wordlists.TITLE_CASE_WORDS`)
  or of a sentence all in capitals (2+ words).
- `banned-word`: a word or phrase of the `--banned-words` list (see `banned`).
- `too-long`: the ad had to be cut mid-sentence to fit the channel (`channels.fit_ad`).
- `repeated-punctuation`: "!!", "??", "?!" and longer runs, or ‼ ⁇ ⁈ ⁉.
- `all-caps`: a word of 4+ letters, all capitals, that no input cell spells that way
  ("LED" is too short to shout; "NEW" too; "SALE" is shouting unless the input says SALE).
- `emoji`: the channel forbids emoji and the model wrote some (`channels.fit_ad` removes them).
- `duplicate`: the same ad as another product's in the run (`duplicates.DuplicateAds`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from adpulse_batch.banned import WORD, BannedWords
from adpulse_batch.duplicates import DuplicateAds
from adpulse_batch.graphemes import has_emoji
from adpulse_batch.wordlists import COLOUR_GROUPS, NOT_ALONE, NUMBER_WORDS, PERCENT_WORDS, TITLE_CASE_WORDS

# Every flag, in the order an ad's flags are listed, with what it means to a reviewer.
FLAG_MEANINGS: dict[str, str] = {
    "ungrounded-number": "states a number the input does not",
    "ungrounded-color": "names a colour the input does not",
    "ungrounded-name": "names a product, brand or model code the input does not",
    "banned-word": "contains a word or phrase of the banned-words list",
    "too-long": "had to be cut mid-sentence to fit the channel",
    "repeated-punctuation": "repeats punctuation (!!, ??)",
    "all-caps": "shouts a word of 4+ letters in capitals",
    "emoji": "had emoji the channel does not allow (removed)",
    "duplicate": "is the same ad as another product's in this run",
}
FLAG_CODES = tuple(FLAG_MEANINGS)

_COLOUR_GROUP_OF = {word: group for group in COLOUR_GROUPS for word in group}
_COLOUR_WORDS = frozenset(_COLOUR_GROUP_OF)
_NUMBER_WORD_SET = frozenset(NUMBER_WORDS)
_PERCENT_MARKERS = ("%", "percent", "per cent", "pct")

# A number in digits, not glued to a letter or digit before it ("300" of "NX300h" is a code's),
# with thousands separators or decimals, and a percent sign or word after it. (The lookahead
# first lets the engine skip every position that holds no digit.)
_NUMBER = re.compile(r"(?=\d)(?<![^\W_])(?<![^\W_][.,])((\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?)(\s?(?:%|percent\b|per cent\b|pct\b))?")
# Where a new sentence starts: after . ! ? … : ; | • · – — 。！？ a spaced hyphen, and an
# emoji (which ad copy uses as a full stop).
_SENTENCE_BREAK = re.compile(r"[.!?…:;|•·–—。！？]|[ \u00a0]-[ \u00a0]|[\u231a-\u2bff\U0001f000-\U0001faff]")
_REPEATED_PUNCTUATION = re.compile(r"[!?！？]{2,}|[‼⁇⁈⁉]")
# `bytes.translate` then `split` find the words `WORD` finds several times faster than the
# regex engine: every ASCII byte that is not a letter or digit becomes a space, and a
# sentence break a line break. Other tables tell at once whether an ASCII ad has a digit,
# or a run of four capitals that may be shouting.
_ASCII_SENTENCES = bytes(  # bytes of UTF-8 sequences (0x80 and up) are kept as they are
    c if c >= 0x80 or chr(c).isalnum() else ord("\n") if chr(c) in ".!?:;|" else ord(" ") for c in range(256)
)
_ASCII_CAPITALS = bytes(ord("U") if ord("A") <= c <= ord("Z") else ord(".") for c in range(256))
_NOT_DIGITS = bytes(c for c in range(256) if not ord("0") <= c <= ord("9"))
# Punctuation beyond ASCII, as UTF-8: sentence breaks become "|" (a break to the table above),
# the rest a space.
_UNICODE_PUNCTUATION = [(mark.encode(), b"|") for mark in "…•·–—。！？"] + [
    (mark.encode(), b" ") for mark in "’‘“”„‚«»‹›¡¿、，「」『』（）：；\u00a0"
]


@dataclass(frozen=True)
class FlagRules:
    """What a run checks besides the input: built once per run, shared by every row."""

    banned_words: BannedWords = field(default_factory=BannedWords)
    forbid_emoji: bool = False  # the channel allows no emoji (`Channel.allows_emoji` is False)


def flag_ad(
    rules: FlagRules,
    cells: Mapping | Iterable,
    ad: str,
    *,
    cut: bool = False,
    emoji_removed: bool = False,
    duplicate: bool = False,
) -> list[str]:
    """The flag codes of one ad, in `FLAG_CODES` order; empty when nothing is wrong.

    `cells` is every input cell of the row (a dict of column to value, or the values alone):
    text, numbers, None, NaN, bytes. `cut` and `emoji_removed` say what fitting the ad to its
    channel did (`channels.FittedAd`), `duplicate` what `DuplicateAds` found.

    >>> flag_ad(FlagRules(), {"product": "Lexus NX", "colour": "grey"}, "The black Lexus NX300h!!")
    ['ungrounded-color', 'ungrounded-name', 'repeated-punctuation']
    """
    source = _Input(cells)
    ascii_ad = ad.isascii()
    encoded = ad.encode()
    sentences = _fast_sentences(encoded, ascii_ad)
    if sentences is not None:
        folded = ad.lower() if ascii_ad else ad.casefold()
        words = [word.lower() if ascii_ad else word.casefold() for tokens in sentences for word in tokens]
        has_emoji_now = False  # an emoji is not a letter: such an ad takes the other path
    else:
        sentences = [WORD.findall(sentence) for sentence in _SENTENCE_BREAK.split(ad)]
        folded = ad.casefold()
        words = WORD.findall(folded)
        has_emoji_now = rules.forbid_emoji and has_emoji(ad)
    if ascii_ad:
        has_digit = bool(encoded.translate(None, _NOT_DIGITS))
        may_shout = b"UUUU" in encoded.translate(_ASCII_CAPITALS)
        repeats_punctuation = "!!" in ad or "??" in ad or "?!" in ad or "!?" in ad
    else:
        has_digit = not "".join(words).isalpha()
        may_shout = True
        repeats_punctuation = _REPEATED_PUNCTUATION.search(ad) is not None
    mixed = [word for word in words if not word.isalpha()] if has_digit else []  # "16", "16gb", "nx300h"
    flags = []
    if _has_ungrounded_number(folded, words, mixed, source):
        flags.append("ungrounded-number")
    if not _COLOUR_WORDS.isdisjoint(words) and any(
        not any(map(source.has_word, _COLOUR_GROUP_OF[colour])) for colour in _COLOUR_WORDS.intersection(words)
    ):
        flags.append("ungrounded-color")
    if _has_ungrounded_code(mixed, source) or _has_ungrounded_name(sentences, source):
        flags.append("ungrounded-name")
    if rules.banned_words and rules.banned_words.find_in_words(words):
        flags.append("banned-word")
    if cut:
        flags.append("too-long")
    if repeats_punctuation:
        flags.append("repeated-punctuation")
    if may_shout and any(
        _is_shouted(token) and not source.has_exact_word(token) for tokens in sentences for token in tokens if token[0].isupper()
    ):
        flags.append("all-caps")
    if rules.forbid_emoji and (emoji_removed or has_emoji_now):
        flags.append("emoji")
    if duplicate:
        flags.append("duplicate")
    return flags


def _fast_sentences(encoded: bytes, ascii_ad: bool) -> list[list[str]] | None:
    """The ad's sentences, each as its words as written, cut by `bytes.translate` and `split`
    several times faster than by the regex engine; None for text that holds a character
    neither a letter, digit, space nor known punctuation (an emoji, a rare symbol), which the
    regex engine must cut."""
    if not ascii_ad:
        for character, replacement in _UNICODE_PUNCTUATION:
            encoded = encoded.replace(character, replacement)
    marked = encoded.replace(b" - ", b" | ").translate(_ASCII_SENTENCES).decode()
    if not ascii_ad and not "".join(marked.split()).isalnum():
        return None
    return [sentence.split() for sentence in marked.split("\n")]


class _Input:
    """The input cells of one row as the rules compare them. Words are looked up by searching
    the text (a few look-ups an ad cost less than splitting every cell into words); cells
    that are not text (numbers, lists), the input's numbers and its list of words are
    worked out only for an ad that needs them."""

    def __init__(self, cells: Mapping | Iterable):
        values = cells.values() if isinstance(cells, Mapping) else cells
        texts = []
        self._others = []
        for value in values:
            (texts if type(value) is str else self._others).append(value)
        self._text = "\n".join(texts)
        self._folded = self._text.casefold()
        self._numbers: tuple[set[str], set[str]] | None = None
        self._words: list[str] | None = None

    @property
    def text(self) -> str:
        """Every input cell as text, one a line (None and NaN empty)."""
        self._add_others()
        return self._text

    @property
    def folded(self) -> str:
        self._add_others()
        return self._folded

    def _add_others(self) -> None:
        if self._others:
            self._text = "\n".join([self._text, *map(_cell_text, self._others)])
            self._folded = self._text.casefold()
            self._others = []

    def has_word(self, folded_word: str) -> bool:
        """Whether a case-folded word is a word of some input cell."""
        return _has_word(self._folded, folded_word) or (bool(self._others) and _has_word(self.folded, folded_word))

    def has_exact_word(self, word: str) -> bool:
        """Whether some input cell writes `word` so, case included."""
        return _has_word(self._text, word) or (bool(self._others) and _has_word(self.text, word))

    @property
    def numbers(self) -> tuple[set[str], set[str]]:
        """(every number the input writes in digits, those it writes as percentages), as values."""
        if self._numbers is None:
            plain: set[str] = set()
            percents: set[str] = set()
            for percent, values, _ in _number_claims(self.folded, ()):
                plain.update(values)
                if percent:
                    percents.update(values)
            self._numbers = (plain, percents)
        return self._numbers

    def spells(self, value: str) -> bool:
        """Whether the input writes `value` in words ("three" for 3, "twenty five" for 25)."""
        return any(all(map(self.has_word, words)) for words in _SPELLINGS.get(value, ()))

    def joins(self, code: str) -> bool:
        """Whether two or three consecutive input words make `code` written together
        ("nx 300h" and "nx-300h" make "nx300h")."""
        if self._words is None:
            self._words = WORD.findall(self.folded)
        words = self._words
        for index, word in enumerate(words[:-1]):
            if code.startswith(word) and len(word) < len(code):
                rest = code[len(word) :]
                after = words[index + 1]
                if rest == after or (rest.startswith(after) and index + 2 < len(words) and rest[len(after) :] == words[index + 2]):
                    return True
        return False


def _has_word(text: str, word: str) -> bool:
    """Whether `word` (letters and digits) occurs in `text` as a whole word."""
    start = text.find(word)
    while start >= 0:
        end = start + len(word)
        if not text[start - 1 : start].isalnum() and not text[end : end + 1].isalnum():
            return True
        start = text.find(word, start + 1)
    return False


def _cell_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)  # numbers, booleans, and Parquet lists and structs as their text


def _has_ungrounded_number(folded: str, words: list[str], mixed: list[str], source: _Input) -> bool:
    """`mixed`: the ad's words that are not all letters (numbers, "16gb", model codes)."""
    if not mixed and _NUMBER_WORD_SET.isdisjoint(words):
        return False
    if not any(marker in folded for marker in _PERCENT_MARKERS):  # the common case, quickly
        if all(map(source.has_word, mixed)) and all(map(source.has_word, _NUMBER_WORD_SET.intersection(words))):
            return False
    for percent, values, written in _number_claims(folded, words):
        if percent:
            if values[0] in source.numbers[1] or (source.spells(values[0]) and source.has_word("percent")):
                continue
        elif all(map(source.has_word, WORD.findall(written))):
            continue  # as the input writes it ("16" of "16 GB", "three")
        else:
            known = source.numbers[0]
            if values[0] in known or source.spells(values[0]):
                continue
            if len(values) > 2 and all(value in known or source.spells(value) for value in values[1:]):
                continue
        return True
    return False


def _number_claims(folded: str, words: list[str] | tuple) -> list[tuple[bool, tuple[str, ...], str]]:
    """The numbers case-folded text states, each as (whether a percentage, its values, how it
    is written). The values are the number's value, then for number words written as a run
    ("twenty five") each word's own value, so that a run the input states word by word is
    grounded too."""
    claims = []
    for written, whole, decimals, percent in _NUMBER.findall(folded):
        value = whole.replace(",", "").lstrip("0") or "0"
        decimals = decimals.rstrip("0")
        claims.append((bool(percent), (f"{value}.{decimals}" if decimals else value,), written))
    if _NUMBER_WORD_SET.isdisjoint(words):
        return claims
    positions = [index for index, word in enumerate(words) if word in _NUMBER_WORD_SET]
    runs: list[list[int]] = []
    for index in positions:  # consecutive number words are one number: "twenty five"
        if runs and runs[-1][-1] == index - 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    for run_positions in runs:
        run = [words[index] for index in run_positions]
        if len(run) == 1 and run[0] in NOT_ALONE:
            continue
        after = run_positions[-1] + 1
        percent = after < len(words) and (
            words[after] in PERCENT_WORDS or (words[after] == "per" and words[after + 1 : after + 2] == ["cent"])
        )
        values = (str(_value_of(run)),) + tuple(str(NUMBER_WORDS[word]) for word in run if word not in NOT_ALONE)
        claims.append((percent, values, " ".join(run)))
    return claims


def _value_of(run: list[str]) -> int:
    """The value of consecutive number words: "twenty five" 25, "two hundred" 200, "three thousand" 3000."""
    total = current = 0
    for word in run:
        value = NUMBER_WORDS[word]
        if value == 100:
            current = (current or 1) * 100
        elif value >= 1000:
            total += (current or 1) * value
            current = 0
        else:
            current += value
    return total + current


def _spellings() -> dict[str, list[tuple[str, ...]]]:
    """Value -> the ways to write it in number words, up to 99 ("25": [("twenty", "five")])."""
    units = {value: word for word, value in NUMBER_WORDS.items() if value < 10 and word not in NOT_ALONE}
    spellings: dict[str, list[tuple[str, ...]]] = {}
    for word, value in NUMBER_WORDS.items():
        if word not in NOT_ALONE:
            spellings.setdefault(str(value), []).append((word,))
    for tens in range(20, 100, 10):
        tens_word = next(word for word, value in NUMBER_WORDS.items() if value == tens)
        spellings[str(tens + 1)] = [(tens_word, "one")]
        for unit, unit_word in units.items():
            if unit > 1:
                spellings[str(tens + unit)] = [(tens_word, unit_word)]
    return spellings


_SPELLINGS = _spellings()


def _has_ungrounded_code(mixed: list[str], source: _Input) -> bool:
    """Whether a model code of the ad (a case-folded word with a letter first and a digit later) is not in the input."""
    return any(word[0].isalpha() and not source.has_word(word) and not source.joins(word) for word in mixed)


def _has_ungrounded_name(sentences: list[list[str]], source: _Input) -> bool:
    """Whether a capitalised word after the first of a sentence is not in the input, unless
    the sentence is headline style ("Shop The Best Mugs") or shouted ("BUY NOW"), which
    capitalise every word."""
    for tokens in sentences:
        names = [
            token for token in tokens[1:]
            if token[0].isupper() and token.isalpha() and token != "I" and not _is_shouted(token)
            and not source.has_word(token.casefold())
        ]
        if names and not _capitalises_every_word(tokens):
            return True
    return False


def _capitalises_every_word(tokens: list[str]) -> bool:
    lettered = [token for token in tokens if token[0].isalpha()]
    if len(lettered) >= 2 and all(token.isupper() for token in lettered):
        return True
    return all(token[0].isupper() for token in lettered) and any(token.casefold() in TITLE_CASE_WORDS for token in lettered[1:])


def _is_shouted(word: str) -> bool:
    return len(word) >= 4 and word.isupper() and word.isalpha()


class AdFlagger:
    """The flags of the ads of a run: every ad registers first (for `duplicate`, which
    compares the ads of all rows), then each gets its flags, from its row's cells and what
    fitting it to its channel raised. Without `duplicates`, nothing registers and no ad is
    a duplicate (a batch function sees only its batch)."""

    def __init__(self, rules: FlagRules, variants: int = 1, *, duplicates: bool = True):
        self.rules = rules
        self.duplicates = [DuplicateAds() for _ in range(variants)] if duplicates else None

    def register(self, row: int, variant: int, ad: str, product: str, description: str) -> None:
        self.duplicates[variant].add(row, ad, product, description)

    def flags(self, row: int, variant: int, cells: Mapping | Iterable, ad: str, fit: str) -> str:
        """The flags of one registered ad, comma-separated; `fit`: the comma-separated flags
        fitting it raised (`too-long`, `emoji`). An empty ad has none (its status says why)."""
        if not ad:
            return ""
        raised = fit.split(",")
        found = flag_ad(
            self.rules, cells, ad, cut="too-long" in raised, emoji_removed="emoji" in raised,
            duplicate=self.duplicates is not None and self.duplicates[variant].is_duplicate(row),
        )  # fmt: skip
        return ",".join(found)
