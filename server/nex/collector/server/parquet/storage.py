"""Where datasets live (``DATASETS_URI``): a local folder or an S3-compatible
bucket, both through ``pyarrow.fs``.

Paths are the filesystem's own: an absolute POSIX path on a local disk,
``bucket/key`` on S3. A dataset is the folder (prefix) ``<root>/<name>/<version>``
holding its Parquet files and ``manifest.json``.

The manifest is the commit point. A build writes its files under a staging
folder ``<root>/<name>/.<version>.tmp-<random>``; locally the staging folder,
manifest included, is renamed into place (atomic); on an object store, which
has no rename of a folder, the files are moved (server-side copy) into the
dataset's prefix and ``manifest.json`` is written last. A reader trusts only a
dataset whose manifest exists and matches; a build that dies leaves staging
objects (and, on an object store, possibly files without a manifest), which
the next build of that version, or a sweep, removes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.fs as pafs

__all__ = [
    "MANIFEST_NAME",
    "DatasetStore",
    "Location",
    "StorageConfigError",
]

MANIFEST_NAME = "manifest.json"
STAGING_MARK = ".tmp-"

# Datasets may hold sensitive prompts and answers: on a local disk, readable by
# the owner and its group, never by everyone, whatever the process's umask.
FILE_MODE = 0o640
DIR_MODE = 0o750


class StorageConfigError(ValueError):
    """DATASETS_URI (or the S3 settings) cannot work; the message says why."""


def make_dirs(path: Path) -> None:
    """Creates `path` and its missing parents with DIR_MODE."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=DIR_MODE)
            folder.chmod(DIR_MODE)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    path: str
    is_file: bool
    size: int


class DatasetStore:
    """A pyarrow filesystem and the root folder (prefix) of the datasets in it."""

    def __init__(self, fs: pafs.FileSystem, root: str, *, scheme: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        self.scheme = scheme  # "file" or "s3"

    # -- construction -----------------------------------------------------------------

    @classmethod
    def local(cls, root: Path) -> DatasetStore:
        return cls(pafs.LocalFileSystem(), str(root.resolve()), scheme="file")

    @classmethod
    def from_uri(
        cls,
        uri: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> DatasetStore:
        """``file:///abs/path`` or ``s3://bucket/prefix``. For S3, the endpoint is
        `endpoint_url`, else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (any
        S3-compatible store: MinIO, Ceph, R2, moto), else AWS's own; credentials
        are AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN), else
        the AWS SDK's default chain; the region AWS_REGION / AWS_DEFAULT_REGION."""
        env = os.environ if env is None else env
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise StorageConfigError(f"DATASETS_URI {uri!r}: a file:// uri names no host")
            path = Path(unquote(parsed.path))
            if not path.is_absolute():
                raise StorageConfigError(f"DATASETS_URI {uri!r}: the path must be absolute")
            return cls.local(path)
        if parsed.scheme == "s3":
            bucket = parsed.netloc
            if not bucket:
                raise StorageConfigError(
                    f"DATASETS_URI {uri!r}: name the bucket, e.g. s3://datasets/prefix"
                )
            if parsed.query or parsed.params or parsed.fragment:
                raise StorageConfigError(
                    f"DATASETS_URI {uri!r}: no query; the endpoint and credentials come "
                    "from the environment"
                )
            prefix = unquote(parsed.path).strip("/")
            return cls(
                _s3_filesystem(endpoint_url, region, env),
                f"{bucket}/{prefix}" if prefix else bucket,
                scheme="s3",
            )
        raise StorageConfigError(
            f"DATASETS_URI {uri!r}: use file:///absolute/path or s3://bucket/prefix"
        )

    # -- names --------------------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def uri(self) -> str:
        return self.uri_of(self.root)

    def location(self, name: str, version: str) -> Location:
        return Location(self, f"{self.root}/{name}/{version}")

    def uri_of(self, path: str) -> str:
        if self.is_local:
            return Path(path).as_uri()
        return f"s3://{path}"

    def locate(self, uri: str) -> Location | None:
        """The location of a dataset uri when it is in this store, else None."""
        parsed = urlparse(uri)
        if parsed.scheme != self.scheme:
            return None
        path = unquote(parsed.path) if self.is_local else f"{parsed.netloc}{unquote(parsed.path)}"
        path = path.rstrip("/")
        if not (path + "/").startswith(self.root.rstrip("/") + "/"):
            return None
        return Location(self, path)

    # -- blocking operations (call them in a thread) ------------------------------------

    def info(self, path: str) -> pafs.FileInfo:
        return self.fs.get_file_info(path)

    def is_file(self, path: str) -> bool:
        return bool(self.info(path).type == pafs.FileType.File)

    def exists(self, path: str) -> bool:
        return bool(self.info(path).type != pafs.FileType.NotFound)

    def entries(self, path: str) -> list[Entry]:
        """The direct children of folder `path`, sorted by name; [] if none."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            return []
        entries = [
            Entry(
                PurePosixPath(i.path).name,
                i.path,
                i.type == pafs.FileType.File,
                i.size or 0,
            )
            for i in infos
        ]
        return sorted(entries, key=lambda e: e.name)

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            data: bytes = f.read()
            return data

    def open_input(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_file(path)

    def delete_tree(self, path: str) -> None:
        if self.is_local:
            shutil.rmtree(path, ignore_errors=True)
            return
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_dir(path)

    def make_staging(self, final: str) -> str:
        """A new, empty staging folder for a build of `final`."""
        parent, name = final.rsplit("/", 1)
        staging = f"{parent}/.{name}{STAGING_MARK}{secrets.token_hex(6)}"
        if self.is_local:
            make_dirs(Path(parent))
            Path(staging).mkdir(mode=DIR_MODE)
            Path(staging).chmod(DIR_MODE)
        return staging

    def stale_staging(self, final: str) -> list[str]:
        parent, name = final.rsplit("/", 1)
        mark = f".{name}{STAGING_MARK}"
        return [e.path for e in self.entries(parent) if not e.is_file and e.name.startswith(mark)]

    def create(self, path: str) -> IO[bytes] | pa.NativeFile:
        """A new file for writing (locally: exclusive, FILE_MODE, unbuffered)."""
        if self.is_local:
            return open(
                os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb", buffering=0
            )
        return self.fs.open_output_stream(path)

    def committed(self, final: str) -> bool:
        """Whether a dataset is in place at `final`: locally the folder exists
        (it only ever appears whole), on an object store its manifest exists."""
        if self.is_local:
            return Path(final).exists()
        return self.is_file(f"{final}/{MANIFEST_NAME}")

    def commit(self, staging: str, final: str, names: list[str], manifest: bytes) -> None:
        """Puts the staged files and then `manifest` in place at `final`. Raises
        FileExistsError when another build committed `final` first."""
        if self.is_local:
            self._commit_local(staging, final, manifest)
            return
        if self.committed(final):
            raise FileExistsError(f"dataset {self.uri_of(final)} appeared during the build")
        # Leftovers of a build that died mid-commit: files without a manifest.
        self.delete_tree(final)
        for name in names:
            self.fs.move(f"{staging}/{name}", f"{final}/{name}")
        with self.fs.open_output_stream(f"{final}/{MANIFEST_NAME}") as out:
            out.write(manifest)
        self.delete_tree(staging)

    @staticmethod
    def _commit_local(staging: str, final: str, manifest: bytes) -> None:
        fd = os.open(f"{staging}/{MANIFEST_NAME}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with open(fd, "wb") as f:
            f.write(manifest)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(staging)
        if Path(final).exists():
            raise FileExistsError(f"dataset folder {final} appeared during the build")
        os.rename(staging, final)
        _fsync_path(str(Path(final).parent))

    def remove_uncommitted(self, final: str) -> list[str]:
        """Removes what builds of `final` that died left behind: their staging
        folders and, on an object store, files at `final` without a manifest.
        Only safe while no other build of the same version runs (a dataset's
        build lease ensures that)."""
        removed = self.stale_staging(final)
        for path in removed:
            self.delete_tree(path)
        if not self.is_local and not self.committed(final) and self.entries(final):
            self.delete_tree(final)
            removed.append(final)
        return removed

    def sweep(self, keep: set[tuple[str, str]] | None = None) -> list[str]:
        """Removes every staging folder under the root except those of the
        (name, version) pairs in `keep` (builds in progress)."""
        keep = keep or set()
        removed: list[str] = []
        for folder in self.entries(self.root):
            if folder.is_file:
                continue
            for entry in self.entries(folder.path):
                if entry.is_file or not entry.name.startswith("."):
                    continue
                version, mark, _ = entry.name[1:].rpartition(STAGING_MARK)
                if mark and (folder.name, version) not in keep:
                    self.delete_tree(entry.path)
                    removed.append(entry.path)
        return removed


def _s3_filesystem(
    endpoint_url: str | None, region: str | None, env: Mapping[str, str]
) -> pafs.S3FileSystem:
    endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {
        "region": region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        # A bucket is the operator's to create; a typo must not make a new one.
        "allow_bucket_creation": False,
        "allow_bucket_deletion": False,
    }
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise StorageConfigError(
                f"S3 endpoint {endpoint!r}: use http(s)://host:port, e.g. http://127.0.0.1:9000"
            )
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
        # Most S3-compatible stores (MinIO, moto) address buckets by path.
        kwargs["force_virtual_addressing"] = False
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if bool(key) != bool(secret):
        raise StorageConfigError("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY together")
    if key and secret:
        kwargs["access_key"] = key
        kwargs["secret_key"] = secret
        if env.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = env["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True, slots=True)
class Location:
    """One dataset's folder (prefix) in a store."""

    store: DatasetStore
    path: str

    @classmethod
    def local(cls, directory: Path) -> Location:
        directory = directory.resolve()
        return cls(DatasetStore.local(directory.parent), str(directory))

    @property
    def uri(self) -> str:
        return self.store.uri_of(self.path)

    def child(self, name: str) -> str:
        return f"{self.path}/{name}"

    def __str__(self) -> str:
        return self.uri
