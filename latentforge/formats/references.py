"""The IC-LoRA reference column of a manifest row (docs/inputs.md, docs/decisions.md).

A target's reference video is named by the column `reference`, or by one of the names LTX-2's
trainer reads (ltx-trainer scripts/process_dataset.py: `reference_video`, legacy
`ref_media_path`; scripts/compute_reference.py's legacy `reference_path`). The first of these
with a value is resolved like the media column (relative to the manifest's folder; absolute
paths and URLs kept) into the row's `reference`. The other columns pass through untouched."""

from __future__ import annotations

from typing import Any

from latentforge.storage import resolve

REFERENCE = "reference"
REFERENCE_COLUMNS = (REFERENCE, "reference_video", "ref_media_path", "reference_path")


def reference_ref(row: dict[str, Any]) -> str | None:
    """The reference as the manifest wrote it: the first reference column with a value."""
    for column in REFERENCE_COLUMNS:
        value = row.get(column)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def resolve_reference(row: dict[str, Any], base: str) -> str | None:
    """Set `row["reference"]` to the resolved reference URI when a reference column names one,
    and return what the manifest wrote (for the caller's `../` check); rows of manifests without
    a reference column are left as they are."""
    ref = reference_ref(row)
    if ref is not None:
        row[REFERENCE] = resolve(base, ref)
    elif any(column in row for column in REFERENCE_COLUMNS):
        row[REFERENCE] = None
    return ref
