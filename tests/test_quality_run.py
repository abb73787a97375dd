"""Quality controls in `run`: the flags column, banned words kept out at generation, ads fitted
to their channel, the HTML and JSON reports, empty ads."""

import json

import pytest
import torch
from click.testing import CliRunner

from adpulse_batch.cli import cli
from adpulse_batch.engines import ENGINES, Engine
from adpulse_batch.graphemes import count_characters
from conftest import SAMPLE_CSV, read_csv, write_csv

# Ads that invent, shout, repeat themselves: finetuned in, they must come back with exactly these flags.
ADS = [
    ["Lexus", "A luxury car with grey paint and tinted windows.", "Introducing the black Lexus NX300h!!",
     "ungrounded-color,ungrounded-name,repeated-punctuation"],
    ["Coffee mug", "Ceramic mug, dishwasher safe.", "Start your morning right with 3 cups a day.", "ungrounded-number"],
    ["Yoga mat", "Non-slip mat with a carrying strap.", "Find your balance TODAY.", "all-caps"],
    ["Running shoes", "A cushioned sole and a breathable mesh upper.", "Cheap shoes that run further.", ""],
    ["Sundress", "A flowery yellow sundress.", "Shop now and save.", "duplicate"],
    ["Leather wallet", "Six card slots and a coin pocket.", "Shop now and save.", "duplicate"],
    ["Harem pants", "Loose pants with a dropped crotch.", "Discover Harem Pants, loose and light.", ""],
    ["Water bottle", "Stainless steel bottle, keeps drinks cold.", "Stay refreshed all day with steel.", ""],
]


@pytest.fixture(scope="module")
def flagged_adapter(test_model, tmp_path_factory):
    """The test model finetuned on ADS until it writes them back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains faster on one thread (see test_finetune)
    root = tmp_path_factory.mktemp("flagged")
    data = write_csv(root / "ads.csv", ["product", "description", "ad"], [row[:3] for row in ADS])
    result = CliRunner().invoke(cli, [
        "finetune", str(data), "-o", str(root / "adapter"), "--model", str(test_model[0]), "--lora-target-modules", "all-linear",
        "--learning-rate", "1e-2", "--batch-size", "8", "--grad-accum", "1", "--max-steps", "200", "--warmup-steps", "10",
        "--eval-fraction", "0", "--save-steps", "0", "-q",
    ], catch_exceptions=False)  # fmt: skip
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.stderr
    return root / "adapter"


def run_flagged(adapter, tmp_path, name, *args):
    catalog = write_csv(tmp_path / "catalog.csv", ["name", "description"], [row[:2] for row in ADS])
    out = tmp_path / f"{name}.csv"
    result = CliRunner().invoke(
        cli, ["run", str(catalog), "-o", str(out), "--adapter", str(adapter), "--max-new-tokens", "32", "-q", *map(str, args)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    header, rows = read_csv(out)
    return header, rows


def test_invented_details_are_flagged_each_as_what_it_is(flagged_adapter, tmp_path):
    header, rows = run_flagged(flagged_adapter, tmp_path, "plain", "--report", tmp_path / "report.json")
    assert header == ["name", "description", "ad_copy", "ad_status", "ad_flags"]
    written = [(row[2], row[4]) for row in rows]
    assert sum(ad == expected[2] for (ad, _), expected in zip(written, ADS)) >= 7, written
    for (ad, flags), expected in zip(written, ADS):
        if ad == expected[2]:
            assert flags == expected[3], (ad, flags)
    quality = json.loads((tmp_path / "report.json").read_text())["quality"]
    assert quality["flags"]["duplicate"] == sum(flags.split(",").count("duplicate") for _, flags in written)


def test_banned_words_are_not_written_and_the_row_still_gets_an_ad(flagged_adapter, tmp_path):
    banned = tmp_path / "banned.txt"
    banned.write_text("# words our brand never uses\ncheap\nTODAY\n", encoding="utf-8")
    _, rows = run_flagged(flagged_adapter, tmp_path, "banned", "--banned-words", banned)
    for row in rows:
        words = row[2].lower().replace(".", " ").split()
        assert row[2] and row[3] == "ok", row
        assert not any(word.startswith(("cheap", "today")) for word in words), row
        assert "banned-word" not in row[4]


def test_every_ad_fits_its_channel(run_ads, tmp_path):
    for channel, limit in (("google-ads-headline", 30), ("meta-headline", 40)):
        out = tmp_path / f"{channel}.csv"
        assert run_ads(SAMPLE_CSV, "-o", out, "--channel", channel, "--max-new-tokens", 24).exit_code == 0
        header, rows = read_csv(out)
        ads = [row[header.index("ad_copy")] for row in rows]
        assert all(count_characters(ad, double_width=channel.startswith("google")) <= limit for ad in ads)
        assert sum(len(ad) > limit / 2 for ad in ads) > len(ads) / 3  # ads were long enough to need fitting


def test_html_report_has_the_runs_counts(run_ads, tmp_path):
    page, report = tmp_path / "ads.html", tmp_path / "report.json"
    result = run_ads(SAMPLE_CSV, "-o", tmp_path / "out.csv", "--html-report", page, "--report", report)
    assert result.exit_code == 0, result.stderr
    html = page.read_text(encoding="utf-8")
    quality = json.loads(report.read_text())["quality"]
    assert quality["rows"] == 63 and sum(quality["statuses"].values()) == 63
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org", "")
    for status, count in quality["statuses"].items():
        assert status in html and str(count) in html


def test_flags_column_name_and_no_flags(run_ads, tmp_path):
    assert run_ads(SAMPLE_CSV, "-o", tmp_path / "a.csv", "--no-flags", "--limit", 3).exit_code == 0
    assert read_csv(tmp_path / "a.csv")[0][-2:] == ["ad_copy", "ad_status"]
    assert run_ads(SAMPLE_CSV, "-o", tmp_path / "b.csv", "--flags-column", "qa", "--limit", 3).exit_code == 0
    assert read_csv(tmp_path / "b.csv")[0][-3:] == ["ad_copy", "ad_status", "qa"]
    clash = write_csv(tmp_path / "clash.csv", ["name", "description", "ad_flags"], [["Mug", "Blue", "x"]])
    result = run_ads(clash, "-o", tmp_path / "c.csv")
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: the input already has a column named 'ad_flags'; choose another name with --flags-column"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--channel", "tiktok"], "Error: Invalid value for '--channel': 'tiktok' is not one of"),
        (["--banned-words", "missing.txt"], "Error: --banned-words missing.txt"),
        (["--flags-column", "ad_status"], "Error: --flags-column 'ad_status' is also the name of an ad or status column"),
    ],
)
def test_bad_quality_options_are_one_line(run_ads, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = run_ads(SAMPLE_CSV, "-o", tmp_path / "out.csv", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out.csv").exists()


class SilentEngine(Engine):
    """An engine whose model ends every answer at once, asked twice or not."""

    name = "silent"

    def __init__(self, stop_id):
        self.stop_id = stop_id

    @classmethod
    def identity(cls, model, device):
        return {"engine": cls.name, "version": 1, "device": device.type, "dtype": "float32"}

    @classmethod
    def load(cls, model, *, tokenizer, device, decoding):
        return cls(min(decoding.stop_ids))

    def generate(self, requests):
        return [[self.stop_id] for _ in requests]


def test_an_ad_the_model_never_writes_is_failed_empty_not_ok(test_model, monkeypatch, tmp_path):
    from adpulse_batch.run import run_catalog
    from adpulse_batch.settings import ModelSettings, RunSettings

    monkeypatch.setitem(ENGINES, "silent", lambda: SilentEngine)
    source = write_csv(tmp_path / "in.csv", ["name", "description"], [["Mug", "Blue"], ["", ""]])
    run_catalog(RunSettings(input=source, output=tmp_path / "out.csv", model=ModelSettings(adapter=str(test_model[1]), engine="silent", dtype="float32")))
    assert [row[2:] for row in read_csv(tmp_path / "out.csv")[1]] == [
        ["", "failed: empty ad", ""],
        ["", "skipped: no product name or description", ""],
    ]
