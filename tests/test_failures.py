"""Inputs and places a run cannot use: each is one line on stderr, exit code 2, and nothing
written (no output, no temporary file, no work directory)."""

import gzip
import json
import os
import resource
import signal
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_csv


def only(directory, *names):
    """Assert that `directory` holds just `names` (nothing half-written beside them), besides
    the test's ad cache directory."""
    assert sorted(p.name for p in directory.iterdir() if p.name != "xdg-cache") == sorted(names)


def fails(result, message):
    assert (result.exit_code, result.stderr) == (2, f"Error: {message}\n")


def test_a_quote_that_never_closes_is_refused_not_swallowed(run_ads, tmp_path):
    # Row 3 opens a quote: a lenient reader takes the rest of the file as one cell, and
    # reports 3 rows out of 8 with exit 0.
    lines = ["name,description"] + [f"P{i},desc {i}" for i in range(8)]
    lines[3] = 'P2,"never closes'
    source = tmp_path / "in.csv"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    fails(run_ads(source, "-o", tmp_path / "out.csv"),
          f'{source} line 4: the row starting on this line opens a quote that is never closed; '
          'close it, or double a quote that is part of the text ("")')  # fmt: skip
    only(tmp_path, "in.csv")


def test_text_after_a_closing_quote_is_refused(run_ads, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text('name,description\nMug,"6"" tall"\n"Hat"x,felt\n', encoding="utf-8")
    fails(run_ads(source, "-o", tmp_path / "out.csv"),
          f'{source} line 3: a quoted cell has text after its closing quote (as in "a"b); '
          'quote the whole cell and double the quotes inside it ("""a""b")')  # fmt: skip
    only(tmp_path, "in.csv")
    # A quote inside an unquoted cell is text, kept as it is.
    source.write_text('name,description\nMug,6" tall\n', encoding="utf-8")
    assert run_ads(source, "-o", tmp_path / "out.csv").exit_code == 0
    assert (tmp_path / "out.csv").read_text(encoding="utf-8").splitlines()[1].startswith('Mug,"6"" tall",')


def test_outputs_that_cannot_go_where_asked_are_refused_before_any_work(run_ads, tmp_path):
    source = write_csv(tmp_path / "in.csv", ["name", "description"], [["Mug", "Blue"]])
    (tmp_path / "taken.csv").mkdir()
    fails(run_ads(source, "-o", tmp_path / "taken.csv"), f"-o/--output {tmp_path / 'taken.csv'} is a directory; name a file")
    fails(run_ads(source, "-o", tmp_path / "out.csv", "--report", tmp_path / "taken.csv"),
          f"--report {tmp_path / 'taken.csv'} is a directory; name a file")  # fmt: skip
    fails(run_ads(source, "-o", tmp_path / "in.csv" / "out.csv"), f"-o/--output {tmp_path / 'in.csv' / 'out.csv'}: {source} is not a directory")
    only(tmp_path, "in.csv", "taken.csv")
    # The lock file is the first file a run writes beside the output: here a directory is in its way.
    (tmp_path / ".out.csv.lock").mkdir()
    fails(run_ads(source, "-o", tmp_path / "out.csv"),
          f"cannot write {tmp_path / '.out.csv.lock'} (Is a directory); "
          "check that its directory is writable and has free space, or name another output with -o/--output")  # fmt: skip
    only(tmp_path, "in.csv", "taken.csv", ".out.csv.lock")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in a read-only directory")
def test_a_read_only_directory_is_refused_before_any_work(run_ads, tmp_path):
    source = write_csv(tmp_path / "in.csv", ["name", "description"], [["Mug", "Blue"]])
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    fails(run_ads(source, "-o", locked / "out.csv"), f"-o/--output {locked / 'out.csv'}: {locked} is not writable")
    fails(run_ads(source, "-o", tmp_path / "out.csv", "--report", locked / "sub" / "r.json"),
          f"--report {locked / 'sub' / 'r.json'}: {locked} is not writable")  # fmt: skip
    only(tmp_path, "in.csv", "locked")
    assert not list(locked.iterdir())


def test_a_full_disk_while_writing_the_output_is_one_line_and_resumable(run_ads, test_model, tmp_path):
    # A file-size limit makes writes past 64 KiB fail as a full disk does (EFBIG for ENOSPC).
    rows = [[f"{i:06d}", f"Product {i}", f"Description {i}", "n" * 500] for i in range(300)]
    source = write_csv(tmp_path / "in.csv", ["sku", "name", "description", "notes"], rows)
    out = tmp_path / "out.csv"

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process

    args = ["run", source, "-o", out, "--adapter", test_model[1], "--max-new-tokens", 12, "--quiet"]  # as run_ads runs
    full = subprocess.run([sys.executable, "-m", "adpulse_batch", *map(str, args)], preexec_fn=small_disk, capture_output=True, text=True)
    *warnings, line = full.stderr.splitlines()
    assert full.returncode == 2 and line == (
        f"Error: cannot write {out} (File too large); "
        "check that its directory is writable and has free space, or name another output with -o/--output"
    )
    assert all(w.startswith("adpulse-batch: the ad cache ") and w.endswith("; going on without it") for w in warnings)
    assert not out.exists() and not list(tmp_path.glob(".out.csv.*.tmp"))
    result = run_ads(source, "-o", out, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "r.json").read_text())["rows_resumed"] == 300  # the parts it had committed


def test_file_names_that_are_not_utf8_are_named_and_refused(run_ads, run_cli, tmp_path):
    latin1 = os.fsdecode(b"caf\xe9")  # a byte of a legacy encoding, as Python holds it
    source = write_csv(tmp_path / f"{latin1}.csv", ["name", "description"], [["Mug", "Blue"]])
    advice = "the name is not UTF-8; rename it, or link to it from a UTF-8 name"
    fails(run_ads(source), f"input {tmp_path}/caf\\xe9.csv: {advice}")
    plain = write_csv(tmp_path / "in.csv", ["name", "description"], [["Mug", "Blue"]])
    fails(run_ads(plain, "-o", tmp_path / f"{latin1}.parquet"), f"-o/--output {tmp_path}/caf\\xe9.parquet: {advice}")
    result = run_cli("run", plain, "--report", tmp_path / f"{latin1}.json", "--log-format", "json")
    assert result.exit_code == 2
    assert json.loads(result.stderr)["message"] == f"--report {tmp_path}/caf\\xe9.json: {advice}"
    data = tmp_path / "shop"
    data.mkdir()
    with open(data / f"{latin1}.parquet", "wb") as handle:  # Arrow itself takes no such name
        pq.write_table(pa.table({"name": ["Mug"]}), handle)
    fails(run_ads(data, "-o", tmp_path / "out.csv", "--description-column", "none"), f"input {data}/caf\\xe9.parquet: {advice}")
    only(tmp_path, f"{latin1}.csv", "in.csv", "shop")


def test_a_compressed_input_is_named_as_the_input(run_ads, tmp_path):
    source = tmp_path / "in.csv.gz"
    source.write_bytes(gzip.compress(b"name,description\nMug,Blue\n"))
    fails(run_ads(source), f"input {source} has the suffix '.gz'; use one of .csv, .parquet, .jsonl, uncompressed (decompress it first)")
    only(tmp_path, "in.csv.gz")


def test_a_misspelt_template_placeholder_is_refused_before_any_work(run_ads, tmp_path):
    source = write_csv(tmp_path / "in.csv", ["name", "description"], [["Mug", "Blue"]])
    template = tmp_path / "t.txt"
    template.write_text("Ad for {product}: {descripton}\n")
    fails(run_ads(source, "--template", template),
          f"--template {template} has an unknown placeholder {{descripton}}; the known ones are {{product}} and {{description}}")  # fmt: skip
    only(tmp_path, "in.csv", "t.txt")


def test_a_pipe_as_input_is_refused_not_waited_on(tmp_path):
    # A pipe can be read once; a catalog is read several times (count, generate, assemble).
    pipe = tmp_path / "in.csv"
    os.mkfifo(pipe)
    result = subprocess.run([sys.executable, "-m", "adpulse_batch", "run", str(pipe)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (2, (
        f"Error: input {pipe} is not a regular file (a pipe or a device?); "
        "a catalog is read more than once, so write it to a file first\n"
    ))  # fmt: skip
