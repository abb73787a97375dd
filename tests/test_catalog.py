"""Reading catalogs in chunks and writing them back: rows, order, values and types kept."""

import datetime
import decimal
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adpulse_batch.catalog import (
    PRODUCT_NAMES,
    CatalogWriter,
    default_output_path,
    find_column,
    open_catalog,
)
from adpulse_batch.errors import InputError, WriteError
from conftest import assert_same_table, read_csv, write_csv


def copy_catalog(source, target, *, rows_per_chunk=2, ads=None):
    """Write `source` to `target` chunk by chunk with an `ad` column, as `run` does."""
    catalog = open_catalog(source)
    with CatalogWriter(target, catalog, ["ad"]) as writer:
        for chunk in catalog.chunks(rows_per_chunk):
            values = [f"ad {chunk.start + i}" for i in range(chunk.num_rows)] if ads is None else ads
            writer.write(chunk, {"ad": values})
    return catalog


def test_csv_cells_pass_through_as_written(tmp_path):
    rows = [
        ["000123", "  Harem pants ", "loose, with\na waistband", "1e5"],
        ["0042", "Mug ☕", 'say "hi"', ""],
        ["7", "", "", "NaN"],
    ]
    source = write_csv(tmp_path / "in.csv", ["sku", "name", "description", "price"], rows)
    copy_catalog(source, tmp_path / "out.csv")
    header, out = read_csv(tmp_path / "out.csv")
    assert header == ["sku", "name", "description", "price", "ad"]
    assert [r[:4] for r in out] == rows
    assert [r[4] for r in out] == ["ad 0", "ad 1", "ad 2"]


def test_csv_byte_order_mark_and_blank_lines(tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes("\ufeffname,description\r\nMug,Blue\r\n\r\nPen,Black\r\n".encode("utf-8"))
    catalog = copy_catalog(source, tmp_path / "out.csv")
    assert catalog.columns == ["name", "description"]
    assert read_csv(tmp_path / "out.csv")[1] == [["Mug", "Blue", "ad 0"], ["Pen", "Black", "ad 1"]]


def test_ragged_csv_lines_keep_every_cell(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("name,description,price\nMug,Blue\nPen,Black,2,extra\n", encoding="utf-8")
    catalog = open_catalog(source)
    (chunk,) = catalog.chunks()
    assert chunk.values("description") == ["Blue", "Black"]
    assert chunk.values("price") == ["", "2,extra"]  # nothing dropped
    assert chunk.problems == {1: "line 3 has 4 fields but the header has 3"}


def test_csv_in_another_encoding(tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes("name,description\nCrème,Légère\n".encode("cp1252"))
    with pytest.raises(InputError, match=r"line 2 is not valid utf-8 \(byte 0xe8\); pass the file.s encoding with --encoding"):
        open_catalog(source)
    (chunk,) = open_catalog(source, encoding="cp1252").chunks()
    assert chunk.values("name") == ["Crème"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("name,name\nMug,Pen\n", "names the column 'name' twice"),
    ],
)
def test_unreadable_csv(tmp_path, content, message):
    source = tmp_path / "in.csv"
    source.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        open_catalog(source)


def test_header_only_csv_gives_header_only_output(tmp_path):
    source = write_csv(tmp_path / "in.csv", ["sku", "name"], [])
    catalog = copy_catalog(source, tmp_path / "out.csv")
    assert catalog.num_rows == 0
    assert read_csv(tmp_path / "out.csv") == (["sku", "name", "ad"], [])


def typed_table():
    return pa.table(
        {
            "sku": pa.array(["000123", None, "9"], pa.string()),
            "stock": pa.array([1, None, 3], pa.int32()),
            "price": pa.array([decimal.Decimal("9.99"), decimal.Decimal("0.10"), None], pa.decimal128(10, 2)),
            "weight": pa.array([0.1, float("nan"), 2.5], pa.float64()),
            "active": pa.array([True, False, None], pa.bool_()),
            "updated": pa.array([datetime.datetime(2026, 11, 1, 8), None, datetime.datetime(2026, 1, 1)], pa.timestamp("us")),
            "tags": pa.array([["a", "b"], [], None], pa.list_(pa.string())),
            "name": ["Mug", "Pen", "Cup"],
        }
    )


def test_parquet_types_and_values_kept(tmp_path):
    table = typed_table()
    pq.write_table(table, tmp_path / "in.parquet")
    copy_catalog(tmp_path / "in.parquet", tmp_path / "out.parquet")
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.schema.names == table.schema.names + ["ad"]
    assert_same_table(out.select(table.column_names), table)
    assert out.schema.field("ad").type == pa.string()


def test_parquet_directory_is_one_dataset_in_file_order(tmp_path):
    data = tmp_path / "shop"
    data.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"name": [f"p{i}a", f"p{i}b"], "n": [i, i]}), data / f"part-{i:05d}.parquet")
    (data / "_SUCCESS").write_text("")
    catalog = open_catalog(data)
    assert catalog.num_rows == 6
    chunks = list(catalog.chunks(4))
    assert [(c.start, c.num_rows) for c in chunks] == [(0, 4), (4, 2)]  # chunks span files: full batches
    assert [name for chunk in chunks for name in chunk.values("name")] == ["p0a", "p0b", "p1a", "p1b", "p2a", "p2b"]
    assert [n for chunk in chunks for n in chunk.values("n")] == [0, 0, 1, 1, 2, 2]
    assert default_output_path(data) == tmp_path / "shop.ads.parquet"


def test_not_parquet(tmp_path):
    (tmp_path / "in.parquet").write_text("sku,name\n1,Mug\n")
    with pytest.raises(InputError, match="not a valid Parquet file"):
        open_catalog(tmp_path / "in.parquet")


def test_jsonl_objects_kept_exactly(tmp_path):
    records = [
        {"name": "Mug", "price": 9.5, "tags": ["kitchen"], "meta": {"color": "blue"}},
        {"name": "Pen", "sku": "007"},  # keys differ between lines: none are added
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    copy_catalog(tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert out == [{**records[0], "ad": "ad 0"}, {**records[1], "ad": "ad 1"}]


def test_jsonl_line_that_is_not_an_object(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"name": "Mug"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 2: expected a JSON object"):
        open_catalog(tmp_path / "in.jsonl")


def test_parquet_to_csv_and_jsonl(tmp_path):
    pq.write_table(typed_table(), tmp_path / "in.parquet")
    copy_catalog(tmp_path / "in.parquet", tmp_path / "out.csv")
    header, rows = read_csv(tmp_path / "out.csv")
    assert rows[0][:8] == ["000123", "1", "9.99", "0.1", "true", "2026-11-01 08:00:00.000000", '["a", "b"]', "Mug"]
    assert rows[1][:3] == ["", "", "0.10"]  # nulls are empty cells
    copy_catalog(tmp_path / "in.parquet", tmp_path / "out.jsonl")
    first = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert first["price"] == "9.99" and first["updated"] == "2026-11-01T08:00:00" and first["tags"] == ["a", "b"]


def test_chunks_and_limit(tmp_path):
    source = write_csv(tmp_path / "in.csv", ["name"], [[f"p{i}"] for i in range(7)])
    assert [(c.start, c.num_rows) for c in open_catalog(source).chunks(3)] == [(0, 3), (3, 3), (6, 1)]
    limited = open_catalog(source, limit=4)
    assert limited.num_rows == 4
    assert [name for c in limited.chunks(3) for name in c.values("name")] == ["p0", "p1", "p2", "p3"]


def test_failed_write_leaves_no_file(tmp_path):
    source = write_csv(tmp_path / "in.csv", ["name"], [["Mug"]])
    catalog = open_catalog(source)
    with pytest.raises(RuntimeError):
        with CatalogWriter(tmp_path / "out.csv", catalog, ["ad"]) as writer:
            writer.write(next(catalog.chunks()), {"ad": ["x"]})
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == [source]


def test_find_column():
    columns = ["SKU", "Title", "Product_Name"]
    assert find_column(columns, None, PRODUCT_NAMES, role="product", flag="--product-column") == "Product_Name"
    assert find_column(columns, "sku", PRODUCT_NAMES, role="product", flag="--product-column") == "SKU"
    assert find_column(["price"], None, PRODUCT_NAMES, role="product", flag="--product-column") is None
    with pytest.raises(InputError, match="--product-column 'nope' is not a column of the input; its columns are: 'SKU'"):
        find_column(columns, "nope", PRODUCT_NAMES, role="product", flag="--product-column")


def test_content_digest_is_of_every_byte(tmp_path):
    import hashlib

    source = write_csv(tmp_path / "in.csv", ["name"], [[f"p{i}"] for i in range(9000)])
    whole = hashlib.sha256(source.read_bytes()).hexdigest()
    assert open_catalog(source).content_digest() == whole
    assert open_catalog(source, limit=2).content_digest() == whole  # a limit reads less, hashes all
    (tmp_path / "in.jsonl").write_text('{"name": "Mug"}\n', encoding="utf-8")
    assert open_catalog(tmp_path / "in.jsonl").content_digest() == hashlib.sha256(b'{"name": "Mug"}\n').hexdigest()
    data = tmp_path / "shop"
    data.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"name": [f"p{i}"]}), data / f"part-{i}.parquet")
    before = open_catalog(data).content_digest()
    pq.write_table(pa.table({"name": ["p9"]}), data / "part-1.parquet")
    assert open_catalog(data).content_digest() != before


def test_jsonl_integers_past_64_bits_stay_exact(tmp_path):
    ids = [12345678901234567890, -5, None, 10**37]
    (tmp_path / "in.jsonl").write_text("".join(f'{{"id": {"null" if i is None else i}, "name": "Mug"}}\n' for i in ids))
    copy_catalog(tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    assert [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ids
    copy_catalog(tmp_path / "in.jsonl", tmp_path / "out.csv")
    assert [row[0] for row in read_csv(tmp_path / "out.csv")[1]] == ["12345678901234567890", "-5", "", str(10**37)]
    copy_catalog(tmp_path / "in.jsonl", tmp_path / "out.parquet")
    column = pq.read_table(tmp_path / "out.parquet").column("id")
    assert column.type == pa.decimal128(38, 0) and column.to_pylist() == [None if i is None else decimal.Decimal(i) for i in ids]
    (tmp_path / "in.jsonl").write_text('{"id": 1.5, "name": "Mug"}\n{"id": 123456789012345678901, "name": "Pen"}\n')
    with pytest.raises(InputError, match="the key 'id' holds values Arrow cannot type .*; write a .jsonl output"):
        copy_catalog(tmp_path / "in.jsonl", tmp_path / "out.csv")


def test_json_text_is_strict_and_bytes_are_text_everywhere(tmp_path):
    table = pa.table({
        "name": ["Mug", "Pen"],
        "weight": [float("nan"), float("inf")],
        "sizes": [[1.0, float("-inf")], None],
        "raw": pa.array([b"\xff\xfeok", "caf\u00e9".encode()], pa.binary()),
    })  # fmt: skip
    pq.write_table(table, tmp_path / "in.parquet")
    copy_catalog(tmp_path / "in.parquet", tmp_path / "out.jsonl")

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    lines = [json.loads(line, parse_constant=refuse) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["weight"], r["sizes"], r["raw"]) for r in lines] == [(None, [1.0, None], "\\xff\\xfeok"), (None, None, "café")]
    copy_catalog(tmp_path / "in.parquet", tmp_path / "out.csv")
    assert [row[1:4] for row in read_csv(tmp_path / "out.csv")[1]] == [["nan", "[1.0, null]", "\\xff\\xfeok"], ["inf", "", "café"]]


def test_a_commit_that_fails_leaves_no_file(tmp_path):
    source = write_csv(tmp_path / "in.csv", ["name"], [["Mug"]])
    catalog = open_catalog(source)
    writer = CatalogWriter(tmp_path / "out.csv", catalog, ["ad"])
    writer.write(next(catalog.chunks()), {"ad": ["x"]})
    (tmp_path / "out.csv").mkdir()  # something took the output's place meanwhile
    with pytest.raises(WriteError, match=r"cannot write .*out\.csv \(Is a directory\); check that its directory"):
        writer.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]
