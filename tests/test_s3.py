"""`run` with s3:// input and output against a real S3 API on localhost (moto's server mode):
the bytes of a local run, a killed run resumed, an output that appears whole or not at all
with nothing else left in the bucket, and one line with exit code 2 for what cannot be reached.

Runs where moto's server is installed (`pip install 'moto[server]'`; CI: `.ci/run`); skipped
elsewhere. Each test has a bucket of its own.
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from adpulse_batch.run import run_catalog
from adpulse_batch.settings import GenerationSettings, ModelSettings, RunSettings
from adpulse_batch.storage import ObjectPath, local_output_path, staging_directory
from conftest import SAMPLE_CSV, SAMPLE_PARQUET, read_csv, write_csv
from test_interrupts import assert_stopped, interrupt

pytestmark = [
    pytest.mark.s3,
    pytest.mark.skipif(importlib.util.find_spec("moto") is None, reason="moto is not installed (pip install 'moto[server]')"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_moto(**env) -> tuple[subprocess.Popen, str]:
    """moto_server on a free port of localhost, once it answers; (process, endpoint URL)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)], env={**os.environ, **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return process, endpoint
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def endpoint():
    """A moto S3 server, and the environment a real one would need: credentials and AWS_ENDPOINT_URL."""
    process, url = start_moto()
    saved = {name: os.environ.get(name) for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield url
    for name, value in saved.items():
        os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def bucket(endpoint):
    """A new bucket: (name, boto3 client)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    name = f"shop-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    return name, client


def keys(bucket) -> list[str]:
    """Every object in the bucket, and every upload begun and never finished (none may be left)."""
    name, client = bucket
    objects = [o["Key"] for o in client.list_objects_v2(Bucket=name).get("Contents", [])]
    uploads = [f"(unfinished upload of {u['Key']})" for u in client.list_multipart_uploads(Bucket=name).get("Uploads", [])]
    return sorted(objects + uploads)


def body(bucket, key: str) -> bytes:
    name, client = bucket
    return client.get_object(Bucket=name, Key=key)["Body"].read()


def upload(bucket, key: str, path) -> str:
    name, client = bucket
    client.upload_file(str(path), name, key)
    return f"s3://{name}/{key}"


def catalogs(tmp_path) -> dict:
    """The sample catalog as CSV, Parquet, JSONL and a Parquet dataset (a directory of parts,
    with the _SUCCESS marker Spark writes), each a local path."""
    import pyarrow.parquet as pq

    table = pq.read_table(SAMPLE_PARQUET)
    header, rows = read_csv(SAMPLE_CSV)
    jsonl = tmp_path / "catalog.jsonl"
    jsonl.write_text("".join(json.dumps(dict(zip(header, row))) + "\n" for row in rows), encoding="utf-8")
    dataset = tmp_path / "catalog"
    dataset.mkdir()
    pq.write_table(table.slice(0, 30), dataset / "part-00000.parquet")
    pq.write_table(table.slice(30), dataset / "part-00001.parquet")
    (dataset / "_SUCCESS").write_bytes(b"")
    return {"csv": SAMPLE_CSV, "parquet": SAMPLE_PARQUET, "jsonl": jsonl, "dataset": dataset}


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl", "dataset"])
def test_s3_input_and_output_give_the_bytes_of_local_files(bucket, test_model, tmp_path, fmt):
    source = catalogs(tmp_path)[fmt]
    suffix = ".parquet" if fmt == "dataset" else source.suffix
    model = ModelSettings(adapter=str(test_model[1]))
    generation = GenerationSettings(max_new_tokens=12)
    local = tmp_path / f"local.ads{suffix}"
    run_catalog(RunSettings(input=source, output=local, model=model, generation=generation))
    if fmt == "dataset":
        for part in sorted(source.iterdir()):
            uri = upload(bucket, f"catalog/{part.name}", part)
        uri = uri.rsplit("/", 1)[0]
    else:
        uri = upload(bucket, f"in/catalog{suffix}", source)

    # The README's example: object URIs in, object URIs out.
    output = f"s3://{bucket[0]}/out/catalog.ads{suffix}"
    summary = run_catalog(RunSettings(input=uri, output=output, model=model, generation=generation))
    assert summary.rows_total == 63 and summary.output == output
    assert body(bucket, f"out/catalog.ads{suffix}") == local.read_bytes()
    inputs = [k for k in keys(bucket) if not k.startswith("out/")]
    assert keys(bucket) == sorted([*inputs, f"out/catalog.ads{suffix}"])  # nothing else left in the bucket
    assert not staging_directory(ObjectPath(output)).exists()  # nor on local disk


def test_a_killed_run_resumes_to_the_same_object(bucket, run_cli, test_model, tmp_path):
    rows = [[f"{i:06d}", f"Product {i}", f"The description of product {i}."] for i in range(160)]
    source = write_csv(tmp_path / "in.csv", ["sku", "name", "description"], rows)
    uri = upload(bucket, "in.csv", source)
    output = f"s3://{bucket[0]}/out.csv"
    args = [uri, "--adapter", test_model[1], "--max-new-tokens", 32, "--batch-size", 8, "--no-cache", "--quiet"]
    assert run_cli("run", *args, "-o", tmp_path / "whole.csv").exit_code == 0
    # Killed while generating: no object, nothing else in the bucket; the parts stay on local disk.
    stopped = interrupt(args, output, at="part", stop=signal.SIGKILL, env={"ADPULSE_COMMIT_SECONDS": "0.5"})
    assert_stopped(stopped, signal.SIGKILL, local_output_path(ObjectPath(output)))
    assert keys(bucket) == ["in.csv"]
    done = run_cli("run", *args, "-o", output, "--report", tmp_path / "r.json")
    assert done.exit_code == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["rows_resumed"] > 0 and report["rows_resumed"] + report["rows_generated"] == 160
    assert body(bucket, "out.csv") == (tmp_path / "whole.csv").read_bytes()
    assert keys(bucket) == ["in.csv", "out.csv"]


def test_a_run_stopped_while_writing_leaves_no_object(bucket, run_ads, test_model, tmp_path):
    # Ten products repeated: the cache makes the runs quick, and the output big enough to stop mid-write.
    rows = [[f"{i:06d}", f"Product {i % 10}", f"The description of product {i % 10}."] for i in range(40_000)]
    uri = upload(bucket, "in.csv", write_csv(tmp_path / "in.csv", ["sku", "name", "description"], rows))
    assert run_ads(uri, "-o", tmp_path / "whole.csv").exit_code == 0
    output = f"s3://{bucket[0]}/out.csv"
    args = [uri, "--adapter", test_model[1], "--max-new-tokens", 12, "--quiet"]  # as run_ads runs
    stopped = interrupt(args, output, at="assembly", stop=signal.SIGTERM)
    assert_stopped(stopped, signal.SIGTERM, local_output_path(ObjectPath(output)))  # its local file removed, one line said
    assert keys(bucket) == ["in.csv"]
    assert run_ads(uri, "-o", output).exit_code == 0
    assert body(bucket, "out.csv") == (tmp_path / "whole.csv").read_bytes()


def test_what_cannot_be_read_or_written_is_one_line_and_exit_2(bucket, run_ads, tmp_path):
    name, _ = bucket
    uri = upload(bucket, "in/catalog.csv", SAMPLE_CSV)
    upload(bucket, "ads.csv/part-0.csv", SAMPLE_CSV)  # a prefix named like a file
    for args, message in [
        ([f"s3://{name}/in/missing.csv"], f"input s3://{name}/in/missing.csv does not exist"),
        (["s3://no-such-bucket-here/catalog.csv"], "input s3://no-such-bucket-here/catalog.csv does not exist"),
        ([uri, "-o", "s3://no-such-bucket-here/ads.csv"],
         "-o/--output s3://no-such-bucket-here/ads.csv: the bucket no-such-bucket-here does not exist; create it, or name another"),
        ([uri, "-o", f"s3://{name}/ads.csv"], f"-o/--output s3://{name}/ads.csv is a prefix of other objects; name an object"),
        ([uri, "--report", f"s3://{name}/report.json"],
         f"--report takes a local path, not s3://{name}/report.json; object storage URIs are for INPUT and -o/--output"),
    ]:  # fmt: skip
        result = run_ads(*args)
        assert (result.exit_code, result.stderr) == (2, f"Error: {message}\n")
    assert keys(bucket) == ["ads.csv/part-0.csv", "in/catalog.csv"]


def test_an_unreachable_endpoint_is_one_line_and_exit_2(bucket, run_ads):
    closed = f"http://127.0.0.1:{free_port()}"
    result = run_ads(f"s3://{bucket[0]}/catalog.csv", env={"AWS_ENDPOINT_URL": closed})
    assert (result.exit_code, result.stderr) == (
        2, f"Error: cannot read s3://{bucket[0]}/catalog.csv: the store cannot be reached at {closed}; check the network and AWS_ENDPOINT_URL\n"
    )  # fmt: skip


def test_a_store_that_denies_access_is_one_line_and_exit_2(run_ads, tmp_path):
    process, url = start_moto(INITIAL_NO_AUTH_ACTION_COUNT="0")  # checks credentials: ours are unknown to it
    try:
        result = run_ads("s3://shop/catalog.csv", env={"AWS_ENDPOINT_URL": url})
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: cannot read s3://shop/catalog.csv: access denied; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(or AWS_PROFILE), and AWS_ENDPOINT_URL for an S3-compatible store\n"
    )
