"""Spark job: a Parquet catalog in, the same rows with the ad columns out, on the executors.

    spark-submit jobs/spark_job.py s3a://shop/catalog/ s3a://shop/catalog-ads/ --adapter /models/adapters/mine

INPUT and OUTPUT are any paths Spark reads and writes (s3a://, gs://, hdfs://, local). Each
executor needs adpulse-batch installed (`pip install 'adpulse-batch[spark]'`) and the model
and adapter at the same path (or Hub id) as the driver; each Python worker loads the model
once. tests/test_spark.py runs this job on local[2].
"""

import argparse

from adpulse_batch.settings import GenerationSettings, ModelSettings
from adpulse_batch.spark import add_ads


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="the catalog: a Parquet file or directory")
    parser.add_argument("output", help="where to write the Parquet output (a directory)")
    parser.add_argument("--model", help="base model (directory or Hub id); default: the adapter's base")
    parser.add_argument("--adapter", default="abhamidi-1234/AdPulse", help="LoRA adapter (directory or Hub id), or none")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where each worker generates")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="most tokens per ad")
    parser.add_argument("--batch-size", type=int, default=4096, help="rows planned and generated together")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser.parse_args(argv)


def main(argv=None, spark=None) -> None:
    """Run the job; `spark`: a session to use (and leave running), else one made and stopped here."""
    from pyspark.sql import SparkSession

    args = parse(argv)
    session = spark or SparkSession.builder.appName("adpulse-batch").getOrCreate()
    try:
        model = ModelSettings(model=args.model, adapter=None if args.adapter.lower() == "none" else args.adapter, device=args.device)
        ads = add_ads(session.read.parquet(args.input), model, GenerationSettings(max_new_tokens=args.max_new_tokens), batch_size=args.batch_size)
        ads.write.mode("overwrite" if args.overwrite else "errorifexists").parquet(args.output)
    finally:
        if spark is None:
            session.stop()


if __name__ == "__main__":
    main()
