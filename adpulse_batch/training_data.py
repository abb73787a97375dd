"""Reading the (product, description, ad) rows that finetune learns from.

Data is a local `.csv`, `.parquet` or `.jsonl` file, a directory of such files, or a Hub
dataset `hf://datasets/OWNER/NAME` (read through huggingface_hub's file system). Files of a
directory or dataset belong to a split by their name (`data/train-00000-of-00001.parquet`,
`test.csv`, `validation/part-0.jsonl`); files that name none are training rows. Cells become
text exactly as `run` makes prompt text of them (`prompts.field_text`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from adpulse_batch.catalog import AD_NAMES, FORMATS, find_column, find_prompt_columns, missing_column_error, open_catalog
from adpulse_batch.errors import InputError, SettingsError, first_line
from adpulse_batch.prompts import field_text

HUB_PREFIX = "hf://"

# Split names as the Hub and the `datasets` library spell them, by the split they stand for.
SPLIT_WORDS = {
    "train": "train", "training": "train",
    "test": "test", "testing": "test",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
}
# The split that evaluates, when the data has one: test first, as the dataset has it.
EVAL_SPLITS = ("test", "validation")
_WORD = re.compile(r"[a-z]+")

# Why a row was not used -> how the log says it.
DROP_EMPTY_AD = "with an empty ad"
DROP_NOTHING = "with no product name or description"
DROP_MALFORMED = "from malformed CSV lines"


@dataclass(frozen=True)
class TrainingRow:
    product: str
    description: str
    ad: str


@dataclass
class TrainingData:
    """The rows to train on and to evaluate with, and how they were found."""

    train: list[TrainingRow]
    eval: list[TrainingRow]
    eval_source: str  # where the eval rows come from, in words
    columns: dict[str, str | None]  # role -> column name, as found in the first training file
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """sha256 of the rows exactly as trained and evaluated on (text after cleaning, in order)."""
        digest = hashlib.sha256()
        for split, rows in (("train", self.train), ("eval", self.eval)):
            for row in rows:
                line = json.dumps([split, row.product, row.description, row.ad], ensure_ascii=False)
                digest.update(line.encode("utf-8") + b"\n")
        return digest.hexdigest()


def read_training_data(
    data: str,
    *,
    product_column: str | None = None,
    description_column: str | None = None,
    ad_column: str | None = None,
    encoding: str = "utf-8",
    eval_fraction: float = 0.1,
    seed: int = 42,
) -> TrainingData:
    """Read and clean the rows of `data`, and set the eval rows apart.

    Eval rows are the data's test (else validation) split when it has one, else
    `eval_fraction` of the rows drawn with `seed`; `eval_fraction` 0 evaluates nothing.
    """
    columns = {"product": product_column, "description": description_column, "ad": ad_column}
    reader = _SplitReader(columns, encoding)
    if data.startswith(HUB_PREFIX):
        _read_hub(data, reader)
    else:
        _read_local(Path(data).expanduser(), reader)
    splits, dropped = reader.rows, reader.dropped
    train = splits.get("train", [])
    if not train:
        reasons = "".join(f", {count} {why}" for why, count in dropped.items())
        raise InputError(f"{data} has no usable training rows ({reader.read_rows.get('train', 0)} read{reasons})")
    eval_split = next((name for name in EVAL_SPLITS if splits.get(name)), None)
    if eval_fraction == 0:
        eval_rows, eval_source = [], "none (--eval-fraction 0)"
    elif eval_split is not None:
        eval_rows = splits[eval_split]
        eval_source = f"the {eval_split} split ({len(eval_rows)} rows)"
    else:
        train, eval_rows = hold_out(train, eval_fraction, seed)
        eval_source = f"{len(eval_rows)} rows held out (--eval-fraction {eval_fraction:g})"
    return TrainingData(train, eval_rows, eval_source, reader.columns_found["train"], dropped)


def hold_out(rows: list[TrainingRow], fraction: float, seed: int) -> tuple[list[TrainingRow], list[TrainingRow]]:
    """Split `rows` into (train, eval): `fraction` of them, at least one, drawn with `seed`.
    Both keep the rows' order."""
    count = max(1, round(len(rows) * fraction))
    if count >= len(rows):
        raise SettingsError(
            f"--eval-fraction {fraction:g} holds out all {len(rows)} usable rows; "
            "pass --eval-fraction 0 to train on every row without evaluating"
        )
    chosen = set(random.Random(seed).sample(range(len(rows)), count))
    train = [row for i, row in enumerate(rows) if i not in chosen]
    return train, [row for i, row in enumerate(rows) if i in chosen]


def split_of(path: str) -> str:
    """The split a data file belongs to by its name: the file name is asked first, then its
    folders, innermost first; a file that names no split holds training rows."""
    for part in reversed(PurePosixPath(path).parts):
        for word in _WORD.findall(part.lower()):
            if word in SPLIT_WORDS:
                return SPLIT_WORDS[word]
    return "train"


class _SplitReader:
    """Reads data files one at a time into rows per split, counting dropped rows."""

    def __init__(self, columns: dict[str, str | None], encoding: str):
        self.columns = columns
        self.encoding = encoding
        self.rows: dict[str, list[TrainingRow]] = {}
        self.read_rows: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.columns_found: dict[str, dict[str, str | None]] = {}  # split -> role -> column of its first file

    def read(self, path: Path, split: str) -> None:
        catalog = open_catalog(path, encoding=self.encoding)
        product, description, ad = self._find_columns(catalog.columns)
        self.columns_found.setdefault(split, {"product": product, "description": description, "ad": ad})
        self.read_rows[split] = self.read_rows.get(split, 0) + catalog.num_rows
        rows = self.rows.setdefault(split, [])
        for chunk in catalog.chunks():
            cells = zip(chunk.values(product), chunk.values(description), chunk.values(ad))
            for offset, (product_cell, description_cell, ad_cell) in enumerate(cells):
                row = TrainingRow(field_text(product_cell), field_text(description_cell), field_text(ad_cell))
                if offset in chunk.problems:
                    self._drop(DROP_MALFORMED)
                elif not row.ad:
                    self._drop(DROP_EMPTY_AD)
                elif not row.product and not row.description:
                    self._drop(DROP_NOTHING)  # run skips such rows: there is no prompt to learn from
                else:
                    rows.append(row)

    def _drop(self, why: str) -> None:
        self.dropped[why] = self.dropped.get(why, 0) + 1

    def _find_columns(self, columns: list[str]) -> tuple[str, str | None, str]:
        wanted = self.columns
        product, description = find_prompt_columns(columns, wanted["product"], wanted["description"], purpose="learn ads")
        ad = find_column(columns, wanted["ad"], AD_NAMES, role="ad", flag="--ad-column")
        if ad is None:
            raise missing_column_error(columns, role="ad", flag="--ad-column", candidates=AD_NAMES)
        return product, description, ad


def _data_files(paths: list[str]) -> list[str]:
    return sorted(p for p in paths if PurePosixPath(p).suffix.lower() in FORMATS)


def _read_local(path: Path, reader: _SplitReader) -> None:
    if not path.exists():
        raise InputError(f"data {path} does not exist")
    if path.is_file():
        reader.read(path, "train")  # open_catalog names an unknown suffix
        return
    relative = _data_files([p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()])
    relative = [r for r in relative if not any(part.startswith(("_", ".")) for part in PurePosixPath(r).parts)]
    if not relative:
        raise InputError(f"data directory {path} holds no {', '.join(FORMATS)} files")
    for name in relative:
        reader.read(path / name, split_of(name))


def hub_filesystem():
    """huggingface_hub's fsspec file system (a function, so tests can put a local one in its place)."""
    from huggingface_hub import HfFileSystem

    return HfFileSystem()


def _read_hub(data: str, reader: _SplitReader) -> None:
    root = data.removeprefix(HUB_PREFIX).rstrip("/")
    fs = hub_filesystem()
    with tempfile.TemporaryDirectory(prefix="adpulse-data-") as local:
        # Whatever goes wrong reaching the Hub (offline, no such dataset, a network error of
        # any of the HTTP client's types) is the one line below, not a traceback.
        try:
            if fs.isfile(root):
                names = {PurePosixPath(root).name: root}
            else:
                names = {p[len(root) :].lstrip("/"): p for p in fs.find(root)}
            files = _data_files(list(names))
            for name in files:
                (Path(local) / name).parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(names[name], str(Path(local) / name))
        except Exception as error:  # noqa: BLE001 - see above
            owner_name = "/".join(root.split("/")[1:3])
            raise InputError(
                f"cannot read the Hub dataset {data} ({first_line(error)}); download it where the Hub is reachable "
                f"(`hf download {owner_name} --repo-type dataset --local-dir DIR`) and pass DIR"
            ) from None
        if not files:
            raise InputError(f"the Hub dataset {data} holds no {', '.join(FORMATS)} files")
        for name in files:
            try:
                reader.read(Path(local) / name, split_of(name))
            except InputError as error:  # name the file as the user knows it, not its download
                raise InputError(str(error).replace(str(Path(local)), HUB_PREFIX + root)) from None
