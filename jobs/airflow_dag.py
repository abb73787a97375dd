"""Airflow DAG: the nightly `adpulse-batch run` on a catalog in object storage.

Copy this file into the DAGs folder (Airflow 2.4 or later, or 3). The worker that runs the
task needs adpulse-batch installed, with `adpulse-batch` on its PATH, and the model and
adapter at the paths below (or the Hub cache, with HF_HUB_OFFLINE=1). Credentials come from
the worker's environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS).

What the task does with run's exit codes:
  0    done: success.
  3    another run still writes the output (last night's is slow): skipped, not failed.
  2    bad input or usage (a missing catalog, a bad flag): failed. A retry fails the same
       way within seconds, before any model loads: fix the input.
  143  stopped by SIGTERM (the execution timeout, a worker shutting down): failed, and
       retried; the retry resumes from the work directory.
  1    anything else: failed, and retried (resuming likewise).
The work directory is on the worker's disk: a retry resumes when it runs on the same worker
(or point --work-dir at a volume every worker mounts).
"""

import datetime

from airflow import DAG

try:
    from airflow.providers.standard.operators.bash import BashOperator  # Airflow 3
except ImportError:
    from airflow.operators.bash import BashOperator  # Airflow 2

COMMAND = (
    "adpulse-batch run {{ params.input }} -o {{ params.output }} --adapter {{ params.adapter }}"
    " --max-new-tokens {{ params.max_new_tokens }} --report {{ params.report }} --log-format json"
)

with DAG(
    dag_id="adpulse_nightly",
    schedule="30 2 * * *",
    start_date=datetime.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "input": "s3://shop/catalog.parquet",
        "output": "s3://shop/catalog.ads.parquet",
        "adapter": "/models/adapters/adpulse",
        "max_new_tokens": 64,
        "report": "/var/log/adpulse-batch/report.json",
    },
) as dag:
    BashOperator(
        task_id="write_ads",
        bash_command=COMMAND,
        skip_on_exit_code=3,
        retries=2,
        retry_delay=datetime.timedelta(minutes=5),
        execution_timeout=datetime.timedelta(hours=6),
        env={"HF_HUB_OFFLINE": "1"},
        append_env=True,  # the worker's own environment too: PATH, credentials
    )
