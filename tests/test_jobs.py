"""jobs/airflow_dag.py without Airflow: it compiles, maps run's exit codes, and its command,
rendered as Airflow renders it, runs. (The Spark and Ray jobs run in test_spark.py and
test_ray.py, where those are installed.)"""

import ast
import shlex

import jinja2

from adpulse_batch.errors import LockedError
from conftest import REPO, SAMPLE_PARQUET

DAG_FILE = REPO / "jobs" / "airflow_dag.py"


def dag_parts() -> tuple[str, dict, dict]:
    """The DAG file's COMMAND, its DAG's params and its BashOperator's keyword arguments (as source trees)."""
    source = DAG_FILE.read_text()
    compile(source, str(DAG_FILE), "exec")  # valid Python for the scheduler to import
    tree = ast.parse(source)
    command = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "COMMAND")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    dag = next(c for c in calls if c.func.id == "DAG")
    (operator,) = [c for c in calls if c.func.id == "BashOperator"]
    params = next(k.value for k in dag.keywords if k.arg == "params")
    return ast.literal_eval(command), ast.literal_eval(params), {k.arg: k.value for k in operator.keywords}


def test_the_airflow_dag_skips_when_another_run_holds_the_output_and_retries_the_rest():
    _, _, operator = dag_parts()
    assert ast.literal_eval(operator["skip_on_exit_code"]) == LockedError.exit_code == 3
    assert isinstance(operator["bash_command"], ast.Name) and operator["bash_command"].id == "COMMAND"
    assert ast.literal_eval(operator["retries"]) >= 1  # SIGTERM (143) and crashes (1): the retry resumes


def test_the_airflow_dags_command_runs(run_cli, test_model, tmp_path):
    command, params, _ = dag_parts()
    params.update(input=str(SAMPLE_PARQUET), output=str(tmp_path / "ads.parquet"), adapter=str(test_model[1]), max_new_tokens=8,
                  report=str(tmp_path / "report.json"))  # fmt: skip
    rendered = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(command).render(params=params)
    args = shlex.split(rendered)
    assert args[:2] == ["adpulse-batch", "run"]
    result = run_cli(*args[1:])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "ads.parquet").is_file() and (tmp_path / "report.json").is_file()
