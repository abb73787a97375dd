"""The throughput benchmark runs end to end on a micro model, and the engine writes the same
greedy tokens as one `generate` per row through the unmerged adapter. Speed is not tested."""

import importlib.util
import json
import sys

from conftest import REPO


def load_throughput():
    spec = importlib.util.spec_from_file_location("throughput", REPO / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["throughput"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_throughput_benchmark_runs_and_checks_the_text(tmp_path):
    throughput = load_throughput()
    out = tmp_path / "result.json"
    code = throughput.main([
        "--preset", "micro", "--rows", "6", "--new-tokens", "3", "--repeats", "1", "--methods", "naive,adpulse",
        "--quiet-below", "1", "--ceiling-seconds", "0.05", "--json", str(out),
    ])
    result = json.loads(out.read_text())
    assert code == 0
    assert result["same_greedy_output_as_merged_reference"]["adpulse"] == "6/6"
    assert result["distinct_naive_outputs"] >= 4  # the rows' outputs differ, so agreeing means something
    # (The pipeline row is left out here: importing transformers.pipelines alone takes seconds.)
    for key in ("naive_rows_per_s", "adpulse_rows_per_s", "speedup_vs_naive", "new_tokens_per_s", "peak_rss_mb", "device",
                "settings", "adpulse_ceiling_fraction"):
        assert result[key] is not None, key
    assert result["settings"]["prompt_tokens_mean"] > 50  # a realistic tokenizer, not one token per byte
