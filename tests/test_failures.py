"""Inputs and places a run cannot use: each is one line on stderr, exit code 2, and nothing
written (no output, no temporary file, no work directory)."""

import pytest

from conftest import write_csv


def only(directory, *names):
    """Assert that `directory` holds just `names` (nothing half-written beside them)."""
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)


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
