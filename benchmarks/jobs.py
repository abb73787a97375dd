"""The run command as a job: 1 vs 2 worker processes, and a first vs a cached second run.

    python benchmarks/jobs.py                    # CPU preset, 256 rows, 32 new tokens
    python benchmarks/jobs.py --rows 2048 --only rerun

Both go through the real command, `python -m adpulse_batch run`, in a subprocess, on the
throughput benchmark's model (a random BLOOM of the CPU preset with a random LoRA adapter,
no download) and synthetic catalog:

- processes: `--num-processes 1` against `--num-processes 2` (accelerate's launcher, gloo
  on CPU), interleaved repeats, medians; the two outputs must be byte-identical.
- rerun: a first run with an empty ad cache, then the same command again: every row comes
  from the cache and the model is not loaded. Reported: the command's wall time (interpreter
  start and imports included) and the job's own seconds from its report. Target (issue 5):
  the second run at least 20x faster.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import PRESETS, _cpu_name, build_model, log, synthetic_catalog, train_tokenizer  # noqa: E402


def command(catalog: Path, output: Path, model: Path, adapter: Path, args, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "adpulse_batch", "run", str(catalog), "-o", str(output), "--model", str(model), "--adapter", str(adapter),
        "--max-new-tokens", str(args.new_tokens), "--batch-size", str(args.batch_size), "--quiet", *extra,
    ]  # fmt: skip


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - start


def processes(work: Path, catalog: Path, model: Path, adapter: Path, args, env: dict) -> dict:
    seconds = {1: [], 2: []}
    outputs = {}
    for repeat in range(args.repeats):
        for n in (1, 2):
            output = work / f"p{n}.csv"
            report = work / f"p{n}.json"
            wall = timed(command(catalog, output, model, adapter, args, "--num-processes", str(n), "--no-cache", "--report", str(report)), env)
            job = json.loads(report.read_text())["seconds"]
            seconds[n].append({"wall": wall, "job": job})
            outputs[n] = output.read_bytes()
            log(f"repeat {repeat + 1}/{args.repeats}, {n} process(es): {wall:.1f} s wall, {job:.1f} s in the job")
    same = outputs[1] == outputs[2]
    result = {}
    for n in (1, 2):
        wall = statistics.median(s["wall"] for s in seconds[n])
        job = statistics.median(s["job"] for s in seconds[n])
        result[f"{n}_process"] = {"rows_per_s": args.rows / wall, "rows_per_s_in_job": args.rows / job, "seconds": seconds[n]}
    result["outputs_identical"] = same
    return result


def rerun(work: Path, catalog: Path, model: Path, adapter: Path, args, env: dict) -> dict:
    runs = []
    for repeat in range(args.repeats):
        cache = work / f"cache-{repeat}.sqlite"  # empty for each first run
        pair = []
        for attempt in ("first", "second"):
            report = work / f"r-{attempt}.json"
            wall = timed(command(catalog, work / f"r-{attempt}.csv", model, adapter, args, "--cache", str(cache), "--report", str(report)), env)
            data = json.loads(report.read_text())
            pair.append({"wall": wall, "job": data["seconds"], "rows_generated": data["rows_generated"],
                         "rows_from_cache": data["rows_from_cache"], "model_loaded": data["model_loaded"]})
        log(f"repeat {repeat + 1}/{args.repeats}: first {pair[0]['wall']:.1f} s wall ({pair[0]['job']:.1f} in the job), "
            f"second {pair[1]['wall']:.1f} s wall ({pair[1]['job']:.2f} in the job)")
        runs.append(pair)
    first_wall = statistics.median(p[0]["wall"] for p in runs)
    second_wall = statistics.median(p[1]["wall"] for p in runs)
    first_job = statistics.median(p[0]["job"] for p in runs)
    second_job = statistics.median(p[1]["job"] for p in runs)
    return {
        "first_wall_s": first_wall, "second_wall_s": second_wall, "speedup_wall": first_wall / second_wall,
        "first_job_s": first_job, "second_job_s": second_job, "speedup_job": first_job / second_job,
        "outputs_identical": (work / "r-first.csv").read_bytes() == (work / "r-second.csv").read_bytes(),
        "runs": runs,
    }  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("processes", "rerun"), help="run one of the two measurements")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("jobs-cpu.json"))
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="adpulse-jobs-"))
    try:
        log(f"building the CPU-preset model and a {args.rows}-row catalog in {work}")
        tokenizer = train_tokenizer(args.seed)
        model, adapter = build_model(work, tokenizer, PRESETS["cpu"], device=torch.device("cpu"), dtype=torch.float32, seed=args.seed)
        catalog = work / "catalog.csv"
        with open(catalog, "w", encoding="utf-8", newline="") as handle:
            import csv

            writer = csv.writer(handle)
            writer.writerow(["product", "description"])
            writer.writerows(synthetic_catalog(args.rows, args.seed))
        env = {**os.environ, "XDG_CACHE_HOME": str(work / "xdg")}  # no user cache
        results = {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "device": f"cpu: {_cpu_name()}, {os.cpu_count()} cores",
            "settings": {"preset": "cpu", **PRESETS["cpu"], "rows": args.rows, "new_tokens": args.new_tokens,
                         "batch_size": args.batch_size, "repeats": args.repeats, "torch": torch.__version__},
        }  # fmt: skip
        if args.only in (None, "processes"):
            results["processes"] = processes(work, catalog, model, adapter, args, env)
        if args.only in (None, "rerun"):
            results["rerun"] = rerun(work, catalog, model, adapter, args, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{results['date']}  {results['device']}  CPU preset, {args.rows} rows, {args.new_tokens} new tokens, batch {args.batch_size}, median of {args.repeats}")
    if "processes" in results:
        p = results["processes"]
        for n in (1, 2):
            r = p[f"{n}_process"]
            print(f"  {n} process(es): {r['rows_per_s']:.2f} rows/s wall ({r['rows_per_s_in_job']:.2f} in the job)")
        print(f"  outputs byte-identical: {p['outputs_identical']}")
    if "rerun" in results:
        r = results["rerun"]
        print(f"  first run {r['first_wall_s']:.1f} s, second (all from the cache) {r['second_wall_s']:.1f} s: {r['speedup_wall']:.1f}x wall; "
              f"in the job {r['first_job_s']:.1f} s vs {r['second_job_s']:.2f} s: {r['speedup_job']:.1f}x; outputs identical: {r['outputs_identical']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {args.json}")
    identical = all(results[k]["outputs_identical"] for k in ("processes", "rerun") if k in results)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
