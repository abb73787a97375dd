"""Shared fixtures: a tiny BLOOM and adapter made on the spot, catalogs in tmp_path.

Nothing here touches the network: HF_HUB_OFFLINE is set before transformers is imported,
and every model is a directory written by `make-test-model`.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")  # as the package sets it, before torch loads
# What the tests promise is float32's (a row's ad whatever its batch, equal to transformers'
# own generate); `--dtype auto` picks bfloat16 on CPUs that have it. The bfloat16 promises
# are tested with --dtype bfloat16, the default itself in test_cli_run.py.
os.environ["ADPULSE_DTYPE"] = "float32"

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner

from adpulse_batch.cli import cli

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CSV = REPO / "sample_catalogs" / "catalog.csv"
SAMPLE_PARQUET = REPO / "sample_catalogs" / "catalog.parquet"


@pytest.fixture(autouse=True)
def own_cache_dir(tmp_path, monkeypatch):
    """Each test gets an empty ad cache (never the user's ~/.cache)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture(scope="session")
def test_model(tmp_path_factory):
    """(model_dir, adapter_dir): a tiny random BLOOM, and a random LoRA adapter recording it as base."""
    from adpulse_batch.testmodel import make_test_model

    root = tmp_path_factory.mktemp("models")
    make_test_model(root / "tiny", adapter_path=root / "tiny-adapter")
    return root / "tiny", root / "tiny-adapter"


@pytest.fixture(scope="session")
def cpu_model(test_model):
    """ModelSettings of the test adapter on CPU in float32: its greedy ads are run's, whatever the batch."""
    from adpulse_batch.settings import ModelSettings

    return ModelSettings(adapter=str(test_model[1]), device="cpu", dtype="float32")


# The families the engine and CLI tests run over: ALiBi (BLOOM), RoPE with BOS, byte fallback
# and two end-of-text ids (Llama), RoPE without BOS, ChatML (Qwen2).
ARCHES = ["bloom", "llama", "qwen2"]


@pytest.fixture(scope="session")
def family_models(tmp_path_factory, test_model):
    """`family_models(arch)` -> (model_dir, adapter_dir) of a tiny model of that family, made once."""
    from adpulse_batch.testmodel import make_test_model

    root = tmp_path_factory.mktemp("families")
    made = {"bloom": test_model}

    def get(arch: str):
        if arch not in made:
            make_test_model(root / arch, arch=arch, adapter_path=root / f"{arch}-adapter")
            made[arch] = (root / arch, root / f"{arch}-adapter")
        return made[arch]

    return get


@pytest.fixture(params=ARCHES)
def arch_model(request, family_models):
    """(arch, model_dir, adapter_dir), once per family of ARCHES."""
    return (request.param, *family_models(request.param))


@pytest.fixture
def run_cli(test_model):
    """Invoke `adpulse-batch ARGS...`; returns the Click result (stdout and stderr apart)."""

    def invoke(*args, env=None):
        return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def run_ads(run_cli, test_model):
    """`adpulse-batch run` with the test adapter and few new tokens (fast)."""
    _, adapter = test_model

    def invoke(*args, env=None):
        return run_cli("run", *args, "--adapter", adapter, "--max-new-tokens", "12", "--quiet", env=env)

    return invoke


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        records = list(csv.reader(handle))
    return records[0], records[1:]


def assert_same_table(actual, expected) -> None:
    """Same column names, Arrow types and values (NaN equal to NaN, which Table.equals denies)."""
    assert actual.schema.remove_metadata() == expected.schema.remove_metadata()
    assert repr(actual.to_pylist()) == repr(expected.to_pylist())


def run_rows(run_ads, output: Path) -> list[dict]:
    """The rows `adpulse-batch run` writes for the sample Parquet catalog, each a dict, less
    the `duplicate` flag: it compares a whole run's ads, and a batch function sees one batch."""
    import pyarrow.parquet as pq

    result = run_ads(SAMPLE_PARQUET, "-o", output, "--no-cache")
    assert result.exit_code == 0, result.stderr
    rows = pq.read_table(output).to_pylist()
    for row in rows:
        row["ad_flags"] = ",".join(f for f in row["ad_flags"].split(",") if f and f != "duplicate")
    return rows


def sortable(rows: list[dict]) -> list[str]:
    """Rows in a canonical order, to compare outputs whose row order a cluster may change."""
    return sorted(repr(sorted(row.items())) for row in rows)


def load_job(name: str):
    """A script of jobs/ as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"jobs_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
