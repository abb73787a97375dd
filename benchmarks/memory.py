"""Peak memory of `adpulse-batch run` as the catalog grows: it should not grow with it.

    python benchmarks/memory.py                         # 10,000 and 1,000,000 rows, CSV
    python benchmarks/memory.py --rows 10000 100000 --format parquet

Each catalog is synthetic (lengths as in sample_catalogs/) and goes through the real command,
`adpulse-batch run CATALOG --adapter TEST_ADAPTER --max-new-tokens 1`, in a subprocess, with
the tiny test model (`adpulse-batch make-test-model`), so the run is all reading, planning,
part files and assembly, and little model. Reported per catalog: the child's peak resident
memory (from wait4, the kernel's own figure), its RSS sampled along the run, and the wall
time. Target: the largest catalog peaks at most 1.5x the smallest.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import _cpu_name, synthetic_catalog  # noqa: E402  (the same synthetic rows)

TARGET = 1.5


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_catalog(path: Path, rows: int, fmt: str, seed: int) -> None:
    """Write `rows` synthetic rows in blocks (the writer itself stays small)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    block = 50_000
    parquet = None
    with open(path, "w", newline="", encoding="utf-8") if fmt != "parquet" else _null() as handle:
        if fmt == "csv":
            writer = csv.writer(handle)
            writer.writerow(["sku", "product", "description"])
        for start in range(0, rows, block):
            pairs = synthetic_catalog(min(block, rows - start), seed + start)
            skus = [f"{start + i:09d}" for i in range(len(pairs))]
            if fmt == "csv":
                writer.writerows((sku, p, d) for sku, (p, d) in zip(skus, pairs))
            elif fmt == "jsonl":
                handle.writelines(json.dumps({"sku": s, "product": p, "description": d}) + "\n" for s, (p, d) in zip(skus, pairs))
            else:
                table = pa.table({"sku": skus, "product": [p for p, _ in pairs], "description": [d for _, d in pairs]})
                parquet = parquet or pq.ParquetWriter(path, table.schema)
                parquet.write_table(table)
    if parquet is not None:
        parquet.close()


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def run_once(command: list[str], env: dict) -> dict:
    """Run `command`; its peak RSS (wait4), RSS samples every half second, and wall time."""
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        # Not child.poll(): that could reap the child before wait4 reads its peak.
        status = Path(f"/proc/{child.pid}/status")
        while not done.wait(0.5):
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        samples.append((time.monotonic() - started, int(line.split()[1]) / 1024))
            except OSError:
                break

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    done.set()
    child.returncode = os.waitstatus_to_exitcode(status)
    sampler.join(timeout=2)
    seconds = time.monotonic() - started
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}):\n{stderr}")
    # RSS at a quarter, half, three quarters of the run and at its end: flat means bounded.
    marks = {}
    for fraction in (0.25, 0.5, 0.75, 1.0):
        before = [mb for t, mb in samples if t <= fraction * seconds]
        if before:
            marks[f"{int(fraction * 100)}%"] = round(before[-1], 1)
    return {
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux reports kilobytes
        "seconds": seconds,
        "rss_mb_along_the_run": marks,
        "summary": stderr.strip().splitlines()[-1] if stderr.strip() else "",
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000], help="catalog sizes (default: 10000 1000000)")
    parser.add_argument("--format", choices=("csv", "parquet", "jsonl"), default="csv")
    parser.add_argument("--work-dir", type=Path, help="keep the model and catalogs here (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("memory.json"), help="write the results here")
    args = parser.parse_args(argv)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="adpulse-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "adpulse_batch"]
    adapter = work / "adapter"
    if not adapter.is_dir():
        subprocess.run([*command, "make-test-model", str(work / "model"), "--adapter", str(adapter)], check=True, capture_output=True)
    results = {}
    for rows in sorted(args.rows):
        catalog = work / f"catalog-{rows}.{args.format}"
        if not catalog.exists():
            log(f"writing a {rows}-row {args.format} catalog")
            write_catalog(catalog, rows, args.format, args.seed)
        output = work / f"ads-{rows}.{args.format}"
        log(f"adpulse-batch run over {rows} rows")
        # The ad cache on, as by default, but empty: every row is generated and stored.
        env = {**os.environ, "XDG_CACHE_HOME": str(work / f"xdg-{rows}")}
        shutil.rmtree(env["XDG_CACHE_HOME"], ignore_errors=True)
        result = run_once([*command, "run", str(catalog), "-o", str(output), "--adapter", str(adapter), "--max-new-tokens", "1"], env)
        result["input_mb"] = catalog.stat().st_size / 2**20
        output.unlink()
        results[str(rows)] = result
        log(f"{rows} rows: peak {result['peak_rss_mb']:.0f} MB, {result['seconds']:.0f} s; RSS along the run {result['rss_mb_along_the_run']}")

    sizes = sorted(args.rows)
    ratio = results[str(sizes[-1])]["peak_rss_mb"] / results[str(sizes[0])]["peak_rss_mb"]
    report = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": f"cpu: {_cpu_name()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "format": args.format,
        "model": "adpulse-batch make-test-model (2 layers, hidden 64) + random LoRA; --max-new-tokens 1",
        "catalogs": results,
        "peak_ratio": ratio,
        "target_ratio": TARGET,
    }
    print(f"{'rows':>10} {'input MB':>9} {'peak RSS MB':>12} {'seconds':>8}  RSS along the run (MB)")
    for rows in sizes:
        r = results[str(rows)]
        print(f"{rows:>10} {r['input_mb']:>9.1f} {r['peak_rss_mb']:>12.0f} {r['seconds']:>8.0f}  {r['rss_mb_along_the_run']}")
    print(f"peak ratio {sizes[-1]} / {sizes[0]} rows: {ratio:.2f} (target <= {TARGET})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
