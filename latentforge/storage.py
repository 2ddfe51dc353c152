"""URLs -> filesystems (local, s3://, gs://, ...) through fsspec, with whole-or-nothing writes.

A shard is written whole or not at all: locally a temp file in the same folder renamed into
place, on object storage a single PUT (object stores never show a partial object).
"""

from __future__ import annotations

import functools
import io
import json
import os
import posixpath
import tarfile
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


def get_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or a URL such as s3://bucket/prefix."""
    fs, path = fsspec.core.url_to_fs(url, **_chain_options(url, storage_options))
    return fs, path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def join(base: str, *parts: str) -> str:
    """Join URL or path parts with '/', keeping a scheme such as s3:// intact."""
    out = base.rstrip("/")
    for p in parts:
        out = out + "/" + p.strip("/")
    return out


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path inside `fs` -> a URL that `get_fs` maps back to the same object."""
    if is_local(fs):
        return os.path.abspath(path)
    return fs.unstrip_protocol(path)


def resolve(base_dir: str, ref: str) -> str:
    """A media reference from a manifest -> URL; relative references are relative to base_dir."""
    if "://" in ref or os.path.isabs(ref):
        return ref
    if "://" in base_dir:
        scheme, rest = base_dir.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, ref))}"
    return os.path.abspath(os.path.join(base_dir, ref))


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write the whole object or nothing: temp + rename locally, one PUT elsewhere."""
    if is_local(fs):
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def open_input(url: str, storage_options: dict[str, Any] | None = None, mode: str = "rb"):
    """Open a media or manifest file for reading, local or remote; a tar member URL
    (`tar_member_url`) opens as a seekable view of the member's bytes inside its shard."""
    member = split_tar_url(url)
    if member is not None:
        return open_tar_member(*member, storage_options)
    return fsspec.open(url, mode, **_chain_options(url, storage_options)).open()


S3_RETRIES = {"max_attempts": 5, "mode": "standard"}
"""botocore's retry policy for s3:// unless storage_options set one (`config_kwargs.retries`):
"standard" backs off exponentially with jitter (up to 20 s) on 503 SlowDown, other 5xx,
throttling and connection errors; botocore's own default, "legacy", waits well under a second.
s3fs retries each call up to 5 times on top (docs/outputs.md, "Object storage faults")."""


def _with_retries(protocol: str, options: dict[str, Any]) -> dict[str, Any]:
    if protocol not in ("s3", "s3a"):
        return options
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("retries", dict(S3_RETRIES))
    return {**options, "config_kwargs": config}


def _chain_options(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """fsspec gives flat options to the first filesystem of a chained URL (`a::s3://b/k`); ours
    are meant for the storage at the end of the chain, so they go there, with the retry policy."""
    options = dict(storage_options or {})
    protocol = url.rsplit("::", 1)[-1].split("://", 1)[0] if "://" in url else "file"
    if "::" not in url:
        return _with_retries(protocol, options)
    protocols = {p.split("://", 1)[0] for p in url.split("::") if "://" in p}
    if protocols & set(options):  # already per protocol
        return options
    inner = _with_retries(protocol, options)
    return {protocol: inner} if inner else {}


# ---------------------------------------------------------------------------------------------
# Members of tar shards (WebDataset): `tar://<member>::<shard url>`, fsspec's own chained URL,
# so any fsspec user can open it too. fsspec's TarFileSystem re-reads every header of the shard
# on each open (its instances are not cached), so here a member opens as a byte range of the
# shard, with each shard's index (member -> offset, size) read once per process.

TAR_PREFIX = "tar://"


def tar_member_url(shard_url: str, member: str) -> str:
    return f"{TAR_PREFIX}{member}::{shard_url}"


def split_tar_url(url: str) -> tuple[str, str] | None:
    """`tar://<member>::<shard url>` -> (member, shard url); None for any other URL."""
    if not url.startswith(TAR_PREFIX) or "::" not in url:
        return None
    member, shard = url[len(TAR_PREFIX) :].split("::", 1)
    return member, shard


def tar_index(fileobj: Any) -> dict[str, tuple[int, int]]:
    """Regular-file members of an uncompressed tar -> (data offset, size), in archive order.
    Reads only the headers (one seek per member); raises tarfile.TarError on a bad archive."""
    out: dict[str, tuple[int, int]] = {}
    with tarfile.open(fileobj=fileobj, mode="r:") as tar:
        for info in tar:
            if info.isfile():
                out[normalize_member(info.name)] = (info.offset_data, info.size)
    return out


def normalize_member(name: str) -> str:
    """'./a/b.mp4' and '/a/b.mp4' -> 'a/b.mp4', as fsspec's TarFileSystem names members."""
    return posixpath.normpath(name).lstrip("/")


def open_tar_member(member: str, shard_url: str, storage_options: dict[str, Any] | None = None) -> io.BufferedReader:
    index = _shard_index(shard_url, json.dumps(storage_options or {}, sort_keys=True, default=str))
    try:
        offset, size = index[normalize_member(member)]
    except KeyError:
        raise FileNotFoundError(f"{member} is not a file in {shard_url}") from None
    return io.BufferedReader(_ByteRange(open_input(shard_url, storage_options), offset, size))


@functools.lru_cache(maxsize=64)
def _shard_index(shard_url: str, options_json: str) -> dict[str, tuple[int, int]]:
    """A shard's member index, read once per process for the last 64 shards a worker opened."""
    with open_input(shard_url, json.loads(options_json)) as f:
        return tar_index(f)


class _ByteRange(io.RawIOBase):
    """A read-only, seekable window [offset, offset + size) of another file; closes it on close."""

    def __init__(self, f: Any, offset: int, size: int):
        self._f, self._offset, self._size, self._pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._offset + self._pos)
        data = self._f.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()
