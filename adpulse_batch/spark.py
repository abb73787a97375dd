"""Ads for Spark DataFrames: the input with the ad, status and flags columns appended.

    from adpulse_batch.spark import add_ads
    from adpulse_batch.settings import ModelSettings

    ads = add_ads(spark.read.parquet("s3a://shop/catalog/"), ModelSettings(adapter="/models/adapters/mine"))
    ads.write.parquet("s3a://shop/catalog-ads/")

Rows go to the workers as Arrow batches (`mapInArrow`): the input columns are passed on as
they are, never converted through pandas, so every type and value comes out unchanged. Each
Python worker loads the model once, at its first rows, and keeps it for every batch of every
task it runs after (Spark reuses its Python workers). The model, adapter and tokenizer must be
readable at the same path (or Hub id) on the driver and on every worker.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pyarrow as pa

from adpulse_batch.catalog import CHUNK_ROWS
from adpulse_batch.errors import SettingsError
from adpulse_batch.frame import AdWriter
from adpulse_batch.settings import GenerationSettings, ModelSettings

# This Python worker's writer, with what it was made from: the model stays loaded between
# tasks, and one add_ads after another with other settings replaces it (one model per worker).
_writer: tuple[tuple, AdWriter] | None = None
_models_loaded = 0  # writers this process has made (the tests check that workers reuse theirs)


def add_ads(df, model: ModelSettings, generation: GenerationSettings = GenerationSettings(), *, batch_size: int = CHUNK_ROWS, **options):
    """`df` with the ad columns appended (`ad_copy`, `ad_status`, `ad_flags` by default),
    every row once; the ads `adpulse-batch run` writes for the same rows (`duplicate` aside:
    it compares a whole run's ads, and a worker sees one batch).

    `batch_size`: most rows planned and generated together (identical prompts among them
    are generated once; like run's chunks). `options` are AdWriter's: `product_column`,
    `description_column`, `ad_column`, `status_column`, `flags_column` (None: no flags),
    `max_prompt_tokens`, `chat`. Columns, model, adapter and template are checked here, on
    the driver, before any worker starts; the returned DataFrame is lazy, as Spark's are.
    """
    from pyspark.sql import types

    if batch_size < 1:
        raise SettingsError(f"batch_size must be at least 1, not {batch_size}")
    writer = AdWriter(model, generation, **options)
    writer.check_columns(df.columns)
    schema = types.StructType([*df.schema.fields, *(types.StructField(name, types.StringType()) for name in writer.new_columns)])
    recipe = (model, generation, tuple(sorted(options.items())))
    return df.mapInArrow(functools.partial(_write_ads, recipe, batch_size), schema)


def _write_ads(recipe: tuple, batch_size: int, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """One partition's rows in, the same rows with their ads out (runs on a worker)."""
    for table in _tables(batches, batch_size):
        yield from _writer_for(recipe).add_to_arrow(table).to_batches()


def _tables(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """The batches' rows, in order, as tables of `rows` rows (the last one fewer)."""
    pending: list[pa.RecordBatch] = []
    buffered = 0
    for batch in batches:
        pending.append(batch)
        buffered += batch.num_rows
        while buffered >= rows:
            whole = pa.Table.from_batches(pending)
            yield whole.slice(0, rows)
            pending, buffered = whole.slice(rows).to_batches(), buffered - rows
    if buffered:
        yield pa.Table.from_batches(pending)


def _writer_for(recipe: tuple) -> AdWriter:
    global _writer, _models_loaded
    if _writer is None or _writer[0] != recipe:
        _writer = None  # the previous model goes before the next one loads
        model, generation, options = recipe
        _writer = (recipe, AdWriter(model, generation, **dict(options)))
        _models_loaded += 1
    return _writer[1]
