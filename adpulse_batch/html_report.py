"""The `--html-report` page: a run's counts, ad lengths and a sample of rows for a person to review.

`ReportCollector` sees every row as the run writes it and keeps only counts, a histogram of
ad lengths and a bounded sample (flagged rows first), so a million-row run costs no more
memory than a small one. `render_html_report` turns that and the run summary into one
self-contained HTML page: inline CSS and SVG, no script, no font, image or link to fetch (a
Content-Security-Policy forbids them, too), every catalog cell escaped.
"""

from __future__ import annotations

import html
import json
import math
import os
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from adpulse_batch.channels import Channel
from adpulse_batch.flags import FLAG_CODES, FLAG_MEANINGS
from adpulse_batch.graphemes import count_characters

# Longer cells are cut for the page (and for the collector's memory).
_MAX_CELL = 400


@dataclass(frozen=True)
class SampleRow:
    """One row of the sample on the page."""

    row: int  # the row id: 0 is the catalog's first row
    product: str
    description: str
    ad: str
    status: str
    flags: tuple[str, ...]


class ReportCollector:
    """Counts per status and flag, ad lengths and a sample of rows, in bounded memory.

    The sample keeps, by reservoir sampling (seeded: the same run gives the same page), up to
    `sample_size` rows for each flag and as many unflagged ones, and shows flagged rows first,
    taking each flag in turn, so that a rare flag is seen beside a common one.
    """

    def __init__(self, channel: Channel | None = None, *, sample_size: int = 200, seed: int = 0):
        self.channel = channel
        self.sample_size = sample_size
        self.rows = 0
        self.rows_flagged = 0
        self.statuses: Counter[str] = Counter()
        self.flags: Counter[str] = Counter({code: 0 for code in FLAG_CODES})
        self.ad_lengths: Counter[int] = Counter()  # characters as the channel counts them -> ads
        self._random = random.Random(seed)
        self._reservoirs: dict[str, list[SampleRow]] = {}
        self._seen: Counter[str] = Counter()  # rows offered to each reservoir

    def add(self, row: int, *, product: str, description: str, ad: str, status: str, flags: Sequence[str]) -> None:
        """Count one row of the run (its ad after fitting, its status and its flags)."""
        self.rows += 1
        self.statuses[status] += 1
        self.flags.update(flags)
        if flags:
            self.rows_flagged += 1
        if ad:
            self.ad_lengths[count_characters(ad, double_width=bool(self.channel and self.channel.double_width))] += 1
        sample = None
        for reservoir in flags or ("",):  # "": the unflagged rows
            self._seen[reservoir] += 1
            kept = self._reservoirs.setdefault(reservoir, [])
            # Algorithm R: the n-th row offered replaces a kept one with probability size / n.
            slot = len(kept) if len(kept) < self.sample_size else self._random.randrange(self._seen[reservoir])
            if slot < self.sample_size:
                sample = sample or SampleRow(row, _cut(product), _cut(description), _cut(ad), _cut(status), tuple(flags))
                if slot == len(kept):
                    kept.append(sample)
                else:
                    kept[slot] = sample

    def counts(self) -> dict:
        """The counts for the JSON report: rows, per status, per flag (every code), ad lengths."""
        lengths = self.ad_lengths
        ads = sum(lengths.values())
        limit = self.channel.max_chars if self.channel else None
        return {
            "rows": self.rows,
            "rows_flagged": self.rows_flagged,
            "statuses": dict(self.statuses.most_common()),
            "flags": {code: self.flags[code] for code in FLAG_CODES},
            "ad_characters": {
                "ads": ads,
                "limit": limit,
                "max": max(lengths, default=0),
                "mean": round(sum(n * c for n, c in lengths.items()) / ads, 1) if ads else 0.0,
                "over_limit": sum(c for n, c in lengths.items() if limit is not None and n > limit),
            },
        }

    def sample(self) -> list[SampleRow]:
        """Up to `sample_size` rows: flagged ones first, each flag in turn, then unflagged; each part in row order."""
        chosen: dict[int, SampleRow] = {}
        queues = [sorted(self._reservoirs.get(code, []), key=lambda r: r.row) for code in FLAG_CODES]
        while len(chosen) < self.sample_size and any(queues):
            for queue in queues:
                while queue and queue[0].row in chosen:
                    queue.pop(0)
                if queue and len(chosen) < self.sample_size:
                    row = queue.pop(0)
                    chosen[row.row] = row
        flagged = sorted(chosen.values(), key=lambda r: r.row)
        unflagged = sorted(self._reservoirs.get("", []), key=lambda r: r.row)[: self.sample_size - len(flagged)]
        return flagged + unflagged


def write_html_report(path: str | Path, summary: Mapping, collector: ReportCollector) -> None:
    """Write the page to `path`, through a temporary file renamed into place."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(render_html_report(summary, collector), encoding="utf-8")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def render_html_report(summary: Mapping, collector: ReportCollector, *, title: str = "adpulse-batch run") -> str:
    """The page: the summary, counts per status and flag, the length histogram, the sample."""
    counts = collector.counts()
    rows = counts["rows"] or 1
    cards = [
        ("rows", summary.get("rows_total", counts["rows"])),
        ("generated", summary.get("rows_generated")),
        ("from cache", summary.get("rows_from_cache")),
        ("skipped", summary.get("rows_skipped")),
        ("flagged", counts["rows_flagged"]),
    ]
    sample = collector.sample()
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Nothing on this page may load or run anything: it must open from disk, offline, and
        # catalog text is untrusted.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="paths">{_e(summary.get("input", ""))} &rarr; {_e(summary.get("output", ""))}</p>',
        '<div class="cards">',
        *(f'<div class="card" data-count="{_e(name)}"><b>{_number(value)}</b><span>{_e(name)}</span></div>'
          for name, value in cards if value is not None),
        "</div>",
        "<h2>Statuses</h2>",
        _count_table("status", counts["statuses"], rows, "status"),
        "<h2>Flags</h2>",
        _flag_table(counts["flags"], rows),
        "<h2>Ad lengths</h2>",
        _histogram(collector.ad_lengths, collector.channel),
        f"<h2>Sample <small>({len(sample):,} of {counts['rows']:,} rows, flagged rows first; row 1 is the catalog's first)</small></h2>",
        _sample_table(sample),
        "<h2>Run summary</h2>",
        _summary_table(summary),
        "</body></html>",
        "",
    ])


def _count_table(label: str, values: Mapping[str, int], rows: int, kind: str) -> str:
    lines = [f'<table class="counts"><tr><th>{_e(label)}</th><th>rows</th><th>share</th></tr>']
    for name, count in values.items():
        lines.append(
            f'<tr data-{kind}="{_e(name)}"><td>{_e(name)}</td><td class="n">{count:,}</td>'
            f'<td class="bar"><span style="width:{100 * count / rows:.1f}%"></span>{100 * count / rows:.1f}%</td></tr>'
        )
    return "\n".join(lines + ["</table>"])


def _flag_table(flags: Mapping[str, int], rows: int) -> str:
    lines = ['<table class="counts"><tr><th>flag</th><th>rows</th><th>share</th><th>the ad&hellip;</th></tr>']
    for code, count in flags.items():
        lines.append(
            f'<tr data-flag="{_e(code)}" class="{"zero" if not count else ""}"><td><span class="flag">{_e(code)}</span></td>'
            f'<td class="n">{count:,}</td><td class="bar"><span style="width:{100 * count / rows:.1f}%"></span>'
            f"{100 * count / rows:.1f}%</td><td>{_e(FLAG_MEANINGS.get(code, ''))}</td></tr>"
        )
    return "\n".join(lines + ["</table>"])


def _histogram(lengths: Counter, channel: Channel | None) -> str:
    """An inline SVG bar chart of ad lengths, with the channel's limit as a line."""
    if not lengths:
        return '<p class="none">No ads.</p>'
    limit = channel.max_chars if channel else None
    top = max(max(lengths), limit or 0)
    step = max(1, math.ceil(top / 24))
    # Bins start at `origin + k * step`, placed so that one starts just after the limit: no
    # bin holds lengths on both sides of it.
    origin = (limit + 1) % step if limit is not None else 0
    first, last = (min(lengths) - origin) // step, (top - origin) // step
    bins = Counter({key: 0 for key in range(first, last + 1)})
    for length, count in lengths.items():
        bins[(length - origin) // step] += count
    width, height, left, bottom = 900, 220, 48, 36
    plot_w, plot_h = width - left - 12, height - bottom - 12
    tallest = max(bins.values()) or 1
    bar_w = plot_w / len(bins)
    parts = [
        f'<svg class="histogram" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Ad lengths in characters{f", limit {limit}" if limit else ""}">',
        f'<line x1="{left}" y1="{12 + plot_h}" x2="{width - 12}" y2="{12 + plot_h}" class="axis"/>',
        f'<text x="{left - 6}" y="16" class="tick" text-anchor="end">{tallest:,}</text>',
        f'<text x="{left - 6}" y="{12 + plot_h}" class="tick" text-anchor="end">0</text>',
    ]
    for index, (key, count) in enumerate(sorted(bins.items())):
        low, high = max(origin + key * step, 0), origin + key * step + step - 1
        bar_h = plot_h * count / tallest
        over = limit is not None and low > limit
        x = left + index * bar_w
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{12 + plot_h - bar_h:.1f}" width="{max(bar_w - 2, 1):.1f}" height="{bar_h:.1f}" '
            f'class="{"over" if over else "bar"}"><title>{low}-{high} characters: {count:,} ads</title></rect>'
        )
        if index % max(1, len(bins) // 8) == 0:
            parts.append(f'<text x="{x + 1:.1f}" y="{12 + plot_h + 16}" class="tick">{low}</text>')
    if limit is not None:
        x = left + ((limit + 1 - origin) // step - first) * bar_w
        parts.append(f'<line x1="{x:.1f}" y1="8" x2="{x:.1f}" y2="{12 + plot_h}" class="limit"/>')
        parts.append(f'<text x="{x - 4:.1f}" y="20" class="limit-label" text-anchor="end">limit {limit}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" class="tick" text-anchor="middle">characters</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _sample_table(sample: list[SampleRow]) -> str:
    if not sample:
        return '<p class="none">No rows.</p>'
    lines = ['<table class="sample"><tr><th>row</th><th>product</th><th>description</th><th>ad</th><th>status</th><th>flags</th></tr>']
    for row in sample:
        flags = " ".join(f'<span class="flag">{_e(flag)}</span>' for flag in row.flags)
        lines.append(
            f'<tr class="{"flagged" if row.flags else ""}"><td class="n">{row.row + 1:,}</td><td>{_e(row.product)}</td>'
            f"<td>{_e(row.description)}</td><td>{_e(row.ad)}</td><td>{_e(row.status)}</td><td>{flags}</td></tr>"
        )
    return "\n".join(lines + ["</table>"])


def _summary_table(summary: Mapping) -> str:
    lines = ['<table class="summary">']
    for key, value in summary.items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        cell = f"<pre>{_e(shown)}</pre>" if isinstance(value, (dict, list)) else _e(shown)
        lines.append(f"<tr><th>{_e(key)}</th><td>{cell}</td></tr>")
    return "\n".join(lines + ["</table>"])


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, int) else _e(str(value))


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_CELL else text[:_MAX_CELL] + "…"


def _e(value) -> str:
    return html.escape(str(value), quote=True)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:24px auto;max-width:1160px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h2 small{font-weight:normal;color:#59636e}.paths{color:#59636e;margin:0 0 16px;word-break:break-all}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #d0d7de;border-radius:8px;padding:10px 16px;min-width:110px}
.card b{display:block;font-size:22px}.card span{color:#59636e}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #e4e8ec;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.counts{width:auto;min-width:560px}td.bar{width:220px;white-space:nowrap}
td.bar span{display:inline-block;height:10px;background:#54aeff;margin-right:6px;vertical-align:middle;max-width:150px}
tr.zero{color:#8c959f}.flag{display:inline-block;background:#fff1e5;color:#953800;border:1px solid #ffd8b5;border-radius:10px;padding:0 7px;margin:1px;font-size:12px;white-space:nowrap}
tr.flagged td:first-child{box-shadow:inset 3px 0 #fb8f44}table.sample{table-layout:fixed}
table.sample th:nth-child(1){width:56px}table.sample th:nth-child(2){width:15%}table.sample th:nth-child(5){width:12%}
table.sample th:nth-child(6){width:15%}table.sample td{overflow-wrap:anywhere}
table.summary th{width:220px}pre{margin:0;white-space:pre-wrap;word-break:break-all;font-size:12px}
svg.histogram{width:100%;max-width:900px;height:auto}svg .bar{fill:#54aeff}svg .over{fill:#cf222e}
svg .axis{stroke:#8c959f}svg .limit{stroke:#cf222e;stroke-dasharray:5 4;stroke-width:2}svg .limit-label{fill:#cf222e;font-size:12px}
svg .tick{fill:#59636e;font-size:11px}.none{color:#59636e}
"""
