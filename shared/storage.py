"""Where uploads, outputs and error files live: one interface over a directory or a bucket.

Keys look like `jobs/<id>/input.csv`, relative to TABSERVE_DATA_DIR: a local (or shared)
directory, or `s3://bucket/prefix` through fsspec and s3fs. A key may also be a URL of the
same store (`file:///...` or `s3://...`), for inputs that were already there. Writes appear
under their key only when complete, so a reader never sees a half-written file. Uploads are
first streamed to a local staging file, checked there, then adopted into the store.
"""

from __future__ import annotations

import codecs
import errno
import io
import logging
import os
import re
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from shared.config import Settings
from shared.cooperative import fsync, off_loop
from shared.errors import ConfigError

logger = logging.getLogger(__name__)

PIECE_BYTES = 1024 * 1024  # copy and download piece
READ_BLOCK_BYTES = 8 * 1024 * 1024  # s3fs read-ahead block
PART_BYTES = 8 * 1024 * 1024  # s3fs multipart part (S3's minimum is 5 MiB)
MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest part of a multipart upload but the last


# A writer's temporary file beside its key's: `.<name>.<32 hex>.part`, renamed when complete.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{32}\.part$")


def _temporary_name(name: str) -> str:
    return f".{name}.{uuid.uuid4().hex}.part"


def written_key(key: str) -> str:
    """The key a writer's temporary file gets once complete (any other key: itself)."""
    head, slash, name = key.rpartition("/")
    found = _TEMPORARY.match(name)
    return key if found is None else f"{head}{slash}{found['name']}"


def _check_key(key: str) -> None:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"bad storage key {key!r}")


class Storage(ABC):
    """What every store offers; the local staging area for uploads is common to all."""

    scheme = ""
    # Whether a writer's temporary file can be found and read by another process before it
    # is complete, and so continued by a resumed job attempt (shared.jobs.checkpoint).
    appendable = False

    def __init__(self, staging_dir: str | Path) -> None:
        self.staging_dir = Path(staging_dir)

    def is_store_url(self, url: str) -> bool:
        """Whether url names an object of this store (and so may be used as a key)."""
        return url.startswith(f"{self.scheme}://")

    def staging_file(self) -> tuple[Path, IO[bytes]]:
        """A new local file to stream an upload into, before it is checked and adopted."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        path = self.staging_dir / f"{uuid.uuid4().hex}.part"
        return path, open(path, "wb")

    def purge_staging(self, older_than: float) -> int:
        """Remove staging files last changed before older_than (epoch seconds)."""
        removed = 0
        for stale in self.staging_dir.glob("*.part") if self.staging_dir.is_dir() else []:
            if stale.stat().st_mtime < older_than:
                stale.unlink(missing_ok=True)
                removed += 1
        return removed

    def iter_bytes(self, key: str, piece: int = PIECE_BYTES) -> Iterator[bytes]:
        """The stored file in pieces, for a streamed download (each read off a gevent
        worker's loop: api/downloads.py)."""
        with self.open(key) as fh:
            while data := off_loop(fh.read, piece):
                yield data

    def local_path(self, key: str) -> Path | None:
        """The key's file on this machine's filesystem, if the store is one (for sendfile)."""
        return None

    def partial_key(self, key: str, fh: Any) -> str:
        """The key of the temporary file a writer for `key` writes into (appendable stores)."""
        raise io.UnsupportedOperation(f"{type(self).__name__} cannot resume a written file")

    @staticmethod
    def sync(fh: Any) -> int:
        """Flush a writer's file to disk (appendable stores); its size in bytes."""
        raise io.UnsupportedOperation("only an appendable store syncs a partial file")

    def join_copies(self, sources: list[str], target: str) -> bool:
        """Lay stored files end to end into target inside the store, no byte through this
        process, where the store can; False (nothing done) where it cannot."""
        return False

    # Each store implements these.
    @abstractmethod
    def open(self, key: str) -> IO[bytes]:
        """Open key for reading (seekable)."""
        ...

    @abstractmethod
    def writer(self, key: str, mode: str = "wb") -> Any:
        """Context manager: a file for key that appears under its name only on success."""
        ...

    @abstractmethod
    def adopt(self, path: Path, key: str) -> None:
        """Move a staged local file into the store under key."""
        ...

    @abstractmethod
    def exists(self, key: str) -> bool:
        ...

    @abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes; FileNotFoundError if there is no such file."""
        ...

    @abstractmethod
    def delete(self, key: str) -> None:
        ...

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every key under a prefix (a job's files)."""
        ...

    @abstractmethod
    def list_prefixes(self, prefix: str) -> list[str]:
        """Immediate sub-prefixes (one per job) under prefix."""
        ...

    @abstractmethod
    def list_files(self, prefix: str) -> list[str]:
        """Every file's key under prefix, at any depth (a writer's temporary files too)."""
        ...

    @abstractmethod
    def last_modified(self, prefix: str) -> float:
        """When anything under prefix last changed (epoch seconds; 0 if nothing is there)."""
        ...


def keeps_partial(exc: BaseException) -> bool:
    """Whether a writer stopped by exc keeps its temporary file: an exception may say so
    (`keep_partial`), e.g. a superseded job attempt, whose checkpoint a later one adopts."""
    return bool(getattr(exc, "keep_partial", False))


def _copy_head(source: Path, target: Path, length: int) -> None:
    """Copy the first `length` bytes of source into a new file target."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        left = length
        while left > 0:
            piece = src.read(min(PIECE_BYTES, left))
            if not piece:
                raise ValueError(f"{source} holds fewer than {length} bytes")
            dst.write(piece)
            left -= len(piece)


class LocalStorage(Storage):
    """Storage on a local or shared filesystem (TABSERVE_DATA_DIR is a directory)."""

    scheme = "file"
    appendable = True

    def __init__(self, root: str | Path, staging_dir: str | Path | None = None) -> None:
        self.root = Path(root)
        super().__init__(staging_dir or self.root / "staging")

    def path(self, key: str) -> Path:
        """The local path of a key or a file:// URL."""
        if self.is_store_url(key):
            key = key[len("file://"):]
            if not key.startswith("/") or ".." in key.split("/"):
                raise ValueError(f"bad file URL {key!r}")
            return Path(key)
        _check_key(key)
        return self.root / key

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    @contextmanager
    def writer(self, key: str, mode: str = "wb",
               start: tuple[str, int] | None = None) -> Iterator[IO]:
        """A file for key; `start` (a key, a length): it begins with that file's first bytes
        (copied: the other file's writer, if still alive, never writes into this one)."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(_temporary_name(final.name))
        keep = False
        try:
            if start is not None:
                _copy_head(self.path(start[0]), tmp, start[1])
                mode = mode.replace("w", "a")
            with open(tmp, mode) as fh:
                yield fh
                fsync(fh)
            os.replace(tmp, final)
        except BaseException as exc:
            keep = keeps_partial(exc)
            raise
        finally:
            if not keep:
                tmp.unlink(missing_ok=True)

    def partial_key(self, key: str, fh: Any) -> str:
        head, slash, _ = key.rpartition("/")
        return f"{head}{slash}{Path(fh.name).name}"

    @staticmethod
    def sync(fh: Any) -> int:
        fsync(fh)
        return os.fstat(fh.fileno()).st_size

    def open(self, key: str) -> IO[bytes]:
        return open(self.path(key), "rb")

    def adopt(self, path: Path, key: str) -> None:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as staged:  # on disk before the job is accepted, as the
            fsync(staged)  # store's writer's files are
        try:
            os.replace(path, final)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # staging on another filesystem: copy instead
                raise
            with open(path, "rb") as src, self.writer(key) as dst:
                shutil.copyfileobj(src, dst, PIECE_BYTES)
            path.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def delete(self, key: str) -> None:
        # off the loop under gevent: freeing a 556 MiB file's blocks took 0.12 s
        off_loop(self.path(key).unlink, True)

    def delete_prefix(self, prefix: str) -> None:
        off_loop(shutil.rmtree, self.path(prefix), True)

    def list_prefixes(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return [f"{prefix.rstrip('/')}/{p.name}" for p in base.iterdir() if p.is_dir()]

    def list_files(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return [f"{prefix.rstrip('/')}/{p.relative_to(base).as_posix()}"
                for p in base.rglob("*") if p.is_file()]

    def last_modified(self, prefix: str) -> float:
        try:
            return self.path(prefix).stat().st_mtime
        except FileNotFoundError:
            return 0.0


class ObjectStorage(Storage):
    """Storage in an S3 bucket (TABSERVE_DATA_DIR=s3://bucket/prefix), through s3fs.

    Credentials and region come from the standard AWS variables (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION), read by botocore itself.
    """

    scheme = "s3"

    def __init__(self, url: str, endpoint_url: str | None = None,
                 staging_dir: str | Path | None = None, fs: Any = None) -> None:
        root = url[len("s3://"):].strip("/")
        if not url.startswith("s3://") or not root:
            raise ConfigError(f"TABSERVE_DATA_DIR={url!r}: use s3://BUCKET[/PREFIX]")
        self.root = root
        if fs is None:
            import fsspec

            # Listings are not cached: other machines add and remove files all the time.
            fs = fsspec.filesystem("s3", endpoint_url=endpoint_url, use_listings_cache=False)
        self.fs = fs
        super().__init__(staging_dir or default_s3_staging())

    def _path(self, key: str) -> str:
        if self.is_store_url(key):
            path = key[len("s3://"):]
            _check_key(path)
            return path
        _check_key(key)
        return f"{self.root}/{key}"

    def open(self, key: str) -> IO[bytes]:
        raw = self.fs.open(self._path(key), "rb", block_size=READ_BLOCK_BYTES)
        # BufferedReader adds readline(limit), which the CSV reader needs.
        return io.BufferedReader(raw, buffer_size=PIECE_BYTES)

    @contextmanager
    def writer(self, key: str, mode: str = "wb") -> Iterator[Any]:
        # s3fs sends parts of a multipart upload as the buffer fills and completes the
        # upload on close(); a small file is one PUT on close(). Until then the key does
        # not exist, so a failed or killed writer leaves nothing under it.
        fh = self.fs.open(self._path(key), "wb", block_size=PART_BYTES)
        try:
            yield codecs.getwriter("utf-8")(fh) if "b" not in mode else fh
        except BaseException:
            fh.discard()  # abort the multipart upload
            fh.closed = True  # so that no later close() (or __del__) uploads anything
            raise
        fh.close()

    def adopt(self, path: Path, key: str) -> None:
        with open(path, "rb") as src, self.writer(key) as dst:
            shutil.copyfileobj(src, dst, PIECE_BYTES)
        path.unlink(missing_ok=True)

    def join_copies(self, sources: list[str], target: str) -> bool:
        """A multipart upload whose parts are copies of the sources (UploadPartCopy), when
        each but the last holds at least S3's smallest part (and none is empty); aborted on
        any failure, so the target appears only complete."""
        sizes = [self.size(key) for key in sources]
        if not sizes or min(sizes) == 0 or min(sizes[:-1], default=MIN_PART_BYTES) < \
                MIN_PART_BYTES:
            return False
        bucket, key, _ = self.fs.split_path(self._path(target))
        upload = self.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)
        where = {"Bucket": bucket, "Key": key, "UploadId": upload["UploadId"]}
        try:
            parts = []
            for number, source in enumerate(sources, 1):
                copied = self.fs.call_s3("upload_part_copy", CopySource=self._path(source),
                                         PartNumber=number, **where)
                parts.append({"PartNumber": number,
                              "ETag": copied["CopyPartResult"]["ETag"]})
            self.fs.call_s3("complete_multipart_upload", MultipartUpload={"Parts": parts},
                            **where)
        except BaseException:
            try:  # best effort: the error that stopped the copies is the one to raise
                self.fs.call_s3("abort_multipart_upload", **where)
            except Exception as exc:  # noqa: BLE001 - a bucket lifecycle rule ends it
                logger.warning("%s: the multipart upload %s was not aborted: %s", target,
                               where["UploadId"], exc)
            raise
        self.fs.invalidate_cache(self._path(target))
        return True

    def exists(self, key: str) -> bool:
        return bool(self.fs.isfile(self._path(key)))

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def delete(self, key: str) -> None:
        try:
            self.fs.rm(self._path(key))
        except FileNotFoundError:
            pass

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        try:
            found = self.fs.find(path, withdirs=True, detail=True)
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            found = {}
        # Stores with real directories (SeaweedFS, MinIO) keep empty ones as "dir/", the
        # deepest first; on AWS S3 this deletes nothing.
        dirs = [p for p, info in found.items() if info.get("type") == "directory"]
        for directory in sorted({*dirs, path}, key=len, reverse=True):
            bucket, key, _ = self.fs.split_path(directory)
            self.fs.call_s3("delete_object", Bucket=bucket, Key=key.rstrip("/") + "/")

    def list_prefixes(self, prefix: str) -> list[str]:
        try:
            entries = self.fs.ls(self._path(prefix), detail=True)
        except FileNotFoundError:
            return []
        return [f"{prefix.rstrip('/')}/{e['name'].rstrip('/').rsplit('/', 1)[-1]}"
                for e in entries if e["type"] == "directory"]

    def list_files(self, prefix: str) -> list[str]:
        root = self._path(prefix).rstrip("/")
        try:
            found = self.fs.find(root)
        except FileNotFoundError:
            return []
        return [f"{prefix.rstrip('/')}/{path[len(root):].lstrip('/')}" for path in found
                if path.startswith(root + "/")]

    def last_modified(self, prefix: str) -> float:
        found = self.fs.find(self._path(prefix), detail=True)
        times = [info["LastModified"].timestamp() for info in found.values()
                 if info.get("LastModified") is not None]
        return max(times, default=0.0)


def default_s3_staging() -> Path:
    return Path(tempfile.gettempdir()) / "tabserve-staging"


def is_local(settings: Settings) -> bool:
    """Whether TABSERVE_DATA_DIR is a directory (not a bucket)."""
    return "://" not in settings.data_dir


def local_dirs(settings: Settings) -> dict[str, Path]:
    """The directories on this machine that uploads and outputs fill, by role (data,
    staging), from the settings alone: no store is built (s3fs must not start its threads
    in a Celery main process, whose forked pool processes would then hang)."""
    if not is_local(settings):
        return {"staging": Path(settings.staging_dir or default_s3_staging())}
    data = Path(settings.data_dir)
    return {"data": data, "staging": Path(settings.staging_dir or data / "staging")}


def make_storage(settings: Settings) -> Storage:
    """The store that TABSERVE_DATA_DIR names: a directory, or s3://bucket/prefix."""
    data_dir = settings.data_dir
    if data_dir.startswith("s3://"):
        return ObjectStorage(data_dir, settings.s3_endpoint_url, settings.staging_dir)
    if "://" in data_dir:
        raise ConfigError(f"TABSERVE_DATA_DIR={data_dir!r}: use a directory or "
                          "s3://BUCKET[/PREFIX]")
    return LocalStorage(data_dir, settings.staging_dir)

