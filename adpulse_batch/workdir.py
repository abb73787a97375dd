"""The work directory of a run: results committed as they come, resumed after a crash, and
assembled into the output by row id.

Workers never hand rows back through padding and slicing: every result carries its row id
and is committed (written, flushed, renamed) to a part file here. The output is assembled
from the input and the parts by row id; a row missing or doubled there is an error, not a
silent shift. A manifest records what the work belongs to (input, model, template, settings),
so a run of the same job resumes it and any other run starts it over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from adpulse_batch.catalog import Catalog, CatalogWriter, csv_safe
from adpulse_batch.errors import AdPulseError, InputError, WorkerError, WriteError, first_line, writing
from adpulse_batch.flags import AdFlagger, FlagRules
from adpulse_batch.html_report import ReportCollector
from adpulse_batch.plan import TRUNCATED
from adpulse_batch.prompts import field_text
from adpulse_batch.storage import ObjectPath

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RESUMED = "resumed.json"  # the parts found at the start: the same list for every worker

# What to check when the work directory cannot be written.
WORK_FIX = "check that its file system is writable and has free space, or name another work directory with --work-dir"

# Where a row's ads came from this run.
MODEL, CACHE, SKIP = "model", "cache", "skipped"


@dataclass
class Results:
    """Results of some rows of one chunk, as they go into a part file."""

    rows: list[int] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    ads: list[list[str]] = field(default_factory=list)  # per row, one ad per variant
    flags: list[list[str]] = field(default_factory=list)  # per row and variant, what fitting the ad raised

    def add(self, row: int, status: str, source: str, new_tokens: int, ads: list[str], flags: list[str]) -> None:
        self.rows.append(row)
        self.status.append(status)
        self.source.append(source)
        self.new_tokens.append(new_tokens)
        self.ads.append(ads)
        self.flags.append(flags)


class WorkDir:
    """Part files (row_id, status, source, new_tokens, ad_1..ad_K, fit_1..fit_K), the
    manifest, and each worker's done or failed marker. Every worker writes only its own files."""

    def __init__(self, path: Path, num_variants: int):
        self.path = Path(path)
        self.ad_names = [f"ad_{k}" for k in range(1, num_variants + 1)]
        self.fit_names = [f"fit_{k}" for k in range(1, num_variants + 1)]
        self.schema = pa.schema(
            [("row_id", pa.int64()), ("status", pa.string()), ("source", pa.string()), ("new_tokens", pa.int32())]
            + [(name, pa.string()) for name in self.ad_names + self.fit_names]
        )

    # --- before the workers start (main process) ---

    def check(self, output: Path) -> dict | None:
        """Raise unless this run may use the directory: only a directory this run owns is
        ever deleted (new or empty, or its manifest names the same output, whose lock is
        ours); anything else is the user's. Returns the manifest found, if any."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"the work directory {self.path} is a file; name a directory with --work-dir")
        if not self.path.is_dir() or not any(self.path.iterdir()):
            return None
        try:
            found = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError):
            found = None
        if not isinstance(found, dict) or "fingerprint" not in found:
            raise InputError(
                f"the work directory {self.path} exists and is not one adpulse-batch made; "
                "name a new or empty directory with --work-dir"
            )
        # A manifest without an output is from a release before outputs were recorded: its
        # fingerprint cannot match, so its work is started over.
        if found.setdefault("output", _output_name(output)) != _output_name(output):
            raise InputError(
                f"the work directory {self.path} holds the work of a run writing {found.get('output')}; "
                "give each output its own --work-dir"
            )
        return found

    def open(self, fingerprint: str, output: Path) -> int:
        """Make the directory ready for a run of the job `fingerprint` writing `output`;
        returns the rows already done by an interrupted run of the same job, which are kept."""
        manifest = self.path / MANIFEST
        found = self.check(output)
        if found is not None and found.get("fingerprint") != fingerprint:
            log.info("%s holds work of another input, model or setting; starting over", self.path)
            with writing(self.path, WORK_FIX):
                shutil.rmtree(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"cannot create the work directory {self.path} ({error.strerror}); name another with --work-dir") from None
        for stale in [*self.path.glob("*.tmp"), *self.path.glob("done-w*.json"), *self.path.glob("failed-w*.json")]:
            with writing(stale, WORK_FIX):
                stale.unlink()
        for part in self.parts():
            problem = self._unreadable(part)
            if problem is not None:
                log.warning("%s cannot be read (%s); its rows are generated again", part, problem)
                with writing(part, WORK_FIX):
                    part.unlink()
        _write_json(manifest, {"fingerprint": fingerprint, "output": _output_name(output)})
        parts = [p.name for p in self.parts()]
        _write_json(self.path / RESUMED, {"parts": parts})
        rows = sum(_part_rows(name) for name in parts)
        if rows:
            log.info("resuming: %d rows are already done in %s", rows, self.path)
        return rows

    def _unreadable(self, part: Path) -> str | None:
        """Why a part file cannot be used (None when it can). A crash on a file system that
        does not keep its promises, or a copy gone wrong, can leave one empty or cut short:
        its rows are redone rather than every rerun failing on it."""
        if not _PART_NAME.fullmatch(part.name):
            return "its name is not one adpulse-batch gives parts"
        try:
            found = pq.read_table(part, schema=self.schema).num_rows
        except (OSError, pa.ArrowException) as error:
            return first_line(error)
        return None if found == _part_rows(part.name) else f"it holds {found} rows, its name says {_part_rows(part.name)}"

    # --- in every worker ---

    def resumed(self) -> dict[int, list[Path]]:
        """The parts an interrupted run left, by chunk: the rows in them are not redone."""
        found = defaultdict(list)
        for name in json.loads((self.path / RESUMED).read_text())["parts"]:
            found[_part_chunk(name)].append(self.path / name)
        return found

    def rows_in(self, paths: list[Path]) -> set[int]:
        return {row for p in paths for row in pq.read_table(p, columns=["row_id"]).column("row_id").to_pylist()}

    def write(self, chunk_start: int, results: Results, *, rank: int) -> Path:
        """Commit results durably: written, flushed to disk, then renamed into place."""
        columns = [results.rows, results.status, results.source, results.new_tokens, *zip(*results.ads), *zip(*results.flags)]
        table = pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(columns, self.schema)], schema=self.schema)
        path = self.path / f"part-{chunk_start:012d}-w{rank:04d}-n{len(results.rows)}-{uuid.uuid4().hex[:8]}.parquet"
        temp = path.with_suffix(".tmp")
        with writing(path, WORK_FIX):
            try:
                pq.write_table(table, temp)
                with open(temp, "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(temp, path)
            except OSError:
                temp.unlink(missing_ok=True)
                raise
        return path

    def committed_rows(self, *, other_than: int) -> int:
        """Rows committed by workers other than `other_than` this run (for the progress bar)."""
        resumed = set(json.loads((self.path / RESUMED).read_text())["parts"])
        return sum(_part_rows(p.name) for p in self.parts() if p.name not in resumed and _part_worker(p.name) != other_than)

    def mark_done(self, rank: int, stats: dict) -> None:
        _write_json(self.path / f"done-w{rank:04d}.json", stats)

    def mark_failed(self, rank: int, error: BaseException) -> None:
        """Leave word of why this worker stopped: the launcher only sees an exit code."""
        user_error = isinstance(error, AdPulseError)
        message = str(error) if user_error else f"{type(error).__name__}: {error}"
        exit_code = error.exit_code if user_error else getattr(error, "exit_code", 130) if isinstance(error, KeyboardInterrupt) else 1
        with contextlib.suppress(WriteError):  # on a full disk, the error at hand matters more than its record
            _write_json(self.path / f"failed-w{rank:04d}.json", {"rank": rank, "error": message, "exit_code": exit_code})

    # --- after the workers (main process) ---

    def failures(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.path.glob("failed-w*.json"))]

    def wait_for(self, world: int, *, on_wait=None, interval: float = 0.5) -> list[dict]:
        """Block until every worker is done (their stats, by rank) or one has failed (raise)."""
        while True:
            failed = self.failures()
            if failed:
                raise WorkerError(
                    f"worker {failed[0]['rank']} of {world} failed: {failed[0]['error']}; "
                    f"no output was written, and the finished parts stay in {self.path}"
                )
            done = sorted(self.path.glob("done-w*.json"))
            if len(done) == world:
                return [json.loads(p.read_text()) for p in done]
            if on_wait is not None:
                on_wait()
            time.sleep(interval)

    def parts(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet"))

    def read_chunk(self, paths: list[Path], start: int, num_rows: int, *, resumed: set[str]) -> pa.Table:
        """The results of rows start..start+num_rows-1 in row order, each row exactly once,
        with a `resumed` column: whether the row came from an interrupted run's part. Rows
        past the chunk's end (work kept from a run with a higher --limit) are left out."""
        tables = []
        for p in paths:
            table = pq.read_table(p, schema=self.schema)
            tables.append(table.append_column("resumed", pa.repeat(p.name in resumed, table.num_rows)))
        table = pa.concat_tables(tables) if tables else self.schema.append(pa.field("resumed", pa.bool_())).empty_table()
        table = table.filter(pc.less(table.column("row_id"), start + num_rows)).sort_by("row_id")
        rows = table.column("row_id").to_pylist()
        if rows != list(range(start, start + num_rows)):
            have = set(rows)
            missing = [r for r in range(start, start + num_rows) if r not in have]
            raise RuntimeError(
                f"results for rows {start}..{start + num_rows - 1} are incomplete in {self.path}: "
                f"{len(missing)} missing (first {missing[:5]}), {len(rows) - len(have)} doubled"
            )
        return table

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass(frozen=True)
class Layout:
    """The columns assembly adds to the input's, and the input columns the prompts were made of."""

    ad_columns: list[str]
    status_column: str
    flags_columns: list[str]  # one per ad column; empty: no flags
    product_column: str
    description_column: str | None


def assemble(
    catalog: Catalog, work: WorkDir, writer: CatalogWriter, layout: Layout, *,
    csv_safe_ads: bool, rules: FlagRules, collector: ReportCollector,
) -> dict[str, int]:  # fmt: skip
    """Write the output: each input chunk with its results joined by row id, and each ad's
    quality flags, computed from every input cell of its row; every row goes to `collector`.
    Returns counts."""
    counts = dict.fromkeys(["rows_generated", "rows_from_cache", "rows_resumed", "rows_skipped", "rows_truncated", "new_tokens"], 0)
    resumed = {p.name for paths in work.resumed().values() for p in paths}
    by_chunk = defaultdict(list)
    for path in work.parts():
        by_chunk[_part_chunk(path.name)].append(path)

    def chunks():
        for chunk in catalog.chunks():
            yield chunk, work.read_chunk(by_chunk.get(chunk.start, []), chunk.start, chunk.num_rows, resumed=resumed)

    variants = len(work.ad_names)
    flagger = AdFlagger(rules, variants)
    if layout.flags_columns:  # `duplicate` compares every ad of the run: a first pass registers them
        for chunk, results in chunks():
            products, descriptions = _prompt_fields(chunk, layout)
            for k, name in enumerate(work.ad_names):
                for offset, (ad, source) in enumerate(zip(results.column(name).to_pylist(), results.column("source").to_pylist())):
                    if source != SKIP:
                        flagger.register(chunk.start + offset, k, ad, products[offset], descriptions[offset])
    guard = csv_safe_ads and writer.format == "csv"
    for chunk, results in chunks():
        columns = {name: results.column(name).to_pylist() for name in ("status", "source", "new_tokens", "resumed")}
        ads = [results.column(name).to_pylist() for name in work.ad_names]
        fits = [results.column(name).to_pylist() for name in work.fit_names]
        products, descriptions = _prompt_fields(chunk, layout)
        cells = chunk.to_records() if layout.flags_columns else None
        flags: list[list[str]] = [[] for _ in range(variants)]
        for offset, (status, source) in enumerate(zip(columns["status"], columns["source"])):
            row = chunk.start + offset
            for k in range(variants):
                found = flagger.flags(row, k, cells[offset], ads[k][offset], fits[k][offset]) if cells is not None and source != SKIP else ""
                flags[k].append(found)
                collector.add(
                    row, product=products[offset], description=descriptions[offset], ad=ads[k][offset], status=status,
                    flags=found.split(",") if found else [],
                )  # fmt: skip
        values = {name: [csv_safe(ad) for ad in column] if guard else column for name, column in zip(layout.ad_columns, ads)}
        values[layout.status_column] = columns["status"]
        values.update(zip(layout.flags_columns, flags))
        writer.write(chunk, values)
        for status, source, tokens, was_resumed in zip(*columns.values()):
            if source == SKIP:
                counts["rows_skipped"] += 1
                continue
            counts["rows_truncated"] += status == TRUNCATED
            if was_resumed:
                counts["rows_resumed"] += 1
            else:
                counts["rows_generated" if source == MODEL else "rows_from_cache"] += 1
                counts["new_tokens"] += tokens
    return counts


def _prompt_fields(chunk, layout: Layout) -> tuple[list[str], list[str]]:
    """The product and description of each row of a chunk, as prompts have them."""
    return [field_text(v) for v in chunk.values(layout.product_column)], [field_text(v) for v in chunk.values(layout.description_column)]


def _output_name(output: Path | ObjectPath) -> str:
    """The output as a manifest records it: an absolute path, or the object's URI."""
    return str(output) if isinstance(output, ObjectPath) else str(Path(output).resolve())


def _write_json(path: Path, data: dict) -> None:
    temp = path.with_suffix(".tmp")
    with writing(path, WORK_FIX):
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data))
            handle.flush()
            os.fsync(handle.fileno())  # a manifest cut short by a crash would disown the work
        os.replace(temp, path)


# part-<chunk start>-w<worker>-n<rows>-<random>.parquet
_PART_NAME = re.compile(r"part-\d+-w\d+-n\d+-[0-9a-f]+\.parquet")


def _part_chunk(name: str) -> int:
    return int(name.split("-")[1])


def _part_worker(name: str) -> int:
    return int(name.split("-")[2][1:])


def _part_rows(name: str) -> int:
    return int(name.split("-")[3][1:])
