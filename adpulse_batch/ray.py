"""Ads for Ray Data datasets: the input with the ad, status and flags columns appended.

    from adpulse_batch.ray import add_ads
    from adpulse_batch.settings import ModelSettings

    ads = add_ads(ray.data.read_parquet("s3://shop/catalog/"), ModelSettings(adapter="/models/adapters/mine"),
                  concurrency=4, num_gpus=1)
    ads.write_parquet("s3://shop/catalog-ads/")

Each actor loads one model and writes the ads of every batch it is given; batches travel as
Arrow tables, so the input columns are passed on as they are, never converted through
pandas. (Imports are absolute: inside this module, `import ray` would be the real Ray.)
"""

from __future__ import annotations

import pyarrow as pa

from adpulse_batch.catalog import CHUNK_ROWS
from adpulse_batch.frame import AdWriter
from adpulse_batch.settings import GenerationSettings, ModelSettings


class AdWriterActor:
    """The callable class of `map_batches`: one AdWriter (one model) per actor."""

    def __init__(self, model: ModelSettings, generation: GenerationSettings, options: dict):
        self.writer = AdWriter(model, generation, **options)

    def __call__(self, table: pa.Table) -> pa.Table:
        return self.writer.add_to_arrow(table)


def add_ads(
    ds, model: ModelSettings, generation: GenerationSettings = GenerationSettings(), *,
    concurrency: int = 1, num_gpus: float = 0, num_cpus: float = 1, batch_size: int = CHUNK_ROWS, **options,
):  # fmt: skip
    """`ds` with the ad columns appended (`ad_copy`, `ad_status`, `ad_flags` by default),
    every row once; the ads `adpulse-batch run` writes for the same rows (`duplicate` aside:
    it compares a whole run's ads, and an actor sees one batch).

    `concurrency`: actors, each with its model; `num_gpus`: GPUs per actor (1 to generate on
    one, with `ModelSettings(device="auto")`); `num_cpus`: CPUs each actor reserves (on a
    cluster without GPUs keep `concurrency * num_cpus` below its CPUs: the tasks that read the
    rows need one too, and Ray Data waits for it forever); `batch_size`: rows per batch an
    actor plans and generates together. `options` are AdWriter's: `product_column`, `description_column`,
    `ad_column`, `status_column`, `flags_column` (None: no flags), `max_prompt_tokens`,
    `chat`. Columns, model, adapter and template are checked here, before any actor starts;
    the returned Dataset is lazy, as Ray's are.
    """
    writer = AdWriter(model, generation, **options)
    writer.check_columns(ds.columns())
    return ds.map_batches(
        AdWriterActor,
        fn_constructor_args=(model, generation, options),
        batch_format="pyarrow",
        batch_size=batch_size,
        concurrency=concurrency,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
    )
