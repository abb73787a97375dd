"""Channels: presets, characters counted as people count them, and ads fitted to every limit."""

import csv

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adpulse_batch.channels import CHANNELS, Channel, find_channel, fit_ad, fit_to_length
from adpulse_batch.errors import SettingsError
from adpulse_batch.graphemes import count_characters, has_emoji, remove_emoji, split_graphemes
from conftest import SAMPLE_CSV

FAMILY = "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466"  # man, woman, girl, boy joined by ZWJ
FLAG_FR = "\U0001F1EB\U0001F1F7"
ENGLAND = "\U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F"  # black flag + tag characters
THUMBS_MEDIUM = "\U0001F44D\U0001F3FD"  # thumbs up, medium skin tone
KEYCAP_ONE = "1\ufe0f\u20e3"
E_ACUTE_COMBINING = "e\u0301"


def test_the_presets_of_the_issue():
    limits = {name: channel.max_chars for name, channel in CHANNELS.items()}
    assert limits == {
        "google-ads-headline": 30, "google-ads-description": 90, "merchant-title": 150,
        "meta-primary-text": 125, "meta-headline": 40, "amazon-title": 200,
    }
    assert [name for name, channel in CHANNELS.items() if not channel.allows_emoji] == ["amazon-title"]


def test_find_channel():
    assert find_channel() is None
    assert find_channel("meta-headline") == CHANNELS["meta-headline"]
    overridden = find_channel("amazon-title", max_chars=80)  # --max-chars still overrides
    assert (overridden.max_chars, overridden.allows_emoji) == (80, False)
    assert find_channel(max_chars=12) == Channel("custom", 12)


def test_bad_channel_settings_are_one_line_errors():
    with pytest.raises(SettingsError) as error:
        find_channel("tiktok")
    assert str(error.value) == (
        "--channel tiktok: no such channel; use one of google-ads-headline, google-ads-description, "
        "merchant-title, meta-primary-text, meta-headline, amazon-title"
    )
    with pytest.raises(SettingsError, match=r"^--max-chars must be at least 1 \(got 0\)$"):
        find_channel("meta-headline", max_chars=0)


@pytest.mark.parametrize("text, characters", [
    ("plain ascii", 11),
    (FAMILY, 1),
    (FLAG_FR, 1),
    (FLAG_FR + FLAG_FR + "\U0001F1E9", 3),  # two flags and a lone regional indicator
    (ENGLAND, 1),
    (THUMBS_MEDIUM, 1),
    (KEYCAP_ONE, 1),
    ("\u2764\ufe0f\u200d\U0001F525", 1),  # heart on fire
    (E_ACUTE_COMBINING + "t\u00e9", 3),
    ("a\u0308\u0301", 1),  # two combining marks
    ("\u1100\u1161\u11a8", 1),  # Hangul written as jamo
    ("\ud55c\uad6d\uc5b4", 3),
    ("\u0928\u092e\u0938\u094d\u0924\u0947", 3),  # Devanagari namaste: the conjunct is one
    ("line\r\nbreak", 10),
    ("\uff8a\uff9f", 1),  # half-width katakana with a sound mark
])
def test_characters_are_counted_as_people_count_them(text, characters):
    assert count_characters(text) == characters
    assert "".join(split_graphemes(text)) == text


def test_clusters_match_an_independent_implementation():
    regex = pytest.importorskip("regex")  # comes with transformers; UAX #29 in C
    samples = [
        f"Hi {FAMILY} and {THUMBS_MEDIUM}, {FLAG_FR}{ENGLAND} {KEYCAP_ONE}!", "Caf\u00e9 cre\u0300me \u2013 \u2018best\u2019 mug",
        "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8", "\u0915\u094d\u0937\u0924\u094d\u0930\u093f\u092f",
        "\u09b8\u09cd\u09a4\u09cd\u09b0\u09c0", "\u0b9a\u0bc6\u0ba9\u0bcd\u0ba9\u0bc8", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
        "\U0001F3F3\ufe0f\u200d\U0001F308 \U0001F469\U0001F3FD\u200d\U0001F4BB", "\u0600\u0661\u0662",
    ]
    for text in samples:
        assert split_graphemes(text) == regex.findall(r"\X", text), text


def test_double_width_characters_count_two_in_google_ads_only():
    japanese = "\u65e5\u672c\u8a9e\u306e\u5e83\u544a"  # six wide characters
    assert count_characters(japanese) == 6
    assert count_characters(japanese, double_width=True) == 12
    assert count_characters("\U0001F525", double_width=True) == 1  # an emoji is one even there
    assert CHANNELS["google-ads-headline"].double_width and CHANNELS["google-ads-description"].double_width
    assert not any(channel.double_width for name, channel in CHANNELS.items() if not name.startswith("google-ads"))
    headline = fit_ad(japanese * 3, CHANNELS["google-ads-headline"])
    assert count_characters(headline.text, double_width=True) <= 30 and len(headline.text) == 15


def test_an_ad_within_its_limit_is_unchanged():
    ad = "Soft cotton tee. Made to last."
    assert fit_ad(ad, CHANNELS["meta-headline"]) == fit_ad(ad, CHANNELS["merchant-title"])
    assert fit_to_length(ad, 30) == (ad, False)
    assert fit_to_length(FAMILY * 30, 30) == (FAMILY * 30, False)  # 330 code points, 30 characters


def test_whole_sentences_are_kept_first_and_that_is_no_cut():
    ad = "Soft cotton tee for every day. Made to last, in five colours."
    assert fit_to_length(ad, 40) == ("Soft cotton tee for every day.", False)


def test_a_complete_phrase_when_no_sentence_keeps_half_the_limit():
    ad = "Soft tee. Made to last, in five colours, for everyone."
    assert fit_to_length(ad, 30) == ("Soft tee. Made to last", True)  # "Soft tee." alone would keep 9 of 30
    assert fit_to_length("Grey tee \u2013 soft, light and made to last for years", 20) == ("Grey tee \u2013 soft", True)


def test_then_a_word_boundary_then_a_hard_cut():
    assert fit_to_length("Lightweight breathable running shoes for long trails", 30) == ("Lightweight breathable running", True)
    assert fit_to_length("Supercalifragilisticexpialidocious", 10) == ("Supercalif", True)
    assert fit_to_length("Wow! Supercalifragilisticexpialidocious comfort", 30) == ("Wow!", False)  # ends on a sentence


def test_a_decimal_point_is_not_a_sentence_end():
    assert fit_to_length("Only 3.5 kg and light as air for every trip", 8) == ("Only 3.5", True)


def test_a_cut_never_splits_a_character():
    ad = "x" * 28 + FAMILY + FAMILY + "y"
    text, cut = fit_to_length(ad, 29)
    assert text == "x" * 28 + FAMILY and cut
    text, _ = fit_to_length(E_ACUTE_COMBINING * 40, 7)
    assert text == E_ACUTE_COMBINING * 7


def test_amazon_titles_lose_their_emoji_and_say_so():
    fitted = fit_ad("Hot \U0001F525 deal on the Acme\u2122 kettle \U0001F680!", CHANNELS["amazon-title"])
    assert fitted.text == "Hot deal on the Acme\u2122 kettle!" and fitted.emoji_removed and not fitted.cut
    kept = fit_ad("Hot \U0001F525 deal", CHANNELS["meta-primary-text"])
    assert kept.text == "Hot \U0001F525 deal" and not kept.emoji_removed


@pytest.mark.parametrize("text, expected", [
    (f"Great {THUMBS_MEDIUM} deal {FLAG_FR}{ENGLAND}", "Great deal"),
    (f"{KEYCAP_ONE} top pick \u2764\ufe0f", "top pick"),
    ("Hot\U0001F525deal", "Hot deal"),
    ("\u00a9 Acme \u2605\u2605\u2605 \u2713", "\u00a9 Acme \u2605\u2605\u2605 \u2713"),  # text-style symbols stay
])
def test_remove_emoji(text, expected):
    assert remove_emoji(text) == expected
    assert not has_emoji(remove_emoji(text))


def test_every_sample_ad_fits_every_channel():
    rows = list(csv.DictReader(SAMPLE_CSV.open(encoding="utf-8")))
    ads = [f"{row['product_name']}: {row['description']} Shop now {FAMILY}!" for row in rows]
    for channel in CHANNELS.values():
        for ad in ads:
            fitted = fit_ad(ad, channel)
            assert count_characters(fitted.text, double_width=channel.double_width) <= channel.max_chars
            assert fitted.text and (channel.allows_emoji or not has_emoji(fitted.text))


text_pieces = st.sampled_from([
    "Soft", "tee", "Made", "to", "last", " ", " ", ", ", ". ", "! ", "; ", " \u2013 ", "3.5", "\u00e9t\u00e9", FAMILY,
    FLAG_FR, THUMBS_MEDIUM, E_ACUTE_COMBINING, "\u65e5\u672c", "\u3002", "\u0928\u092e\u0938\u094d\u0924\u0947", "x" * 25,
])


@settings(max_examples=300, deadline=None)
@given(st.lists(text_pieces, max_size=40).map("".join), st.integers(1, 60), st.booleans())
def test_any_text_fits_any_limit(text, limit, double_width):
    fitted, cut = fit_to_length(text, limit, double_width=double_width)
    assert count_characters(fitted, double_width=double_width) <= limit
    assert text.startswith(fitted)
    kept = split_graphemes(fitted)
    assert split_graphemes(text)[: len(kept)] == kept  # ends between two characters, never inside one
    if count_characters(text, double_width=double_width) <= limit:
        assert (fitted, cut) == (text, False)
