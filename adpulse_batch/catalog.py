"""Reading catalogs in bounded chunks, and writing them back with the ad columns added.

A catalog is a CSV, Parquet or JSONL file, or a directory of Parquet files read as one
dataset, on local disk or in object storage (storage.py: the same reads, through a stream). Rows keep their position as their row id (0, 1, 2, ...) from reading to writing.
Input columns are never changed: CSV cells stay the exact text of the file, Parquet columns
keep their Arrow types, JSONL objects keep their keys and values.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime
import decimal
import glob
import hashlib
import io
import json
import logging
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from adpulse_batch.errors import InputError, SettingsError, first_line, writing
from adpulse_batch.settings import NO_COLUMN, check_utf8_name
from adpulse_batch.storage import ObjectPath, local_output_path, location

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl"}
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")

# Rows per chunk: the unit of reading, of prompt planning (sorting by length, dedupe,
# sharing out rows) and of writing. Bounded, so memory does not grow with the catalog.
CHUNK_ROWS = 4096

# What to check when the output (or the lock file beside it) cannot be written.
OUTPUT_FIX = "check that its directory is writable and has free space, or name another output with -o/--output"

# A product description can be long; the csv module's default field limit (128 KiB) is not
# a reason to fail a nightly run.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

PRODUCT_NAMES = ("product", "product_name", "name", "title")
DESCRIPTION_NAMES = ("description", "product_description", "desc", "body")
AD_NAMES = ("ad", "ad_copy", "ad_text", "advert", "advertisement")


@dataclass
class Chunk:
    """Consecutive catalog rows; `start` is the row id of the first.

    CSV and Parquet chunks hold an Arrow table; JSONL chunks hold the parsed objects, so
    that a JSONL output repeats every key and value exactly.
    """

    start: int
    table: pa.Table | None = None
    records: list[dict] | None = None
    # Row offset within the chunk -> why the row cannot be used (a ragged CSV line).
    problems: dict[int, str] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return self.table.num_rows if self.table is not None else len(self.records)

    def values(self, column: str | None) -> list:
        """The Python values of one column (all None when `column` is None)."""
        if column is None:
            return [None] * self.num_rows
        if self.table is not None:
            return self.table.column(column).to_pylist()
        return [record.get(column) for record in self.records]

    def to_table(self, schema: pa.Schema) -> pa.Table:
        """The rows as an Arrow table with `schema` (JSONL objects are converted to it)."""
        if self.table is not None:
            return self.table
        return _records_table(self.records, schema)

    def to_records(self) -> list[dict]:
        if self.records is not None:
            return self.records
        return self.table.to_pylist()


@dataclass
class Catalog:
    """An opened catalog: where it is, its columns and how many rows will be read."""

    path: Path
    format: str
    columns: list[str]
    num_rows: int
    encoding: str = "utf-8"
    limit: int | None = None
    schema: pa.Schema | None = None  # None for JSONL until arrow_schema() infers it
    files: list[Path] = field(default_factory=list)  # the Parquet files of a directory
    digest: str | None = None  # see content_digest()

    def content_digest(self) -> str:
        """sha256 of the input's bytes (of a Parquet directory: of its files' names and bytes),
        so work resumed after a crash is work on these very bytes, whatever the file's size and
        time say. CSV and JSONL are hashed as open_catalog reads them; Parquet, whose rows are
        not read before the work starts, when first asked."""
        if self.digest is None:
            if self.path.is_dir():
                hasher = hashlib.sha256()
                for path in self.files:
                    hasher.update(os.fsencode(path.relative_to(self.path)) + b"\0" + _file_digest(path).encode() + b"\0")
                self.digest = hasher.hexdigest()
            else:
                self.digest = _file_digest(self.path)
        return self.digest

    def arrow_schema(self) -> pa.Schema:
        """The Arrow types of the input columns (for JSONL, inferred over the whole file)."""
        if self.schema is None:
            schemas = [_records_schema(self.path, chunk.records) for chunk in self.chunks()]
            try:
                self.schema = pa.unify_schemas(
                    [pa.schema([(c, pa.null()) for c in self.columns]), *schemas], promote_options="permissive"
                )
            except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
                raise InputError(
                    f"{self.path}: a key holds values of different types ({first_line(error)}); "
                    "write a .jsonl output to keep them as they are"
                ) from None
        return self.schema

    def chunks(self, rows: int = CHUNK_ROWS) -> Iterator[Chunk]:
        """Yield the catalog's rows in order, at most `rows` at a time."""
        readers = {"csv": self._csv_chunks, "parquet": self._parquet_chunks, "jsonl": self._jsonl_chunks}
        start = 0
        for chunk in readers[self.format](rows):
            if self.limit is not None and start + chunk.num_rows > self.limit:
                chunk = _head(chunk, self.limit - start)
            if chunk.num_rows:
                yield chunk
            start += chunk.num_rows
            if self.limit is not None and start >= self.limit:
                return

    def _csv_chunks(self, rows: int) -> Iterator[Chunk]:
        with _open_text(self.path, self.encoding, newline="") as handle:
            header, records = _csv_records(self.path, self.encoding, handle)
            width = len(header)
            start = 0
            batch: list[list[str]] = []
            problems: dict[int, str] = {}
            for line, record in records:
                if len(record) != width:
                    record, problem = _fit_ragged(record, width, line)
                    if problem:
                        problems[len(batch)] = problem
                batch.append(record)
                if len(batch) == rows:
                    yield _csv_chunk(start, header, batch, problems)
                    start += len(batch)
                    batch, problems = [], {}
            if batch:
                yield _csv_chunk(start, header, batch, problems)

    def _parquet_chunks(self, rows: int) -> Iterator[Chunk]:
        """Whole chunks of `rows` across file boundaries: a dataset of many small files still
        makes full generation batches and few part files."""
        start = 0
        pending: list[pa.Table] = []
        buffered = 0
        for table in self._parquet_tables(rows):
            pending.append(table)
            buffered += table.num_rows
            while buffered >= rows:
                whole = pa.concat_tables(pending)
                yield Chunk(start, table=whole.slice(0, rows))
                start += rows
                pending, buffered = [whole.slice(rows)], buffered - rows
        if buffered:
            yield Chunk(start, table=pa.concat_tables(pending))

    def _parquet_tables(self, rows: int) -> Iterator[pa.Table]:
        for path in self.files:
            try:
                for batch in pq.ParquetFile(_parquet_source(path)).iter_batches(batch_size=rows):
                    yield _conform(pa.Table.from_batches([batch]), self.schema)
            except (pa.ArrowInvalid, OSError) as error:
                raise InputError(f"{path} is not a readable Parquet file: {first_line(error)}") from None

    def _jsonl_chunks(self, rows: int) -> Iterator[Chunk]:
        with _open_text(self.path, self.encoding) as handle:
            start = 0
            batch: list[dict] = []
            for _, record in _jsonl_records(self.path, self.encoding, handle):
                batch.append(record)
                if len(batch) == rows:
                    yield Chunk(start, records=batch)
                    start += len(batch)
                    batch = []
            if batch:
                yield Chunk(start, records=batch)


def open_catalog(path: str | os.PathLike, *, encoding: str = "utf-8", limit: int | None = None) -> Catalog:
    """Open a catalog, check that it can be read, and count its rows.

    CSV and JSONL files are read through once here, so that a file that does not decode or
    parse fails before any model is loaded, and the progress bar knows the total; their
    bytes are hashed on the way (to the end of the file, also with a limit).
    """
    path = location(path, flag="input")
    if not path.exists():
        raise InputError(f"input {path} does not exist")
    if not (path.is_dir() or path.is_file()):  # a pipe would hang the second read, or give it nothing
        raise InputError(
            f"input {path} is not a regular file (a pipe or a device?); a catalog is read more than once, so write it to a file first"
        )
    fmt = "parquet" if path.is_dir() else catalog_format(path, role="input")
    if fmt == "parquet":
        files = _parquet_files(path)
        schema = _parquet_schema(files)
        num_rows = sum(pq.ParquetFile(_parquet_source(f)).metadata.num_rows for f in files)
        catalog = Catalog(path, fmt, schema.names, num_rows, schema=schema, files=files)
    else:
        _check_encoding(encoding)
        digest = hashlib.sha256()
        with _open_text(path, encoding, newline="" if fmt == "csv" else None, digest=digest) as handle:
            if fmt == "csv":
                header, records = _csv_records(path, encoding, handle)
                catalog = Catalog(path, fmt, header, 0, encoding=encoding, schema=pa.schema([(h, pa.string()) for h in header]))
            else:
                records = _jsonl_records(path, encoding, handle)
                catalog = Catalog(path, fmt, [], 0, encoding=encoding)
            keys: dict[str, None] = {}
            for count, (_, record) in enumerate(records, start=1):
                if fmt == "jsonl":
                    keys.update(dict.fromkeys(record))
                catalog.num_rows = count
                if limit is not None and count >= limit:
                    break
            while handle.buffer.read(1 << 20):  # the rest, past the limit, is hashed unparsed
                pass
        catalog.digest = digest.hexdigest()
        if fmt == "jsonl":
            catalog.columns = list(keys)
    catalog.limit = limit
    if limit is not None:
        catalog.num_rows = min(catalog.num_rows, limit)
    return catalog


def catalog_format(path: Path, *, role: str) -> str:
    """The format a file's suffix names, or a one-line error for an unknown suffix."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        names = ", ".join(FORMATS)
        if path.suffix.lower() in COMPRESSED:
            names += ", uncompressed" + (" (decompress it first)" if role == "input" else "")
        raise InputError(f"{role} {path} has the suffix '{path.suffix}'; use one of {names}")
    return fmt


def default_output_path(input_path: Path) -> Path:
    """`catalog.csv` -> `catalog.ads.csv`; a Parquet directory `shop/` -> `shop.ads.parquet`."""
    input_path = location(input_path, flag="input")
    if input_path.is_dir():
        return input_path.parent / f"{input_path.name}.ads.parquet"
    catalog_format(input_path, role="input")  # `catalog.csv.gz` is named as the input it is, not as `catalog.csv.ads.gz`
    return input_path.with_name(f"{input_path.stem}.ads{input_path.suffix}")


def find_column(columns: list[str], requested: str | None, candidates: tuple[str, ...], *, role: str, flag: str) -> str | None:
    """The catalog column that plays `role`: the one named by `flag`, else the first of
    `candidates` present (case-insensitive). None when nothing matches."""
    by_name = {c.strip().lower(): c for c in reversed(columns)}
    if requested is not None:
        if requested in columns:
            return requested
        if requested.strip().lower() in by_name:
            return by_name[requested.strip().lower()]
        raise InputError(f"{flag} {requested!r} is not a column of the input; its columns are: {_names(columns)}")
    for name in candidates:
        if name in by_name:
            return by_name[name]
    return None


def find_prompt_columns(
    columns: list[str], product: str | None, description: str | None, *,
    flags: tuple[str, str] = ("--product-column", "--description-column"), purpose: str = "write ads",
) -> tuple[str, str | None]:
    """The product and description columns a prompt is made of, named or detected; a
    description named `none` means the prompt has none. `flags` name the two settings in
    error messages (command-line flags, or Python arguments)."""
    found = find_column(columns, product, PRODUCT_NAMES, role="product", flag=flags[0])
    if found is None:
        raise missing_column_error(columns, role="product", flag=flags[0], candidates=PRODUCT_NAMES)
    if description is not None and description.strip().lower() == NO_COLUMN:
        return found, None
    described = find_column(columns, description, DESCRIPTION_NAMES, role="description", flag=flags[1])
    if described is None:
        raise missing_column_error(
            columns, role="description", flag=flags[1], candidates=DESCRIPTION_NAMES,
            extra=f", or pass {flags[1]} {NO_COLUMN} to {purpose} from the product alone",
        )  # fmt: skip
    return found, described


def catalog_prompt_columns(catalog: Catalog, product: str | None, description: str | None) -> tuple[str, str | None]:
    """find_prompt_columns for an opened catalog. One with neither columns nor rows (an empty
    JSONL file, where no object names a key) has no row to write an ad for: it makes a 0-row
    output, as a header-only CSV does, so a night with no new products is not a failed run."""
    if not catalog.columns and catalog.num_rows == 0:
        return product or PRODUCT_NAMES[0], None
    return find_prompt_columns(catalog.columns, product, description)


def missing_column_error(columns: list[str], *, role: str, flag: str, candidates: tuple[str, ...], extra: str = "") -> InputError:
    tried = ", ".join(candidates)
    return InputError(
        f"no {role} column found (looked for {tried}); its columns are: {_names(columns)}; "
        f"name it with {flag} COLUMN{extra}"
    )


def _names(columns: list[str]) -> str:
    return ", ".join(repr(c) for c in columns) if columns else "(none)"


# --- CSV -------------------------------------------------------------------------------


def _check_encoding(encoding: str) -> None:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise SettingsError(f"--encoding {encoding!r} is not an encoding Python knows (try utf-8, latin-1, cp1252)") from None


def _open_text(path: Path, encoding: str, *, newline: str | None = None, digest=None) -> io.TextIOWrapper:
    """A catalog file as text; every byte read from it is added to `digest` when given."""
    # utf-8-sig reads plain UTF-8 too, and drops the byte-order mark Excel writes.
    python_encoding = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    if digest is None and not isinstance(path, ObjectPath):
        return open(path, encoding=python_encoding, newline=newline)
    raw = _open_binary(path) if digest is None else io.BufferedReader(_Digesting(_open_binary(path), digest), 1 << 20)
    return io.TextIOWrapper(raw, encoding=python_encoding, newline=newline)


def _open_binary(path: Path | ObjectPath):
    """A catalog file's bytes: a local file, or an object's stream (read as it is needed)."""
    return io.BufferedReader(path.open_stream(), 1 << 20) if isinstance(path, ObjectPath) else open(path, "rb")


def _parquet_source(path: Path | ObjectPath):
    """What pyarrow reads a Parquet file from: its path, or the object as a random-access file."""
    return path.open_file() if isinstance(path, ObjectPath) else path


class _Digesting(io.RawIOBase):
    """A binary file that adds every byte read from it to a hash."""

    def __init__(self, raw, digest):
        self.raw, self.digest = raw, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.raw.readinto(buffer)
        self.digest.update(memoryview(buffer)[:count])
        return count

    def close(self) -> None:
        self.raw.close()
        super().close()


def _file_digest(path: Path | ObjectPath) -> str:
    with _open_binary(path) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _csv_records(path: Path, encoding: str, handle) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header and an iterator of (line number, fields) of the open CSV file `handle`;
    decode errors become InputError."""
    # strict: a quote that never closes, or text after a closing quote ("Hat"x), is an error
    # instead of a guess (the lenient reader swallows the rest of the file into one cell, or
    # drops the quotes).
    reader = csv.reader(handle, strict=True)
    ended = 0  # the line the last record ended on

    def decoding(step):
        nonlocal ended
        try:
            record = step()
        except UnicodeDecodeError:
            raise _decode_error(path, encoding) from None
        except csv.Error as error:
            raise _csv_error(path, error, record_line=ended + 1, line=reader.line_num) from None
        ended = reader.line_num
        return record

    header = decoding(lambda: next(reader, None))
    if header is None:
        raise InputError(f"{path} is empty: a CSV catalog needs a header line naming its columns")
    _check_header(path, header)

    def records() -> Iterator[tuple[int, list[str]]]:
        while True:
            record = decoding(lambda: next(reader, None))
            if record is None:
                return
            if record:  # the csv module yields [] for blank lines: no row there
                yield reader.line_num, record

    return header, records()


def _csv_error(path: Path, error: csv.Error, *, record_line: int, line: int) -> InputError:
    """The csv module's error as a line that says where and what to fix. At the end of the
    file the reader only knows it is inside a quote: name the line its row started on."""
    if str(error) == "unexpected end of data":
        return InputError(
            f"{path} line {record_line}: the row starting on this line opens a quote that is never closed; "
            'close it, or double a quote that is part of the text ("")'
        )
    if str(error).startswith("',' expected after"):
        return InputError(
            f"{path} line {line}: a quoted cell has text after its closing quote (as in \"a\"b); "
            'quote the whole cell and double the quotes inside it ("""a""b")'
        )
    return InputError(f"{path} line {line}: not valid CSV ({error})")


def _check_header(path: Path, header: list[str]) -> None:
    seen: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if name in seen:
            raise InputError(
                f"{path}: the header names the column {name!r} twice (columns {seen[name]} and {position}); "
                "rename one of them"
            )
        seen[name] = position


def _fit_ragged(record: list[str], width: int, line: int) -> tuple[list[str], str | None]:
    """Make a ragged CSV line fit the header without losing a cell.

    Missing trailing cells are empty (a common way to write them). Extra cells cannot get a
    column of their own, so they are joined onto the last column and the row is skipped.
    """
    if len(record) < width:
        return record + [""] * (width - len(record)), None
    kept = record[: width - 1] + [",".join(record[width - 1 :])]
    return kept, f"line {line} has {len(record)} fields but the header has {width}"


def _csv_chunk(start: int, header: list[str], records: list[list[str]], problems: dict[int, str]) -> Chunk:
    columns = list(zip(*records)) if records else [()] * len(header)
    table = pa.table({name: pa.array(values, pa.string()) for name, values in zip(header, columns)})
    return Chunk(start, table=table, problems=dict(problems))


# --- JSONL -----------------------------------------------------------------------------


def _jsonl_records(path: Path, encoding: str, handle) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each line of the open JSONL file `handle`."""
    try:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path} line {line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise InputError(f"{path} line {line_number}: expected a JSON object per line, got {type(record).__name__}")
            yield line_number, record
    except UnicodeDecodeError:
        raise _decode_error(path, encoding) from None


def _decode_error(path: Path, encoding: str) -> InputError:
    """Name the first line that does not decode (text files decode ahead in blocks, so the
    reader's own position says little)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with _open_binary(path) as handle:
        for number, line in enumerate(handle, start=1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError as error:
                return InputError(
                    f"{path} line {number} is not valid {encoding} (byte 0x{line[error.start]:02x}); "
                    "pass the file's encoding with --encoding, e.g. --encoding cp1252"
                )
    return InputError(f"{path} ends in the middle of a {encoding} character; pass the file's encoding with --encoding")


# --- Parquet ---------------------------------------------------------------------------


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    # Spark and pyarrow write part files beside _SUCCESS markers and .crc side files.
    files = sorted(
        p
        for p in path.rglob("*.parquet")
        if p.is_file() and not any(part.startswith(("_", ".")) for part in p.relative_to(path).parts)
    )
    if not files:
        raise InputError(f"input directory {path} holds no .parquet files")
    for f in files:
        check_utf8_name(f, "input")
    return files


def _parquet_schema(files: list[Path]) -> pa.Schema:
    schemas = []
    for f in files:
        try:
            schemas.append(pq.read_schema(_parquet_source(f)))
        except (pa.ArrowInvalid, OSError) as error:
            raise InputError(f"{f} is not a valid Parquet file: {first_line(error)}") from None
    try:
        return pa.unify_schemas(schemas)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise InputError(f"the Parquet files of {files[0].parent} have clashing columns: {first_line(error)}") from None


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """One file of a Parquet directory, shaped like the whole dataset (missing columns null)."""
    if table.schema == schema:
        return table
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _head(chunk: Chunk, rows: int) -> Chunk:
    problems = {offset: why for offset, why in chunk.problems.items() if offset < rows}
    if chunk.table is not None:
        return Chunk(chunk.start, table=chunk.table.slice(0, rows), problems=problems)
    return Chunk(chunk.start, records=chunk.records[:rows], problems=problems)


# --- writing ---------------------------------------------------------------------------


class CatalogWriter:
    """Writes the output catalog to a temporary file beside it, renamed into place on commit.

    Readers never see a partial file; a failed run leaves no output behind.
    """

    def __init__(self, path: Path, catalog: Catalog, new_columns: list[str]):
        self.path = location(path, flag="-o/--output")
        self.format = catalog_format(self.path, role="output")
        self.catalog = catalog
        self.new_columns = new_columns
        self.target = output_target(self.path)
        with writing(self.path, OUTPUT_FIX):
            self.target.parent.mkdir(parents=True, exist_ok=True)
        # Beside the file it replaces, on the same file system (see remove_temporary_outputs).
        self.temp_path = self.target.with_name(f".{self.target.name}.{os.getpid()}.tmp")
        self._file = None  # CSV and JSONL: the open text file
        self._csv = None
        self._parquet = None

    def write(self, chunk: Chunk, new_values: dict[str, list[str]]) -> None:
        """Write one chunk with the new columns' values (in the chunk's row order)."""
        if self.format == "jsonl":
            with writing(self.path, OUTPUT_FIX):
                self._write_jsonl(chunk.to_records(), new_values)
            return
        table = _with_columns(chunk.to_table(self.catalog.arrow_schema()), new_values)
        with writing(self.path, OUTPUT_FIX):
            if self.format == "parquet":
                self._write_parquet(table)
            else:
                self._write_csv(table)

    def commit(self) -> None:
        """Finish the file and move it into place; if that fails, drop it."""
        try:
            if self._file is None and self._parquet is None:
                # No rows at all: still a valid file, with every column where the format has a header.
                self.write(Chunk(0, table=self.catalog.arrow_schema().empty_table()), {c: [] for c in self.new_columns})
            with writing(self.path, OUTPUT_FIX):
                self._close()
                if isinstance(self.path, ObjectPath):
                    self.path.upload(self.temp_path)  # whole, or not at all
                    self.temp_path.unlink()
                else:
                    os.replace(self.temp_path, self.target)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the partial file (after an error or an interrupt)."""
        try:
            with contextlib.suppress(OSError):  # on a full disk the last flush fails too: the file goes anyway
                self._close()
        finally:
            self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> CatalogWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()

    def _close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write_parquet(self, table: pa.Table) -> None:
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.temp_path, table.schema)
        self._parquet.write_table(table)

    def _write_csv(self, table: pa.Table) -> None:
        if self._file is None:
            # The csv module quotes only the cells that need it, as the input most likely did.
            # Lines end in CRLF (RFC 4180): with "\n" alone, a cell holding a lone "\r" would
            # go out unquoted and come back split.
            self._file = open(self.temp_path, "w", encoding="utf-8", newline="")
            self._csv = csv.writer(self._file, lineterminator="\r\n")
            self._csv.writerow(table.column_names)
        columns = [_csv_cells(column) for column in table.columns]
        self._csv.writerows(zip(*columns))

    def _write_jsonl(self, records: list[dict], new_values: dict[str, list[str]]) -> None:
        if self._file is None:
            self._file = open(self.temp_path, "w", encoding="utf-8")
        for offset, record in enumerate(records):
            row = {**record, **{name: values[offset] for name, values in new_values.items()}}
            self._file.write(_json_text(row) + "\n")


def check_writable_path(path: Path | None, *, flag: str) -> None:
    """Fail before any work when a file the run writes (`flag`'s) could not go where it is
    asked to: a directory in its place, a file where its directory should be, a directory
    this user may not write in."""
    if path is None:
        return
    if isinstance(path, ObjectPath):
        path.check_writable(flag)
        return
    if path.is_dir():
        raise SettingsError(f"{flag} {path} is a directory; name a file")
    folder = next(p for p in path.parents if p.exists())  # its directory, or the one it will be made in
    if not folder.is_dir():
        raise SettingsError(f"{flag} {path}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SettingsError(f"{flag} {path}: {folder} is not writable")


def output_target(output: Path) -> Path:
    """The file an output path stands for: the target of a symbolic link (the file there is
    replaced and the link stays, as `>` in a shell would have it), else the path itself; for
    an object, the local file uploaded as it."""
    if isinstance(output, ObjectPath):
        return local_output_path(output)
    output = Path(output)
    return Path(os.path.realpath(output)) if output.is_symlink() else output


def remove_temporary_outputs(output: Path) -> None:
    """Remove the temporary files that writers of `output` killed outright (SIGKILL, a power
    cut) left beside it. Only the holder of the output's lock may: they are no one's now."""
    target = output_target(output)
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        log.info("removing %s, left by an interrupted run", stale)
        stale.unlink(missing_ok=True)


# A cell starting with one of these is a formula to a spreadsheet (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(text: str) -> str:
    """Generated text that a spreadsheet shows as text: a formula-like start gets a quote."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def check_writable(catalog: Catalog, output_format: str) -> None:
    """Fail before any work when the input's columns cannot be written in `output_format`."""
    if output_format == "jsonl":
        return
    schema = catalog.arrow_schema()  # JSONL input: its types must agree across rows
    if output_format != "csv":
        return
    for f in schema:
        if not pa.types.is_nested(f.type):
            try:
                pc.cast(pa.array([], f.type), pa.string())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise InputError(
                    f"column {f.name!r} holds {f.type} values, which CSV cannot hold; choose a .parquet or .jsonl output"
                ) from None


def _csv_cells(column: pa.ChunkedArray) -> list[str]:
    """A column as CSV text: strings as they are, lists and structs as JSON, bytes as
    `_bytes_text` has them, other types as Arrow writes them, nulls empty."""
    if pa.types.is_nested(column.type):
        return ["" if v is None else _json_text(v) for v in column.to_pylist()]
    if _is_bytes(column.type):
        return ["" if v is None else _bytes_text(v) for v in column.to_pylist()]
    if not pa.types.is_string(column.type):
        column = pc.cast(column, pa.string())
    return ["" if value is None else value for value in column.to_pylist()]


def _with_columns(table: pa.Table, new_values: dict[str, list[str]]) -> pa.Table:
    for name, values in new_values.items():
        table = table.append_column(pa.field(name, pa.string()), pa.array(values, pa.string()))
    return table


def _records_schema(path: Path, records: list[dict]) -> pa.Schema:
    """The Arrow types of JSONL objects, key by key (a key missing from an object is a null).
    A key whose integers do not fit 64 bits (20-digit ids) is a decimal(38, 0) column, which
    keeps them exact to 38 digits, in Parquet and in CSV."""
    fields = []
    for name in dict.fromkeys(k for r in records for k in r):
        values = [r.get(name) for r in records]
        try:
            fields.append(pa.field(name, pa.array(values).type))
        except (OverflowError, pa.ArrowInvalid, pa.ArrowTypeError) as error:
            if not all(v is None or (type(v) is int and abs(v) < 10**38) for v in values):
                raise InputError(
                    f"{path}: the key {name!r} holds values Arrow cannot type ({first_line(error)}); "
                    "write a .jsonl output to keep them as they are"
                ) from None
            fields.append(pa.field(name, pa.decimal128(38, 0)))
    return pa.schema(fields)


def _records_table(records: list[dict], schema: pa.Schema) -> pa.Table:
    """JSONL objects as a table of `schema` (see _records_schema)."""
    try:
        return pa.Table.from_pydict({name: [r.get(name) for r in records] for name in schema.names}, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise InputError(
            f"a JSONL key holds values Arrow cannot type ({first_line(error)}); "
            "write a .jsonl output to keep them as they are"
        ) from None


def _json_text(value) -> str:
    """Strict JSON: NaN and infinities, which JSON has no words for, are written as null."""
    try:
        return json.dumps(value, ensure_ascii=False, default=_json_value, allow_nan=False)
    except ValueError:  # the rare value that holds one: cleaned only then
        return json.dumps(_finite(value), ensure_ascii=False, default=_json_value, allow_nan=False)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _is_bytes(arrow_type: pa.DataType) -> bool:
    return pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) or pa.types.is_fixed_size_binary(arrow_type)


def _bytes_text(value: bytes) -> str:
    """Bytes as text: UTF-8 as it reads, any other byte as a `\\xNN` escape (CSV and JSON alike)."""
    return value.decode("utf-8", errors="backslashreplace")


def _json_value(value):
    """JSON for the Arrow values JSON has no type for (from Parquet into JSONL)."""
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return _bytes_text(value)
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
