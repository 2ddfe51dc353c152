"""URLs -> filesystems (local, s3://, gs://, ...) through fsspec, with whole-or-nothing writes.

A shard is written whole or not at all: locally a temp file in the same folder renamed into
place, on object storage a single PUT (object stores never show a partial object).
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


def get_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or a URL such as s3://bucket/prefix."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
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
    """Open a media or manifest file for reading, local or remote."""
    return fsspec.open(url, mode, **(storage_options or {})).open()
