"""Sharing rows out to worker processes, and putting their results back by row id.

Workers never hand rows back through padding and slicing: every result carries its row id
and is written to a part file in the work directory; the output is assembled from the parts
by row id, and a row that is missing or doubled there is an error, not a silent shift.
"""

from __future__ import annotations

import heapq
import os
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from adpulse_batch.catalog import Catalog, CatalogWriter
from adpulse_batch.plan import OK, TRUNCATED, ChunkPlan, PlannedPrompt


def share(plan: ChunkPlan, rank: int, world: int) -> tuple[list[PlannedPrompt], dict[int, str]]:
    """This worker's prompts and skipped rows of a chunk.

    Prompts are dealt longest first to the worker with the fewest prompt tokens so far, so
    workers finish a chunk together. Every worker computes the same deal from the same plan.
    """
    if world == 1:
        return plan.prompts, plan.skipped
    order = sorted(range(len(plan.prompts)), key=lambda i: (-len(plan.prompts[i].prompt.ids), i))
    loads = [(0, worker) for worker in range(world)]
    mine = []
    for i in order:
        load, worker = heapq.heappop(loads)
        if worker == rank:
            mine.append(i)
        heapq.heappush(loads, (load + len(plan.prompts[i].prompt.ids), worker))
    skipped = {row: why for row, why in plan.skipped.items() if row % world == rank}
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


class Parts:
    """Result part files in a work directory: row_id, status, new_tokens, ad_1..ad_K."""

    def __init__(self, work_dir: Path, num_variants: int):
        self.work_dir = Path(work_dir)
        self.ad_names = [f"ad_{k}" for k in range(1, num_variants + 1)]
        self.schema = pa.schema(
            [("row_id", pa.int64()), ("status", pa.string()), ("new_tokens", pa.int32())]
            + [(name, pa.string()) for name in self.ad_names]
        )

    def write(self, chunk_start: int, results: Results, *, tag: str) -> Path:
        """Commit results durably: written, flushed to disk, then renamed into place."""
        columns = [results.rows, results.status, results.new_tokens, *zip(*results.ads)]
        table = pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(columns, self.schema)], schema=self.schema)
        path = self.work_dir / f"part-{chunk_start:012d}-{tag}-{uuid.uuid4().hex[:8]}.parquet"
        temp = path.with_suffix(".tmp")
        pq.write_table(table, temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
        return path

    def by_chunk(self) -> dict[int, list[Path]]:
        found = defaultdict(list)
        for path in sorted(self.work_dir.glob("part-*.parquet")):
            found[int(path.name.split("-")[1])].append(path)
        return found

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
                f"results for rows {start}..{start + num_rows - 1} are incomplete in {self.work_dir}: "
                f"{len(missing)} missing (first {missing[:5]}), {doubled} doubled"
            )
        return table


def assemble(catalog: Catalog, parts: Parts, writer: CatalogWriter, ad_columns: list[str], status_column: str) -> dict[str, int]:
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
