"""Every command and option explains itself, and the README documents every run and finetune option."""

import subprocess
import sys

import click
import pytest

from adpulse_batch.cli import cli
from conftest import REPO


def commands():
    return [(name, command) for name, command in cli.commands.items()]


def test_every_command_and_option_has_help():
    for name, command in commands():
        assert command.help, f"command {name} has no help"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{name} {param.opts[0]} has no help"


@pytest.mark.parametrize("command", ["run", "finetune"])
def test_readme_documents_every_option(command):
    readme = (REPO / "README.md").read_text()
    for param in cli.commands[command].params:
        if isinstance(param, click.Option):
            assert f"`{param.opts[-1]}" in readme or f"`{param.opts[0]}" in readme, f"README lacks {command} {param.opts}"


def test_help_does_not_import_torch():
    code = "import sys, adpulse_batch.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_make_test_model_command(run_cli, tmp_path):
    result = run_cli("make-test-model", tmp_path / "m", "--adapter", tmp_path / "a")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "a" / "adapter_config.json").is_file()
    out = tmp_path / "out.csv"
    result = run_cli("run", REPO / "sample_catalogs" / "catalog.csv", "-o", out, "--adapter", tmp_path / "a", "--limit", 3, "--max-new-tokens", 4)
    assert result.exit_code == 0, result.stderr
