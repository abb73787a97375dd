"""Catalogs in object storage: `s3://`, `gs://` and `hf://` URIs for run's INPUT and -o.

An `ObjectPath` names an object, or a prefix of objects (a Parquet dataset), and answers the
few questions catalog.py asks of a local path: name and suffix, whether it exists and is a
file or a directory, the files under it, a stream to read. Objects are read through
pyarrow's file systems (S3 and S3-compatible stores, Google Cloud Storage) and
huggingface_hub's (`hf://datasets/OWNER/NAME/FILE`), with credentials from the usual places:
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_PROFILE`, `AWS_ENDPOINT_URL` for an
S3-compatible store, `GOOGLE_APPLICATION_CREDENTIALS`, `HF_TOKEN`.

An object output is written where a local output would be written, to a temporary file in a
local staging directory (with the output's lock and, by default, its work directory), and
uploaded once, whole, when the file is complete: object stores show an object only once its
upload has completed, so no reader ever sees part of one, and nothing else is written to the
bucket. `file://` URIs are local paths.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import io
import os
import re
from pathlib import Path, PurePosixPath

from adpulse_batch.errors import InputError, SettingsError, WriteError, first_line

SCHEMES = ("s3", "gs", "hf")
# What each store reads its credentials from, for the messages that ask to check them.
CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL for an S3-compatible store",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS",
    "hf": "HF_TOKEN (or `hf auth login`)",
}
# A URI, also after pathlib has folded its "//" into "/" (a Path made of one).
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")


def is_uri(value) -> bool:
    """Whether `value` names something by a URI (`s3://b/k`, `file:///x`) rather than a local path."""
    return isinstance(value, ObjectPath) or _URI.match(str(value)) is not None


def location(value, *, flag: str) -> Path | ObjectPath:
    """A local Path, or an ObjectPath for an `s3://`, `gs://` or `hf://` URI; a `file://` URI
    is its local path. Any other scheme is refused, naming `flag`."""
    if isinstance(value, (Path, ObjectPath)) and not is_uri(value):
        return value
    text = str(value)
    found = _URI.match(text)
    if found is None:
        return Path(text)
    scheme = found.group(1).lower()
    if scheme == "file" and text[found.end() :].startswith("/"):
        from urllib.parse import unquote, urlsplit

        return Path(unquote(urlsplit(text).path))
    if scheme not in SCHEMES or "://" not in text:
        raise SettingsError(f"{flag} {_unfolded(text)}: use a local path or an s3://, gs://, hf:// or file:// URI")
    path = ObjectPath(text)
    if "/" not in path.key and scheme != "hf":
        raise SettingsError(f"{flag} {text}: name an object in the bucket ({scheme}://BUCKET/KEY)")
    return path


def local_only(value, *, flag: str):
    """`value` unchanged when it is a local path; a URI is refused: only INPUT and -o may be objects."""
    if value is not None and is_uri(value):
        raise SettingsError(f"{flag} takes a local path, not {_unfolded(value)}; object storage URIs are for INPUT and -o/--output")
    return value


def _unfolded(value) -> str:
    """A URI as it was typed, also when pathlib has folded its "//" into "/"."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)", r"\1://", str(value))


class ObjectPath:
    """An object, or a prefix of objects, in S3, GCS or the Hugging Face Hub."""

    def __init__(self, uri: str, *, info=None):
        scheme, _, key = uri.partition("://")
        self.scheme, self.key = scheme.lower(), key.strip("/")
        self._info = info  # pyarrow's FileInfo, once asked for (or known from a listing)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: ObjectPath) -> bool:  # files in key order, as local files are in path order
        return str(self) < str(other)

    # --- the name, as a Path has it ---

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.key).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.key).stem

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(f"{self.scheme}://{PurePosixPath(self.key).parent}")

    def with_name(self, name: str) -> ObjectPath:
        return ObjectPath(f"{self.scheme}://{PurePosixPath(self.key).with_name(name)}")

    def __truediv__(self, name: str) -> ObjectPath:
        return ObjectPath(f"{self.scheme}://{self.key}/{name}")

    def relative_to(self, other: ObjectPath) -> PurePosixPath:
        return PurePosixPath(self.key).relative_to(other.key)

    def resolve(self) -> ObjectPath:
        return self

    def is_symlink(self) -> bool:
        return False

    # --- reading ---

    def info(self):
        if self._info is None:
            with self.reaching("read"):
                self._info = self.filesystem.get_file_info(self.key)
        return self._info

    def exists(self) -> bool:
        from pyarrow.fs import FileType

        return self.info().type != FileType.NotFound

    def is_file(self) -> bool:
        from pyarrow.fs import FileType

        return self.info().type == FileType.File

    def is_dir(self) -> bool:
        from pyarrow.fs import FileType

        return self.info().type == FileType.Directory

    def rglob(self, pattern: str) -> list[ObjectPath]:
        """The objects under this prefix whose name matches `pattern`, in key order."""
        from pyarrow.fs import FileSelector, FileType

        with self.reaching("read"):
            found = self.filesystem.get_file_info(FileSelector(self.key, recursive=True))
        return sorted(
            ObjectPath(f"{self.scheme}://{i.path}", info=i) for i in found if i.type == FileType.File and fnmatch.fnmatch(i.base_name, pattern)
        )

    def open_stream(self) -> io.RawIOBase:
        """The object's bytes, read as they are needed (a catalog is never read whole into memory)."""
        with self.reaching("read"):
            return _Reading(self.filesystem.open_input_stream(self.key), self)

    def open_file(self):
        """The object as a random-access file (Parquet reads its footer first)."""
        with self.reaching("read"):
            return self.filesystem.open_input_file(self.key)

    # --- writing ---

    def check_writable(self, flag: str) -> None:
        """Fail before any work when the output object could not go where it is asked to: a
        bucket that does not exist or cannot be reached, a prefix of other objects at its key."""
        from pyarrow.fs import FileType

        if self.info().type == FileType.Directory:
            raise SettingsError(f"{flag} {self} is a prefix of other objects; name an object")
        bucket = self.key.split("/", 1)[0]
        if self.scheme != "hf":
            with self.reaching("write"):
                if self.filesystem.get_file_info(bucket).type == FileType.NotFound:
                    raise SettingsError(f"{flag} {self}: the bucket {bucket} does not exist; create it, or name another")

    def upload(self, local: Path) -> None:
        """Upload the local file `local` as this object, in one call that signals cannot cut
        short: the store makes the object visible when the upload completes, whole."""
        from pyarrow.fs import LocalFileSystem, copy_files

        with self.reaching("write"):
            copy_files(str(local), self.key, source_filesystem=LocalFileSystem(), destination_filesystem=self.filesystem)
        self._info = None

    # --- the store ---

    @property
    def filesystem(self):
        return _filesystem(self.scheme, self.key.split("/", 1)[0], tuple(os.environ.get(name) for name in _ENVIRONMENT))

    @contextlib.contextmanager
    def reaching(self, action: str):
        """The store's errors as one line that names the object and what to check."""
        error_type = WriteError if action == "write" else InputError
        try:
            yield
        except FileNotFoundError:
            raise error_type(f"{self} does not exist") from None
        except PermissionError:
            raise error_type(f"cannot {action} {self}: access denied; check {CREDENTIALS[self.scheme]}") from None
        except OSError as error:
            raise error_type(f"cannot {action} {self}: {_reason(error, self.scheme)}") from None


def _reason(error: OSError, scheme: str) -> str:
    text = str(error)
    if "NETWORK_CONNECTION" in text or "Could not connect" in text or "Couldn't connect" in text or "resolve host" in text:
        where = (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")) if scheme == "s3" else None
        return f"the store cannot be reached{f' at {where}' if where else ''}; check the network" + (
            " and AWS_ENDPOINT_URL" if scheme == "s3" else ""
        )
    if "ACCESS_DENIED" in text or "AccessDenied" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text or "403" in text:
        return f"access denied; check {CREDENTIALS[scheme]}"
    return first_line(error)


# What the stores read from the environment: a file system is made again when one changes (a
# notebook that switches credentials or endpoints).
_ENVIRONMENT = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_REGION", "AWS_DEFAULT_REGION", "GOOGLE_APPLICATION_CREDENTIALS", "HF_TOKEN", "HF_ENDPOINT",
)  # fmt: skip


@functools.cache
def _filesystem(scheme: str, bucket: str, environment: tuple):
    """One pyarrow file system per bucket and environment (pyarrow resolves an S3 bucket's
    region when it makes one)."""
    import pyarrow.fs

    if scheme == "hf":
        from huggingface_hub import HfFileSystem

        return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(HfFileSystem()))
    try:
        return pyarrow.fs.FileSystem.from_uri(f"{scheme}://{bucket}")[0]
    except OSError as error:
        raise InputError(f"cannot open {scheme}://{bucket}: {_reason(error, scheme)}") from None


class _Reading(io.RawIOBase):
    """An object's input stream as a raw file whose errors (a connection lost halfway) are
    one line naming the object."""

    def __init__(self, stream, path: ObjectPath):
        self.stream, self.path = stream, path

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        with self.path.reaching("read"):
            return self.stream.readinto(buffer)

    def close(self) -> None:
        self.stream.close()
        super().close()


def staging_directory(output: ObjectPath) -> Path:
    """The local directory that stands in for an object output until its upload: its lock,
    its temporary file, its work directory by default. Named by a hash of the URI, so the
    same command finds it again after a crash, from any working directory."""
    from adpulse_batch.cache import default_cache_path

    digest = hashlib.sha256(str(output).encode()).hexdigest()[:16]
    return default_cache_path().parent / "outputs" / f"{output.name}-{digest}"


def local_output_path(output: Path | ObjectPath) -> Path:
    """Where the output is written on this machine: the path itself, or for an object output
    the file in its staging directory that is uploaded as the object."""
    return staging_directory(output) / output.name if isinstance(output, ObjectPath) else output
