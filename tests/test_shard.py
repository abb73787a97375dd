"""Runs split across worker processes: every row once, in order, byte-identical to one process."""

import json
import os
import socket
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch.multiprocessing

from adpulse_batch.plan import ChunkPlan, PlannedPrompt
from adpulse_batch.prompts import Prompt
from adpulse_batch.run import run_catalog
from adpulse_batch.settings import GenerationSettings, ModelSettings, RunSettings
from adpulse_batch.shard import Workers, share
from conftest import SAMPLE_CSV, read_csv, write_csv


def plan_of(lengths, skipped=()):
    prompts = [PlannedPrompt(f"p{i}", (f"p{i}", ""), [10 * i, 10 * i + 1], Prompt(f"p{i}", [7] * n)) for i, n in enumerate(lengths)]
    return ChunkPlan(0, 100, prompts, {row: "why" for row in skipped})


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shares_are_disjoint_cover_everything_and_balance_cost(world):
    lengths = [5, 80, 12, 40, 40, 3, 77, 20, 9, 61, 33]
    plan = plan_of(lengths, skipped=[3, 4, 5, 8])
    shares = [share(plan, Workers(rank, world), new_tokens=16) for rank in range(world)]
    prompts = [p.prompt.text for mine, _ in shares for p in mine]
    assert sorted(prompts) == sorted(p.prompt.text for p in plan.prompts)  # each prompt exactly once
    assert sorted(row for _, skipped in shares for row in skipped) == [3, 4, 5, 8]
    costs = [sum(len(p.prompt.ids) + 16 for p in mine) for mine, _ in shares]
    assert max(costs) - min(costs) <= max(lengths) + 16  # within one prompt of even
    assert shares == [share(plan, Workers(rank, world), new_tokens=16) for rank in range(world)]  # same deal every time


def test_fewer_prompts_than_workers():
    plan = plan_of([4])
    shares = [share(plan, Workers(rank, 3), new_tokens=8)[0] for rank in range(3)]
    assert [len(s) for s in shares] == [1, 0, 0]


def catalogs(root):
    """CSV and Parquet catalogs of 0, 1, 2 and 3 rows, and one whose rows are all skipped."""
    made = []
    rows = [["000123", "Mug", "Blue stoneware"], ["7", "Pen", "Black ink"], ["0042", "Lamp", ""]]
    for n in (0, 1, 2, 3):
        made.append(write_csv(root / f"c{n}.csv", ["sku", "name", "description"], rows[:n]))
        table = pa.table({"sku": [r[0] for r in rows[:n]], "stock": pa.array(range(n), pa.int32()), "name": [r[1] for r in rows[:n]], "description": [r[2] for r in rows[:n]]})
        pq.write_table(table, root / f"p{n}.parquet")
        made.append(root / f"p{n}.parquet")
    made.append(write_csv(root / "skipped.csv", ["name", "description"], [["", ""], [" ", ""]]))
    return made


def settings_for(source, output, adapter, **extra):
    return RunSettings(
        input=source, output=output, model=ModelSettings(adapter=str(adapter), device="cpu", dtype="float32"),
        generation=GenerationSettings(max_new_tokens=10), batch_size=2, use_cache=False, **extra,
    )


def _worker(rank, world, port, jobs):
    os.environ.update(
        WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    for settings in jobs:
        run_catalog(settings)


def test_two_processes_write_the_same_bytes_as_one(test_model, tmp_path):
    _, adapter = test_model
    sources = catalogs(tmp_path)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    for source in sources:
        run_catalog(settings_for(source, tmp_path / "one" / source.name, adapter))
    jobs = [settings_for(source, tmp_path / "two" / source.name, adapter) for source in sources]
    # An interrupted single-process run (its first 2 rows committed) resumed by two processes.
    resumed = tmp_path / "two" / "resumed.csv"
    run_catalog(settings_for(tmp_path / "c3.csv", resumed, adapter, limit=2, keep_work=True))
    jobs.append(settings_for(tmp_path / "c3.csv", resumed, adapter, report=tmp_path / "resumed.json"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Two real processes with a gloo process group, as `accelerate launch` sets them up.
    torch.multiprocessing.start_processes(_worker, args=(2, port, jobs), nprocs=2, start_method="spawn")
    for source in sources:
        one, two = tmp_path / "one" / source.name, tmp_path / "two" / source.name
        assert two.read_bytes() == one.read_bytes(), source.name
        assert not (tmp_path / "two" / f".{source.name}.adpulse-work").exists()
    assert [r[-2] for r in read_csv(tmp_path / "two" / "skipped.csv")[1]] == ["skipped: no product name or description"] * 2
    assert resumed.read_bytes() == (tmp_path / "one" / "c3.csv").read_bytes()
    report = json.loads((tmp_path / "resumed.json").read_text())
    assert (report["rows_resumed"], report["rows_generated"]) == (2, 1)
    assert len(pq.read_table(tmp_path / "two" / "p3.parquet")) == 3


def test_num_processes_flag_launches_workers_through_accelerate(run_ads, tmp_path):
    report = tmp_path / "report.json"
    result = run_ads(SAMPLE_CSV, "-o", tmp_path / "two.csv", "--num-processes", 2, "--report", report)
    assert result.exit_code == 0
    assert run_ads(SAMPLE_CSV, "-o", tmp_path / "one.csv").exit_code == 0
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    workers = json.loads(report.read_text())["workers"]
    assert [w["rank"] for w in workers] == [0, 1]
    assert sum(w["rows"] for w in workers) == 63 and all(w["rows"] > 20 for w in workers)


def test_a_failed_worker_fails_the_run_and_writes_no_output(run_ads, tmp_path):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(textwrap.dedent("""
        import os
        if os.environ.get("RANK") == "1":
            import adpulse_batch.generate

            def fail(self, *args, **kwargs):
                raise RuntimeError("injected failure")

            adpulse_batch.generate.Generator.generate = fail
    """))
    env = {"PYTHONPATH": os.pathsep.join([str(inject), os.environ.get("PYTHONPATH", "")])}
    result = run_ads(SAMPLE_CSV, "-o", tmp_path / "out.csv", "--num-processes", 2, env=env)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == "Error: worker 1 of 2 failed: RuntimeError: injected failure; no output was written"
    assert not (tmp_path / "out.csv").exists()
    assert (tmp_path / ".out.csv.adpulse-work" / "failed-w0001.json").is_file()  # kept for a resume


def test_bad_num_processes(run_ads):
    result = run_ads(SAMPLE_CSV, "--num-processes", "many")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: Invalid value for '--num-processes': 'many' is not a number of processes or 'auto'")
