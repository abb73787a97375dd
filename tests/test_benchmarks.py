"""The throughput benchmark runs every method end to end on a micro model of each family, and
the engine writes the same greedy tokens as one `generate` per row. Speed is not tested."""

import importlib.util
import json
import sys

import pytest

from conftest import REPO


def load_throughput():
    spec = importlib.util.spec_from_file_location("throughput", REPO / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["throughput"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("arch", ["bloom", "llama"])
def test_throughput_benchmark_runs_every_method_and_checks_the_text(tmp_path, arch):
    throughput = load_throughput()
    out = tmp_path / "result.json"
    code = throughput.main([
        "--arch", arch, "--preset", "micro", "--rows", "6", "--new-tokens", "3", "--repeats", "1",
        "--methods", ",".join(throughput.DEFAULT_METHODS), "--dtype", "float32", "--quiet-below", "1", "--ceiling-seconds", "0.05", "--json", str(out),
    ])  # fmt: skip
    result = json.loads(out.read_text())
    assert code == 0
    assert result["same_greedy_output_as_merged_reference"]["adpulse"] == "6/6"
    assert result["run_same_as_engine"] == "6/6"
    assert result["distinct_naive_outputs"] >= 4  # the rows' outputs differ, so agreeing means something
    for method in throughput.DEFAULT_METHODS:  # the vLLM ones: tests/test_vllm.py
        assert result["rows_per_s"][method] > 0, method
    for key in ("speedup_vs_naive", "speedup_vs_pipeline", "new_tokens_per_s", "peak_rss_mb", "device", "cpu_flags",
                "settings", "adpulse_ceiling_fraction"):
        assert result[key] is not None, key
    assert result["settings"]["prompt_tokens_mean"] > 50  # a realistic tokenizer, not one token per byte


def test_cpu_engines_benchmark_compares_runs_ads_across_precisions(tmp_path, monkeypatch):
    monkeypatch.delenv("ADPULSE_DTYPE")  # run's own default, as the benchmark measures it
    load_throughput()
    spec = importlib.util.spec_from_file_location("cpu_engines", REPO / "benchmarks" / "cpu_engines.py")
    cpu_engines = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu_engines)
    out = tmp_path / "result.json"
    code = cpu_engines.main([
        "--preset", "micro", "--rows", "6", "--new-tokens", "3", "--rounds", "1", "--methods", "run,run-bfloat16",
        "--quiet-below", "1", "--json", str(out),
    ])  # fmt: skip
    result = json.loads(out.read_text())
    assert code == 0
    assert list(result["methods"]) == ["run-float32", "run", "run-bfloat16"]  # the float32 reference first
    assert result["methods"]["run-float32"]["same_ads_as_reference"] == 6
    assert result["methods"]["run-bfloat16"]["dtype"] == "bfloat16"
    for method in result["methods"].values():
        assert method["rows_per_s"] > 0 and method["generate_rows_per_s"] > method["rows_per_s"] and method["peak_rss_mb"] > 100
