"""Fault injection: a run stopped at a chosen point (SIGKILL, SIGTERM or Ctrl-C's SIGINT,
after the first part is committed or while the output is being assembled) leaves no output
and no temporary file behind it, and the same command run again writes exactly the bytes
of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adpulse_batch.storage import local_output_path, location
from conftest import write_csv

ROWS = 40_000  # ten chunks; ten products repeated, so the cache makes most of the work cheap


def interrupt(args, output, *, at, stop, env=None) -> subprocess.CompletedProcess:
    """Run `adpulse-batch run ARGS -o OUTPUT` in a subprocess and send it `stop` (a signal)
    at `at`: "part", once the first part file is committed to the work directory, or
    "assembly", once the output's temporary file `.<output>.<pid>.tmp` is being written.
    OUTPUT may be an object's URI (its work directory and temporary file are local).
    Returns the finished process (stderr as text)."""
    command = [sys.executable, "-m", "adpulse_batch", "run", *map(str, args), "-o", str(output)]
    # SIGINT as a terminal's Ctrl-C gives it, even where this test runs with SIGINT ignored (a
    # shell's background job, such as `.ci/run &`), which the run would inherit and honour.
    process = subprocess.Popen(
        command, env={**os.environ, **(env or {})}, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    # The lowest priority: on a busy machine the run slows down, not the polling below.
    os.setpriority(os.PRIO_PROCESS, process.pid, 19)
    local = local_output_path(location(output, flag="-o"))  # an object output's stand-in is local
    work = local.with_name(f".{local.name}.adpulse-work")
    point = {"part": lambda: list(work.glob("part-*.parquet")),
             "assembly": lambda: local.with_name(f".{local.name}.{process.pid}.tmp").exists()}[at]  # fmt: skip
    deadline = time.monotonic() + 120
    while not point():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the run ended (or hung) before reaching {at}: {process.communicate()[1]}")
        time.sleep(0.002)
    if process.poll() is not None:  # the whole run fitted between two polls: nothing was interrupted
        pytest.fail(f"the run ended (exit {process.returncode}) before it could be stopped at {at}")
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, "", stderr)


def assert_stopped(stopped, stop, output, *, log_format="text"):
    """A stopped run wrote no output; one it could clean up after also left no temporary
    file, and said so in one line (one JSON object with `--log-format json`)."""
    code, message = {
        signal.SIGKILL: (-signal.SIGKILL, None),
        signal.SIGTERM: (143, "interrupted (SIGTERM); no output was written"),
        signal.SIGINT: (130, "interrupted; no output was written"),
    }[stop]
    if message is None:
        said = ""
    elif log_format == "json":
        said = json.dumps({"level": "error", "message": message, "exit_code": code}) + "\n"
    else:
        said = f"Error: {message}\n"
    assert (stopped.returncode, stopped.stderr) == (code, said)
    assert not output.exists()
    if stop != signal.SIGKILL:
        assert not list(output.parent.glob(f".{output.name}.*.tmp"))


def catalog(tmp_path, fmt):
    columns = {
        "sku": [f"{i:06d}" for i in range(ROWS)],
        "name": [f"Product {i % 10}" for i in range(ROWS)],
        "description": [f"The description of product {i % 10}." for i in range(ROWS)],
    }
    path = tmp_path / f"in.{fmt}"
    if fmt == "csv":
        write_csv(path, list(columns), list(zip(*columns.values())))
    elif fmt == "parquet":
        pq.write_table(pa.table(columns), path)
    else:
        path.write_text("".join(json.dumps(dict(zip(columns, row))) + "\n" for row in zip(*columns.values())))
    return path


@pytest.mark.parametrize(
    "fmt, at_part, at_assembly, log_format",
    [
        ("csv", signal.SIGTERM, signal.SIGKILL, "text"),
        ("parquet", signal.SIGKILL, signal.SIGTERM, "json"),
        ("jsonl", signal.SIGINT, signal.SIGKILL, "text"),
    ],
)
def test_a_run_stopped_anywhere_resumes_to_the_same_bytes(run_ads, test_model, tmp_path, fmt, at_part, at_assembly, log_format):
    source = catalog(tmp_path, fmt)
    whole = tmp_path / f"whole.{fmt}"
    assert run_ads(source, "-o", whole).exit_code == 0  # also fills the ad cache: the runs below are quick
    out = tmp_path / f"out.{fmt}"
    args = [source, "--adapter", test_model[1], "--max-new-tokens", 12, "--quiet", "--log-format", log_format]  # as run_ads runs
    for at, stop in (("part", at_part), ("assembly", at_assembly)):
        assert_stopped(interrupt(args, out, at=at, stop=stop), stop, out, log_format=log_format)
    if at_assembly == signal.SIGKILL:
        assert list(tmp_path.glob(f".out.{fmt}.*.tmp"))  # killed while writing: what the next run cleans up
    result = run_ads(source, "-o", out, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["rows_resumed"] == ROWS  # all done before assembly
    assert out.read_bytes() == whole.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# In bfloat16 a row's ad can depend on the other rows of its batch (a near-tie rounded the
# other way; rare on the CPU since attention there no longer uses torch's fused kernel): a
# resumed run still writes the uninterrupted run's bytes, because it makes the same batches
# of the rows left (results are committed a whole batch at a time).
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_run_killed_while_generating_resumes_where_it_stopped(run_cli, test_model, tmp_path, dtype):
    words = "soft warm linen cotton bright steel handmade durable classic modern".split()
    # Descriptions of 0 to 22 words: a batch's rows are padded by differing amounts.
    rows = [[f"{i:06d}", f"Product {i}", " ".join(words[(i * 7 + j) % 10] for j in range(i % 23)) + "."] for i in range(300)]
    source = write_csv(tmp_path / "in.csv", ["sku", "name", "description"], rows)
    # Long enough that the kill lands well before the end even on a busy machine.
    args = [source, "--adapter", test_model[1], "--max-new-tokens", 32, "--batch-size", 8, "--no-cache", "--quiet", "--dtype", dtype]
    env = {"ADPULSE_COMMIT_SECONDS": "0.5"}
    assert run_cli("run", *args, "-o", tmp_path / "whole.csv").exit_code == 0
    whole = (tmp_path / "whole.csv").read_bytes()
    if dtype == "float32":  # the same ads whatever the batch
        for batch in (3, 13):
            assert run_cli("run", *args, "--batch-size", batch, "-o", tmp_path / f"batch{batch}.csv").exit_code == 0
            assert (tmp_path / f"batch{batch}.csv").read_bytes() == whole
    out = tmp_path / "out.csv"
    assert_stopped(interrupt(args, out, at="part", stop=signal.SIGKILL, env=env), signal.SIGKILL, out)
    done = run_cli("run", *args, "-o", out, "--report", tmp_path / "r.json")
    assert done.exit_code == 0, done.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["rows_resumed"] > 0 and r["rows_generated"] > 0
    assert r["rows_resumed"] + r["rows_generated"] == 300
    assert out.read_bytes() == whole
