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
- webdataset: a folder (or one file) of `.tar` shards, samples grouped by key; a member's
  `uri` is `tar://<member>::<shard url>` (see `webdataset`).
- hf_folder: Hugging Face videofolder / imagefolder, `metadata.{jsonl,csv,parquet}` with
  `file_name` and caption / text / prompt, sub-folders' metadata too (see `table_inputs`).
  A folder's `metadata.csv` is ChronoEdit's unless it has a `file_name` column.
- parquet: a `.parquet` file or a folder of them with the ltx columns (see `table_inputs`).
  A folder is webdataset or parquet only when it holds no media files and no other manifest.

Paths in manifests are relative to the manifest's folder; absolute paths and URLs are kept.
Files and folders whose name starts with "." are skipped when listing (.DS_Store, ._clip.mp4,
temp files). The readers do NOT check that media files exist: the distributed probe stage does,
so the driver never issues millions of object-store requests; a missing file becomes an error
row there. Row-level problems (no media path, unsupported extension, empty caption) become error
rows with error_stage "source"; whole-input problems raise `ManifestError`.

This module decides the format and the file (detection, the plan); `manifest_readers` reads
each format into rows, and `manifest_files` holds the plain file helpers (tables, text and list
files, folder listing, media types) under both; `webdataset` and `table_inputs` read the
formats finetrainers and Hugging Face use, one shard / file per call. The writer for the caption pipeline's manifest
is `caption_manifest`.
"""

from __future__ import annotations

import posixpath
from typing import Any

import fsspec

from latentforge.formats.manifest_files import (
    MEDIA_EXTENSIONS,
    ManifestError,
    caption_sibling,
    child,
    child_names,
    first,
    list_files,
    media_type_of,
    scan_files,
    sniff_columns,
    with_extension,
)
from latentforge.formats.manifest_readers import (
    CAPTION_LISTS,
    CHRONOEDIT_NAME,
    LEAVES_ROOT,
    STAGE,
    FASTVIDEO_NAME,
    LTX_MEDIA_COLUMNS,
    LTX_NAMES,
    MEDIA_LISTS,
    READERS as BASE_READERS,
    Plan,
    uniform,
)
from latentforge.formats.table_inputs import (
    HF_MEDIA_COLUMN,
    HF_METADATA_NAMES,
    PARQUET_EXTENSION,
    parquet_files,
    read_hf_folder,
    read_parquet,
    read_parquet_file,
)
from latentforge.formats.webdataset import SHARD_EXTENSION, read_shard, read_webdataset, shard_files
from latentforge.rows import error_row
from latentforge.storage import get_fs, to_url

__all__ = ["FORMATS", "MEDIA_EXTENSIONS", "ManifestError", "detect_format", "media_type_of", "plan_reads", "read_manifest", "read_part"]

FORMATS = (
    "auto", "ltx", "fastvideo", "lists", "caption_files", "chronoedit", "folder", "webdataset", "hf_folder", "parquet",
)
JSONL_PART_BYTES = 16 << 20  # one read task per 16 MiB of a JSONL manifest (~100,000 rows)
# Rough bytes per row, to size blocks before anything is read (`rows_estimate` of a read part):
# a manifest line, and a webdataset sample (a clip of a few MB).
BYTES_PER_ROW = 100
BYTES_PER_SAMPLE = 2 << 20
SCAN_FILES = 100_000  # files `auto` looks at to tell a folder's layout apart (input_format skips it)
READERS = {**BASE_READERS, "webdataset": read_webdataset, "hf_folder": read_hf_folder, "parquet": read_parquet}


def detect_format(input_url: str, storage_options: dict[str, Any] | None = None) -> str:
    """The format `read_manifest(input_url)` would use; one of FORMATS except "auto"."""
    fs, path = get_fs(input_url, storage_options)
    return _detect(fs, path, input_url).format


def read_manifest(
    input_url: str, input_format: str = "auto", storage_options: dict[str, Any] | None = None, allow_outside: bool = False
) -> list[dict[str, Any]]:
    """Rows for every media reference in the input, in manifest order, all with the same keys.

    The whole input in this process: for tools and tests. Pipelines read `plan_reads`' parts
    with `read_part` in Ray tasks, so the driver never holds the rows."""
    parts = plan_reads(input_url, input_format, storage_options)
    rows = [row for part in parts for row in read_part(part, storage_options, allow_outside)]
    if not rows:
        raise ManifestError(f"{input_url}: no rows (the input is empty)")
    return uniform(rows)


def plan_reads(input_url: str, input_format: str = "auto", storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The input cut into read parts, in manifest order: one per webdataset shard or Parquet file
    of a folder, byte ranges of a large JSONL manifest (JSONL_PART_BYTES each), else the whole
    input. Deciding them reads only heads and folder names; the rows are `read_part`'s job."""
    if input_format not in FORMATS:
        raise ManifestError(f"{input_url}: unknown input format {input_format!r}; expected one of {', '.join(FORMATS)}")
    fs, path = get_fs(input_url, storage_options)
    plan = _detect(fs, path, input_url) if input_format == "auto" else _plan_explicit(fs, path, input_url, input_format)
    whole = {"format": plan.format, "path": plan.path, "url": plan.url, "is_dir": plan.is_dir, "byte_range": None, "reader": None}
    if plan.is_dir and plan.format in ("webdataset", "parquet"):
        ext, reader = (SHARD_EXTENSION, "shard") if plan.format == "webdataset" else (PARQUET_EXTENSION, "parquet_file")
        found = with_extension(list_files(fs, plan.path), ext)
        if not found:
            raise ManifestError(f"{plan.url}: no {ext} {'shards for webdataset' if reader == 'shard' else 'files'}")
        per_file = BYTES_PER_SAMPLE if reader == "shard" else BYTES_PER_ROW
        return [{**whole, "path": f, "url": to_url(fs, f), "is_dir": False, "reader": reader, "rows_estimate": _estimate(fs, f, per_file)} for f in found]
    if plan.is_dir:
        return [{**whole, "rows_estimate": plan.rows_estimate or SCAN_FILES}]
    size = fs.size(plan.path)
    if plan.path.lower().endswith(".jsonl") and plan.format in ("ltx", "chronoedit", "fastvideo") and size > JSONL_PART_BYTES:
        return [
            {**whole, "byte_range": (s, min(s + JSONL_PART_BYTES, size)), "rows_estimate": JSONL_PART_BYTES // BYTES_PER_ROW}
            for s in range(0, size, JSONL_PART_BYTES)
        ]
    return [{**whole, "rows_estimate": 1 if media_type_of(plan.path) else max(1, size // BYTES_PER_ROW)}]


def _estimate(fs: fsspec.AbstractFileSystem, path: str, per_row: int) -> int:
    return max(1, fs.size(path) // per_row)


def read_part(part: dict[str, Any], storage_options: dict[str, Any] | None = None, allow_outside: bool = False) -> list[dict[str, Any]]:
    """The rows of one read part (see `plan_reads`), all with the same keys. A relative media
    path that leaves the manifest's folder (`../`) is an error row unless `allow_outside`."""
    fs, _ = get_fs(part["url"], storage_options)
    if part["reader"] == "shard":
        rows = read_shard(fs, part["path"], part["url"])
    elif part["reader"] == "parquet_file":
        rows = read_parquet_file(fs, part["path"], part["url"])
    else:
        byte_range = tuple(part["byte_range"]) if part["byte_range"] is not None else None
        rows = READERS[part["format"]](fs, Plan(part["format"], part["path"], part["url"], part["is_dir"], byte_range=byte_range))
    return uniform([_outside(row, allow_outside) for row in rows])


def _outside(row: dict[str, Any], allow: bool) -> dict[str, Any]:
    if not row.pop(LEAVES_ROOT, False) or allow:
        return row
    return error_row(row, STAGE, "media path leaves the manifest's folder (set input_allow_outside: true to read it)")


# ---------------------------------------------------------------------------------------------
# Planning: which format, which manifest file


def _detect(fs: fsspec.AbstractFileSystem, path: str, input_url: str) -> Plan:
    kind = _kind(fs, path, input_url)
    url = to_url(fs, path)
    if kind == "file":
        return _detect_file(fs, path, url)
    names = child_names(fs, path)
    if CHRONOEDIT_NAME in names:  # ChronoEdit's, or a Hugging Face folder's: the columns tell
        if HF_MEDIA_COLUMN in sniff_columns(fs, child(path, CHRONOEDIT_NAME), child(url, CHRONOEDIT_NAME)):
            return Plan("hf_folder", path, url, is_dir=True)
        return Plan("chronoedit", child(path, CHRONOEDIT_NAME), child(url, CHRONOEDIT_NAME), is_dir=False)
    if any(n in names for n in HF_METADATA_NAMES):
        return Plan("hf_folder", path, url, is_dir=True)
    if FASTVIDEO_NAME in names:
        return _file_plan(fs, "fastvideo", child(path, FASTVIDEO_NAME))
    ltx = [n for n in LTX_NAMES if n in names]
    if len(ltx) > 1:
        raise ManifestError(f"{url}: ambiguous input, several manifests ({', '.join(ltx)}); name one of them")
    if ltx:
        return _file_plan(fs, "ltx", child(path, ltx[0]))
    if first(CAPTION_LISTS, names) and first(MEDIA_LISTS, names):
        return Plan("lists", path, url, is_dir=True)
    files = scan_files(fs, path, SCAN_FILES)
    present = set(files)
    media = [f for f in files if media_type_of(f) is not None]
    if any(caption_sibling(f) in present for f in media):
        return Plan("caption_files", path, url, is_dir=True, rows_estimate=len(media))
    if media:
        return Plan("folder", path, url, is_dir=True, rows_estimate=len(media))
    if shard_files(fs, files):
        return Plan("webdataset", path, url, is_dir=True)
    if parquet_files(files):
        return Plan("parquet", path, url, is_dir=True)
    raise ManifestError(
        f"{url}: no media files and no manifest found (looked for {CHRONOEDIT_NAME}, {FASTVIDEO_NAME}, "
        f"{'/'.join(LTX_NAMES)}, {'/'.join(HF_METADATA_NAMES)}, a prompt.txt + videos.txt pair, "
        f"{SHARD_EXTENSION} shards, {PARQUET_EXTENSION} files and media files "
        f"{', '.join(sorted(MEDIA_EXTENSIONS['video'] | MEDIA_EXTENSIONS['image']))})"
    )


def _detect_file(fs: fsspec.AbstractFileSystem, path: str, url: str) -> Plan:
    name = posixpath.basename(path)
    if media_type_of(name) is not None:
        return Plan("folder", path, url, is_dir=False)
    if name == FASTVIDEO_NAME:
        return _file_plan(fs, "fastvideo", path)
    if name.lower().endswith(SHARD_EXTENSION):
        return Plan("webdataset", path, url, is_dir=False)
    columns = set(sniff_columns(fs, path, url))
    if HF_MEDIA_COLUMN in columns:
        fmt = "hf_folder"
    elif name.lower().endswith(PARQUET_EXTENSION):
        fmt = "parquet"
    elif {"path", "cap"} <= columns:
        fmt = "fastvideo"
    elif {"video", "prompt"} <= columns:
        fmt = "chronoedit"
    elif "caption" in columns and columns & set(LTX_MEDIA_COLUMNS):
        fmt = "ltx"
    else:
        raise ManifestError(
            f"{url}: no recognisable columns (found {sorted(columns)}); expected caption + media_path "
            "(ltx), path + cap (fastvideo), key + video + prompt (chronoedit) or file_name (hf_folder)"
        )
    return Plan(fmt, path, url, is_dir=False)


def _plan_explicit(fs: fsspec.AbstractFileSystem, path: str, input_url: str, fmt: str) -> Plan:
    kind = _kind(fs, path, input_url)
    url = to_url(fs, path)
    if fmt in ("lists", "caption_files"):
        if kind != "dir":
            raise ManifestError(f"{url}: the {fmt} format reads a folder, not a file")
        return Plan(fmt, path, url, is_dir=True)
    if fmt in ("folder", "webdataset", "hf_folder", "parquet"):
        return Plan(fmt, path, url, is_dir=kind == "dir")
    if kind == "file":
        return _file_plan(fs, fmt, path)
    names = child_names(fs, path)
    wanted = {"ltx": LTX_NAMES, "fastvideo": (FASTVIDEO_NAME,), "chronoedit": (CHRONOEDIT_NAME,)}[fmt]
    found = [n for n in wanted if n in names]
    if len(found) != 1:
        reason = "several manifests: " + ", ".join(found) if found else "no " + " / ".join(wanted)
        raise ManifestError(f"{url}: cannot read as {fmt} ({reason})")
    return _file_plan(fs, fmt, child(path, found[0]))


def _file_plan(fs: fsspec.AbstractFileSystem, fmt: str, path: str) -> Plan:
    return Plan(fmt, path, to_url(fs, path), is_dir=False)


def _kind(fs: fsspec.AbstractFileSystem, path: str, input_url: str) -> str:
    if fs.isdir(path):
        return "dir"
    if fs.isfile(path):
        return "file"
    raise ManifestError(f"{input_url}: input not found")
