"""AdWriter: ads for pandas DataFrames (notebooks, Spark and Ray UDFs), the same as `run` writes."""

import pandas as pd
import pytest

from adpulse_batch.errors import InputError
from adpulse_batch.frame import AdWriter
from adpulse_batch.settings import GenerationSettings, ModelSettings
from conftest import SAMPLE_CSV, read_csv


@pytest.fixture(scope="module")
def writer(test_model):
    return AdWriter(ModelSettings(adapter=str(test_model[1]), dtype="float32"), GenerationSettings(max_new_tokens=12))


def test_frame_gets_the_ads_run_writes(writer, run_ads, tmp_path):
    assert run_ads(SAMPLE_CSV, "-o", tmp_path / "out.csv", "--no-cache").exit_code == 0
    header, rows = read_csv(tmp_path / "out.csv")
    frame = pd.read_csv(SAMPLE_CSV, dtype=str, keep_default_na=False)
    frame.index = [f"r{i}" for i in range(len(frame))]  # any index is kept
    out = writer(frame)
    assert list(out.columns) == list(frame.columns) + ["ad_copy", "ad_status", "ad_flags"]
    assert out.index.equals(frame.index)
    pd.testing.assert_frame_equal(out[frame.columns], frame)
    assert "ad_copy" not in frame.columns  # the input frame is not changed
    assert out["ad_copy"].tolist() == [r[-3] for r in rows]
    assert out["ad_status"].tolist() == [r[-2] for r in rows]
    # The flags run writes, but `duplicate`, which compares a whole run's ads, not one batch's.
    assert out["ad_flags"].tolist() == [",".join(f for f in r[-1].split(",") if f and f != "duplicate") for r in rows]


def test_batches_of_a_frame_give_the_same_ads(writer):
    frame = pd.DataFrame({"Title": ["Mug", None, "Pen", "Mug"], "desc": ["Blue", "", float("nan"), "Blue"], "price": [1, 2, 3, 4]})
    whole = writer(frame)
    parts = pd.concat([writer(frame.iloc[:2]), writer(frame.iloc[2:])])
    pd.testing.assert_frame_equal(parts, whole)
    assert whole["ad_status"].tolist() == ["ok", "skipped: no product name or description", "ok", "ok"]
    assert whole["ad_copy"][0] == whole["ad_copy"][3] != ""


def test_frame_errors_name_the_setting(writer):
    with pytest.raises(InputError, match="no product column found .* its columns are: 'price'"):
        writer(pd.DataFrame({"price": [1]}))
    with pytest.raises(InputError, match="already has a column named 'ad_copy'"):
        writer(pd.DataFrame({"name": ["Mug"], "description": ["Blue"], "ad_copy": ["x"]}))


def test_arrow_tables_get_the_ads_run_writes_with_their_columns_untouched(writer, run_ads, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from conftest import SAMPLE_PARQUET, run_rows

    expected = run_rows(run_ads, tmp_path / "out.parquet")
    table = pq.read_table(SAMPLE_PARQUET)  # decimals, timestamps, lists: columns that pandas would convert
    out = writer.add_to_arrow(table)
    assert out.schema.names == table.schema.names + ["ad_copy", "ad_status", "ad_flags"]
    assert out.select(table.schema.names).equals(table)
    assert all(out.schema.field(name).type == pa.string() for name in writer.new_columns)
    assert out.to_pylist() == expected  # in order: the ads, statuses and flags run writes
