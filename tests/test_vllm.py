"""`--engine vllm` on vLLM's CPU build: the torch engine's ads, statuses and flags, seeded
variants that repeat, adapters through LoRA or merged once, cached reruns that start nothing.

Runs where vLLM imports (CI: its own virtual environment, `.ci/run`); skipped elsewhere. Each
vLLM start takes tens of seconds, so the tests share runs where they can.
"""

import json
import os

import pytest

from adpulse_batch.engines.vllm_engine import merged_root, vllm_version
from conftest import SAMPLE_CSV, read_csv

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(vllm_version() is None, reason="vLLM is not installed (see the README: Engines)"),
]
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: the tiny models need little


def run(run_cli, model_dir, adapter_dir, out, *args):
    result = run_cli(
        "run", SAMPLE_CSV, "-o", out, "--model", model_dir, "--adapter", adapter_dir, "--limit", 16, "--max-new-tokens", 16,
        "--report", out.with_suffix(".json"), "-q", *args,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return read_csv(out), json.loads(out.with_suffix(".json").read_text())


# On CPU an adapter is merged once by default (a BLOOM adapter always: vLLM has no LoRA for
# BLOOM); with --vllm-lora request, a Llama adapter goes as a LoRARequest.
@pytest.mark.parametrize("arch, lora", [("bloom", "auto"), ("llama", "auto"), ("llama", "request")])
def test_vllm_writes_the_torch_engines_ads(run_cli, family_models, tmp_path, arch, lora):
    model_dir, adapter_dir = family_models(arch)
    torch_table, _ = run(run_cli, model_dir, adapter_dir, tmp_path / "torch.csv", "--no-cache")
    vllm_table, report = run(run_cli, model_dir, adapter_dir, tmp_path / "vllm.csv", "--engine", "vllm", "--vllm-lora", lora)
    assert vllm_table == torch_table  # ads, statuses and flags
    assert report["engine"]["engine"] == "vllm" and report["model_loaded"]
    assert report["engine"]["adapter"] == ("request" if lora == "request" else "merge")
    assert report["load_seconds"] > 0 and report["generate_seconds"] > 0
    merged = sorted(merged_root().glob("*/config.json")) if merged_root().exists() else []
    assert len(merged) == (lora == "auto")  # merged once, into the cache
    # The same run again: every ad from the cache, no engine started.
    again, report = run(run_cli, model_dir, adapter_dir, tmp_path / "again.csv", "--engine", "vllm", "--vllm-lora", lora)
    assert again == vllm_table
    assert not report["model_loaded"] and report["rows_from_cache"] == report["rows_total"] - report["rows_skipped"]


def test_seeded_variants_repeat_and_another_seed_changes_them(run_cli, family_models, tmp_path):
    model_dir, adapter_dir = family_models("llama")
    sampled = ["--engine", "vllm", "--num-variants", 2, "--temperature", 0.9, "--no-cache"]
    first, _ = run(run_cli, model_dir, adapter_dir, tmp_path / "a.csv", *sampled, "--seed", 3)
    second, _ = run(run_cli, model_dir, adapter_dir, tmp_path / "b.csv", *sampled, "--seed", 3)
    other, _ = run(run_cli, model_dir, adapter_dir, tmp_path / "c.csv", *sampled, "--seed", 4)
    assert first == second and first != other
    header, rows = first
    ads = [(row[header.index("ad_copy_1")], row[header.index("ad_copy_2")]) for row in rows if row[header.index("ad_status")] == "ok"]
    assert any(a != b for a, b in ads)  # the variants differ



def test_throughput_benchmark_runs_the_vllm_methods(tmp_path):
    from test_benchmarks import load_throughput

    throughput = load_throughput()
    out = tmp_path / "result.json"
    code = throughput.main([
        "--arch", "llama", "--preset", "micro", "--rows", "6", "--new-tokens", "3", "--repeats", "1",
        "--methods", "naive,adpulse,vllm,run-vllm", "--dtype", "float32", "--quiet-below", "1", "--ceiling-seconds", "0.05", "--json", str(out),
    ])  # fmt: skip
    result = json.loads(out.read_text())
    assert code == 0
    assert result["same_greedy_output_as_merged_reference"]["vllm"] == "6/6"
    assert result["run_vllm_same_as_vllm"] == "6/6"
    assert result["generate_only_rows_per_s"]["run-vllm"] > 0 and result["run_vllm_vs_vllm_generation"] > 0
