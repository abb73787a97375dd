"""Time of the ad quality steps per 100,000 rows: flags, channel fitting, duplicates, HTML report.

    python benchmarks/flags.py                 # 100,000 synthetic (row, ad) pairs, 3 repeats
    python benchmarks/flags.py --invented 1    # every ad invents something: the slow paths
    python benchmarks/flags.py --rows 20000 --repeats 1 --json /tmp/flags.json

Rows are drawn from sample_catalogs/catalog.csv (all six columns: sku, product name,
description, category, price as a float, stock as an int, NaN where empty); ads are made
from their words and, in a share of them (`--invented`, default 0.2), one of what the flags
look for: an invented colour, number, name or model code, a shouted or banned word, "!!",
an emoji. Each step runs over every pair `--repeats` times (the median and the best are
reported), as `run` would call it: `flag_ad` with 100 banned words and a channel that
forbids emoji, `fit_ad` to a 150- and a 30-character channel, `DuplicateAds` (both passes),
and `ReportCollector.add` then the page. Target: flagging adds no noticeable time to a run,
well under 2 s per 100k rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adpulse_batch.banned import BannedWords  # noqa: E402
from adpulse_batch.channels import CHANNELS, fit_ad  # noqa: E402
from adpulse_batch.duplicates import DuplicateAds  # noqa: E402
from adpulse_batch.flags import FLAG_CODES, FlagRules, flag_ad  # noqa: E402
from adpulse_batch.html_report import ReportCollector, render_html_report  # noqa: E402

INVENTIONS = [
    " Now in black.", " Only 3 left!!", " Meet the Zephyr Pro.", " The NX300h of mugs.", " BEST PRICE ever.",
    " Cheap and cheerful.", " Shop now 🔥", " 50% off today.", " Loved by twenty thousand fans.",
]
FILLER = ["Shop now.", "Order today.", "Made to last.", "Perfect for every day.", "Try it, you will love it."]


def synthetic_pairs(rows: int, seed: int, invented: float = 0.2) -> list[tuple[dict, str]]:
    catalog = list(csv.DictReader((REPO / "sample_catalogs" / "catalog.csv").open(encoding="utf-8")))
    rng = random.Random(seed)
    pairs = []
    for index in range(rows):
        source = rng.choice(catalog)
        cells = {
            "sku": f"{index:06d}", "product_name": source["product_name"], "description": source["description"],
            "category": source["category"], "price": _number(source["price"], float), "stock": _number(source["stock"], int),
        }
        words = (source["description"] or source["product_name"]).split()
        start = rng.randrange(max(1, len(words) - 4))
        fragment = " ".join(words[start : start + rng.randint(4, 14)])
        invention = rng.choice(INVENTIONS) if rng.random() < invented else ""
        ad = f"{source['product_name']}: {fragment}.{invention} {rng.choice(FILLER)}"
        pairs.append((cells, ad))
    return pairs


def _number(text: str, kind):
    try:
        return kind(text)
    except ValueError:
        return float("nan")  # as pandas reads an empty or odd cell


def banned_list() -> BannedWords:
    words = ["cheap", "guaranteed", "miracle", "best price", "free shipping", "risk free", "act now", "lowest price"]
    return BannedWords(tuple(words + [f"bannedword{i}" for i in range(100 - len(words))]))


def time_steps(pairs: list[tuple[dict, str]]) -> dict[str, float]:
    rules = FlagRules(banned_list(), forbid_emoji=True)
    seconds = {}

    start = time.perf_counter()
    flags = [flag_ad(rules, cells, ad) for cells, ad in pairs]
    seconds["flag_ad"] = time.perf_counter() - start

    for name in ("merchant-title", "google-ads-headline"):
        channel = CHANNELS[name]
        start = time.perf_counter()
        for _, ad in pairs:
            fit_ad(ad, channel)
        seconds[f"fit_ad {name}"] = time.perf_counter() - start

    start = time.perf_counter()
    duplicates = DuplicateAds()
    for row, (cells, ad) in enumerate(pairs):
        duplicates.add(row, ad, cells["product_name"], cells["description"])
    found = sum(duplicates.is_duplicate(row) for row in range(len(pairs)))
    seconds["duplicates"] = time.perf_counter() - start

    start = time.perf_counter()
    collector = ReportCollector(CHANNELS["merchant-title"])
    for row, ((cells, ad), row_flags) in enumerate(zip(pairs, flags)):
        collector.add(row, product=cells["product_name"], description=cells["description"], ad=ad, status="ok", flags=row_flags)
    render_html_report({"rows_total": len(pairs)}, collector)
    seconds["html report"] = time.perf_counter() - start

    seconds["flagged share"] = sum(bool(f) for f in flags) / len(pairs)
    seconds["duplicates found"] = found
    return seconds


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--invented", type=float, default=0.2, help="share of ads that invent something")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    pairs = synthetic_pairs(args.rows, args.seed, args.invented)
    import numpy  # noqa: F401  (DuplicateAds imports it on first use: once a run, not timed here)
    runs = [time_steps(pairs) for _ in range(args.repeats)]
    steps = [name for name in runs[0] if name not in ("flagged share", "duplicates found")]
    # The median says what a run sees on this machine as it is; the best of the repeats is the
    # nearest to the cost itself when other work shares the CPU.
    per_100k = {name: statistics.median(run[name] for run in runs) * 100_000 / args.rows for name in steps}
    per_100k["total"] = sum(per_100k.values())
    best_100k = {name: min(run[name] for run in runs) * 100_000 / args.rows for name in steps}
    best_100k["total"] = sum(best_100k.values())
    flag_counts = {code: 0 for code in FLAG_CODES}
    rules = FlagRules(banned_list(), forbid_emoji=True)
    for cells, ad in pairs[:10_000]:
        for code in flag_ad(rules, cells, ad):
            flag_counts[code] += 1

    print(f"{args.rows:,} rows, {args.invented:.0%} inventing, {args.repeats} repeats, {cpu_name()}, "
          f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"  {'seconds per 100k rows':<28} {'median':>7} {'best':>7}")
    for name, seconds in per_100k.items():
        print(f"  {name:<28} {seconds:7.3f} {best_100k[name]:7.3f}")
    print(f"  rows flagged: {runs[0]['flagged share']:.0%}; duplicates: {runs[0]['duplicates found']:,}; "
          f"flags in the first 10k: {flag_counts}")
    if args.json:
        args.json.write_text(json.dumps({
            "rows": args.rows, "invented": args.invented, "repeats": args.repeats, "cpu": cpu_name(), "python": platform.python_version(),
            "seconds_per_100k": {name: round(value, 4) for name, value in per_100k.items()},
            "best_seconds_per_100k": {name: round(value, 4) for name, value in best_100k.items()},
            "load_average": os.getloadavg()[0],
            "flags_in_first_10k": flag_counts,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
