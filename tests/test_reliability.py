"""Nightly-job reliability: resume after a kill, cache across runs, one writer per output,
CSV formula safety, job files, JSON logs."""

import json
import os
import tomllib

import pytest

import adpulse_batch.model
import adpulse_batch.run
from adpulse_batch.cli import cli
from adpulse_batch.generate import Generation, Generator
from adpulse_batch.lock import OutputLock
from adpulse_batch.run import run_catalog
from adpulse_batch.settings import GenerationSettings, ModelSettings, RunSettings
from conftest import REPO, SAMPLE_CSV, read_csv, write_csv


def catalog(path, rows=63):
    """The sample catalog's rows, each product made distinct (no two rows share a prompt);
    63 rows hold one row with nothing to advertise (row 61)."""
    header, body = read_csv(SAMPLE_CSV)
    made = []
    for i in range(rows):
        row = list(body[i % len(body)])
        row[0], row[1] = f"{i:06d}", f"{row[1]} {i}" if row[1] else ""
        made.append(row)
    return write_csv(path, header, made)


def report(path):
    return json.loads(path.read_text())


def test_rerun_of_an_unchanged_catalog_comes_from_the_cache(run_ads, tmp_path):
    source = catalog(tmp_path / "in.csv")
    first = run_ads(source, "-o", tmp_path / "a.csv", "--report", tmp_path / "r1.json")
    second = run_ads(source, "-o", tmp_path / "b.csv", "--report", tmp_path / "r2.json")
    assert first.exit_code == second.exit_code == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    r1, r2 = report(tmp_path / "r1.json"), report(tmp_path / "r2.json")
    assert r1["rows_generated"] == 62 and r1["rows_skipped"] == 1 and r1["model_loaded"]
    assert (r2["rows_generated"], r2["rows_from_cache"], r2["model_loaded"]) == (0, 62, False)
    assert r2["cache"] == str(tmp_path / "xdg-cache" / "adpulse-batch" / "ads.sqlite")

    # Three changed products: exactly three generated, the rest from the cache.
    header, rows = read_csv(source)
    for i in (3, 17, 40):
        rows[i][2] += " Now in green."
    write_csv(source, header, rows)
    third = run_ads(source, "-o", tmp_path / "c.csv", "--report", tmp_path / "r3.json")
    assert third.exit_code == 0
    r3 = report(tmp_path / "r3.json")
    assert (r3["rows_generated"], r3["rows_from_cache"], r3["prompts_generated"]) == (3, 59, 3)
    changed = [i for i, (a, c) in enumerate(zip(read_csv(tmp_path / "a.csv")[1], read_csv(tmp_path / "c.csv")[1])) if a[-2] != c[-2]]
    assert set(changed) <= {3, 17, 40}


def test_rows_from_the_cache_are_not_tokenized_and_keep_their_status(run_ads, monkeypatch, tmp_path):
    source = catalog(tmp_path / "in.csv")
    assert run_ads(source, "-o", tmp_path / "a.csv").exit_code == 0
    with monkeypatch.context() as patch:  # a run whose ads are all cached needs no tokenizer
        for module in (adpulse_batch.model, adpulse_batch.run):
            patch.setattr(module, "load_tokenizer", lambda settings: pytest.fail("the tokenizer was loaded"))
        assert run_ads(source, "-o", tmp_path / "b.csv", "--report", tmp_path / "r.json").exit_code == 0
    assert report(tmp_path / "r.json")["rows_from_cache"] == 62
    statuses = [row[-2] for row in read_csv(tmp_path / "b.csv")[1]]
    assert statuses.count("ok: input truncated") == 1  # the 333-word description, cut in the first run
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    # Another prompt token limit is another key: the rows are generated again.
    assert run_ads(source, "-o", tmp_path / "c.csv", "--max-prompt-tokens", 200, "--report", tmp_path / "r.json").exit_code == 0
    assert report(tmp_path / "r.json")["rows_generated"] == 62


def test_no_cache_and_a_cache_file_of_ones_own(run_ads, tmp_path):
    source = catalog(tmp_path / "in.csv", rows=8)
    own = tmp_path / "my.sqlite"
    assert run_ads(source, "-o", tmp_path / "a.csv", "--cache", own).exit_code == 0
    assert run_ads(source, "-o", tmp_path / "b.csv", "--cache", own, "--report", tmp_path / "r.json").exit_code == 0
    assert report(tmp_path / "r.json")["rows_from_cache"] == 8
    assert run_ads(source, "-o", tmp_path / "c.csv", "--no-cache", "--report", tmp_path / "r.json").exit_code == 0
    assert report(tmp_path / "r.json")["rows_generated"] == 8 and report(tmp_path / "r.json")["cache"] is None
    result = run_ads(source, "--cache", own, "--no-cache")
    assert result.exit_code == 2 and "Use just one of --cache and --no-cache." in result.stderr


def test_a_corrupt_cache_is_set_aside(run_ads, tmp_path):
    source = catalog(tmp_path / "in.csv", rows=4)
    broken = tmp_path / "ads.sqlite"
    broken.write_bytes(b"this is not an sqlite database" * 100)
    result = run_ads(source, "-o", tmp_path / "out.csv", "--cache", broken, "--report", tmp_path / "r.json")
    assert result.exit_code == 0
    assert f"the ad cache {broken} is not readable" in result.stderr
    assert report(tmp_path / "r.json")["rows_generated"] == 4
    assert len(list(tmp_path.glob("ads.sqlite.corrupt-*"))) == 1


def test_kept_work_resumes_and_other_settings_start_over(run_ads, tmp_path):
    source = catalog(tmp_path / "in.csv", rows=20)
    out = tmp_path / "out.csv"
    work = tmp_path / ".out.csv.adpulse-work"
    assert run_ads(source, "-o", out, "--no-cache", "--keep-work").exit_code == 0
    first = out.read_bytes()
    assert work.is_dir()
    assert run_ads(source, "-o", out, "--no-cache", "--keep-work", "--report", tmp_path / "r.json").exit_code == 0
    assert (report(tmp_path / "r.json")["rows_resumed"], report(tmp_path / "r.json")["rows_generated"]) == (20, 0)
    assert out.read_bytes() == first
    # Another generation setting: the old work does not belong to this job.
    assert run_ads(source, "-o", out, "--no-cache", "--max-chars", 30, "--report", tmp_path / "r.json").exit_code == 0
    assert (report(tmp_path / "r.json")["rows_resumed"], report(tmp_path / "r.json")["rows_generated"]) == (0, 20)
    assert not work.exists()  # removed after a successful run without --keep-work


def test_work_dir_is_never_someone_elses(run_ads, tmp_path):
    source = catalog(tmp_path / "in.csv", rows=4)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = run_ads(source, "-o", tmp_path / "out.csv", "--work-dir", mine)
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"Error: the work directory {mine} exists and is not one adpulse-batch made; name a new or empty directory with --work-dir"
    )
    assert (mine / "notes.txt").read_text() == "keep me" and not (tmp_path / "out.csv").exists()

    # One --work-dir for two outputs: the second run must not wipe the first one's work.
    shared = tmp_path / "work"
    assert run_ads(source, "-o", tmp_path / "a.csv", "--work-dir", shared, "--keep-work").exit_code == 0
    parts = sorted(shared.glob("part-*"))
    assert parts
    result = run_ads(source, "-o", tmp_path / "b.csv", "--work-dir", shared)
    assert result.exit_code == 2 and "give each output its own --work-dir" in result.stderr
    assert sorted(shared.glob("part-*")) == parts and not (tmp_path / "b.csv").exists()

    # Work left by a release whose manifest did not record the output: started over.
    (shared / "manifest.json").write_text('{"fingerprint": "from an older release"}')
    result = run_ads(source, "-o", tmp_path / "a.csv", "--work-dir", shared, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    assert report(tmp_path / "r.json")["rows_resumed"] == 0 and not shared.exists()


def test_kept_work_of_a_higher_limit_serves_a_lower_one(run_ads, tmp_path):
    source = catalog(tmp_path / "in.csv", rows=20)
    out = tmp_path / "out.csv"
    assert run_ads(source, "-o", out, "--no-cache", "--keep-work").exit_code == 0
    whole = read_csv(out)
    result = run_ads(source, "-o", out, "--no-cache", "--limit", 5, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    assert (report(tmp_path / "r.json")["rows_resumed"], report(tmp_path / "r.json")["rows_generated"]) == (5, 0)
    assert read_csv(out) == (whole[0], whole[1][:5])


def test_output_directory_is_made_and_an_unusable_cache_is_skipped(run_ads, test_model, tmp_path):
    _, adapter = test_model
    source = catalog(tmp_path / "in.csv", rows=3)
    out = tmp_path / "new" / "dir" / "out.csv"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # The cache's directory cannot be made (a file is in the way): the run goes on without it.
    result = run_ads(source, "-o", out, "--cache", blocker / "ads.sqlite", "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    assert f"cannot use the ad cache {blocker / 'ads.sqlite'}" in result.stderr
    assert report(tmp_path / "r.json")["rows_generated"] == 3
    assert len(read_csv(out)[1]) == 3
    # A cache that cannot be opened (here a directory, from Python) is not "corrupt": it is
    # left where it is, and the run goes on without it.
    folder = tmp_path / "folder"
    folder.mkdir()
    settings = RunSettings(input=source, output=tmp_path / "b.csv", model=ModelSettings(adapter=str(adapter), dtype="float32"),
                           generation=GenerationSettings(max_new_tokens=4), cache=folder)  # fmt: skip
    assert run_catalog(settings).rows_generated == 3
    assert folder.is_dir() and not list(tmp_path.glob("folder.corrupt-*"))


def test_a_second_run_on_the_same_output_exits_3(run_ads, tmp_path):
    source = catalog(tmp_path / "in.csv", rows=3)
    out = tmp_path / "out.csv"
    with OutputLock(out):
        result = run_ads(source, "-o", out)
    assert result.exit_code == 3
    line = result.stderr.strip()
    assert line.startswith(f"Error: another run is writing {out} (pid {os.getpid()} on ") and line.endswith("); wait for it to finish")
    assert not out.exists()
    assert run_ads(source, "-o", out).exit_code == 0  # the lock went with its holder
    assert not (tmp_path / ".out.csv.lock").exists()


def test_csv_ads_never_start_like_a_formula(run_ads, tmp_path, monkeypatch):
    def formulas(self, prompts, *, batch_size, on_batch=None):
        return [[Generation(f"=HYPERLINK(\"x\") {i}" if i % 2 else "-20% today", 3, "eos")] for i, _ in enumerate(prompts)]

    monkeypatch.setattr(Generator, "generate", formulas)
    source = catalog(tmp_path / "in.csv", rows=4)
    header, rows = read_csv(source)
    rows[0][1] = "=1+1 mug"  # an input cell that looks like a formula is input: left alone
    write_csv(source, header, rows)
    assert run_ads(source, "-o", tmp_path / "safe.csv", "--no-cache").exit_code == 0
    assert run_ads(source, "-o", tmp_path / "raw.csv", "--no-cache", "--no-csv-safe").exit_code == 0
    safe, raw = read_csv(tmp_path / "safe.csv")[1], read_csv(tmp_path / "raw.csv")[1]
    assert {r[-3] for r in raw} == {"-20% today", '=HYPERLINK("x") 1', '=HYPERLINK("x") 3'}
    assert [r[-3] for r in safe] == ["'" + r[-3] for r in raw]
    assert safe[0][1] == raw[0][1] == "=1+1 mug"
    assert run_ads(source, "-o", tmp_path / "out.jsonl", "--no-cache").exit_code == 0
    assert {json.loads(line)["ad_copy"][0] for line in (tmp_path / "out.jsonl").read_text().splitlines()} == {"-", "="}


def test_job_file(run_cli, test_model, tmp_path, monkeypatch):
    _, adapter = test_model
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    catalog(tmp_path / "in.csv", rows=5)
    job = jobs / "nightly.toml"
    job.write_text(f'input = "../in.csv"\noutput = "../out.parquet"\nadapter = "{adapter}"\nmax-new-tokens = 6\nlimit = 3\nquiet = true\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths in a job file are relative to the file
    assert run_cli("run", "--job", job, "--report", tmp_path / "r.json").exit_code == 0
    r = report(tmp_path / "r.json")
    assert (r["rows_total"], r["generation"]["max_new_tokens"], r["output"]) == (3, 6, str(tmp_path / "out.parquet"))
    assert run_cli("run", "--job", job, "--limit", 5, "--report", tmp_path / "r.json").exit_code == 0  # flags win
    assert report(tmp_path / "r.json")["rows_total"] == 5
    job.write_text('input = "../in.csv"\nbatchsize = 4\n')
    result = run_cli("run", "--job", job)
    assert result.exit_code == 2
    assert "'batchsize' is not a run option" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "line, message",
    [
        ("limit = 2020-01-01", "'limit' must be an integer, not 2020-01-01"),
        ("limit = 3.7", "'limit' must be an integer, not 3.7"),  # not 3 rows
        ("limit = true", "'limit' must be an integer, not true"),  # not 1 row
        ('quiet = "yes"', "'quiet' must be true or false, not \"yes\""),
        ('temperature = "hot"', "'temperature' must be a number, not \"hot\""),
        ('output = ["a.csv"]', "'output' must be a string, not an array"),
    ],
)
def test_job_file_values_of_the_wrong_type(run_cli, tmp_path, line, message):
    job = tmp_path / "job.toml"
    job.write_text(f'input = "in.csv"\n{line}\n')
    result = run_cli("run", "--job", job)
    # CliRunner names the program `cli`.
    assert (result.exit_code, result.stderr) == (2, f"Error: Invalid value for '--job': {job}: {message} (see 'cli run --help')\n")


def test_example_job_files_are_valid():
    options = tomllib.loads((REPO / "jobs" / "nightly.toml").read_text())
    run_options = {p.name for p in cli.commands["run"].params}
    assert set(k.replace("-", "_") for k in options) <= run_options
    assert "adpulse-batch run --job" in (REPO / "jobs" / "crontab").read_text()
    assert "OnCalendar=" in (REPO / "jobs" / "adpulse-nightly.timer").read_text()


def test_json_logs(run_cli, test_model, tmp_path):
    source = catalog(tmp_path / "in.csv", rows=3)
    result = run_cli("run", source, "--adapter", test_model[1], "--max-new-tokens", 4, "--log-format", "json")
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.stderr.strip().splitlines()]
    assert all(set(line) >= {"time", "level", "message"} for line in lines)
    assert (lines[-1]["rows_total"], lines[-1]["rows_generated"]) == (3, 3)
    result = run_cli("run", tmp_path / "missing.csv", "--log-format", "json")
    assert result.exit_code == 2
    assert json.loads(result.stderr) == {"level": "error", "message": f"input {tmp_path / 'missing.csv'} does not exist", "exit_code": 2}


def test_work_of_an_input_edited_in_place_is_not_resumed(run_ads, tmp_path):
    # Same size, same modification time, other bytes: a (path, size, time) memo cannot tell.
    source = catalog(tmp_path / "in.csv", rows=6)
    out = tmp_path / "out.csv"
    assert run_ads(source, "-o", out, "--keep-work").exit_code == 0
    stat = source.stat()
    edited = source.read_bytes().replace(b"Harem pants 0", b"Denim pants 0")
    assert len(edited) == stat.st_size and edited != source.read_bytes()
    source.write_bytes(edited)
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = run_ads(source, "-o", out, "--keep-work", "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    r = report(tmp_path / "r.json")
    assert (r["rows_resumed"], r["rows_from_cache"], r["rows_generated"]) == (0, 5, 1)
    assert run_ads(source, "-o", tmp_path / "fresh.csv", "--no-cache").exit_code == 0
    assert out.read_bytes() == (tmp_path / "fresh.csv").read_bytes()


def test_a_cache_entry_that_does_not_parse_is_a_miss(run_ads, tmp_path):
    import sqlite3

    source = catalog(tmp_path / "in.csv", rows=8)
    cache = tmp_path / "ads.sqlite"
    assert run_ads(source, "-o", tmp_path / "a.csv", "--cache", cache).exit_code == 0
    damaged = ['{"ads": ["x"]}', "[1, 2]", "not json", '{"ads": "text", "truncated": false}', '{"ads": [7], "truncated": false}']
    with sqlite3.connect(cache) as db:
        keys = [key for (key,) in db.execute("SELECT key FROM ads ORDER BY key LIMIT ?", (len(damaged),))]
        db.executemany("UPDATE ads SET ads = ? WHERE key = ?", list(zip(damaged, keys)))
    db.close()
    result = run_ads(source, "-o", tmp_path / "b.csv", "--cache", cache, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == f"adpulse-batch: the ad cache {cache} has 5 entries that do not parse; their ads are generated again\n"
    assert (report(tmp_path / "r.json")["rows_generated"], report(tmp_path / "r.json")["rows_from_cache"]) == (5, 3)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    # The ads generated again replaced the damaged entries.
    assert run_ads(source, "-o", tmp_path / "c.csv", "--cache", cache, "--report", tmp_path / "r.json").stderr == ""
    assert report(tmp_path / "r.json")["rows_from_cache"] == 8


def test_a_part_file_that_cannot_be_read_is_redone(run_ads, tmp_path):
    source = catalog(tmp_path / "in.csv", rows=6)
    out = tmp_path / "out.csv"
    work = tmp_path / ".out.csv.adpulse-work"
    assert run_ads(source, "-o", out, "--no-cache", "--keep-work").exit_code == 0
    first = out.read_bytes()
    (part,) = work.glob("part-*.parquet")
    part.write_bytes(b"")  # what a crash on a file system that skips fsync can leave
    (work / "part-000000000000-w0000-n2-0123abcd.parquet").write_bytes(b"PAR1 cut short")
    (work / "part-of-something-else.parquet").write_bytes(b"")
    result = run_ads(source, "-o", out, "--no-cache", "--keep-work", "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert len(warnings) == 3 and all(w.startswith(f"adpulse-batch: {work}/part-") for w in warnings)
    assert all(w.endswith("; its rows are generated again") for w in warnings)
    assert "part-of-something-else.parquet cannot be read (its name is not one adpulse-batch gives parts)" in warnings[2]
    assert (report(tmp_path / "r.json")["rows_resumed"], report(tmp_path / "r.json")["rows_generated"]) == (0, 6)
    assert out.read_bytes() == first


def test_every_error_is_one_json_object_with_json_logs(run_cli, tmp_path):
    source = catalog(tmp_path / "in.csv", rows=2)
    unclosed = tmp_path / "unclosed.csv"
    unclosed.write_text('name,description\n"Mug,Blue\n')
    job = tmp_path / "job.toml"
    job.write_text('log-format = "json"\nlimit = 3.7\n')  # its own error follows its log format
    for args, env in [
        ([source, "--log-format", "json", "--batch-size", "many"], None),  # parsing a flag
        ([source, "--batch-size", "many"], {"ADPULSE_LOG_FORMAT": "json"}),
        ([source, "--job", job], None),
        ([unclosed, "--log-format=json"], None),  # reading the input
        ([source, "-o", tmp_path, "--log-format", "json"], None),  # checking the output
        ([source, "--temperature", "nan", "--log-format", "json"], None),  # checking settings
    ]:
        result = run_cli("run", *args, env=env)
        (line,) = result.stderr.splitlines()
        entry = json.loads(line)
        assert (entry["level"], entry["exit_code"], result.exit_code) == ("error", 2, 2), line
