"""The errors the library raises; the command line turns them into one line and an exit code."""

import contextlib


def first_line(error: Exception, limit: int = 200) -> str:
    """The first line of an error from a library, to quote inside our own one-line message."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]


class AdPulseError(Exception):
    """Something the user can fix: bad input, a bad flag, a model that cannot be found.

    The message is one line that says what was wrong, where, and how to fix it.
    """

    exit_code = 2


class InputError(AdPulseError):
    """The catalog or data file cannot be read as asked."""


class ModelNotFoundError(AdPulseError):
    """A base model, adapter or tokenizer cannot be found locally or on the Hub."""


class SettingsError(AdPulseError):
    """An option has a value that cannot work, alone or with another option."""


class WriteError(AdPulseError):
    """A file the run writes cannot be written: a read-only directory, a full disk, a
    directory where the file should be."""


@contextlib.contextmanager
def writing(path, fix: str):
    """Turn an operating-system error met while writing `path` into one line naming the file
    and saying `fix` (what to check, and which flag moves the file)."""
    try:
        yield
    except OSError as error:
        raise WriteError(f"cannot write {path} ({error.strerror or first_line(error)}); {fix}") from None


class WorkerError(AdPulseError):
    """A worker process of a multi-process run failed; no output was written."""

    exit_code = 1


class LockedError(AdPulseError):
    """Another run holds the output's lock."""

    exit_code = 3


class Terminated(KeyboardInterrupt):
    """SIGTERM (what systemd, Airflow and `timeout` send to stop a job), raised wherever the
    process is, as Ctrl-C raises KeyboardInterrupt, so that the same clean-up runs: the
    temporary output removed, the work directory kept for the next run to resume."""

    exit_code = 143  # 128 + 15: what a shell reports for a process that SIGTERM ended
