"""Ad flags on hand-written (input, ad) pairs, their false positives included; banned words; duplicates."""

import importlib.util
import math
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adpulse_batch.banned import BannedWords, load_banned_words
from adpulse_batch.duplicates import DuplicateAds
from adpulse_batch.errors import SettingsError
from adpulse_batch.flags import FLAG_CODES, FlagRules, flag_ad
from conftest import REPO

PLAIN = FlagRules()
LEXUS = {"product": "Lexus NX 300h", "description": "Hybrid SUV in sonic grey with 18-inch wheels and 5 seats.", "price": 41999.0}


def flags(cells, ad, rules=PLAIN, **context):
    return flag_ad(rules, cells, ad, **context)


def test_a_faithful_ad_has_no_flags():
    ad = "Meet the Lexus NX 300h: a hybrid SUV in sonic grey, with 18-inch wheels and 5 seats. Book a test drive!"
    assert flags(LEXUS, ad) == []


def test_the_original_lexus_sample():
    # The original work's Lexus ad changed grey to black and invented a model name.
    assert flags(LEXUS, "The black Lexus NX300h Zephyr Pro is here.") == ["ungrounded-color", "ungrounded-name"]


def test_flags_come_in_the_issue_order_with_its_names():
    assert FLAG_CODES == (
        "ungrounded-number", "ungrounded-color", "ungrounded-name", "banned-word", "too-long",
        "repeated-punctuation", "all-caps", "emoji", "duplicate",
    )
    rules = FlagRules(BannedWords(("cheap",)), forbid_emoji=True)
    ad = "Only 3 left!! Get the cheap black Zephyr NOW, BEST deal \U0001F525"
    assert flags({"product": "Mug"}, ad, rules, cut=True, duplicate=True) == list(FLAG_CODES)


# --- ungrounded-number -------------------------------------------------------------------

@pytest.mark.parametrize("cells, ad", [
    ({"product": "Tent", "description": "Sleeps 4, weighs 2.5 kg."}, "A 2.5 kg tent that sleeps 4."),
    ({"product": "Tent", "description": "Sleeps 4."}, "Room for four."),  # "four" is grounded by "4"
    ({"product": "Tent", "description": "Sleeps four."}, "Room for 4."),  # and "4" by "four"
    ({"product": "Tent", "description": "Twenty-five pegs."}, "With 25 pegs."),
    ({"product": "Tent", "pegs": 25}, "With twenty-five pegs."),  # a number column counts
    ({"product": "Tent", "stock": 20.0, "price": 19.99}, "Only $19.99, 20 left."),  # floats as pandas reads them
    ({"product": "Tent", "stock": "1000"}, "Over 1,000 sold."),
    ({"product": "Tent", "description": "50% recycled polyester"}, "Made of 50% recycled polyester."),
    ({"product": "Tent", "description": "fifty percent recycled"}, "50% recycled."),
    ({"product": "Tent", "description": "50% recycled polyester"}, "Only 50 left."),  # a plain 50 is in the input
    ({"product": "Tent", "description": "Sleeps 4 (16 GB? no: 16-inch poles)."}, "16 inch poles, 16GB of fun."),
    ({"product": "Lexus NX 300h"}, "The Lexus NX300h."),  # the digits of a model code are not a number
    ({"product": "Tent"}, "The one tent you need, all-in-one."),  # "one" alone is no number
])
def test_numbers_that_the_input_states(cells, ad):
    assert "ungrounded-number" not in flags(cells, ad)


@pytest.mark.parametrize("cells, ad", [
    ({"product": "Tent", "description": "Sleeps 4."}, "Sleeps 5."),
    ({"product": "Tent", "description": "Sleeps 4."}, "Sleeps three."),
    ({"product": "Tent", "description": "Sleeps 4."}, "Loved by twenty thousand campers."),
    ({"product": "Tent", "description": "Packs to 50 cm."}, "Now 50% off."),  # a percentage needs a percentage
    ({"product": "Tent", "description": "50 percent recycled"}, "Now 60% off."),
    ({"product": "Tent", "price": 19.99}, "Only $19.90."),
    ({"product": "Tent", "description": "1,000 sold"}, "100 sold"),
])
def test_numbers_the_input_does_not_state(cells, ad):
    assert flags(cells, ad) == ["ungrounded-number"]


# --- ungrounded-color --------------------------------------------------------------------

def test_colours():
    assert flags(LEXUS, "The grey Lexus NX 300h.") == []
    assert flags(LEXUS, "The gray Lexus NX 300h.") == []  # one colour, two spellings
    assert flags(LEXUS, "The black Lexus NX 300h.") == ["ungrounded-color"]
    assert flags({"product": "Tee", "colour": "Navy/White"}, "A navy-blue and white tee.") == ["ungrounded-color"]  # blue
    assert flags({"product": "Tee", "colour": "Navy/White"}, "A navy and white tee.") == []  # every column counts
    assert flags({"product": "Blackberry jam"}, "Blackberry jam on toast.") == []  # whole words only


# --- ungrounded-name ---------------------------------------------------------------------

@pytest.mark.parametrize("cells, ad", [
    ({"product": "Trail bike"}, "Ride further. Ride longer."),  # "Ride" opens its sentences
    ({"product": "Smart bulb", "description": "Dimmable LED bulb"}, "A smart LED bulb for every room."),
    ({"product": "Lexus NX 300h"}, "Drive the Lexus NX300h today."),  # the input writes it "NX 300h"
    ({"product": "Mug"}, "Shop The Best Mugs For You"),  # a Title Case headline
    ({"product": "Mug"}, "BUY NOW: a mug I love."),  # a shouted sentence; "I"
    ({"product": "Mug"}, "Mugs \u2013 Made for mornings! Shop now | Free returns"),
    ({"product": "Mug", "brand": "Acme"}, "A mug by Acme."),  # a brand column counts
])
def test_capitalised_words_that_are_not_invented_names(cells, ad):
    assert "ungrounded-name" not in flags(cells, ad)


@pytest.mark.parametrize("cells, ad", [
    ({"product": "Trail bike"}, "Meet the Zephyr Pro trail bike."),
    ({"product": "Trail bike"}, "Introducing Zephyr: the trail bike."),  # after a colon, still a name
    ({"product": "Lexus"}, "The Lexus NX300h is here."),
    ({"product": "Lexus"}, "x5 power, for less."),  # a model code is a name anywhere
    ({"product": "Mug"}, "Caf\u00e9 mugs by Acme."),
])
def test_invented_names(cells, ad):
    assert "ungrounded-name" in flags(cells, ad)


# --- banned-word, too-long, repeated-punctuation, all-caps, emoji, duplicate ------------

def test_banned_words_whole_and_in_any_case():
    rules = FlagRules(BannedWords(("cheap", "free shipping")))
    assert flags({"product": "Mug"}, "A CHEAP mug, free-shipping!", rules) == ["banned-word", "all-caps"]
    assert flags({"product": "Mug"}, "Mugs with Free Shipping: order now.", rules) == ["ungrounded-name", "banned-word"]
    assert flags({"product": "Mug"}, "A mug, cheaper than ever, shipping free.", rules) == []
    assert flags({"product": "Mug"}, "Cheap mug.", PLAIN) == []


def test_too_long_only_when_the_ad_was_cut():
    assert flags({"product": "Mug"}, "A mug for", cut=True) == ["too-long"]
    assert flags({"product": "Mug"}, "A mug.") == []


@pytest.mark.parametrize("ad, flagged", [
    ("Wow!! A mug.", True), ("A mug?? Yes.", True), ("A mug?!", True), ("A mug\u203c", True), ("A mug\uff01\uff01", True),
    ("A mug! Yes!", False), ("A mug...", False), ("Mugs, cups.", False),
])
def test_repeated_punctuation(ad, flagged):
    assert ("repeated-punctuation" in flags({"product": "Mug"}, ad)) is flagged


def test_all_caps():
    assert flags({"product": "Mug"}, "The BEST mug.") == ["all-caps"]
    assert flags({"product": "Mug"}, "\u00dcBER mug.") == ["all-caps"]  # not only ASCII
    assert flags({"product": "Mug", "description": "Dimmable LED"}, "An LED mug.") == []  # 3 letters is no shout
    assert flags({"product": "NASA mug"}, "The NASA mug.") == []  # the input spells it so
    assert flags({"product": "Nasa mug"}, "The NASA mug.") == ["all-caps"]


def test_emoji_only_where_the_channel_forbids_them():
    no_emoji = FlagRules(forbid_emoji=True)
    assert flags({"product": "Mug"}, "A mug \U0001F525") == []
    assert flags({"product": "Mug"}, "A mug \U0001F525", no_emoji) == ["emoji"]
    assert flags({"product": "Mug"}, "A mug", no_emoji, emoji_removed=True) == ["emoji"]  # fit_ad took them out
    assert flags({"product": "Mug\u2122", "brand": "Acme"}, "A mug\u2122 \u00a9 Acme", no_emoji) == []  # text-style symbols


def test_fitting_then_flagging_as_a_run_does():
    from adpulse_batch.channels import CHANNELS, fit_ad

    channel = CHANNELS["amazon-title"]
    rules = FlagRules(BannedWords(("cheap",)), forbid_emoji=not channel.allows_emoji)
    ad = "Cheap tent \U0001F3D5\ufe0f for four. " + "Sleeps four, packs small, pitches fast. " * 6
    fitted = fit_ad(ad, channel)
    assert fitted.emoji_removed and not fitted.cut  # whole sentences were dropped: no cut
    cells = {"product": "Tent", "description": "Sleeps 4, packs small, pitches fast."}
    assert flags(cells, fitted.text, rules, cut=fitted.cut, emoji_removed=fitted.emoji_removed) == ["banned-word", "emoji"]


def test_duplicate_is_what_the_run_says():
    assert flags({"product": "Mug"}, "A mug.", duplicate=True) == ["duplicate"]


# --- the input -----------------------------------------------------------------------------

def test_every_kind_of_cell_is_input():
    cells = ["Mug", None, math.nan, b"Hand-made in Stoke", 12, ["red", "blue"], {"size": "XL"}, True]
    assert flags(cells, "A red and blue mug, hand-made in Stoke, XL size, 12 in a box.") == []
    assert flags(cells, "A green mug.") == ["ungrounded-color"]


def test_no_input_at_all():
    assert flags({}, "Just a mug.") == []
    assert flags({"product": None}, "A black mug from Acme, 3 for 2!!") == [
        "ungrounded-number", "ungrounded-color", "ungrounded-name", "repeated-punctuation",
    ]


vocabulary = st.sampled_from([
    "mug", "Mug", "the", "The", "Zephyr", "Pro", "NX300h", "black", "grey", "3", "three", "50%", "50", "SALE", "LED",
    "I", "Acme", "cheap", "!!", "?", ".", ",", ":", " - ", "|", "twenty", "five", "1,000", "19.99", "NASA",
    "\u00dcber", "\u00dcBER", "na\u00efve", "\u2013", "\u2026", "\u2019s", "\u00ab", "\u00bb", "\u65e5\u672c", "\u3002",
    "\uff01\uff01", "\u00a0",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(vocabulary, min_size=1, max_size=16).map(" ".join), st.lists(vocabulary, max_size=10).map(" ".join))
def test_every_way_to_cut_an_ad_into_words_judges_alike(ad, description):
    # ASCII ads, and ads of letters and common punctuation, take faster paths than ads with
    # an emoji; a sentence added in another script, or with an emoji, must not change the verdict.
    rules = FlagRules(BannedWords(("cheap",)))
    cells = {"product": "Acme mug", "description": description}
    verdict = flags(cells, ad, rules)
    assert flags(cells, ad + ". caf\u00e9", rules) == verdict
    assert flags(cells, ad + ". caf\u00e9 \U0001F642", rules) == verdict


# --- banned words file ---------------------------------------------------------------------

def test_banned_words_file(tmp_path):
    path = tmp_path / "banned.txt"
    path.write_bytes("\ufeff# words legal does not want\ncheap\n\n  Free Shipping  \nCHEAP\ndon't\n".encode())
    banned = load_banned_words(path)
    assert banned.phrases == ("cheap", "Free Shipping", "don't")
    assert banned.find("Don\u2019t miss it: FREE shipping on cheap mugs, cheaper still") == ["don't", "Free Shipping", "cheap"]
    assert banned.fingerprint == BannedWords(("free   shipping!", "DON'T", "Cheap")).fingerprint
    assert banned.fingerprint != BannedWords(("cheap",)).fingerprint


@pytest.mark.parametrize("content, message", [
    (b"cheap\n\xff\xfe\n", "--banned-words {path} line 2: not UTF-8 text"),
    (b"cheap\n!!!\n", "--banned-words {path} line 2: '!!!' has no letters or digits; list whole words or phrases"),
    (b"# nothing yet\n\n", "--banned-words {path} lists no words (only blank lines and # comments)"),
])
def test_banned_words_file_errors_name_the_flag_and_line(tmp_path, content, message):
    path = tmp_path / "banned.txt"
    path.write_bytes(content)
    with pytest.raises(SettingsError) as error:
        load_banned_words(path)
    assert str(error.value) == message.format(path=path)


def test_a_missing_banned_words_file(tmp_path):
    with pytest.raises(SettingsError) as error:
        load_banned_words(tmp_path / "nope.txt")
    assert str(error.value) == f"--banned-words {tmp_path / 'nope.txt'}: cannot read it (No such file or directory)"


# --- duplicates ----------------------------------------------------------------------------

def test_duplicates_are_the_same_ad_for_another_product():
    ads = DuplicateAds()
    ads.add(0, "Shop now!", "Mug", "Red mug")
    ads.add(1, "Shop now!", "Mug", "Blue mug")  # a variant of row 0: the same name
    ads.add(2, "Drink up.", "Cup", "Green cup")
    ads.add(3, "Drink up.", "Beaker", "Green cup")  # a variant of row 2: the same description
    ads.add(4, "A plate for every day.", "Plate", "Dinner plate")
    ads.add(5, "A plate for every day.", "plate", "dinner plate")  # the same row twice (case aside)
    assert [ads.is_duplicate(row) for row in range(6)] == [False] * 6

    ads = DuplicateAds()
    ads.add(0, "Shop now!", "Mug", "Red mug")
    ads.add(1, "Shop now!", "Mug", "Blue mug")
    ads.add(2, "SHOP NOW!", "Bowl", "Soup bowl")  # another product, the same ad in other case
    ads.add(3, "", "Plate", "Dinner plate")  # no ad is never a duplicate
    ads.add(4, "", "Saucer", "Small plate")
    ads.add(5, "Tea time.", "Teapot", "")  # two products without descriptions
    ads.add(6, "Tea time.", "Kettle", "")
    assert [ads.is_duplicate(row) for row in range(8)] == [True, True, True, False, False, True, True, False]
    with pytest.raises(RuntimeError):
        ads.add(7, "Late.", "Late", "")


def test_duplicates_over_many_rows():
    ads = DuplicateAds()
    for row in range(20_000):
        ads.add(row, f"Ad {row % 5_000}", f"Product {row}", f"Description {row}")  # each ad four times
    ads.add(20_000, "Only one", "Lonely", "Unique")
    assert all(ads.is_duplicate(row) for row in range(20_000)) and not ads.is_duplicate(20_000)


# --- the benchmark -------------------------------------------------------------------------

def test_the_benchmark_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("flags_benchmark", REPO / "benchmarks" / "flags.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["flags_benchmark"] = module
    spec.loader.exec_module(module)
    assert module.main(["--rows", "300", "--repeats", "1", "--json", str(tmp_path / "flags.json")]) == 0
    assert "flag_ad" in capsys.readouterr().out and (tmp_path / "flags.json").is_file()
