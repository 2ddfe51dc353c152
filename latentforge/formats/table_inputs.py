"""Hugging Face `videofolder` / `imagefolder` layouts and Parquet manifests -> rows.

- hf_folder: a folder with `metadata.jsonl`, `metadata.csv` or `metadata.parquet` holding
  `file_name` (the media path, relative to the metadata file's folder) and the caption in the
  first present of `caption` (what finetrainers reads), `text` (the column HF's diffusers
  examples use), `prompt`; no caption column means caption None. As in HF `datasets`,
  sub-folders may hold their own metadata file; a media file named by several metadata files
  takes its row from the nearest one (the deepest folder). Two metadata files in one folder are
  ambiguous and stop the run. Every other column passes through.
- parquet: a `.parquet` file, or a folder of them (recursive, sorted), with the LTX-2 manifest
  columns: `caption` and `media_path` (aliases `video`, `image`), the rest passing through.
  In a folder, a file that is unreadable or lacks those columns becomes one error row naming
  it; the other files are still read.

`read_metadata_file` and `read_parquet_file` read one file each and know nothing of the
others, so a later Ray Data reader can call them per file on the workers; today the readers
below call them on the driver.
"""

from __future__ import annotations

import posixpath
from typing import Any

import fsspec

from latentforge.formats.manifest_files import (
    ManifestError,
    Table,
    first,
    list_files,
    parent_url,
    read_table,
    with_extension,
)
from latentforge.formats.manifest_readers import LTX_MEDIA_COLUMNS, STAGE, Plan, from_record, make_row, read_each
from latentforge.rows import error_row
from latentforge.storage import to_url

HF_METADATA_NAMES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
HF_MEDIA_COLUMN = "file_name"
HF_CAPTION_COLUMNS = ("caption", "text", "prompt")
PARQUET_EXTENSION = ".parquet"


# ---------------------------------------------------------------------------------------------
# Hugging Face folders


def metadata_files(fs: fsspec.AbstractFileSystem, files: list[str], root_url: str) -> list[str]:
    """The metadata files among listed files; two in one folder raise ManifestError."""
    found = [f for f in files if posixpath.basename(f) in HF_METADATA_NAMES]
    folders: dict[str, str] = {}
    for f in found:
        folder = posixpath.dirname(f)
        if folder in folders:
            names = f"{posixpath.basename(folders[folder])} and {posixpath.basename(f)}"
            raise ManifestError(f"{to_url(fs, folder)}: ambiguous input, several metadata files ({names}); keep one")
        folders[folder] = f
    if not found:
        raise ManifestError(f"{root_url}: no {' / '.join(HF_METADATA_NAMES)} for hf_folder")
    return found


def read_hf_folder(fs: fsspec.AbstractFileSystem, plan: Plan) -> list[dict[str, Any]]:
    if not plan.is_dir:
        return read_metadata_file(fs, plan.path, plan.url, plan.table)
    files = plan.files if plan.files is not None else list_files(fs, plan.path)
    per_file = [(f, read_metadata_file(fs, f, to_url(fs, f))) for f in metadata_files(fs, files, plan.url)]
    # a media file named by several metadata files takes the nearest one's row
    owner: dict[str, int] = {}
    for f, rows in per_file:
        depth = f.count("/")
        for row in rows:
            if row["uri"] is not None:
                owner[row["uri"]] = max(owner.get(row["uri"], -1), depth)
    out = []
    for f, rows in per_file:
        depth = f.count("/")
        out.extend(r for r in rows if r["uri"] is None or owner[r["uri"]] == depth)
    return out


def read_metadata_file(
    fs: fsspec.AbstractFileSystem, path: str, url: str, table: Table | None = None
) -> list[dict[str, Any]]:
    """The rows of one HF metadata file; paths are relative to its folder."""
    table = table or read_table(fs, path, url)
    if HF_MEDIA_COLUMN not in table.columns:
        raise ManifestError(f"{url}: no {HF_MEDIA_COLUMN} column (found {table.columns}); HF metadata names its media there")
    caption_column = first(HF_CAPTION_COLUMNS, table.columns)
    base = parent_url(url)
    rows = []
    for record in table.records:
        if caption_column is None and isinstance(record, dict):
            record = {**record, "caption": None}
        rows.append(from_record(record, base, HF_MEDIA_COLUMN, caption_column or "caption", caption_required=False))
    return rows


# ---------------------------------------------------------------------------------------------
# Parquet manifests


def parquet_files(files: list[str]) -> list[str]:
    return with_extension(files, PARQUET_EXTENSION)


def read_parquet(fs: fsspec.AbstractFileSystem, plan: Plan) -> list[dict[str, Any]]:
    if not plan.is_dir:
        table = plan.table or read_table(fs, plan.path, plan.url)
        return _parquet_rows(table, plan.url)
    return read_each(fs, plan, PARQUET_EXTENSION, read_parquet_file, "files")


def read_parquet_file(fs: fsspec.AbstractFileSystem, path: str, url: str) -> list[dict[str, Any]]:
    """The rows of one Parquet manifest file; an unusable file is one error row naming it."""
    try:
        return _parquet_rows(read_table(fs, path, url), url)
    except ManifestError as e:
        reason = str(e)
        reason = reason[len(url) :].lstrip(": ") if reason.startswith(url) else reason
        row = make_row(parent_url(url), url, None, {}, caption_required=False)
        return [error_row({**row, "media_type": None}, STAGE, f"{reason} ({url})")]


def _parquet_rows(table: Table, url: str) -> list[dict[str, Any]]:
    media_column = first(LTX_MEDIA_COLUMNS, table.columns)
    if "caption" not in table.columns or media_column is None:
        raise ManifestError(
            f"{url}: no recognisable columns for parquet (found {table.columns}); "
            f"expected caption and one of {', '.join(LTX_MEDIA_COLUMNS)}"
        )
    base = parent_url(url)
    return [from_record(r, base, media_column, "caption", caption_required=False) for r in table.records]
