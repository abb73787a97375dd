"""Characters as people count them: grapheme clusters, their width, and which ones are emoji.

A channel's "30 characters" are what a reader sees: an emoji is one, even a family joined by
zero-width joiners, a flag or a skin-tone sequence; a letter with combining accents is one.
Python counts code points, so this module splits text into extended grapheme clusters
(Unicode's UAX #29 rules, Indic conjuncts included) with `unicodedata` alone. The two
properties `unicodedata` lacks are approximated: a pictograph (which a zero-width joiner
joins to the one before) is a character of the emoji table below or any other symbol
(category So); an Indic consonant is a consonant letter of the six scripts whose virama
links. Python 3.11's `unicodedata` is Unicode 14.0: a mark added since counts on its own.
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from collections.abc import Iterator

# Grapheme break classes (UAX #29 table 2), as far as this module tells them apart.
_OTHER, _CR, _LF, _CONTROL, _EXTEND, _ZWJ, _SPACING_MARK, _REGIONAL, _L, _V, _T, _LV, _LVT, _PICTO, _CONSONANT, _PREPEND = range(16)

_ZWJ_CP = 0x200D
_EMOJI_STYLE = "\ufe0f"  # variation selector 16: "show the character before me as an emoji"
_KEYCAP = "\u20e3"
# The viramas that join two consonants into one conjunct (Unicode's InCB=Linker: Devanagari,
# Bengali, Gujarati, Oriya, Telugu, Malayalam); their scripts' letters are the consonants.
_LINKERS = frozenset("\u094d\u09cd\u0acd\u0b4d\u0c4d\u0d4d")
# Signs written before the character they belong to (Grapheme_Cluster_Break=Prepend).
_PREPENDS = frozenset(
    [*range(0x0600, 0x0606), 0x06DD, 0x070F, 0x0890, 0x0891, 0x08E2, 0x0D4E, 0x110BD, 0x110CD, 0x111C2, 0x111C3,
     0x1193F, 0x11941, 0x11A3A, *range(0x11A84, 0x11A8A), 0x11D46, 0x11F02]
)


def split_graphemes(text: str) -> list[str]:
    """`text` as the clusters a reader sees as one character each.

    >>> split_graphemes("👍🏽 🇫🇷 ok")
    ['👍🏽', ' ', '🇫🇷', ' ', 'o', 'k']
    """
    if text.isascii():
        return _split_ascii(text)
    if not _joiners().search(text):
        return list(text)  # no character joins another: each is a cluster
    return list(iter_graphemes(text))


def iter_graphemes(text: str) -> Iterator[str]:
    """The clusters of `text` one by one, for a caller that may stop early."""
    if not text:
        return
    start = 0
    previous = _break_class(text[0])
    regional_run = 1 if previous == _REGIONAL else 0
    after_picto = previous == _PICTO  # a pictograph, then only Extend so far (rule GB11)
    picto_zwj = False
    after_consonant = previous == _CONSONANT  # a consonant, then only Extend or ZWJ so far (GB9c)
    linked = False  # ... and one of them a linker
    for index in range(1, len(text)):
        ch = text[index]
        if previous == _OTHER and " " <= ch <= "~":  # printable ASCII after a plain character: the usual case
            yield text[start:index]
            start = index
            regional_run, picto_zwj, after_picto, after_consonant, linked = 0, False, False, False, False
            continue
        current = _break_class(ch)
        if not (_joins(previous, current, regional_run, picto_zwj) or (linked and current == _CONSONANT)):
            yield text[start:index]
            start = index
        regional_run = regional_run + 1 if current == _REGIONAL else 0
        picto_zwj = after_picto and current == _ZWJ
        after_picto = current == _PICTO or (after_picto and current == _EXTEND)
        linked = after_consonant and current in (_EXTEND, _ZWJ) and (linked or ch in _LINKERS)
        after_consonant = current == _CONSONANT or (after_consonant and current in (_EXTEND, _ZWJ))
        previous = current
    yield text[start:]


def count_characters(text: str, *, double_width: bool = False) -> int:
    """How many characters a reader counts in `text`; with `double_width`, an East Asian wide
    or fullwidth character (Chinese, Japanese, Korean) counts two, as Google Ads counts them.
    An emoji always counts one.

    >>> count_characters("cafe\u0301 👨‍👩‍👧"), len("cafe\u0301 👨‍👩‍👧")
    (6, 11)
    """
    if text.isascii():
        return len(text) - text.count("\r\n")
    if not double_width and not _joiners().search(text):
        return len(text)
    clusters = split_graphemes(text)
    if not double_width:
        return len(clusters)
    return sum(character_width(cluster) for cluster in clusters)


def character_width(cluster: str) -> int:
    """2 for an East Asian wide or fullwidth character that is not an emoji, else 1."""
    if unicodedata.east_asian_width(cluster[0]) in ("W", "F") and not is_emoji(cluster):
        return 2
    return 1


def is_emoji(cluster: str) -> bool:
    """Whether one grapheme cluster shows as an emoji: it holds a character drawn as an
    emoji by default (Unicode's Emoji_Presentation; in the supplementary planes every
    pictograph), a keycap, or a character asked to look like one (variation selector 16).
    A text-style symbol alone (©, ™, ★, ✓, ♀) is not one."""
    if _EMOJI_STYLE in cluster or _KEYCAP in cluster:
        return True
    return any(_in_emoji_ranges(ord(ch)) for ch in cluster if ord(ch) >= 0x231A)


def has_emoji(text: str) -> bool:
    """Whether any character of `text` is an emoji."""
    # A cluster is an emoji when one of its characters is. The regex finds BMP emoji and any
    # character above the BMP (a bitmap class, fast); the table decides for the latter.
    for match in _MAYBE_EMOJI.finditer(text):
        cp = ord(match.group())
        if cp < 0x10000 or _in_emoji_ranges(cp):
            return True
    return False


def remove_emoji(text: str) -> str:
    """`text` without its emoji; the spaces around a removed emoji become one, or none before
    punctuation and at either end (`"Hot 🔥 deal 🚀!"` becomes `"Hot deal!"`)."""
    if not has_emoji(text):
        return text
    pieces: list[str] = []
    removed = False
    for cluster in split_graphemes(text):
        if is_emoji(cluster):
            removed = True
            continue
        if removed:
            if cluster.isspace():
                continue
            if pieces and pieces[-1].isspace() and cluster in _PUNCTUATION:
                pieces.pop()
            elif pieces and not pieces[-1].isspace() and cluster not in _PUNCTUATION:
                pieces.append(" ")  # "Hot🔥deal" -> "Hot deal"
            removed = False
        pieces.append(cluster)
    return "".join(pieces).strip()


_PUNCTUATION = frozenset(".,!?;:…)]}\"'”’")


@functools.cache
def _joiners() -> re.Pattern:
    """A character that can join a neighbour into one cluster (marks, joiners, tags, Hangul
    jamo, prepended signs, CR), or any above the BMP (emoji, skin tones, flags). Text without
    one has one cluster per character, and most non-ASCII ad text (accents, dashes, curly
    quotes) has none. Built on first use, in about 15 ms."""
    bmp = [cp for cp in range(0x0300, 0x10000) if unicodedata.category(chr(cp)) in ("Mn", "Me", "Mc")]
    bmp += [0x0D, 0x200C, _ZWJ_CP, 0xFF9E, 0xFF9F, *range(0x1100, 0x1200), *range(0xA960, 0xA980), *range(0xD7B0, 0xD800)]
    bmp += [cp for cp in _PREPENDS if cp < 0x10000]
    # A class of BMP characters only is a bitmap to the regex engine; a range above it would
    # make it test every range for every character (30 times slower here).
    return re.compile(_character_class(sorted(set(bmp))) + "|[\U00010000-\U0010ffff]")


def _character_class(code_points) -> str:
    ranges: list[list[int]] = []
    for cp in code_points:
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "[" + "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges) + "]"


def _split_ascii(text: str) -> list[str]:
    if "\r\n" not in text:
        return list(text)
    clusters = []
    for index, ch in enumerate(text):
        if ch == "\n" and index and text[index - 1] == "\r":
            clusters[-1] = "\r\n"
        else:
            clusters.append(ch)
    return clusters


def _joins(previous: int, current: int, regional_run: int, picto_zwj: bool) -> bool:
    """Whether no cluster boundary falls between two characters (UAX #29 rules GB3-GB13)."""
    if previous == _CR:
        return current == _LF  # GB3, GB4
    if previous in (_LF, _CONTROL) or current in (_CR, _LF, _CONTROL):
        return False  # GB4, GB5
    if previous == _L and current in (_L, _V, _LV, _LVT):
        return True  # GB6
    if previous in (_LV, _V) and current in (_V, _T):
        return True  # GB7
    if previous in (_LVT, _T) and current == _T:
        return True  # GB8
    if current in (_EXTEND, _ZWJ, _SPACING_MARK) or previous == _PREPEND:
        return True  # GB9, GB9a, GB9b
    if picto_zwj and current == _PICTO:
        return True  # GB11: pictograph ZWJ pictograph
    if previous == _REGIONAL and current == _REGIONAL:
        return regional_run % 2 == 1  # GB12, GB13: flags are pairs
    return False


def _break_class(ch: str) -> int:
    cp = ord(ch)
    if cp < 0x7F:
        if cp >= 0x20:
            return _OTHER
        return _CR if cp == 0x0D else _LF if cp == 0x0A else _CONTROL
    if cp == _ZWJ_CP:
        return _ZWJ
    if 0x1F1E6 <= cp <= 0x1F1FF:
        return _REGIONAL
    if 0x1F3FB <= cp <= 0x1F3FF or 0xE0020 <= cp <= 0xE007F or cp in (0x200C, 0xFF9E, 0xFF9F):
        return _EXTEND  # skin tones, flag tags, ZWNJ, half-width katakana sound marks
    if cp in _PREPENDS:
        return _PREPEND
    if 0x1100 <= cp <= 0x11FF or 0xA960 <= cp <= 0xA97F or 0xD7B0 <= cp <= 0xD7FF or 0xAC00 <= cp <= 0xD7A3:
        return _hangul_class(cp)
    category = unicodedata.category(ch)
    if category in ("Mn", "Me"):
        return _EXTEND
    if category == "Mc":
        return _SPACING_MARK
    if category in ("Cc", "Cf", "Zl", "Zp"):
        return _CONTROL
    if category == "So" or _in_emoji_ranges(cp):
        return _PICTO  # Extended_Pictographic, near enough: it only matters after a ZWJ
    if category == "Lo" and 0x0900 <= cp <= 0x0D7F and chr((cp & ~0x7F) + 0x4D) in _LINKERS and _is_consonant_offset(cp & 0x7F):
        return _CONSONANT  # a consonant of a script whose virama links (its block's U+xx4D)
    return _OTHER


def _is_consonant_offset(offset: int) -> bool:
    # These scripts share one layout (from ISCII): consonants at 15-3A, nukta forms at 58-5F,
    # extra consonants at 78-7F; independent vowels (04-14) are letters but never join.
    return 0x15 <= offset <= 0x3A or 0x58 <= offset <= 0x5F or 0x78 <= offset <= 0x7F


def _hangul_class(cp: int) -> int:
    if 0xAC00 <= cp <= 0xD7A3:
        return _LV if (cp - 0xAC00) % 28 == 0 else _LVT
    if cp <= 0x115F or 0xA960 <= cp <= 0xA97F:
        return _L
    if cp <= 0x11A7 or 0xD7B0 <= cp <= 0xD7C6:
        return _V
    return _T


def _in_emoji_ranges(cp: int) -> bool:
    index = bisect.bisect_right(_EMOJI_STARTS, cp) - 1
    return index >= 0 and cp <= _EMOJI_RANGES[index][1]


# Code points drawn as emoji: in the Basic Multilingual Plane those with Unicode's
# Emoji_Presentation property (emoji-data.txt); above it every Extended_Pictographic one
# (reserved code points included, so emoji newer than this table still count) and the
# regional indicators that make flags. Text-default symbols (©, ®, ™, ❤, ☀) count only
# when followed by variation selector 16, which is how they are written as emoji.
_EMOJI_RANGES = (
    (0x231A, 0x231B), (0x23E9, 0x23EC), (0x23F0, 0x23F0), (0x23F3, 0x23F3), (0x25FD, 0x25FE),
    (0x2614, 0x2615), (0x2648, 0x2653), (0x267F, 0x267F), (0x2693, 0x2693), (0x26A1, 0x26A1),
    (0x26AA, 0x26AB), (0x26BD, 0x26BE), (0x26C4, 0x26C5), (0x26CE, 0x26CE), (0x26D4, 0x26D4),
    (0x26EA, 0x26EA), (0x26F2, 0x26F3), (0x26F5, 0x26F5), (0x26FA, 0x26FA), (0x26FD, 0x26FD),
    (0x2705, 0x2705), (0x270A, 0x270B), (0x2728, 0x2728), (0x274C, 0x274C), (0x274E, 0x274E),
    (0x2753, 0x2755), (0x2757, 0x2757), (0x2795, 0x2797), (0x27B0, 0x27B0), (0x27BF, 0x27BF),
    (0x2B1B, 0x2B1C), (0x2B50, 0x2B50), (0x2B55, 0x2B55), (0x1F004, 0x1F004), (0x1F02C, 0x1F02F),
    (0x1F094, 0x1F09F), (0x1F0AF, 0x1F0B0), (0x1F0C0, 0x1F0C0), (0x1F0CF, 0x1F0D0),
    (0x1F0F6, 0x1F0FF), (0x1F170, 0x1F171), (0x1F17E, 0x1F17F), (0x1F18E, 0x1F18E),
    (0x1F191, 0x1F19A), (0x1F1AF, 0x1F1FF), (0x1F201, 0x1F20F), (0x1F21A, 0x1F21A),
    (0x1F22F, 0x1F22F), (0x1F232, 0x1F23A), (0x1F23C, 0x1F23F), (0x1F249, 0x1F25F),
    (0x1F266, 0x1F321), (0x1F324, 0x1F393), (0x1F396, 0x1F397), (0x1F399, 0x1F39B),
    (0x1F39E, 0x1F3F0), (0x1F3F3, 0x1F3F5), (0x1F3F7, 0x1F4FD), (0x1F4FF, 0x1F53D),
    (0x1F549, 0x1F54E), (0x1F550, 0x1F567), (0x1F56F, 0x1F570), (0x1F573, 0x1F57A),
    (0x1F587, 0x1F587), (0x1F58A, 0x1F58D), (0x1F590, 0x1F590), (0x1F595, 0x1F596),
    (0x1F5A4, 0x1F5A5), (0x1F5A8, 0x1F5A8), (0x1F5B1, 0x1F5B2), (0x1F5BC, 0x1F5BC),
    (0x1F5C2, 0x1F5C4), (0x1F5D1, 0x1F5D3), (0x1F5DC, 0x1F5DE), (0x1F5E1, 0x1F5E1),
    (0x1F5E3, 0x1F5E3), (0x1F5E8, 0x1F5E8), (0x1F5EF, 0x1F5EF), (0x1F5F3, 0x1F5F3),
    (0x1F5FA, 0x1F64F), (0x1F680, 0x1F6C5), (0x1F6CB, 0x1F6D2), (0x1F6D5, 0x1F6E5),
    (0x1F6E9, 0x1F6E9), (0x1F6EB, 0x1F6F0), (0x1F6F3, 0x1F6FF), (0x1F7DC, 0x1F7F0),
    (0x1F80C, 0x1F80F), (0x1F848, 0x1F84F), (0x1F85A, 0x1F85F), (0x1F888, 0x1F88F),
    (0x1F8AE, 0x1F8AF), (0x1F8BC, 0x1F8BF), (0x1F8C2, 0x1F8CF), (0x1F8D9, 0x1F8FF),
    (0x1F90C, 0x1F93A), (0x1F93C, 0x1F945), (0x1F947, 0x1F9FF), (0x1FA58, 0x1FA5F),
    (0x1FA6E, 0x1FAFF), (0x1FC00, 0x1FFFD),
)
_EMOJI_STARTS = [start for start, _ in _EMOJI_RANGES]
_MAYBE_EMOJI = re.compile(
    _character_class(sorted([0x20E3, 0xFE0F] + [cp for a, b in _EMOJI_RANGES if b < 0x10000 for cp in range(a, b + 1)]))
    + "|[\U00010000-\U0010ffff]"
)
