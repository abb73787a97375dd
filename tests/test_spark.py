"""adpulse_batch.spark on a real local Spark (`local[2]`): the ads `run` writes for the same
rows, every row once, input columns and types unchanged, one model per Python worker.

Runs where pyspark and Java are installed (CI: `.ci/run` installs the `[spark]` extra);
skipped elsewhere. Starting Spark takes about ten seconds, so the tests share one session.
"""

import datetime
import decimal
import importlib.util
import os
import shutil
import sys

import pyarrow.parquet as pq
import pytest

from adpulse_batch.errors import InputError
from adpulse_batch.settings import GenerationSettings
from conftest import SAMPLE_PARQUET, load_job, run_rows, sortable

pytestmark = [
    pytest.mark.spark,
    pytest.mark.skipif(importlib.util.find_spec("pyspark") is None, reason="pyspark is not installed (pip install 'adpulse-batch[spark]')"),
    pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java (17 or later)"),
]
NEW_COLUMNS = ["ad_copy", "ad_status", "ad_flags"]


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers run this environment's Python
    session = (
        SparkSession.builder.master("local[2]")
        .appName("adpulse-batch tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "8")  # several Arrow batches per task
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_writes_runs_ads_for_every_row_once_with_one_model_per_worker(spark, cpu_model, run_ads, tmp_path):
    from adpulse_batch.spark import add_ads

    expected = run_rows(run_ads, tmp_path / "run.parquet")
    df = spark.read.parquet(str(SAMPLE_PARQUET)).repartition(4)  # 4 tasks on 2 workers, rows shuffled
    out = add_ads(df, cpu_model, GenerationSettings(max_new_tokens=12), batch_size=12)
    assert out.schema.fields[: len(df.schema.fields)] == df.schema.fields
    assert out.columns == df.columns + NEW_COLUMNS
    rows = [row.asDict(recursive=True) for row in out.collect()]
    assert len(rows) == len(expected) == 63
    assert sortable(rows) == sortable(expected)  # every row once, its input cells and its ads as run has them
    assert {row["ad_status"] for row in rows} >= {"ok"}

    # The Python workers that ran the tasks are reused for the next job: each made one writer
    # (one model) for all its tasks and batches.
    def models_loaded_here(batches):
        import pyarrow as pa

        import adpulse_batch.spark

        for _ in batches:
            yield pa.record_batch({"pid": [os.getpid()], "loaded": [adpulse_batch.spark._models_loaded]})

    loaded = [tuple(row) for row in spark.range(16, numPartitions=16).mapInArrow(models_loaded_here, "pid long, loaded long").collect()]
    assert max(count for _, count in loaded) == 1
    assert len({pid for pid, count in loaded if count}) <= 2


def test_spark_keeps_every_input_type_and_value(spark, cpu_model):
    from pyspark.sql import types

    from adpulse_batch.spark import add_ads

    schema = types.StructType([
        types.StructField("id", types.LongType()),
        types.StructField("title", types.StringType()),
        types.StructField("body", types.StringType()),
        types.StructField("price", types.DecimalType(20, 2)),
        types.StructField("seen", types.TimestampType()),
        types.StructField("day", types.DateType()),
        types.StructField("sizes", types.ArrayType(types.IntegerType())),
        types.StructField("extra", types.MapType(types.StringType(), types.LongType())),
        types.StructField("raw", types.BinaryType()),
    ])  # fmt: skip
    rows = [
        (2**62 + 1, "Mug", "A blue mug.", decimal.Decimal("123456789012345678.91"), datetime.datetime(2024, 1, 1, 12, 0, 0, 123456),
         datetime.date(2024, 2, 29), [1, None, 3], {"k": 2**61 + 5}, b"\xff\x00"),
        (None, None, None, None, None, None, None, None, None),
        (7, "Pen", None, decimal.Decimal("1.50"), None, datetime.date(1970, 1, 1), [], {}, b""),
    ]  # fmt: skip
    df = spark.createDataFrame(rows, schema)
    out = add_ads(df, cpu_model, GenerationSettings(max_new_tokens=6), ad_column="ad", flags_column=None)
    assert out.schema.fields[:9] == df.schema.fields and out.columns == df.columns + ["ad", "ad_status"]
    got = sorted((row.asDict() for row in out.collect()), key=lambda row: row["id"] or 0)
    assert [{k: v for k, v in row.items() if k in df.columns} for row in got] == sorted(
        (row.asDict() for row in df.collect()), key=lambda row: row["id"] or 0
    )
    assert [row["ad_status"] for row in got] == ["skipped: no product name or description", "ok", "ok"]


def test_spark_checks_columns_on_the_driver(spark, cpu_model):
    from adpulse_batch.spark import add_ads

    df = spark.createDataFrame([("Mug", "x")], "name string, ad_copy string")
    with pytest.raises(InputError, match="already has a column named 'ad_copy'; choose another ad_column"):
        add_ads(df, cpu_model)
    with pytest.raises(InputError, match="no product column found .* its columns are: 'price'"):
        add_ads(spark.createDataFrame([(1,)], "price int"), cpu_model)


def test_the_spark_job_writes_runs_ads(spark, run_ads, test_model, tmp_path):
    expected = run_rows(run_ads, tmp_path / "run.parquet")
    out = tmp_path / "ads"
    load_job("spark_job").main([str(SAMPLE_PARQUET), str(out), "--adapter", str(test_model[1]), "--max-new-tokens", "12"], spark=spark)
    assert (out / "_SUCCESS").exists()
    assert sortable(pq.read_table(out).to_pylist()) == sortable(expected)
