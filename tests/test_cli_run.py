"""`adpulse-batch run` end to end: the tiny model, real files, exact errors and exit codes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO, SAMPLE_CSV, SAMPLE_PARQUET, assert_same_table, read_csv, write_csv


def test_csv_catalog_comes_back_whole_with_ads(run_ads, tmp_path):
    out = tmp_path / "ads.csv"
    result = run_ads(SAMPLE_CSV, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # stdout is for data; the run writes to a file
    in_header, in_rows = read_csv(SAMPLE_CSV)
    header, rows = read_csv(out)
    assert header == in_header + ["ad_copy", "ad_status", "ad_flags"]
    assert [r[: len(in_header)] for r in rows] == in_rows  # every row, in order, cells as written
    assert rows[0][0] == "000123"
    ad, status, flags = (header.index(name) for name in ("ad_copy", "ad_status", "ad_flags"))
    by_name = {r[1]: r for r in rows}
    assert by_name["Family camping bundle"][status] == "ok: input truncated"
    skipped = [r for r in rows if r[1] == "" and r[2] == ""]
    assert [(r[ad], r[status], r[flags]) for r in skipped] == [("", "skipped: no product name or description", "")]
    assert sum(r[status] == "ok" for r in rows) == len(rows) - 2
    assert sum(r[ad] != "" for r in rows if r[status].startswith("ok")) > len(rows) / 2


def test_parquet_catalog_keeps_its_types(run_ads, tmp_path):
    result = run_ads(SAMPLE_PARQUET, "-o", tmp_path / "ads.parquet")
    assert result.exit_code == 0, result.stderr
    source = pq.read_table(SAMPLE_PARQUET)
    out = pq.read_table(tmp_path / "ads.parquet")
    assert out.column_names == source.column_names + ["ad_copy", "ad_status", "ad_flags"]
    assert_same_table(out.select(source.column_names), source)


def test_default_output_is_beside_the_input(run_ads, tmp_path):
    source = write_csv(tmp_path / "shop.csv", ["name", "description"], [["Mug", "Blue"]])
    assert run_ads(source).exit_code == 0
    assert read_csv(tmp_path / "shop.ads.csv")[0] == ["name", "description", "ad_copy", "ad_status", "ad_flags"]


def test_same_ads_whatever_the_batch_size(run_ads, tmp_path):
    for size in (1, 32):
        assert run_ads(SAMPLE_CSV, "-o", tmp_path / f"b{size}.csv", "--batch-size", size).exit_code == 0
    assert (tmp_path / "b1.csv").read_bytes() == (tmp_path / "b32.csv").read_bytes()


def test_identical_products_are_generated_once(run_ads, tmp_path):
    rows = [["Mug", "Blue stoneware"]] * 4 + [["Pen", "Black ink"]]
    source = write_csv(tmp_path / "in.csv", ["name", "description"], rows)
    result = run_ads(source, "-o", tmp_path / "out.csv", "--report", tmp_path / "report.json")
    assert result.exit_code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["rows_total"], report["rows_generated"], report["prompts_generated"]) == (5, 5, 2)
    ads = [r[2] for r in read_csv(tmp_path / "out.csv")[1]]
    assert len(set(ads[:4])) == 1


def test_report_says_what_ran(run_ads, test_model, tmp_path):
    report_path = tmp_path / "report.json"
    result = run_ads(SAMPLE_CSV, "-o", tmp_path / "out.csv", "--limit", 10, "--report", report_path)
    assert result.exit_code == 0
    report = json.loads(report_path.read_text())
    assert report["rows_total"] == 10 and report["rows_generated"] == 10 and report["rows_skipped"] == 0
    assert report["model"]["model"] == str(test_model[0])
    assert report["model"]["adapter"] == str(test_model[1])
    assert report["template"].startswith("You are the world's best Marketing expert.")
    assert report["generation"]["max_new_tokens"] == 12 and report["generation"]["temperature"] == 0
    assert report["batch_size"] == 128  # the torch engine's default: a tiny model's cache is far below 4 GiB
    assert report["new_tokens"] > 0 and report["seconds"] > 0
    assert len(read_csv(tmp_path / "out.csv")[1]) == 10


def test_default_dtype_on_cpu_is_bfloat16_where_the_cpu_has_it(run_ads, tmp_path, monkeypatch):
    monkeypatch.delenv("ADPULSE_DTYPE")  # the tests' float32 (conftest.py): the default as users get it
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), [])
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    result = run_ads(SAMPLE_CSV, "-o", tmp_path / "out.csv", "--limit", 4, "--device", "cpu", "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["engine"]["dtype"] == ("bfloat16" if native else "float32")


def test_summary_line_on_stderr(run_cli, test_model, tmp_path):
    result = run_cli("run", SAMPLE_CSV, "-o", tmp_path / "out.csv", "--adapter", test_model[1], "--max-new-tokens", 4, "--limit", 5)
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "5 rows read, 5 generated, 0 from cache, 0 resumed, 0 skipped, 0 truncated in" in result.stderr.splitlines()[-1]


def test_adapter_changes_the_ads_and_none_runs_the_base(run_cli, test_model, tmp_path):
    model, adapter = test_model
    common = ["--max-new-tokens", 12, "--limit", 8, "-q"]
    assert run_cli("run", SAMPLE_CSV, "-o", tmp_path / "a.csv", "--adapter", adapter, *common).exit_code == 0
    assert run_cli("run", SAMPLE_CSV, "-o", tmp_path / "b.csv", "--adapter", "none", "--model", model, *common).exit_code == 0
    env = {"ADPULSE_ADAPTER": "none", "ADPULSE_MODEL": str(model)}
    assert run_cli("run", SAMPLE_CSV, "-o", tmp_path / "c.csv", *common, env=env).exit_code == 0
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "b.csv").read_bytes() == (tmp_path / "c.csv").read_bytes()


def test_template_file_and_adapter_template(run_ads, run_cli, test_model, tmp_path):
    template = tmp_path / "t.txt"
    template.write_text("Product: {product}\nDetails: {description}\nAd:")
    a = run_ads(SAMPLE_CSV, "-o", tmp_path / "a.csv", "--limit", 5, "--template", template)
    b = run_ads(SAMPLE_CSV, "-o", tmp_path / "b.csv", "--limit", 5)
    assert a.exit_code == b.exit_code == 0
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "b.csv").read_bytes()
    # An adapter directory that carries the template is used with it, with no flag.
    import shutil

    own = tmp_path / "adapter"
    shutil.copytree(test_model[1], own)
    (own / "adpulse.json").write_text(json.dumps({"template": template.read_text()}))
    c = run_cli("run", SAMPLE_CSV, "-o", tmp_path / "c.csv", "--adapter", own, "--limit", 5, "--max-new-tokens", 12, "-q")
    assert c.exit_code == 0
    assert (tmp_path / "c.csv").read_bytes() == (tmp_path / "a.csv").read_bytes()


def test_variants_get_their_own_columns(run_ads, tmp_path):
    out = tmp_path / "out.csv"
    result = run_ads(SAMPLE_CSV, "-o", out, "--limit", 4, "--num-variants", 3, "--temperature", 0.9, "--seed", 1)
    assert result.exit_code == 0
    header, rows = read_csv(out)
    assert header[-7:] == ["ad_copy_1", "ad_copy_2", "ad_copy_3", "ad_status", "ad_flags_1", "ad_flags_2", "ad_flags_3"]
    assert any(len({r[-4], r[-3], r[-2]}) > 1 for r in rows)


def test_max_chars(run_ads, tmp_path):
    assert run_ads(SAMPLE_CSV, "-o", tmp_path / "out.csv", "--limit", 10, "--max-chars", 20).exit_code == 0
    assert all(len(r[-2]) <= 20 for r in read_csv(tmp_path / "out.csv")[1])


def test_description_column_none(run_ads, tmp_path):
    source = write_csv(tmp_path / "in.csv", ["sku", "title"], [["1", "Mug"], ["2", ""]])
    result = run_ads(source, "-o", tmp_path / "out.csv")
    assert result.exit_code == 2
    assert "no description column found" in result.stderr and "--description-column none" in result.stderr
    assert run_ads(source, "-o", tmp_path / "out.csv", "--description-column", "none").exit_code == 0
    rows = read_csv(tmp_path / "out.csv")[1]
    assert [r[3] for r in rows] == ["ok", "skipped: no product name or description"]


def test_jsonl_round_trip(run_ads, tmp_path):
    records = [{"id": 1, "name": "Mug", "desc": "Blue", "price": 9.5}, {"id": 2, "name": "Pen", "extra": [1, 2]}]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert run_ads(source, "-o", tmp_path / "out.jsonl").exit_code == 0
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in o.items() if k not in ("ad_copy", "ad_status", "ad_flags")} for o in out] == records


@pytest.mark.parametrize(
    "args, message",
    [
        (["--product-column", "nope"], "Error: --product-column 'nope' is not a column of the input; its columns are: 'sku'"),
        (["--batch-size", "0"], "Error: --batch-size must be at least 1, not 0"),
        (["--num-variants", "2"], "Error: --num-variants 2 needs --temperature above 0"),
        (["--top-p", "0"], "Error: --top-p must be above 0 and at most 1, not 0.0"),
        (["--temperature", "nan"], "Error: --temperature must be 0 (greedy) or a finite number above it, not nan"),
        (["--temperature", "inf"], "Error: --temperature must be 0 (greedy) or a finite number above it, not inf"),
        (["--max-prompt-tokens", "20"], "Error: --max-prompt-tokens 20 is less than the template alone needs"),
        (["--device", "tpu"], "Error: Invalid value for '--device': 'tpu' is not one of 'auto', 'cpu', 'cuda'."),
        (["-o", "out.txt"], "Error: output out.txt has the suffix '.txt'; use one of .csv, .parquet, .jsonl"),
        (["--encoding", "klingon"], "Error: --encoding 'klingon' is not an encoding Python knows"),
        (["--ad-column", "ad_status"], "Error: --status-column 'ad_status' is also the name of an ad column; give them different names"),
        (["--num-variants", "2", "--temperature", "0.7", "--status-column", "ad_copy_1"],
         "Error: --status-column 'ad_copy_1' is also the name of an ad column; give them different names"),
    ],
)
def test_bad_invocations_are_one_line_and_exit_2(run_ads, tmp_path, args, message):
    result = run_ads(SAMPLE_CSV, *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(SAMPLE_CSV.parent.glob("*.ads.*"))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("in.csv", b"price,stock\n1,2\n", "Error: no product column found (looked for product, product_name, name, title); its columns are: 'price', 'stock'"),
        ("in.csv", "name,description\nCrème,x\n".encode("cp1252"), "line 2 is not valid utf-8 (byte 0xe8); pass the file's encoding with --encoding"),
        ("in.parquet", b"not parquet at all", "is not a valid Parquet file"),
        ("in.csv", b"name,description,ad_copy\nMug,Blue,x\n", "the input already has a column named 'ad_copy'; choose another name with --ad-column"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(run_ads, tmp_path, name, content, message):
    source = tmp_path / name
    source.write_bytes(content)
    result = run_ads(source, "-o", tmp_path / "out.csv")
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_an_empty_jsonl_is_a_catalog_of_no_rows(run_ads, tmp_path, suffix):
    # A night with no new products writes an empty output, as a header-only CSV does.
    source = tmp_path / "in.jsonl"
    source.write_text("\n")
    result = run_ads(source, "-o", tmp_path / f"out{suffix}")
    assert (result.exit_code, result.stderr) == (0, "")
    if suffix == ".parquet":
        out = pq.read_table(tmp_path / "out.parquet")
        assert (out.column_names, out.num_rows) == (["ad_copy", "ad_status", "ad_flags"], 0)
    else:
        assert (tmp_path / f"out{suffix}").read_bytes() == (b"" if suffix == ".jsonl" else b"ad_copy,ad_status,ad_flags\r\n")


def test_an_output_that_is_a_link_writes_the_file_it_points_to(run_ads, tmp_path):
    (tmp_path / "shared").mkdir()
    link = tmp_path / "latest.csv"
    link.symlink_to(tmp_path / "shared" / "ads.csv")
    for _ in range(2):  # the first run makes the file, the second replaces it
        assert run_ads(SAMPLE_CSV, "-o", link, "--limit", 3).exit_code == 0
        assert link.is_symlink() and link.resolve() == tmp_path / "shared" / "ads.csv"
        assert len(read_csv(link)[1]) == 3
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["ads.csv"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "xdg-cache") == ["latest.csv", "shared"]


def test_output_over_input_is_refused(run_ads, tmp_path):
    source = write_csv(tmp_path / "in.csv", ["name"], [["Mug"]])
    before = source.read_bytes()
    result = run_ads(source, "-o", source)
    assert result.exit_code == 2 and "is the input file" in result.stderr
    assert source.read_bytes() == before


def test_missing_models_say_how_to_point_at_a_local_copy(run_cli, tmp_path):
    result = run_cli("run", SAMPLE_CSV, "-o", tmp_path / "out.csv", "--adapter", "none", "--model", tmp_path / "nowhere")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: cannot find the base model {tmp_path / 'nowhere'}: no such directory; check --model"
    # The default adapter is not in the (empty, offline) Hugging Face cache.
    result = run_cli("run", SAMPLE_CSV, "-o", tmp_path / "out.csv", env={"HF_HOME": str(tmp_path / "hf")})
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert line.startswith("Error: cannot load the adapter 'abhamidi-1234/AdPulse': it is not a local directory")
    assert "(`hf download abhamidi-1234/AdPulse --local-dir DIR`) and pass --adapter DIR" in line
    assert len(line.splitlines()) == 1
    assert not (tmp_path / "out.csv").exists()


def test_models_run_cannot_use_are_refused_before_any_work(run_cli, test_model, tmp_path):
    model, adapter = test_model
    ia3 = tmp_path / "ia3"
    shutil.copytree(adapter, ia3)
    config = json.loads((ia3 / "adapter_config.json").read_text())
    (ia3 / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}))
    result = run_cli("run", SAMPLE_CSV, "-o", tmp_path / "out.csv", "--adapter", ia3)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: --adapter '{ia3}' is a IA3 adapter; adpulse-batch applies LoRA adapters"
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / ".out.csv.adpulse-work").exists()

    bare = tmp_path / "bare"
    shutil.copytree(model, bare)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink()
    result = run_cli("run", SAMPLE_CSV, "-o", tmp_path / "out.csv", "--adapter", "none", "--model", bare)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"Error: cannot load the base model from {bare}: it has no tokenizer_config.json (is it a model directory?); check --model"
    )
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / ".out.csv.adpulse-work").exists()


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "adpulse_batch", "--help"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "run" in result.stdout


def test_file_uris_are_local_paths_and_other_flags_take_no_uri(run_ads, tmp_path):
    assert run_ads(SAMPLE_CSV, "-o", tmp_path / "plain.csv").exit_code == 0
    result = run_ads(SAMPLE_CSV.as_uri(), "-o", (tmp_path / "from uri.csv").as_uri())  # file:///.../from%20uri.csv
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "from uri.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()
    for args, message in [
        (["--work-dir", "s3://bucket/work"], "--work-dir takes a local path, not s3://bucket/work; object storage URIs are for INPUT and -o/--output"),
        (["-o", "https://example.com/ads.csv"], "-o/--output https://example.com/ads.csv: use a local path or an s3://, gs://, hf:// or file:// URI"),
        (["-o", "s3://bucket"], "-o/--output s3://bucket: name an object in the bucket (s3://BUCKET/KEY)"),
    ]:  # fmt: skip
        result = run_ads(SAMPLE_CSV, *args)
        assert (result.exit_code, result.stderr) == (2, f"Error: {message}\n")
    job = tmp_path / "job.toml"
    job.write_text(f'input = "{SAMPLE_CSV.as_uri()}"\noutput = "https://example.com/ads.csv"\n')  # URIs are not made relative to the file
    result = run_ads("--job", job)
    assert (result.exit_code, result.stderr) == (2, "Error: -o/--output https://example.com/ads.csv: use a local path or an s3://, gs://, hf:// or file:// URI\n")



def test_an_object_output_on_several_machines_needs_a_shared_work_dir(run_ads):
    # As torchrun sets it up for rank 0 of 2 machines with a worker each (checked before any worker starts talking).
    result = run_ads(SAMPLE_CSV, "-o", "s3://bucket/ads.csv", env={"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "RANK": "0"})
    assert (result.exit_code, result.stderr) == (2, (
        "Error: worker 0 of 2: -o/--output s3://bucket/ads.csv on several machines: their parts would stay on each machine's disk; "
        "name a --work-dir that every machine mounts\n"
    ))  # fmt: skip
