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
import io
import json
import os
import posixpath
from typing import Any, Iterable

from latentforge.formats.manifest_readers import CHRONOEDIT_NAME
from latentforge.rows import has_value
from latentforge.storage import get_fs, write_bytes_atomic

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
    records = sorted(records, key=lambda r: (tuple(r["order"]), r["uri"], r["key"]))
    folder = manifest.rstrip("/").rsplit("/", 1)[0] if "/" in manifest else "."
    spans = any(r["span"] for r in records)
    rows = []
    for r in records:
        media = media_path_for(r["uri"], folder)
        if chronoedit:
            key = r["columns"].get("key")
            line: dict[str, Any] = {"key": key if has_value(key) else posixpath.splitext(posixpath.basename(media))[0], "video": media, "prompt": r["caption"]}
            line.update({k: v for k, v in r["columns"].items() if k not in line})
            rows.append(line)
            continue
        line = {"caption": r["caption"], "media_path": media}
        if spans:
            line["start_frame"] = r["start_frame"] if r["start_frame"] is not None else 0
            line["end_frame"] = r["end_frame"] if r["end_frame"] is not None else 1
            if r["media_type"] == "video" and r.get("fps"):
                line["fps"] = r["fps"]
        line.update({k: v for k, v in r["columns"].items() if k not in line and k not in ("start_frame", "end_frame")})
        rows.append(line)
    return rows


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
        writer.writerow({k: (json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else ("" if v is None else v)) for k, v in r.items()})
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
