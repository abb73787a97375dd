"""Sharing rows out to worker processes, and putting their results back by row id.

Workers never hand rows back through padding and slicing: every result carries its row id
and is written to a part file in the work directory; the output is assembled from the parts
by row id, and a row that is missing or doubled there is an error, not a silent shift.
"""

from __future__ import annotations

import heapq
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from adpulse_batch.catalog import Catalog, CatalogWriter
from adpulse_batch.errors import AdPulseError, WorkerError
from adpulse_batch.plan import OK, TRUNCATED, ChunkPlan, PlannedPrompt


@dataclass(frozen=True)
class Workers:
    """This process's place among the run's worker processes (one, unless launched)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


def current_workers(*, cpu: bool) -> Workers:
    """Workers as `accelerate launch` (torchrun underneath) set them up; one when not launched."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Workers()
    from accelerate import PartialState

    state = PartialState(cpu=cpu)  # cpu: gloo between CPU processes instead of NCCL
    return Workers(state.process_index, state.num_processes, state.local_process_index)


def share(plan: ChunkPlan, workers: Workers, *, new_tokens: int) -> tuple[list[PlannedPrompt], dict[int, str]]:
    """This worker's prompts and skipped rows of a chunk.

    A prompt costs its tokens plus the tokens generated after it. Prompts are dealt costliest
    first to the worker with the least cost so far, so workers finish a chunk together. Every
    worker computes the same deal from the same plan: no messages are needed.
    """
    if workers.world == 1:
        return plan.prompts, plan.skipped
    cost = [len(p.prompt.ids) + new_tokens for p in plan.prompts]
    order = sorted(range(len(plan.prompts)), key=lambda i: (-cost[i], i))
    loads = [(0, worker) for worker in range(workers.world)]
    mine = []
    for i in order:
        load, worker = heapq.heappop(loads)
        if worker == workers.rank:
            mine.append(i)
        heapq.heappush(loads, (load + cost[i], worker))
    skipped = {row: why for row, why in plan.skipped.items() if row % workers.world == workers.rank}
    return [plan.prompts[i] for i in sorted(mine)], skipped


@dataclass
class Results:
    """Results of some rows of one chunk, as they go into a part file."""

    rows: list[int] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    ads: list[list[str]] = field(default_factory=list)  # per row, one ad per variant

    def add(self, row: int, status: str, new_tokens: int, ads: list[str]) -> None:
        self.rows.append(row)
        self.status.append(status)
        self.new_tokens.append(new_tokens)
        self.ads.append(ads)


class WorkDir:
    """A run's work directory: result part files (row_id, status, new_tokens, ad_1..ad_K)
    and each worker's done or failed marker. Every worker writes only its own files."""

    def __init__(self, path: Path, num_variants: int):
        self.path = Path(path)
        self.ad_names = [f"ad_{k}" for k in range(1, num_variants + 1)]
        self.schema = pa.schema(
            [("row_id", pa.int64()), ("status", pa.string()), ("new_tokens", pa.int32())]
            + [(name, pa.string()) for name in self.ad_names]
        )

    def write(self, chunk_start: int, results: Results, *, rank: int) -> Path:
        """Commit results durably: written, flushed to disk, then renamed into place."""
        columns = [results.rows, results.status, results.new_tokens, *zip(*results.ads)]
        table = pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(columns, self.schema)], schema=self.schema)
        name = f"part-{chunk_start:012d}-w{rank:04d}-n{len(results.rows)}-{uuid.uuid4().hex[:8]}.parquet"
        path = self.path / name
        temp = path.with_suffix(".tmp")
        pq.write_table(table, temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
        return path

    def parts(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet"))

    def by_chunk(self) -> dict[int, list[Path]]:
        found = defaultdict(list)
        for path in self.parts():
            found[int(path.name.split("-")[1])].append(path)
        return found

    def committed_rows(self, *, other_than: int) -> int:
        """Rows that workers other than `other_than` have committed (for the progress bar)."""
        count = 0
        for path in self.parts():
            _, _, worker, rows, _ = path.name.split("-")
            if int(worker[1:]) != other_than:
                count += int(rows[1:])
        return count

    def read_chunk(self, paths: list[Path], start: int, num_rows: int) -> pa.Table:
        """The results of rows start..start+num_rows-1, in row order; each row exactly once."""
        tables = [pq.read_table(p, schema=self.schema) for p in paths]
        table = pa.concat_tables(tables) if tables else self.schema.empty_table()
        table = table.sort_by("row_id")
        rows = table.column("row_id").to_pylist()
        if rows != list(range(start, start + num_rows)):
            have = set(rows)
            missing = [r for r in range(start, start + num_rows) if r not in have]
            doubled = len(rows) - len(have)
            raise RuntimeError(
                f"results for rows {start}..{start + num_rows - 1} are incomplete in {self.path}: "
                f"{len(missing)} missing (first {missing[:5]}), {doubled} doubled"
            )
        return table

    def mark_done(self, rank: int, stats: dict) -> None:
        _write_json(self.path / f"done-w{rank:04d}.json", stats)

    def mark_failed(self, rank: int, error: BaseException) -> None:
        """Leave word of why this worker stopped: the launcher only sees an exit code."""
        user_error = isinstance(error, AdPulseError)
        message = str(error) if user_error else f"{type(error).__name__}: {error}"
        exit_code = error.exit_code if user_error else 130 if isinstance(error, KeyboardInterrupt) else 1
        _write_json(self.path / f"failed-w{rank:04d}.json", {"rank": rank, "error": message, "exit_code": exit_code})

    def failures(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.path.glob("failed-w*.json"))]

    def wait_for(self, workers: Workers, *, on_wait=None, interval: float = 0.5) -> list[dict]:
        """Block until every worker is done (their stats, by rank) or one has failed (raise)."""
        while True:
            failed = self.failures()
            if failed:
                raise WorkerError(
                    f"worker {failed[0]['rank']} of {workers.world} failed: {failed[0]['error']}; "
                    f"no output was written, and the finished parts stay in {self.path}"
                )
            done = sorted(self.path.glob("done-w*.json"))
            if len(done) == workers.world:
                return [json.loads(p.read_text()) for p in done]
            if on_wait is not None:
                on_wait()
            time.sleep(interval)


def _write_json(path: Path, data: dict) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(data))
    os.replace(temp, path)


def launch_workers(args: list[str], num_processes: int) -> int:
    """Run `adpulse-batch ARGS` in `num_processes` worker processes through accelerate's
    launcher (torchrun underneath); returns the launcher's exit code."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "adpulse_batch", *args,
    ]  # fmt: skip
    return subprocess.run(command).returncode


def _free_port() -> int:
    # Two runs on one machine must not both take accelerate's default port.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assemble(catalog: Catalog, parts: WorkDir, writer: CatalogWriter, ad_columns: list[str], status_column: str) -> dict[str, int]:
    """Write the output: each input chunk with its results joined by row id. Returns counts."""
    counts = {"rows_generated": 0, "rows_skipped": 0, "rows_truncated": 0, "new_tokens": 0}
    found = parts.by_chunk()
    for chunk in catalog.chunks():
        results = parts.read_chunk(found.get(chunk.start, []), chunk.start, chunk.num_rows)
        status = results.column("status").to_pylist()
        values = {name: results.column(part).to_pylist() for name, part in zip(ad_columns, parts.ad_names)}
        values[status_column] = status
        writer.write(chunk, values)
        counts["rows_generated"] += sum(s in (OK, TRUNCATED) for s in status)
        counts["rows_skipped"] += sum(s not in (OK, TRUNCATED) for s in status)
        counts["rows_truncated"] += sum(s == TRUNCATED for s in status)
        counts["new_tokens"] += pc.sum(results.column("new_tokens")).as_py() or 0
    return counts
