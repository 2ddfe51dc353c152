"""Manifest lines (clips.jsonl) and part files: what a finished source leaves behind, so a rerun
skips it and rebuilds its clip rows without decoding."""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from latentforge.operators.scenes.rows import CLIP_FIELDS, as_int, with_split_columns
from latentforge.rows import has_value, plain, stable_hash

# Probe and bookkeeping columns that a manifest line does not repeat (probe finds them again).
_NOT_IN_MANIFEST = frozenset(
    {"uri", "media_type", "caption", "source_frames", "width", "height", "rotation", "has_audio", "num_frames",
     "error", "error_stage", "media_path"}
)

# split options that change speed only, never the clips (part keys and the output fingerprint skip them)
SPEED_ONLY = ("enabled", "segment_seconds", "overlap_seconds", "min_segment_seconds", "shared_decode_mb")


def part_key(uri: str, start: Any, end: Any, opts: Mapping[str, Any]) -> str:
    """Id of one source's clip list: the source, its span as given, and every option that
    changes clips (not `enabled`, `segment_seconds`, `overlap_seconds`, `min_segment_seconds`, `shared_decode_mb`: those
    change speed only)."""
    relevant = {k: v for k, v in sorted(opts.items()) if k not in SPEED_ONLY}
    return stable_hash(uri, as_int(start, 0), as_int(end), json.dumps(relevant, sort_keys=True, default=str), length=24)


def row_part_key(row: dict[str, Any], opts: Mapping[str, Any]) -> str:
    """`part_key` of a probed row: its end counts only when it stops before the file does."""
    end = as_int(row.get("end_frame"))
    frames = as_int(row.get("source_frames"))
    if end is not None and frames is not None and end >= frames:
        end = None
    return part_key(row["uri"], row.get("start_frame"), end, opts)


def manifest_line(row: dict[str, Any]) -> dict[str, Any]:
    """A clip row as a clips.jsonl line (LTX-2 style; `media_path` absolute here)."""
    line: dict[str, Any] = {
        "media_path": row["uri"],
        "start_frame": as_int(row.get("start_frame")),
        "end_frame": as_int(row.get("end_frame")),
        "fps": float(row["fps"]) if has_value(row.get("fps")) else None,
        "scene_index": as_int(row.get("scene_index")),
        "caption": row.get("caption") if has_value(row.get("caption")) else None,
        "parent_uri": row.get("parent_uri"),
        "parent_start_frame": as_int(row.get("parent_start_frame")),
        "parent_end_frame": as_int(row.get("parent_end_frame")),
        "start_time": row.get("start_time"),
        "end_time": row.get("end_time"),
    }
    for key, value in row.items():
        if key.startswith("_") or key in line or key in _NOT_IN_MANIFEST:
            continue
        line[key] = plain(value)
    return line


def part_record(row: dict[str, Any]) -> dict[str, Any]:
    """What a part file keeps per clip: the manifest line and the clip fields for reuse."""
    return {"manifest": manifest_line(row), "clip": {k: plain(row.get(k)) for k in CLIP_FIELDS}}


def rows_from_part(row: dict[str, Any], records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Clip rows rebuilt from a part file onto the current source row (nothing decoded)."""
    out = []
    for record in records:
        clip = with_split_columns(row)
        clip.update(record["clip"])
        out.append(clip)
    return out
