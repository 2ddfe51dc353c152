"""Input readers: the dataset layouts that video trainers already use -> one list of rows.

Every reader returns rows with `uri` (absolute local path or full URL such as s3://bucket/key),
`media_type` ("video" or "image", from the extension), `caption` (stripped text, or None when
the row has none yet), every other manifest column passed through untouched, and `error` /
`error_stage` (None on good rows). All rows share one set of keys, because they become one
Arrow table. Order is the manifest's, or sorted paths for folders, so a run is deterministic.

Formats (`FORMATS`; "auto" detects them, see `detect_format`):

- ltx: LTX-2 trainer style CSV, JSON (a list of objects) or JSONL with `caption` and
  `media_path` (aliases `video`, `image`). The input may be the file or a folder holding exactly
  one of dataset.json/.jsonl/.csv or clips.jsonl (the manifest our split/caption jobs hand over).
  A JSON `null` caption means "not captioned yet" and becomes caption None, so a split manifest
  can feed the caption stage; an empty or blank caption string is an error row.
- fastvideo: FastVideo `videos2caption.json`, a list of {"path", "cap"}; paths are relative to
  the `videos/` folder beside the json. `cap` may be a string or a list of strings: the caption
  is the first non-blank one, and the full list is kept in the `captions` column (a string cap
  is kept there as a one-item list, so the column has one type).
- lists: finetrainers / CogVideoX two-file lists, one entry per line: the first present of
  prompt.txt, prompts.txt, caption.txt, captions.txt and of videos.txt, video.txt, images.txt
  (videos win over images.txt, which in CogVideoX I2V datasets holds conditioning frames).
- caption_files: media with a sibling caption file (clip.mp4 + clip.txt), searched recursively;
  media without a .txt get caption None.
- chronoedit: ChronoEdit / DiffSynth `metadata.csv` with `video` and `prompt` (-> caption);
  `key` and any other column pass through.
- folder: every media file under a folder (recursive), caption None. A single media file as
  input reads as a folder of one.

Paths in manifests are relative to the manifest's folder; absolute paths and URLs are kept.
Files and folders whose name starts with "." are skipped when listing (.DS_Store, ._clip.mp4,
temp files). The readers do NOT check that media files exist: the distributed probe stage does,
so the driver never issues millions of object-store requests; a missing file becomes an error
row there. Row-level problems (no media path, unsupported extension, empty caption) become error
rows with error_stage "source"; whole-input problems raise `ManifestError`.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec

from latentforge.operators.base import error_row
from latentforge.storage import get_fs, join, resolve, to_url

MEDIA_EXTENSIONS: dict[str, frozenset[str]] = {
    "video": frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi"}),
    "image": frozenset({".png", ".jpg", ".jpeg", ".webp"}),
}
FORMATS = ("auto", "ltx", "fastvideo", "lists", "caption_files", "chronoedit", "folder")

STAGE = "source"
_STANDARD_KEYS = ("uri", "media_type", "caption")
_ERROR_KEYS = ("error", "error_stage")

_LTX_NAMES = ("dataset.json", "dataset.jsonl", "dataset.csv", "clips.jsonl")
_LTX_MEDIA_COLUMNS = ("media_path", "video", "image")
_FASTVIDEO_NAME = "videos2caption.json"
_CHRONOEDIT_NAME = "metadata.csv"
_CAPTION_LISTS = ("prompt.txt", "prompts.txt", "caption.txt", "captions.txt")
_MEDIA_LISTS = ("videos.txt", "video.txt", "images.txt")
_TABLE_EXTENSIONS = (".csv", ".json", ".jsonl")


class ManifestError(ValueError):
    """The whole input is unusable (missing, unknown format, unrecognisable columns)."""


def media_type_of(ref: str) -> str | None:
    """'video' / 'image' from the extension (case-insensitive), None when unsupported."""
    ext = _extension(ref)
    for kind, extensions in MEDIA_EXTENSIONS.items():
        if ext in extensions:
            return kind
    return None


def detect_format(input_url: str, storage_options: dict[str, Any] | None = None) -> str:
    """The format `read_manifest(input_url)` would use; one of FORMATS except "auto"."""
    fs, path = get_fs(input_url, storage_options)
    return _detect(fs, path, input_url).format


def read_manifest(
    input_url: str, input_format: str = "auto", storage_options: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Rows for every media reference in the input, in manifest order, all with the same keys."""
    if input_format not in FORMATS:
        raise ManifestError(f"{input_url}: unknown input format {input_format!r}; expected one of {', '.join(FORMATS)}")
    fs, path = get_fs(input_url, storage_options)
    if input_format == "auto":
        plan = _detect(fs, path, input_url)
    else:
        plan = _plan_explicit(fs, path, input_url, input_format)
    rows = _READERS[plan.format](fs, plan)
    if not rows:
        raise ManifestError(f"{plan.url}: no rows (the {plan.format} input is empty)")
    return _uniform(rows)


# ---------------------------------------------------------------------------------------------
# Planning: which format, which manifest file


@dataclass
class _Plan:
    format: str
    path: str  # manifest file, or the folder (lists, caption_files, folder)
    url: str  # the same as a URL, for messages and relative paths
    is_dir: bool
    table: "_Table | None" = None  # already parsed during detection
    files: list[str] | None = None  # already listed during detection


@dataclass
class _Table:
    columns: list[str]
    records: list[Any] = field(default_factory=list)  # dicts, or _BadRecord


@dataclass
class _BadRecord:
    reason: str


def _detect(fs: fsspec.AbstractFileSystem, path: str, input_url: str) -> _Plan:
    kind = _kind(fs, path, input_url)
    url = to_url(fs, path)
    if kind == "file":
        return _detect_file(fs, path, url)
    names = _child_names(fs, path)
    if _CHRONOEDIT_NAME in names:
        return _file_plan(fs, "chronoedit", _child(fs, path, _CHRONOEDIT_NAME))
    if _FASTVIDEO_NAME in names:
        return _file_plan(fs, "fastvideo", _child(fs, path, _FASTVIDEO_NAME))
    ltx = [n for n in _LTX_NAMES if n in names]
    if len(ltx) > 1:
        raise ManifestError(f"{url}: ambiguous input, several manifests ({', '.join(ltx)}); name one of them")
    if ltx:
        return _file_plan(fs, "ltx", _child(fs, path, ltx[0]))
    if _first(_CAPTION_LISTS, names) and _first(_MEDIA_LISTS, names):
        return _Plan("lists", path, url, is_dir=True)
    files = _list_files(fs, path)
    present = set(files)
    media = [f for f in files if media_type_of(f) is not None]
    if any(_caption_sibling(f) in present for f in media):
        return _Plan("caption_files", path, url, is_dir=True, files=files)
    if media:
        return _Plan("folder", path, url, is_dir=True, files=files)
    raise ManifestError(
        f"{url}: no media files and no manifest found (looked for {_CHRONOEDIT_NAME}, {_FASTVIDEO_NAME}, "
        f"{'/'.join(_LTX_NAMES)}, a prompt.txt + videos.txt pair, and media files "
        f"{', '.join(sorted(MEDIA_EXTENSIONS['video'] | MEDIA_EXTENSIONS['image']))})"
    )


def _detect_file(fs: fsspec.AbstractFileSystem, path: str, url: str) -> _Plan:
    name = posixpath.basename(path)
    if media_type_of(name) is not None:
        return _Plan("folder", path, url, is_dir=False)
    if name == _FASTVIDEO_NAME:
        return _file_plan(fs, "fastvideo", path)
    table = _read_table(fs, path, url)
    columns = set(table.columns)
    if {"path", "cap"} <= columns:
        fmt = "fastvideo"
    elif {"video", "prompt"} <= columns:
        fmt = "chronoedit"
    elif "caption" in columns and columns & set(_LTX_MEDIA_COLUMNS):
        fmt = "ltx"
    else:
        raise ManifestError(
            f"{url}: no recognisable columns (found {sorted(columns)}); expected caption + media_path "
            "(ltx), path + cap (fastvideo) or key + video + prompt (chronoedit)"
        )
    return _Plan(fmt, path, url, is_dir=False, table=table)


def _plan_explicit(fs: fsspec.AbstractFileSystem, path: str, input_url: str, fmt: str) -> _Plan:
    kind = _kind(fs, path, input_url)
    url = to_url(fs, path)
    if fmt in ("lists", "caption_files"):
        if kind != "dir":
            raise ManifestError(f"{url}: the {fmt} format reads a folder, not a file")
        return _Plan(fmt, path, url, is_dir=True)
    if fmt == "folder":
        return _Plan(fmt, path, url, is_dir=kind == "dir")
    if kind == "file":
        return _file_plan(fs, fmt, path)
    names = _child_names(fs, path)
    wanted = {"ltx": _LTX_NAMES, "fastvideo": (_FASTVIDEO_NAME,), "chronoedit": (_CHRONOEDIT_NAME,)}[fmt]
    found = [n for n in wanted if n in names]
    if len(found) != 1:
        reason = "several manifests: " + ", ".join(found) if found else "no " + " / ".join(wanted)
        raise ManifestError(f"{url}: cannot read as {fmt} ({reason})")
    return _file_plan(fs, fmt, _child(fs, path, found[0]))


def _file_plan(fs: fsspec.AbstractFileSystem, fmt: str, path: str) -> _Plan:
    return _Plan(fmt, path, to_url(fs, path), is_dir=False)


def _kind(fs: fsspec.AbstractFileSystem, path: str, input_url: str) -> str:
    if fs.isdir(path):
        return "dir"
    if fs.isfile(path):
        return "file"
    raise ManifestError(f"{input_url}: input not found")


# ---------------------------------------------------------------------------------------------
# Readers, one per format


def _read_ltx(fs: fsspec.AbstractFileSystem, plan: _Plan) -> list[dict[str, Any]]:
    table = plan.table or _read_table(fs, plan.path, plan.url)
    media_column = _first(_LTX_MEDIA_COLUMNS, table.columns)
    if "caption" not in table.columns or media_column is None:
        raise ManifestError(
            f"{plan.url}: no recognisable columns for ltx (found {table.columns}); "
            f"expected caption and one of {', '.join(_LTX_MEDIA_COLUMNS)}"
        )
    base = _parent_url(plan.url)
    return [
        _from_record(record, base, media_column, "caption", caption_required=False)
        for record in table.records
    ]


def _read_chronoedit(fs: fsspec.AbstractFileSystem, plan: _Plan) -> list[dict[str, Any]]:
    table = plan.table or _read_table(fs, plan.path, plan.url)
    if not {"video", "prompt"} <= set(table.columns):
        raise ManifestError(
            f"{plan.url}: no recognisable columns for chronoedit (found {table.columns}); "
            "expected key, video and prompt"
        )
    base = _parent_url(plan.url)
    return [_from_record(record, base, "video", "prompt", caption_required=True) for record in table.records]


def _read_fastvideo(fs: fsspec.AbstractFileSystem, plan: _Plan) -> list[dict[str, Any]]:
    table = plan.table or _read_table(fs, plan.path, plan.url)
    base = join(_parent_url(plan.url), "videos")
    rows = []
    for record in table.records:
        if isinstance(record, dict):
            cap = record.get("cap")
            captions = cap if isinstance(cap, list) else ([cap] if isinstance(cap, str) else None)
            caption = next((c for c in captions or () if isinstance(c, str) and c.strip()), None)
            record = {**record, "cap": caption, "captions": captions}
        rows.append(_from_record(record, base, "path", "cap", caption_required=True))
    return rows


def _read_lists(fs: fsspec.AbstractFileSystem, plan: _Plan) -> list[dict[str, Any]]:
    names = _child_names(fs, plan.path)
    caption_name, media_name = _first(_CAPTION_LISTS, names), _first(_MEDIA_LISTS, names)
    if caption_name is None or media_name is None:
        raise ManifestError(
            f"{plan.url}: cannot read as lists (needs one of {', '.join(_CAPTION_LISTS)} "
            f"and one of {', '.join(_MEDIA_LISTS)})"
        )
    captions = _read_lines(fs, _child(fs, plan.path, caption_name), plan.url)
    media = _read_lines(fs, _child(fs, plan.path, media_name), plan.url)
    if len(captions) != len(media):
        raise ManifestError(
            f"{plan.url}: {caption_name} has {len(captions)} lines but {media_name} has {len(media)}; "
            "they must pair line by line"
        )
    return [_make_row(plan.url, ref, caption, {}, caption_required=True) for ref, caption in zip(media, captions)]


def _read_caption_files(fs: fsspec.AbstractFileSystem, plan: _Plan) -> list[dict[str, Any]]:
    files = plan.files if plan.files is not None else _list_files(fs, plan.path)
    present = set(files)
    media = [f for f in files if media_type_of(f) is not None]
    wanted = sorted({_caption_sibling(f) for f in media} & present)
    texts = fs.cat(wanted, on_error="return") if wanted else {}  # batched: concurrent on object stores
    rows = []
    for path in media:
        sibling = _caption_sibling(path)
        ref = to_url(fs, path)
        if sibling not in present:
            rows.append(_make_row(plan.url, ref, None, {}, caption_required=False))
            continue
        data = texts.get(sibling)
        if isinstance(data, bytes):
            try:
                caption = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                rows.append(error_row(_make_row(plan.url, ref, None, {}, caption_required=False), STAGE, "caption file is not UTF-8"))
                continue
            rows.append(_make_row(plan.url, ref, caption, {}, caption_required=True))
        else:
            rows.append(error_row(_make_row(plan.url, ref, None, {}, caption_required=False), STAGE, "caption file unreadable"))
    return rows


def _read_folder(fs: fsspec.AbstractFileSystem, plan: _Plan) -> list[dict[str, Any]]:
    if not plan.is_dir:
        return [_make_row(plan.url, plan.url, None, {}, caption_required=False)]
    files = plan.files if plan.files is not None else _list_files(fs, plan.path)
    return [
        _make_row(plan.url, to_url(fs, f), None, {}, caption_required=False)
        for f in files
        if media_type_of(f) is not None
    ]


_READERS = {
    "ltx": _read_ltx,
    "fastvideo": _read_fastvideo,
    "lists": _read_lists,
    "caption_files": _read_caption_files,
    "chronoedit": _read_chronoedit,
    "folder": _read_folder,
}


# ---------------------------------------------------------------------------------------------
# Rows


def _from_record(record: Any, base: str, media_column: str, caption_column: str, *, caption_required: bool) -> dict[str, Any]:
    """One manifest record -> row; the media and caption columns are consumed, the rest pass."""
    if isinstance(record, _BadRecord):
        return error_row(_blank_row(), STAGE, record.reason)
    extras = {k: v for k, v in record.items() if k not in (media_column, caption_column)}
    return _make_row(base, record.get(media_column), record.get(caption_column), extras, caption_required=caption_required)


def _make_row(base: str, ref: Any, caption: Any, extras: dict[str, Any], *, caption_required: bool) -> dict[str, Any]:
    """The row for one media reference, or an error row saying what is wrong with it.

    `caption_required=False` lets None through as "no caption yet"; a blank string is always
    an error because someone wrote an empty caption.
    """
    row = _blank_row()
    for key, value in extras.items():
        if key not in row and key not in _ERROR_KEYS:
            row[key] = value
    if caption is not None and not isinstance(caption, str):
        return error_row(row, STAGE, "caption is not text")
    row["caption"] = caption.strip() if isinstance(caption, str) else None
    if ref is None or not str(ref).strip():
        return error_row(row, STAGE, "missing media path")
    ref = str(ref).strip()
    row["uri"] = resolve(base, ref)
    row["media_type"] = media_type_of(ref)
    if row["media_type"] is None:
        ext = _extension(ref)
        reason = f"unsupported media type '{ext}'" if ext else "unsupported media type (no extension)"
        return error_row(row, STAGE, reason)
    if row["caption"] == "" or (row["caption"] is None and caption_required):
        row["caption"] = None
        return error_row(row, STAGE, "empty caption")
    return row


def _blank_row() -> dict[str, Any]:
    return {key: None for key in _STANDARD_KEYS}


def _uniform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Same keys in the same order on every row (missing -> None): rows become one Arrow table."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(k for k in row if k not in _ERROR_KEYS))
    keys.update(dict.fromkeys(_ERROR_KEYS))
    return [{k: row.get(k) for k in keys} for row in rows]


# ---------------------------------------------------------------------------------------------
# Files


def _read_table(fs: fsspec.AbstractFileSystem, path: str, url: str) -> _Table:
    """CSV, JSON (list of objects) or JSONL -> columns + records; bad lines become _BadRecord."""
    ext = _extension(path)
    if ext not in _TABLE_EXTENSIONS:
        raise ManifestError(f"{url}: unsupported manifest file type {ext or '(no extension)'!r}; expected .csv, .json or .jsonl")
    text = _read_text(fs, path, url)
    if ext == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        records: list[Any] = []
        for record in reader:
            if None in record:
                records.append(_BadRecord("csv row has more fields than the header"))
            else:
                records.append(record)
        return _Table(list(reader.fieldnames or []), records)
    if ext == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{url}: invalid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, list):
            raise ManifestError(f"{url}: expected a JSON list of objects, found {type(data).__name__}")
        records = [r if isinstance(r, dict) else _BadRecord(f"entry {i} is not a JSON object") for i, r in enumerate(data)]
        return _Table(_columns(records), records)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            records.append(_BadRecord(f"invalid JSON on line {number}"))
            continue
        records.append(record if isinstance(record, dict) else _BadRecord(f"line {number} is not a JSON object"))
    return _Table(_columns(records), records)


def _columns(records: list[Any]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        if isinstance(record, dict):
            seen.update(dict.fromkeys(record))
    return list(seen)


def _read_text(fs: fsspec.AbstractFileSystem, path: str, url: str) -> str:
    try:
        return fs.cat_file(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ManifestError(f"{url}: not UTF-8 text") from None


def _read_lines(fs: fsspec.AbstractFileSystem, path: str, folder_url: str) -> list[str]:
    """Lines of a list file; blank lines at the end are editor leftovers, not entries."""
    lines = _read_text(fs, path, join(folder_url, posixpath.basename(path))).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _list_files(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Every file under root, sorted, skipping hidden files and folders."""
    root = root.rstrip("/")
    out = []
    for path in fs.find(root):
        relative = path[len(root) :].lstrip("/") if path.startswith(root) else posixpath.basename(path)
        if not any(part.startswith(".") for part in relative.split("/")):
            out.append(path)
    return sorted(out)


def _child_names(fs: fsspec.AbstractFileSystem, path: str) -> set[str]:
    return {posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)}


def _child(fs: fsspec.AbstractFileSystem, folder: str, name: str) -> str:
    return folder.rstrip("/") + "/" + name


def _caption_sibling(path: str) -> str:
    return posixpath.splitext(path)[0] + ".txt"


def _parent_url(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0]


def _extension(ref: str) -> str:
    return posixpath.splitext(str(ref).rstrip("/"))[1].lower()


def _first(candidates: tuple[str, ...], present: Any) -> str | None:
    return next((c for c in candidates if c in present), None)
