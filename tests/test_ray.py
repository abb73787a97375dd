"""adpulse_batch.ray on a real local Ray (2 CPUs, 2 actors): the ads `run` writes for the same
rows, every row once, input columns and types unchanged.

Runs where Ray Data is installed (CI: `.ci/run` installs the `[ray]` extra); skipped elsewhere.
"""

import importlib.util

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adpulse_batch.errors import InputError
from adpulse_batch.settings import GenerationSettings
from conftest import SAMPLE_PARQUET, load_job, run_rows, sortable

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install 'adpulse-batch[ray]')"),
]


@pytest.fixture(scope="module")
def ray_data():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.data
    ray.shutdown()


def test_ray_writes_runs_ads_for_every_row_once(ray_data, cpu_model, run_ads, tmp_path):
    import ray

    from adpulse_batch.ray import add_ads

    rows = run_rows(run_ads, tmp_path / "run.parquet")
    expected = pq.read_table(tmp_path / "run.parquet")

    ds = ray_data.read_parquet(str(SAMPLE_PARQUET)).repartition(4)  # 4 blocks for the 2 actors
    # 4 batches, 2 actors of half a CPU each: the other CPU reads the rows.
    out = add_ads(ds, cpu_model, GenerationSettings(max_new_tokens=12), concurrency=2, num_cpus=0.5, batch_size=16)
    table = pa.concat_tables(ray.get(out.to_arrow_refs()))
    assert [(f.name, f.type) for f in table.schema] == [(f.name, f.type) for f in expected.schema]  # input types, then strings
    assert table.num_rows == 63
    assert sortable(table.to_pylist()) == sortable(rows)  # every row once, its input cells and its ads as run has them


def test_ray_checks_columns_before_any_actor_starts(ray_data, cpu_model):
    from adpulse_batch.ray import add_ads

    with pytest.raises(InputError, match="already has a column named 'ad_status'; choose another"):
        add_ads(ray_data.from_items([{"name": "Mug", "ad_status": "x"}]), cpu_model)
    with pytest.raises(InputError, match="no product column found .* its columns are: 'price'"):
        add_ads(ray_data.from_items([{"price": 1}]), cpu_model)


def test_the_ray_job_writes_runs_ads(ray_data, run_ads, test_model, tmp_path):
    expected = run_rows(run_ads, tmp_path / "run.parquet")
    out = tmp_path / "ads"
    load_job("ray_job").main([str(SAMPLE_PARQUET), str(out), "--adapter", str(test_model[1]), "--max-new-tokens", "12", "--num-cpus", "0.5"])
    assert sortable(pq.read_table(out).to_pylist()) == sortable(expected)
