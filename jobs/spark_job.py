"""Spark job: a Parquet catalog in, the same rows with the ad columns out, on the executors.

    spark-submit jobs/spark_job.py s3a://shop/catalog/ s3a://shop/catalog-ads/ --adapter /models/adapters/mine

INPUT and OUTPUT are any paths Spark reads and writes (s3a://, gs://, hdfs://, local). Each
executor needs adpulse-batch installed (`pip install 'adpulse-batch[spark]'`) and the model
and adapter at the same path (or Hub id) as the driver; each Python worker loads the model
once. tests/test_spark.py runs this job on local[2].
"""

from adpulse_batch.job_options import job_parser, job_settings
from adpulse_batch.spark import add_ads


def main(argv=None, spark=None) -> None:
    """Run the job; `spark`: a session to use (and leave running), else one made and stopped here."""
    from pyspark.sql import SparkSession

    parser = job_parser(__doc__.splitlines()[0])
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    model, generation = job_settings(args)
    session = spark or SparkSession.builder.appName("adpulse-batch").getOrCreate()
    try:
        ads = add_ads(session.read.parquet(args.input), model, generation, batch_size=args.batch_size)
        ads.write.mode("overwrite" if args.overwrite else "errorifexists").parquet(args.output)
    finally:
        if spark is None:
            session.stop()


if __name__ == "__main__":
    main()
