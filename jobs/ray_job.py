"""Ray Data job: a Parquet catalog in, the same rows with the ad columns out, one model per actor.

    ray job submit --working-dir . -- python jobs/ray_job.py s3://shop/catalog/ s3://shop/catalog-ads/ \
        --adapter /models/adapters/mine --concurrency 4 --num-gpus 1

INPUT and OUTPUT are any paths Ray Data reads and writes (s3://, gs://, local). Every node
needs adpulse-batch installed (`pip install 'adpulse-batch[ray]'`) and the model and adapter
at the same path (or Hub id). tests/test_ray.py runs this job on a local Ray of 2 CPUs.
"""

import argparse

from adpulse_batch.ray import add_ads
from adpulse_batch.settings import GenerationSettings, ModelSettings


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="the catalog: a Parquet file or directory")
    parser.add_argument("output", help="where to write the Parquet output (a directory)")
    parser.add_argument("--model", help="base model (directory or Hub id); default: the adapter's base")
    parser.add_argument("--adapter", default="abhamidi-1234/AdPulse", help="LoRA adapter (directory or Hub id), or none")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where each actor generates")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="most tokens per ad")
    parser.add_argument("--concurrency", type=int, default=1, help="actors, each with its own model")
    parser.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor")
    parser.add_argument("--num-cpus", type=float, default=1, help="CPUs per actor (leave some for reading on a cluster without GPUs)")
    parser.add_argument("--batch-size", type=int, default=4096, help="rows per batch an actor generates together")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    import ray

    args = parse(argv)
    if not ray.is_initialized():
        ray.init()  # the cluster `ray job submit` runs on (RAY_ADDRESS), else a local one
    model = ModelSettings(model=args.model, adapter=None if args.adapter.lower() == "none" else args.adapter, device=args.device)
    ads = add_ads(
        ray.data.read_parquet(args.input), model, GenerationSettings(max_new_tokens=args.max_new_tokens),
        concurrency=args.concurrency, num_gpus=args.num_gpus, num_cpus=args.num_cpus, batch_size=args.batch_size,
    )  # fmt: skip
    ads.write_parquet(args.output)


if __name__ == "__main__":
    main()
