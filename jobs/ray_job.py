"""Ray Data job: a Parquet catalog in, the same rows with the ad columns out, one model per actor.

    ray job submit --working-dir . -- python jobs/ray_job.py s3://shop/catalog/ s3://shop/catalog-ads/ \
        --adapter /models/adapters/mine --concurrency 4 --num-gpus 1

INPUT and OUTPUT are any paths Ray Data reads and writes (s3://, gs://, local). Every node
needs adpulse-batch installed (`pip install 'adpulse-batch[ray]'`) and the model and adapter
at the same path (or Hub id). tests/test_ray.py runs this job on a local Ray of 2 CPUs.
"""

from adpulse_batch.job_options import job_parser, job_settings
from adpulse_batch.ray import add_ads


def main(argv=None) -> None:
    import ray

    parser = job_parser(__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=1, help="actors, each with its own model")
    parser.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor")
    parser.add_argument("--num-cpus", type=float, default=1, help="CPUs per actor (leave some for reading on a cluster without GPUs)")
    args = parser.parse_args(argv)
    model, generation = job_settings(args)
    if not ray.is_initialized():
        ray.init()  # the cluster `ray job submit` runs on (RAY_ADDRESS), else a local one
    ads = add_ads(
        ray.data.read_parquet(args.input), model, generation,
        concurrency=args.concurrency, num_gpus=args.num_gpus, num_cpus=args.num_cpus, batch_size=args.batch_size,
    )  # fmt: skip
    ads.write_parquet(args.output)


if __name__ == "__main__":
    main()
