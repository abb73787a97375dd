"""The HTML report: counts, a bounded sample with flagged rows first, escaping, no fetches, and
how it renders in a real headless Chromium."""

import re
import shutil
import subprocess
import tracemalloc

import pytest

from adpulse_batch.channels import CHANNELS
from adpulse_batch.flags import FLAG_CODES
from adpulse_batch.html_report import ReportCollector, render_html_report, write_html_report

SUMMARY = {"input": "catalog.csv", "output": "catalog.ads.csv", "rows_total": 6, "rows_generated": 4, "rows_from_cache": 1,
           "rows_skipped": 1, "seconds": 2.5, "model": {"adapter": "adapters/mine"}, "workers": [{"rank": 0, "rows": 6}]}


def collected(channel=CHANNELS["meta-headline"], **options) -> ReportCollector:
    collector = ReportCollector(channel, **options)
    rows = [
        ("Mug", "A red mug", "A red mug for mornings.", "ok", []),
        ("Lexus NX 300h", "Hybrid SUV in grey", "The black Lexus NX300h!!", "ok", ["ungrounded-color", "ungrounded-name", "repeated-punctuation"]),
        ("<script>alert('product')</script>", "<b>bold</b> & \"quoted\"", "<img src=x onerror=alert(1)>", "ok", ["ungrounded-name"]),
        ("Tee", "Soft tee, made to last, in five colours", "Soft tee, made to last", "ok: input truncated", ["too-long"]),
        ("Plate", "", "A plate for every day.", "ok", []),
        ("", "", "", "skipped: no product name and no description", []),
    ]
    for row, (product, description, ad, status, flags) in enumerate(rows):
        collector.add(row, product=product, description=description, ad=ad, status=status, flags=flags)
    return collector


def test_counts_for_the_json_report():
    counts = collected().counts()
    assert counts["rows"] == 6 and counts["rows_flagged"] == 3
    assert counts["statuses"] == {"ok": 4, "ok: input truncated": 1, "skipped: no product name and no description": 1}
    assert list(counts["flags"]) == list(FLAG_CODES)  # every code, zeros included
    assert counts["flags"]["ungrounded-name"] == 2 and counts["flags"]["duplicate"] == 0
    assert counts["ad_characters"] == {"ads": 5, "limit": 40, "max": 28, "mean": 23.8, "over_limit": 0}


def test_the_sample_shows_flagged_rows_first_in_row_order():
    rows = [(sample.row, sample.flags) for sample in collected().sample()]
    assert [row for row, _ in rows] == [1, 2, 3, 0, 4, 5]
    assert rows[0][1] == ("ungrounded-color", "ungrounded-name", "repeated-punctuation")


def test_the_sample_is_bounded_and_a_rare_flag_is_in_it():
    collector = ReportCollector(CHANNELS["merchant-title"], sample_size=50)
    for row in range(20_000):
        flags = ["duplicate"] if row % 2 else []
        if row == 12_344:
            flags = ["ungrounded-color"]
        collector.add(row, product=f"Product {row}", description="x" * 5000, ad=f"Ad {row}", status="ok", flags=flags)
    sample = collector.sample()
    assert len(sample) == 50 and all(sample_row.flags for sample_row in sample)
    assert 12_344 in [sample_row.row for sample_row in sample]
    assert all(len(sample_row.description) <= 401 for sample_row in sample)  # long cells are cut for the page
    assert [s.row for s in sample] == [s.row for s in collector.sample()]  # the same page twice
    assert collector.counts()["flags"]["duplicate"] == 10_000


def test_memory_does_not_grow_with_the_run():
    description = "word " * 1000
    collector = ReportCollector(CHANNELS["merchant-title"])
    tracemalloc.start()
    try:
        for row in range(30_000):
            flags = [FLAG_CODES[row % len(FLAG_CODES)]] if row % 3 else []
            collector.add(row, product=f"Product {row}", description=description, ad=f"Ad number {row}", status="ok", flags=flags)
            if row == 2_999:
                after_3k = tracemalloc.get_traced_memory()[0]
        after_30k = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after_30k < 1.2 * after_3k + 100_000  # the reservoirs are full by then; counts take no more room


def test_every_cell_is_escaped_and_nothing_is_fetched():
    page = render_html_report({**SUMMARY, "input": "<i>catalog</i>.csv"}, collected())
    assert "<script" not in page and "<img" not in page and "<b>bold" not in page and "<i>catalog" not in page
    assert "&lt;script&gt;alert(&#x27;product&#x27;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "default-src 'none'" in page  # the browser itself refuses any fetch or script
    tags = re.findall(r"<[^>]*>", page)
    assert {tag.split()[0].strip("<>/").lower() for tag in tags} <= {
        "!doctype", "html", "head", "meta", "title", "style", "body", "h1", "h2", "small", "p", "div", "b", "span",
        "table", "tr", "th", "td", "pre", "svg", "line", "text", "rect",
    }
    style = page[page.index("<style>") : page.index("</style>")]
    for reference in ("src=", "href=", "http:", "https:", "url(", "@import"):
        assert not any(reference in tag for tag in tags) and reference not in style, reference


def test_the_page_holds_the_counts_and_the_histogram():
    page = render_html_report(SUMMARY, collected())
    assert re.search(r'data-count="rows"><b>6</b>', page) and re.search(r'data-count="flagged"><b>3</b>', page)
    assert re.search(r'data-flag="ungrounded-name"[^>]*><td>.*?</td><td class="n">2</td>', page)
    assert re.search(r'data-status="ok: input truncated"><td>ok: input truncated</td><td class="n">1</td>', page)
    assert "<svg" in page and "limit 40" in page
    assert "adapters/mine" in page  # nested summary values are shown too


def test_an_empty_run():
    page = render_html_report({"rows_total": 0}, ReportCollector())
    assert "No ads." in page and "No rows." in page


def test_write_html_report(tmp_path):
    path = tmp_path / "report.html"
    write_html_report(path, SUMMARY, collected())
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(tmp_path, *arguments) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2000", *arguments],
        capture_output=True, text=True, timeout=120, check=True,
    )


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (Debian: apt-get install chromium)")
def test_the_page_renders_in_chromium(tmp_path):
    page = tmp_path / "report.html"
    write_html_report(page, SUMMARY, collected())
    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    # The DOM after parsing: the counts are there, and catalog text stayed text.
    assert re.search(r'data-count="rows"><b>6</b>', dom) and re.search(r'data-count="flagged"><b>3</b>', dom)
    assert re.search(r'data-flag="too-long"[^>]*><td>.*?</td><td class="n">1</td>', dom)
    assert "&lt;script&gt;alert('product')&lt;/script&gt;" in dom and "<script" not in dom and "<img" not in dom
    assert dom.count("<rect") == dom.count("</rect>") > 0  # the histogram's bars were parsed
    screenshot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={screenshot}", page.as_uri())
    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000  # a page was drawn, not a blank one
