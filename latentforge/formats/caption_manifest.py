"""The caption pipeline's manifest writer: captioned clips -> a file `read_manifest` reads back.

The manifest is in LTX-2's dataset format (`caption`, `media_path`, `start_frame` / `end_frame`
and `fps` when rows are spans, every passthrough column) as JSONL, a JSON list or CSV by its
extension; named `metadata.csv` it is ChronoEdit's instead (`key`, `video`, `prompt`, then the
passthrough columns). Media paths are relative to the manifest's folder when the media lies
under it, so the manifest moves with its data.

Input records are the caption pipeline's part records (see `part_record` in
`latentforge.pipelines.caption`): dicts with `key`, `order`, `uri`, `media_type`, `caption`,
`start_frame`, `end_frame`, `fps`, `span` and `columns` (the passthrough columns). No Ray here.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import os
import posixpath
import textwrap
import uuid
from typing import Any, Iterable, Iterator

from latentforge.formats.manifest_readers import CHRONOEDIT_NAME
from latentforge.rows import has_value, stable_hash
from latentforge.storage import get_fs, is_local, write_bytes_atomic

DEFAULT_MANIFEST = "captions.jsonl"
MANIFEST_EXTENSIONS = (".jsonl", ".json", ".csv")
CHRONOEDIT_MANIFEST = CHRONOEDIT_NAME  # a manifest named so is written in ChronoEdit's columns


def media_path_for(uri: str, manifest_dir: str) -> str:
    """Relative to the manifest's folder when the media lies under it (the manifest then moves
    with its data, as LTX-2 datasets do), else the absolute path or URL."""
    if "://" in manifest_dir or "://" in uri:
        prefix = manifest_dir.rstrip("/") + "/"
        return uri[len(prefix) :] if uri.startswith(prefix) else uri
    base = os.path.abspath(manifest_dir)
    path = os.path.abspath(uri)
    if path.startswith(base.rstrip(os.sep) + os.sep):
        return os.path.relpath(path, base).replace(os.sep, "/")
    return path



def manifest_rows(records: Iterable[dict[str, Any]], manifest: str, chronoedit: bool = False) -> list[dict[str, Any]]:
    """Part records -> manifest lines: caption, media_path, the span when any row is a span
    (every row then has start_frame / end_frame, so CSV cells are never blank), passthrough."""
    records = sorted(records, key=record_order)
    spans = any(r["span"] for r in records)
    return [manifest_line(r, manifest_folder(manifest), spans, chronoedit) for r in records]


def record_order(r: dict[str, Any]) -> tuple:
    """The manifest's order: the input's, then the clip's start; uri and key break ties."""
    return (tuple(r["order"]), r["uri"], r["key"])


def manifest_folder(manifest: str) -> str:
    return manifest.rstrip("/").rsplit("/", 1)[0] if "/" in manifest else "."


def manifest_line(r: dict[str, Any], folder: str, spans: bool, chronoedit: bool = False) -> dict[str, Any]:
    """One part record -> its manifest line (see `manifest_rows`)."""
    media = media_path_for(r["uri"], folder)
    if chronoedit:
        key = r["columns"].get("key")
        line: dict[str, Any] = {"key": key if has_value(key) else posixpath.splitext(posixpath.basename(media))[0], "video": media, "prompt": r["caption"]}
        line.update({k: v for k, v in r["columns"].items() if k not in line})
        return line
    line = {"caption": r["caption"], "media_path": media}
    if spans:
        line["start_frame"] = r["start_frame"] if r["start_frame"] is not None else 0
        line["end_frame"] = r["end_frame"] if r["end_frame"] is not None else 1
        if r["media_type"] == "video" and r.get("fps"):
            line["fps"] = r["fps"]
    line.update({k: v for k, v in r["columns"].items() if k not in line and k not in ("start_frame", "end_frame")})
    return line


def _csv_cells(r: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else ("" if v is None else v)) for k, v in r.items()}


def manifest_bytes(rows: list[dict[str, Any]], url: str) -> bytes:
    """JSONL, JSON (a list) or CSV by the extension; CSV cells that are lists or objects are JSON."""
    ext = posixpath.splitext(url)[1].lower()
    if ext == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    if ext == ".json":
        return (json.dumps(rows, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    columns: dict[str, None] = {}
    for r in rows:
        columns.update(dict.fromkeys(r))
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(_csv_cells(r))
    return buf.getvalue().encode("utf-8")


def write_manifest(url: str, records: Iterable[dict[str, Any]], storage_options: dict | None = None) -> int:
    """Write the manifest of this run's clips (part records, see above); returns its row count.
    A clip seen twice (a retried block) is written once."""
    unique = {r["key"]: r for r in records}
    chronoedit = posixpath.basename(url) == CHRONOEDIT_MANIFEST
    rows = manifest_rows(unique.values(), url, chronoedit=chronoedit)
    fs, path = get_fs(url, storage_options)
    write_bytes_atomic(fs, path, manifest_bytes(rows, url))
    return len(rows)


# ---------------------------------------------------------------------------------------------
# The same manifest from sorted parts, streamed: the driver holds one record per part at a time


def write_manifest_part(parts_url: str, records: list[dict[str, Any]], storage_options: dict | None = None) -> dict[str, Any]:
    """In a write task: this task's records, sorted, as one JSONL part named by their keys.
    Returns what the merge needs to know without reading it: the part, rows, any span."""
    if not records:
        return {"manifest_parts": [], "manifest_spans": False}
    records = sorted(records, key=record_order)
    name = f"part-{stable_hash(*sorted(r['key'] for r in records), length=20)}.jsonl"
    fs, path = get_fs(posixpath.join(parts_url, name), storage_options)
    write_bytes_atomic(fs, path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8"))
    return {"manifest_parts": [posixpath.join(parts_url, name)], "manifest_spans": any(r["span"] for r in records)}


def _merged(parts: list[str], storage_options: dict | None) -> Iterator[dict[str, Any]]:
    """The parts' records in manifest order, each key once (a retried task's part repeats it)."""
    def read(url: str) -> Iterator[dict[str, Any]]:
        fs, path = get_fs(url, storage_options)
        with fs.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    seen_last = None
    for record in heapq.merge(*(read(u) for u in parts), key=record_order):
        if record["key"] != seen_last:
            yield record
        seen_last = record["key"]


def merge_manifest(url: str, parts: list[str], spans: bool, storage_options: dict | None = None, parts_folder: str | None = None) -> int:
    """The manifest from write parts (see `write_manifest`'s format), streamed; returns its rows.
    `parts_folder` is removed afterwards (its parts are in the manifest now)."""
    chronoedit = posixpath.basename(url) == CHRONOEDIT_MANIFEST
    folder = manifest_folder(url)
    ext = posixpath.splitext(url)[1].lower()

    def lines() -> Iterator[dict[str, Any]]:
        return (manifest_line(r, folder, spans, chronoedit) for r in _merged(parts, storage_options))

    columns: dict[str, None] = {}
    if ext not in (".jsonl", ".json"):
        for line in lines():  # CSV: the header is every column, in order of first use
            columns.update(dict.fromkeys(line))
    fs, path = get_fs(url, storage_options)
    tmp = posixpath.join(posixpath.dirname(path), f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}") if is_local(fs) else path
    if is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    n = 0
    with fs.open(tmp, "w", encoding="utf-8", newline="") as out:
        if ext == ".jsonl":
            for line in lines():
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
                n += 1
        elif ext == ".json":
            for line in lines():
                out.write(("[\n" if n == 0 else ",\n") + textwrap.indent(json.dumps(line, ensure_ascii=False, indent=2), "  "))
                n += 1
            out.write("\n]\n" if n else "[]\n")
        else:
            writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
            writer.writeheader()
            for line in lines():
                writer.writerow(_csv_cells(line))
                n += 1
    if tmp != path:
        fs.mv(tmp, path)
    if parts_folder is not None:
        pfs, ppath = get_fs(parts_folder, storage_options)
        if pfs.exists(ppath):
            pfs.rm(ppath, recursive=True)
    return n
