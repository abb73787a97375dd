"""The words the ad flags look for: colour words and number words (English, lower case).

Data, not rules: to catch another colour or number word, add it here. A word counts only as
a whole word ("black", not "blackberry"); hyphens split words ("navy-blue" is "navy" and
"blue").
"""

# Each colour word, and the words that name the same colour: an ad that says "gray" is
# grounded by an input that says "grey". Words that are more often something else in ad
# copy are left out: mint (condition), rose, plum, peach, lime, olive, salmon, cream,
# chocolate, honey, wine (foods and flowers), tan, coral, amber, ruby, emerald, jet.
COLOUR_GROUPS: tuple[tuple[str, ...], ...] = (
    ("black",),
    ("white",),
    ("grey", "gray", "greyish", "grayish"),
    ("silver", "silvery"),
    ("gold", "golden"),
    ("red", "reddish"),
    ("blue", "bluish"),
    ("green", "greenish"),
    ("yellow", "yellowish"),
    ("orange",),
    ("purple",),
    ("pink", "pinkish"),
    ("brown", "brownish"),
    ("beige",),
    ("ivory",),
    ("khaki",),
    ("navy",),
    ("teal",),
    ("turquoise",),
    ("aqua",),
    ("cyan",),
    ("magenta",),
    ("maroon",),
    ("burgundy",),
    ("crimson",),
    ("scarlet",),
    ("indigo",),
    ("violet",),
    ("lavender",),
    ("lilac",),
    ("mauve",),
    ("taupe",),
    ("charcoal",),
    ("bronze",),
    ("copper",),
    ("ebony",),
    ("fuchsia",),
    ("multicolour", "multicolor", "multicoloured", "multicolored"),
)

# Number words and their values. "one" is a number only inside a larger number
# ("twenty-one", "one hundred"): alone it is mostly a pronoun ("the one you need",
# "all-in-one"). Ordinals ("first"), "single", "double" and plurals ("thousands of")
# are not counted: they rarely state a number the input could contradict.
NUMBER_WORDS: dict[str, int] = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40,
    "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "million": 1_000_000, "billion": 1_000_000_000, "dozen": 12,
}
NOT_ALONE = frozenset({"one"})

# Words that say the number before them is a percentage ("fifty percent"; "per cent", two
# words, too).
PERCENT_WORDS = frozenset({"percent", "pct"})

# Short words that only headline style capitalises: a sentence whose every word is
# capitalised, one of these included after its first word ("Shop The Best Mugs For You"),
# is a Title Case headline, and its capitalised words are not taken for names. Without one
# ("Introducing Zephyr Pro") they are.
TITLE_CASE_WORDS = frozenset({
    "a", "an", "the", "and", "or", "but", "nor", "for", "of", "to", "in", "on", "at", "by", "with", "from",
    "into", "up", "as", "is", "are", "it", "its", "this", "that", "you", "your", "our", "we", "my",
})
