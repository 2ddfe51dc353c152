"""The per-format manifest readers and the rows they build (see `manifests` for the formats).

`manifests` decides the format and the file (a `Plan`) and calls `READERS[plan.format]`; the
readers here never detect anything and never import `manifests`. Row-level problems become
error rows with error_stage "source"; whole-input problems raise `ManifestError`.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec

from latentforge.formats.manifest_files import (
    BadRecord,
    ManifestError,
    Table,
    caption_sibling,
    child,
    child_names,
    extension,
    first,
    list_files,
    media_type_of,
    parent_url,
    read_lines,
    read_table,
    with_extension,
)
from latentforge.formats.references import resolve_reference
from latentforge.rows import error_row
from latentforge.storage import join, resolve, to_url

STAGE = "source"
LEAVES_ROOT = "_leaves_root"  # a relative media path that climbs out of the manifest's folder
STANDARD_KEYS = ("uri", "media_type", "caption")
ERROR_KEYS = ("error", "error_stage")

# The file names and columns of each layout, shared with detection in `manifests`.
LTX_NAMES = ("dataset.json", "dataset.jsonl", "dataset.csv", "clips.jsonl")
LTX_MEDIA_COLUMNS = ("media_path", "video", "image")
FASTVIDEO_NAME = "videos2caption.json"
CHRONOEDIT_NAME = "metadata.csv"
CAPTION_LISTS = ("prompt.txt", "prompts.txt", "caption.txt", "captions.txt")
MEDIA_LISTS = ("videos.txt", "video.txt", "images.txt")


@dataclass
class Plan:
    """What to read: the format, and where."""

    format: str
    path: str  # manifest file, or the folder (lists, caption_files, folder)
    url: str  # the same as a URL, for messages and relative paths
    is_dir: bool
    table: Table | None = None  # already parsed during detection
    files: list[str] | None = None  # already listed during detection
    byte_range: tuple[int, int] | None = None  # a part of a large JSONL manifest (see `manifests.plan_reads`)
    rows_estimate: int | None = None  # media files seen while detecting a folder's layout


# ---------------------------------------------------------------------------------------------
# Readers, one per format


def _read_ltx(fs: fsspec.AbstractFileSystem, plan: Plan) -> list[dict[str, Any]]:
    table = plan.table or read_table(fs, plan.path, plan.url, plan.byte_range)
    if _only_bad_records(plan, table):
        return [error_row(_blank_row(), STAGE, r.reason) for r in table.records]
    media_column = first(LTX_MEDIA_COLUMNS, table.columns)
    if "caption" not in table.columns or media_column is None:
        raise ManifestError(
            f"{plan.url}: no recognisable columns for ltx (found {table.columns}); "
            f"expected caption and one of {', '.join(LTX_MEDIA_COLUMNS)}"
        )
    base = parent_url(plan.url)
    return [
        from_record(record, base, media_column, "caption", caption_required=False)
        for record in table.records
    ]


def _read_chronoedit(fs: fsspec.AbstractFileSystem, plan: Plan) -> list[dict[str, Any]]:
    table = plan.table or read_table(fs, plan.path, plan.url, plan.byte_range)
    if _only_bad_records(plan, table):
        return [error_row(_blank_row(), STAGE, r.reason) for r in table.records]
    if not {"video", "prompt"} <= set(table.columns):
        raise ManifestError(
            f"{plan.url}: no recognisable columns for chronoedit (found {table.columns}); "
            "expected key, video and prompt"
        )
    base = parent_url(plan.url)
    return [from_record(record, base, "video", "prompt", caption_required=True) for record in table.records]


def _read_fastvideo(fs: fsspec.AbstractFileSystem, plan: Plan) -> list[dict[str, Any]]:
    table = plan.table or read_table(fs, plan.path, plan.url, plan.byte_range)
    if _only_bad_records(plan, table):
        return [error_row(_blank_row(), STAGE, r.reason) for r in table.records]
    base = join(parent_url(plan.url), "videos")
    rows = []
    for record in table.records:
        if isinstance(record, dict):
            cap = record.get("cap")
            captions = cap if isinstance(cap, list) else ([cap] if isinstance(cap, str) else None)
            caption = next((c for c in captions or () if isinstance(c, str) and c.strip()), None)
            record = {**record, "cap": caption, "captions": captions}
        rows.append(from_record(record, base, "path", "cap", caption_required=True))
    return rows


def _read_lists(fs: fsspec.AbstractFileSystem, plan: Plan) -> list[dict[str, Any]]:
    names = child_names(fs, plan.path)
    caption_name, media_name = first(CAPTION_LISTS, names), first(MEDIA_LISTS, names)
    if caption_name is None or media_name is None:
        raise ManifestError(
            f"{plan.url}: cannot read as lists (needs one of {', '.join(CAPTION_LISTS)} "
            f"and one of {', '.join(MEDIA_LISTS)})"
        )
    captions = read_lines(fs, child(plan.path, caption_name), plan.url)
    media = read_lines(fs, child(plan.path, media_name), plan.url)
    if len(captions) != len(media):
        raise ManifestError(
            f"{plan.url}: {caption_name} has {len(captions)} lines but {media_name} has {len(media)}; "
            "they must pair line by line"
        )
    return [make_row(plan.url, ref, caption, {}, caption_required=True) for ref, caption in zip(media, captions)]


def _read_caption_files(fs: fsspec.AbstractFileSystem, plan: Plan) -> list[dict[str, Any]]:
    files = plan.files if plan.files is not None else list_files(fs, plan.path)
    present = set(files)
    media = [f for f in files if media_type_of(f) is not None]
    wanted = sorted({caption_sibling(f) for f in media} & present)
    texts = fs.cat(wanted, on_error="return") if wanted else {}  # batched: concurrent on object stores
    rows = []
    for path in media:
        sibling = caption_sibling(path)
        ref = to_url(fs, path)
        if sibling not in present:
            rows.append(make_row(plan.url, ref, None, {}, caption_required=False))
            continue
        data = texts.get(sibling)
        if isinstance(data, bytes):
            try:
                caption = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                rows.append(error_row(make_row(plan.url, ref, None, {}, caption_required=False), STAGE, "caption file is not UTF-8"))
                continue
            rows.append(make_row(plan.url, ref, caption, {}, caption_required=True))
        else:
            rows.append(error_row(make_row(plan.url, ref, None, {}, caption_required=False), STAGE, "caption file unreadable"))
    return rows


def _read_folder(fs: fsspec.AbstractFileSystem, plan: Plan) -> list[dict[str, Any]]:
    if not plan.is_dir:
        return [make_row(plan.url, plan.url, None, {}, caption_required=False)]
    files = plan.files if plan.files is not None else list_files(fs, plan.path)
    return [
        make_row(plan.url, to_url(fs, f), None, {}, caption_required=False)
        for f in files
        if media_type_of(f) is not None
    ]


READERS = {
    "ltx": _read_ltx,
    "fastvideo": _read_fastvideo,
    "lists": _read_lists,
    "caption_files": _read_caption_files,
    "chronoedit": _read_chronoedit,
    "folder": _read_folder,
}


# ---------------------------------------------------------------------------------------------
# Rows


def read_each(fs: fsspec.AbstractFileSystem, plan: Plan, extension: str, read_one: Any, what: str) -> list[dict[str, Any]]:
    """A folder plan read file by file: every file with `extension` under it, in sorted order,
    each through `read_one(fs, path, url)` (which turns a bad file into an error row)."""
    files = plan.files if plan.files is not None else list_files(fs, plan.path)
    found = with_extension(files, extension)
    if not found:
        raise ManifestError(f"{plan.url}: no {extension} {what}")
    rows: list[dict[str, Any]] = []
    for path in found:
        rows.extend(read_one(fs, path, to_url(fs, path)))
    return rows


def from_record(record: Any, base: str, media_column: str, caption_column: str, *, caption_required: bool) -> dict[str, Any]:
    """One manifest record -> row; the media and caption columns are consumed, the rest pass."""
    if isinstance(record, BadRecord):
        return error_row(_blank_row(), STAGE, record.reason)
    extras = {k: v for k, v in record.items() if k not in (media_column, caption_column)}
    return make_row(base, record.get(media_column), record.get(caption_column), extras, caption_required=caption_required)


def make_row(base: str, ref: Any, caption: Any, extras: dict[str, Any], *, caption_required: bool) -> dict[str, Any]:
    """The row for one media reference, or an error row saying what is wrong with it.

    `caption_required=False` lets None through as "no caption yet"; a blank string is always
    an error because someone wrote an empty caption.
    """
    row = _blank_row()
    for key, value in extras.items():
        if key not in row and key not in ERROR_KEYS:
            row[key] = value
    if caption is not None and not isinstance(caption, str):
        return error_row(row, STAGE, "caption is not text")
    row["caption"] = caption.strip() if isinstance(caption, str) else None
    if ref is None or not str(ref).strip():
        return error_row(row, STAGE, "missing media path")
    ref = str(ref).strip()
    row["uri"] = resolve(base, ref)
    reference = resolve_reference(row, base)  # IC-LoRA reference column, resolved the same way
    if leaves(base, ref) or (reference is not None and leaves(base, reference)):
        row[LEAVES_ROOT] = True  # refused or kept by `manifests.read_part`, per input_allow_outside
    row["media_type"] = media_type_of(ref)
    if row["media_type"] is None:
        ext = extension(ref)
        reason = f"unsupported media type ('{ext}')" if ext else "unsupported media type (no extension)"
        return error_row(row, STAGE, reason)
    if row["caption"] == "" or (row["caption"] is None and caption_required):
        row["caption"] = None
        return error_row(row, STAGE, "empty caption")
    return row


def _only_bad_records(plan: Plan, table: Table) -> bool:
    """A byte range of a large manifest may hold no good line (or none at all): its columns say
    nothing about the file's, so its bad lines are error rows and nothing is refused."""
    return plan.byte_range is not None and not any(isinstance(r, dict) for r in table.records)


def leaves(base: str, ref: str) -> bool:
    """A relative media path whose `..` climbs out of `base` (absolute paths and URLs are the
    manifest's explicit choice and do not count)."""
    if "://" in ref or ref.startswith("/") or (len(ref) > 1 and ref[1] == ":"):
        return False
    path = posixpath.normpath(ref.replace("\\", "/"))
    return path == ".." or path.startswith("../")


def _blank_row() -> dict[str, Any]:
    return {key: None for key in STANDARD_KEYS}


def uniform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Same keys in the same order on every row (missing -> None): rows become one Arrow table."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(k for k in row if k not in ERROR_KEYS))
    keys.update(dict.fromkeys(ERROR_KEYS))
    return [{k: row.get(k) for k in keys} for row in rows]
