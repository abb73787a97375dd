"""Paired A/B of engine versions: which of two commits (or batch sizes) writes ads faster.

    python benchmarks/engine_ab.py HEAD~3 HEAD              # two commits, batch 32
    python benchmarks/engine_ab.py HEAD:32 HEAD:64          # one commit, two batch sizes
    python benchmarks/engine_ab.py WORKTREE HEAD            # uncommitted changes vs HEAD

Each version's `adpulse_batch` is exported from git (WORKTREE: the files as they are) under
its own package name, so all of them load side by side in one process, on the same random
model (the throughput benchmark's CPU preset) and the same rows. Each round gives every
version the same slice of rows, in rotating order, and times it; the result is the median
over rounds of each version's speed relative to the first one in the same round. On a
shared machine, where speed drifts by tens of percent over minutes, pairing within a round
is what makes a few-percent difference visible. Every version generates the same number of
tokens per row (the model never stops early); the ads each writes differently from the
first version are counted (other arithmetic can flip a near-tie between two tokens).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as T  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def export(revision: str, name: str, into: Path) -> None:
    """`adpulse_batch` at `revision` as the package `name` under `into`."""
    target = into / name
    if revision == "WORKTREE":
        shutil.copytree(REPO / "adpulse_batch", target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "adpulse_batch"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
        (into / "adpulse_batch").rename(target)
    for path in target.rglob("*.py"):
        path.write_text(path.read_text().replace("adpulse_batch", name))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="+", help="REVISION[:BATCH_SIZE]; REVISION is a git revision or WORKTREE")
    parser.add_argument("--rows", type=int, default=1024, help="synthetic catalog rows (default 1024)")
    parser.add_argument("--chunk", type=int, default=128, help="rows per round (default 128)")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--arch", choices=sorted(T.PRESETS), default="bloom")
    parser.add_argument("--preset", choices=("micro", "cpu", "full"), default="cpu")
    args = parser.parse_args(argv)

    packages = Path(tempfile.mkdtemp(prefix="adpulse-ab-"))
    sys.path.insert(0, str(packages))
    tokenizer = T.train_tokenizer(0, bos=args.arch == "llama")
    catalog = T.synthetic_catalog(args.rows, 0)
    shape = dict(T.PRESETS[args.arch][args.preset])
    model_dir, adapter_dir = T.build_model(packages, tokenizer, args.arch, shape, device=torch.device("cpu"), dtype=torch.float32, seed=0)
    versions = []
    for number, spec in enumerate(args.versions):
        revision, _, batch = spec.partition(":")
        name = f"adpulse_v{number}"
        export(revision, name, packages)
        module = lambda part, name=name: importlib.import_module(f"{name}.{part}")  # noqa: E731
        settings, prompts = module("settings"), module("prompts")
        model_settings = settings.ModelSettings(model=str(model_dir), adapter=str(adapter_dir))
        generation = settings.GenerationSettings(max_new_tokens=args.new_tokens)
        template = prompts.Template()
        if hasattr(module("generate"), "load_generator"):  # the engine interface (after 163b874)
            builder = prompts.PromptBuilder(template, tokenizer, 256)
            generator = module("generate").load_generator(model_settings, builder, generation, device=torch.device("cpu"))
            encode = builder.encode_many
        else:  # BLOOM's engine wired into generate.py, prompts without special tokens
            generator = module("generate").Generator(module("model").load_model(model_settings, tokenizer=tokenizer), template, generation)
            encode = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731

        def run(rows, generator=generator, template=template, Prompt=prompts.Prompt, encode=encode, batch=int(batch or 32)):
            texts = [template.render(p, d) for p, d in rows]
            return [v[0].text for v in generator.generate([Prompt(t, i) for t, i in zip(texts, encode(texts))], batch_size=batch)]

        run(catalog[:32])  # warm-up
        versions.append((spec, run))

    speed = {spec: [] for spec, _ in versions}
    relative = {spec: [] for spec, _ in versions}
    different = {spec: 0 for spec, _ in versions}
    for round_ in range(args.rounds):
        first = (round_ * args.chunk) % args.rows
        rows = (catalog + catalog)[first : first + args.chunk]
        order = versions[round_ % len(versions) :] + versions[: round_ % len(versions)]
        T.wait_for_quiet(0.05, 120)
        seconds, ads = {}, {}
        for spec, run in order:
            start = time.perf_counter()
            ads[spec] = run(rows)
            seconds[spec] = time.perf_counter() - start
        reference = versions[0][0]
        for spec, _ in versions:
            different[spec] += sum(a != b for a, b in zip(ads[spec], ads[reference]))
            speed[spec].append(args.chunk / seconds[spec])
            relative[spec].append(seconds[reference] / seconds[spec])
        print(f"round {round_ + 1}: " + "  ".join(f"{s} {speed[s][-1]:.1f} rows/s" for s, _ in versions), file=sys.stderr, flush=True)
    for spec, _ in versions:
        low, mid, high = statistics.quantiles(relative[spec], n=4)
        print(
            f"{spec:16} {statistics.median(speed[spec]):7.2f} rows/s (median)  speed vs {versions[0][0]}: "
            f"x{statistics.median(relative[spec]):.3f} (quartiles {low:.3f}-{high:.3f}); "
            f"ads unlike {versions[0][0]}'s: {different[spec]}/{args.rounds * args.chunk}"
        )
    print(f"{args.rounds} rounds of {args.chunk} rows, {args.new_tokens} new tokens, {args.arch} {args.preset} preset")
    shutil.rmtree(packages, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
