"""The ad cache: an SQLite file of ads already written, so a nightly run generates only new
or changed products.

A key is a hash of everything that decides an ad: the model and adapter (names plus Hub
revisions or file hashes), the engine (name, version, device type, dtype and the library
versions its numerics depend on), the generation settings (seed included), the prompt
token limit, whether prompts are chat-rendered, the prompt as rendered (which holds the template) and the row's fields (a prompt
too long is cut field by field), so a row is looked up before it is tokenized. With the ads goes whether the prompt had to be
cut. Two runs may share the file (WAL journal, busy timeout); a file that is not a readable
cache is set aside, never a reason to fail the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Raise when a release changes what the same key would produce (generation, cleaning) or
# how an entry is stored.
GENERATION_VERSION = 4


@dataclass(frozen=True)
class CachedAd:
    """What the cache holds for a prompt: its ads (one per variant), whether the prompt was
    cut to fit the token limit (the rows' status), and per ad the flags fitting it to its
    channel raised (`too-long`, `emoji`; comma-separated, "" for none)."""

    ads: list[str]
    truncated: bool
    flags: list[str]

    @classmethod
    def parse(cls, entry: str) -> CachedAd | None:
        """The entry stored as JSON; None when it does not parse or its fields are not what
        they must be (a damaged file, a hand edit)."""
        try:
            ad = cls(**json.loads(entry))
        except (TypeError, ValueError):  # not JSON, not an object, other fields
            return None
        texts_ok = all(isinstance(value, list) and len(value) == len(ad.ads) and all(isinstance(t, str) for t in value) for value in (ad.ads, ad.flags))
        return ad if ad.ads and texts_ok and isinstance(ad.truncated, bool) else None


def default_cache_path() -> Path:
    """$XDG_CACHE_HOME/adpulse-batch/ads.sqlite, by default ~/.cache/adpulse-batch/ads.sqlite."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "adpulse-batch" / "ads.sqlite"


def key_context(identity: dict, engine: dict, generation: dict, *, max_prompt_tokens: int, chat: bool) -> str:
    """What, besides the rendered prompt, decides an ad."""
    return json.dumps(
        {
            "version": GENERATION_VERSION, "model": identity, "engine": engine, "generation": generation,
            "max_prompt_tokens": max_prompt_tokens, "chat": chat,
        },
        sort_keys=True,
    )  # fmt: skip


def ad_key(context: str, prompt: str, fields: tuple[str, str]) -> str:
    """The cache key of one prompt (as rendered, and the product and description it was
    rendered from) under a run's `key_context`."""
    return hashlib.sha256("\0".join([context, prompt, *fields]).encode()).hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


class AdCache:
    """Ads by key, in an SQLite file; also remembers file digests."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._broken = False
        self._db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = self._open()
            except sqlite3.OperationalError:
                raise  # cannot open or locked: not a reason to throw the file away
            except sqlite3.DatabaseError as error:  # the file is not an SQLite database
                aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
                log.warning("the ad cache %s is not readable (%s); moved it to %s and started a new one", self.path, error, aside)
                os.replace(self.path, aside)
                for suffix in ("-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                self._db = self._open()
        except (OSError, sqlite3.Error) as error:
            log.warning("cannot use the ad cache %s (%s); every row is generated this run", self.path, error)
            self._broken = True

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # readers do not wait for a writer
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS ads (key TEXT PRIMARY KEY, ads TEXT NOT NULL, created REAL NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT)")
            db.execute("SELECT count(*) FROM ads").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedAd]:
        """The cache entries of the keys that have them. An entry that does not parse (a
        damaged file, a hand edit) is a miss: its prompt is generated again, and overwrites it."""
        found: dict[str, CachedAd] = {}
        keys = list(keys)
        if self._broken:
            return found
        damaged = 0
        with self._failing_softly():
            for first in range(0, len(keys), 500):  # SQLite caps the parameters of one query
                part = keys[first : first + 500]
                query = f"SELECT key, ads FROM ads WHERE key IN ({','.join('?' * len(part))})"
                for key, entry in self._db.execute(query, part):
                    ad = CachedAd.parse(entry)
                    if ad is None:
                        damaged += 1
                    else:
                        found[key] = ad
        if damaged:
            log.warning("the ad cache %s has %d entries that do not parse; their ads are generated again", self.path, damaged)
        return found

    def put_many(self, items: dict[str, CachedAd]) -> None:
        if self._broken:
            return
        rows = [(key, json.dumps(asdict(entry), ensure_ascii=False), time.time()) for key, entry in items.items()]
        with self._failing_softly(), self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO ads (key, ads, created) VALUES (?, ?, ?)", rows)

    def file_digest(self, path: Path) -> str:
        """sha256 of a file's bytes, remembered by path, size and modification time, so a
        multi-GB model is hashed once, not every night."""
        stat = path.stat()
        row = None
        if not self._broken:
            with self._failing_softly():
                row = self._db.execute("SELECT size, mtime_ns, sha256 FROM files WHERE path = ?", (str(path),)).fetchone()
        if row is not None and row[0] == stat.st_size and row[1] == stat.st_mtime_ns:
            return row[2]
        digest = file_digest(path)
        if not self._broken:
            with self._failing_softly(), self._transaction():
                self._db.execute(
                    "INSERT OR REPLACE INTO files (path, size, mtime_ns, sha256) VALUES (?, ?, ?, ?)",
                    (str(path), stat.st_size, stat.st_mtime_ns, digest),
                )
        return digest

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    @contextlib.contextmanager
    def _failing_softly(self):
        """A cache that breaks mid-run (corrupted, locked past the timeout) is switched off
        for the rest of the run: its rows are generated instead."""
        try:
            yield
        except sqlite3.DatabaseError as error:
            log.warning("the ad cache %s failed (%s); going on without it", self.path, error)
            self._broken = True

    @contextlib.contextmanager
    def _transaction(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
