"""One run per output: a second run aimed at the same output while one is writing it exits
with the holder's pid and host instead of both writing."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from adpulse_batch.catalog import OUTPUT_FIX, output_target, remove_temporary_outputs
from adpulse_batch.errors import InputError, LockedError, writing
from adpulse_batch.storage import ObjectPath


class OutputLock:
    """An advisory lock on a file beside the output, held while the run lasts.

    The operating system drops the lock when its process dies, so a crashed run never
    leaves a stale lock behind; the file's text only names the holder for the message. The
    holder also owns the output's temporary files: those of killed runs go when it locks.
    An object output is locked in its local staging directory: runs on this machine exclude
    each other; an object store has no locks to offer runs on other machines.
    """

    def __init__(self, output: Path):
        self.output = output if isinstance(output, ObjectPath) else Path(output)
        target = output_target(self.output)  # two links to one file share its lock
        self.path = target.with_name(f".{target.name}.lock")
        self._handle = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # the output's directory
        except OSError as error:
            raise InputError(f"cannot create the output directory {self.path.parent} ({error.strerror}); check -o/--output") from None
        with writing(self.path, OUTPUT_FIX):  # the first file a run writes: a read-only directory fails here
            handle = self._locked_file()
            try:
                handle.truncate(0)
                handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
                handle.flush()
            except OSError:  # a full disk: leave no lock file behind
                self.path.unlink(missing_ok=True)
                handle.close()
                raise
        self._handle = handle
        remove_temporary_outputs(self.output)

    def _locked_file(self):
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip()
                handle.close()
                raise LockedError(f"another run is writing {self.output} ({_describe(holder)}); wait for it to finish") from None
            # A run that finished between our open and our lock removed the file: lock the new one.
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino:
                return handle
            handle.close()

    def release(self) -> None:
        if self._handle is not None:
            self.path.unlink(missing_ok=True)
            self._handle.close()
            self._handle = None
            if isinstance(self.output, ObjectPath):
                with contextlib.suppress(OSError):  # kept while it holds a work directory to resume
                    self.path.parent.rmdir()

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
