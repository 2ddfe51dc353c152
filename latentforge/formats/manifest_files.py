"""Plain file helpers under the manifest readers: media types by extension, manifest tables
(CSV, a JSON list, JSONL), text and list files, and listing folders.

This is the bottom of the manifest modules (`manifests` -> `manifest_readers` -> this one); it
imports nothing of theirs. Whole-input problems raise `ManifestError`; a bad record inside a
table becomes a `BadRecord` so the reader can turn it into an error row.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec

from latentforge.storage import join

MEDIA_EXTENSIONS: dict[str, frozenset[str]] = {
    "video": frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi"}),
    "image": frozenset({".png", ".jpg", ".jpeg", ".webp"}),
}
TABLE_EXTENSIONS = (".csv", ".json", ".jsonl", ".parquet")
SNIFF_BYTES = 1 << 20  # how much of a manifest's head decides its columns


class ManifestError(ValueError):
    """The whole input is unusable (missing, unknown format, unrecognisable columns)."""


def media_type_of(ref: str) -> str | None:
    """'video' / 'image' from the extension (case-insensitive), None when unsupported."""
    ext = extension(ref)
    for kind, extensions in MEDIA_EXTENSIONS.items():
        if ext in extensions:
            return kind
    return None


def extension(ref: str) -> str:
    """The lower-case extension with its dot ('' when none); a trailing '/' is ignored, and so is
    the query of an http(s) URL (a presigned `.../clip.mp4?X-Amz-Signature=...` is an .mp4)."""
    ref = str(ref)
    if ref.lower().startswith(("http://", "https://")):
        ref = ref.split("#", 1)[0].split("?", 1)[0]
    return posixpath.splitext(ref.rstrip("/"))[1].lower()


# ---------------------------------------------------------------------------------------------
# Tables


@dataclass
class Table:
    columns: list[str]
    records: list[Any] = field(default_factory=list)  # dicts, or BadRecord


@dataclass
class BadRecord:
    reason: str


def read_table(fs: fsspec.AbstractFileSystem, path: str, url: str, byte_range: tuple[int, int] | None = None) -> Table:
    """CSV, JSON (list of objects), JSONL or Parquet -> columns + records; bad lines become BadRecord.

    `byte_range` (JSONL only) reads the lines that start inside [start, end): the ranges of one
    file, read by different tasks, hold every line exactly once."""
    ext = extension(path)
    if byte_range is not None:
        return _read_jsonl_range(fs, path, url, *byte_range)
    if ext not in TABLE_EXTENSIONS:
        raise ManifestError(
            f"{url}: unsupported manifest file type {ext or '(no extension)'!r}; expected .csv, .json, .jsonl or .parquet"
        )
    if ext == ".parquet":
        return _read_parquet(fs, path, url)
    text = read_text(fs, path, url)
    if ext == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        records: list[Any] = []
        for record in reader:
            if None in record:
                records.append(BadRecord("csv row has more fields than the header"))
            else:
                records.append(record)
        return Table(list(reader.fieldnames or []), records)
    if ext == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{url}: invalid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list):
            raise ManifestError(f"{url}: expected a JSON list of objects, found {type(data).__name__}")
        records = [r if isinstance(r, dict) else BadRecord(f"not a JSON object (entry {i})") for i, r in enumerate(data)]
        return Table(_columns(records), records)
    records = [_json_record(line, f"line {number}") for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    return Table(_columns(records), records)


def _read_jsonl_range(fs: fsspec.AbstractFileSystem, path: str, url: str, start: int, end: int) -> Table:
    records: list[Any] = []
    with fs.open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            f.readline()  # the line in progress at `start` belongs to the range before
        while f.tell() < end:
            offset = f.tell()
            raw = f.readline()
            if not raw:
                break
            try:
                line = raw.decode("utf-8-sig" if offset == 0 else "utf-8")
            except UnicodeDecodeError:
                records.append(BadRecord(f"not UTF-8 (the line at byte {offset})"))
                continue
            if line.strip():
                records.append(_json_record(line, f"the line at byte {offset}"))
    return Table(_columns(records), records)


def _json_record(line: str, where: str) -> Any:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return BadRecord(f"invalid JSON ({where})")  # the place in parentheses: one error kind for all lines
    return record if isinstance(record, dict) else BadRecord(f"not a JSON object ({where})")


def sniff_columns(fs: fsspec.AbstractFileSystem, path: str, url: str) -> list[str]:
    """A manifest's columns from its head (CSV header, the first JSONL lines, the Parquet
    schema), so deciding the format never reads a whole large manifest on the driver. A JSON
    list is one document and is read whole."""
    ext = extension(path)
    if ext not in (".csv", ".jsonl", ".parquet"):
        return read_table(fs, path, url).columns
    if ext == ".parquet":
        import pyarrow.parquet as pq

        try:
            with fs.open(path, "rb") as f:
                return list(pq.read_schema(f).names)
        except Exception as e:  # noqa: BLE001 - an unreadable file is the reader's error to name
            if isinstance(e, FileNotFoundError):
                raise
            raise ManifestError(f"{url}: unreadable Parquet ({e})") from None
    with fs.open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    text = head.decode("utf-8-sig", errors="replace")
    lines = text.splitlines()
    if len(head) == SNIFF_BYTES and lines:
        lines = lines[:-1]  # the last line may be cut
    if ext == ".csv":
        return next(csv.reader(io.StringIO("\n".join(lines[:1]))), [])
    return _columns([_json_record(line, "") for line in lines if line.strip()])


def _read_parquet(fs: fsspec.AbstractFileSystem, path: str, url: str) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ManifestError(f"{url}: unreadable Parquet ({e})") from None
    return Table(list(table.column_names), table.to_pylist())


def _columns(records: list[Any]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        if isinstance(record, dict):
            seen.update(dict.fromkeys(record))
    return list(seen)


# ---------------------------------------------------------------------------------------------
# Text files and folders


def read_text(fs: fsspec.AbstractFileSystem, path: str, url: str) -> str:
    try:
        return fs.cat_file(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ManifestError(f"{url}: not UTF-8 text") from None


def read_lines(fs: fsspec.AbstractFileSystem, path: str, folder_url: str) -> list[str]:
    """Lines of a list file; blank lines at the end are editor leftovers, not entries."""
    lines = read_text(fs, path, join(folder_url, posixpath.basename(path))).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def list_files(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Every file under root, sorted, skipping hidden files and folders."""
    root = root.rstrip("/")
    out = []
    for path in fs.find(root):
        relative = path[len(root) :].lstrip("/") if path.startswith(root) else posixpath.basename(path)
        if not any(part.startswith(".") for part in relative.split("/")):
            out.append(path)
    return sorted(out)


def scan_files(fs: fsspec.AbstractFileSystem, root: str, limit: int) -> list[str]:
    """Up to `limit` files under root, folder by folder, hidden ones skipped: enough to tell a
    layout apart without listing a bucket of millions of objects on the driver."""
    root = root.rstrip("/")
    out: list[str] = []
    for folder, _dirs, files in fs.walk(root):
        relative = folder[len(root) :].strip("/") if folder.startswith(root) else ""
        if any(part.startswith(".") for part in relative.split("/") if part):
            continue
        out.extend(posixpath.join(folder, name) for name in sorted(files) if not name.startswith("."))
        if len(out) >= limit:
            break
    return sorted(out)


def child_names(fs: fsspec.AbstractFileSystem, path: str) -> set[str]:
    return {posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)}


def child(folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name


def caption_sibling(path: str) -> str:
    """clip.mp4 -> clip.txt, the caption file beside a media file."""
    return posixpath.splitext(path)[0] + ".txt"


def with_extension(files: list[str], ext: str) -> list[str]:
    """The files among `files` whose name ends with `ext` (any case), in their order."""
    return [f for f in files if f.lower().endswith(ext)]


def parent_url(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0]


def first(candidates: tuple[str, ...], present: Any) -> str | None:
    """The first of `candidates` that is in `present`, None when none is."""
    return next((c for c in candidates if c in present), None)
