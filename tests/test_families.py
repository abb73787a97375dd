"""`run` over every family: the same guarantees as BLOOM's, chat prompts, and the engine and
precision in what decides an ad."""

import json
import shutil

import pytest

from adpulse_batch.engines import ENGINES, Engine
from adpulse_batch.engines.vllm_engine import INSTALL, vllm_version
from adpulse_batch.families import FAMILIES
from conftest import SAMPLE_CSV, read_csv, write_csv


def run_family(run_cli, model_dir, adapter_dir, *args):
    return run_cli("run", *args, "--model", model_dir, "--adapter", adapter_dir, "--max-new-tokens", "12", "--quiet")


def test_catalog_comes_back_whole_with_ads_whatever_the_batch(run_cli, arch_model, tmp_path):
    _, model_dir, adapter_dir = arch_model
    for size in (1, 32):
        result = run_family(run_cli, model_dir, adapter_dir, SAMPLE_CSV, "-o", tmp_path / f"b{size}.csv", "--batch-size", size)
        assert result.exit_code == 0, result.stderr
    assert (tmp_path / "b1.csv").read_bytes() == (tmp_path / "b32.csv").read_bytes()
    in_header, in_rows = read_csv(SAMPLE_CSV)
    header, rows = read_csv(tmp_path / "b32.csv")
    assert header == in_header + ["ad_copy", "ad_status", "ad_flags"]
    assert [r[: len(in_header)] for r in rows] == in_rows
    assert sum(r[-2].startswith("ok") and r[-3] != "" for r in rows) > len(rows) / 2


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_chat_runs_an_instruct_model_without_an_adapter(run_cli, family_models, tmp_path, arch):
    model_dir, _ = family_models(arch)
    source = write_csv(tmp_path / "in.csv", ["name", "description"], [["Mug", "Blue stoneware"], ["Pen", "Black ink"]])
    common = ["--model", model_dir, "--adapter", "none", "--max-new-tokens", "12", "-q", "--no-cache"]
    for chat in ("--chat", "--no-chat"):
        result = run_cli("run", source, "-o", tmp_path / f"{chat}.csv", chat, "--report", tmp_path / f"{chat}.json", *common)
        assert result.exit_code == 0, result.stderr
        assert json.loads((tmp_path / f"{chat}.json").read_text())["chat"] is (chat == "--chat")
    # A chat prompt is another prompt: other ads.
    assert read_csv(tmp_path / "--chat.csv") != read_csv(tmp_path / "--no-chat.csv")


def test_chat_needs_a_chat_template(run_cli, test_model, tmp_path):
    result = run_cli("run", SAMPLE_CSV, "-o", tmp_path / "out.csv", "--model", test_model[0], "--adapter", "none", "--chat")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"Error: --chat: the tokenizer of '{test_model[0]}' has no chat template; drop --chat to use the plain template, "
        "or use an instruct model"
    )
    assert not (tmp_path / "out.csv").exists()


def test_unsupported_families_are_refused_naming_the_supported_ones(run_cli, test_model, tmp_path):
    other = tmp_path / "gpt"
    shutil.copytree(test_model[0], other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    data = write_csv(tmp_path / "ads.csv", ["product", "description", "ad"], [["Mug", "Blue", "Buy it!"]])
    for command in (["run", SAMPLE_CSV, "-o", tmp_path / "out.csv", "--adapter", "none"], ["finetune", data, "-o", tmp_path / "a", "--eval-fraction", 0]):
        result = run_cli(*command, "--model", other)
        assert result.exit_code == 2
        assert result.stderr.strip() == (
            f"Error: --model '{other}' is a 'gpt2' model; adpulse-batch runs the model types "
            "bloom, llama, mistral, qwen2, qwen3, gemma, gemma2, phi3"
        )
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "a").exists()


def test_prompts_must_fit_what_the_model_attends_to(run_cli, family_models, tmp_path):
    model_dir, _ = family_models("llama")  # max_position_embeddings 1024
    result = run_cli("run", SAMPLE_CSV, "-o", tmp_path / "out.csv", "--model", model_dir, "--adapter", "none",
                     "--max-prompt-tokens", 1000, "--max-new-tokens", 64)  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: --max-prompt-tokens 1000 plus --max-new-tokens 64 exceed the 1024 tokens the model attends to "
        "(its position limit); lower them"
    )


class FixedEngine(Engine):
    """An engine that writes the same ad for every prompt: another engine, other ads."""

    name = "fixed"

    def __init__(self, tokens):
        self.tokens = tokens

    @classmethod
    def identity(cls, model, device):
        return {"engine": cls.name, "version": 1, "device": device.type, "dtype": "float32"}

    @classmethod
    def load(cls, model, *, tokenizer, device, decoding):
        return cls(tokenizer(" Fixed ad.")["input_ids"] + [min(decoding.stop_ids)])

    def generate(self, requests):
        return [self.tokens for _ in requests]


def test_engine_and_dtype_decide_the_cache_and_the_kept_work(run_ads, monkeypatch, tmp_path):
    from adpulse_batch.run import run_catalog
    from adpulse_batch.settings import GenerationSettings, ModelSettings, RunSettings

    source = write_csv(tmp_path / "in.csv", ["name", "description"], [["Mug", "Blue"], ["Pen", "Black"]])
    out, report = tmp_path / "out.csv", tmp_path / "report.json"

    def rows_reused(*args):
        assert run_ads(source, "-o", out, "--keep-work", "--report", report, *args).exit_code == 0
        counts = json.loads(report.read_text())
        return counts["rows_from_cache"] + counts["rows_resumed"]

    assert rows_reused() == 0
    assert rows_reused() == 2  # same engine and dtype: kept work resumed
    assert rows_reused("--dtype", "bfloat16") == 0  # another precision: neither cache nor kept work
    assert json.loads(report.read_text())["engine"]["dtype"] == "bfloat16"

    monkeypatch.setitem(ENGINES, "fixed", lambda: FixedEngine)
    adapter = json.loads(report.read_text())["model"]["adapter"]
    summary = run_catalog(RunSettings(
        input=source, output=out, keep_work=True, model=ModelSettings(adapter=adapter, engine="fixed", dtype="float32"),
        generation=GenerationSettings(max_new_tokens=12),
    ))  # fmt: skip
    assert (summary.rows_from_cache, summary.rows_resumed, summary.rows_generated) == (0, 0, 2)
    assert [row[2] for row in read_csv(out)[1]] == ["Fixed ad.", "Fixed ad."]
    assert summary.engine == {"engine": "fixed", "version": 1, "device": "cpu", "dtype": "float32"}


def test_lora_defaults_are_pefts():
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_defaults

    for model_type, family in FAMILIES.items():
        if model_type in peft_defaults:
            assert list(family.lora_target_modules) == peft_defaults[model_type]


def test_make_test_model_writes_every_family(run_cli, tmp_path):
    for arch in FAMILIES:
        result = run_cli("make-test-model", tmp_path / arch, "--arch", arch, "--adapter", tmp_path / f"{arch}-adapter")
        assert result.exit_code == 0, result.stderr
        assert json.loads((tmp_path / arch / "config.json").read_text())["model_type"] == arch
    ran = run_cli("run", SAMPLE_CSV, "-o", tmp_path / "out.csv", "--adapter", tmp_path / "phi3-adapter", "--limit", 3,
                  "--max-new-tokens", 4, "-q")  # fmt: skip
    assert ran.exit_code == 0, ran.stderr


@pytest.mark.skipif(vllm_version() is not None, reason="vLLM is installed here")
def test_engine_vllm_without_vllm_says_how_to_get_it(run_cli, test_model, tmp_path):
    result = run_cli("run", SAMPLE_CSV, "-o", tmp_path / "out.csv", "--adapter", test_model[1], "--engine", "vllm", "--no-cache")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: {INSTALL}"
    assert not (tmp_path / "out.csv").exists()
