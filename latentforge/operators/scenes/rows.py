"""split_video: one probed row -> one row per clip (or an error row), and the columns every row
leaves split_scenes with."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterator, Mapping

from latentforge.operators.scenes.detect import Detection, detect_video
from latentforge.operators.scenes.shared_decode import ClipFrames, FrameRequest, attach_frames
from latentforge.operators.scenes.spans import plan_clips, scenes_from_cuts, skip_region, to_frames
from latentforge.operators.scenes.writers import clip_name, place_clip, tmp_path_for, write_clip_copy, write_clip_reencode
from latentforge.rows import error_row, has_value, is_error
from latentforge.storage import join

STAGE = "split_scenes"
MODES = ("virtual", "reencode", "copy")

# Columns every row leaves split_scenes with (rows become one Arrow table), besides the probe
# columns: the clip's place in its source, and what the stage cost.
SPLIT_COLUMNS = ("parent_uri", "parent_start_frame", "parent_end_frame", "scene_index", "start_time", "end_time")
STAT_COLUMNS = (
    "_seconds_split_scenes",
    "_decoded_frames_split_scenes",
    "_seconds_split_write",
    "_decoded_frames_split_write",
    "_source_frames_split",
)
# What a clip row sets (on top of the columns it inherits from its source row).
CLIP_FIELDS = ("uri", "start_frame", "end_frame", "num_frames", "source_frames", "has_audio", *SPLIT_COLUMNS)


def as_int(value: Any, default: int | None = None) -> int | None:
    """An int column value, or `default` where it is missing (None, NaN)."""
    return int(value) if has_value(value) else default


def with_split_columns(row: dict[str, Any]) -> dict[str, Any]:
    """The row with every split column present (None where it has none yet)."""
    out = dict(row)
    for key in SPLIT_COLUMNS:
        out.setdefault(key, None)
    for key in STAT_COLUMNS:
        out.setdefault(key, 0.0 if key.startswith("_seconds") else 0)
    return out


def passthrough(row: dict[str, Any]) -> dict[str, Any]:
    """An error row (unchanged apart from the added columns) or an image (one clip of itself)."""
    out = with_split_columns(row)
    if not is_error(row) and row.get("media_type") == "image":
        out.update(parent_uri=row["uri"], parent_start_frame=0, parent_end_frame=1, scene_index=0, start_time=0.0, end_time=0.0)
    return out


def split_video(
    row: dict[str, Any],
    opts: Mapping[str, Any],
    output: str | None = None,
    storage_options: dict[str, Any] | None = None,
    run_segments: Callable[[list[dict[str, Any]]], list[Detection]] | None = None,
    frame_request: FrameRequest | None = None,
    idle_cpus: Callable[[], int] | None = None,
) -> Iterator[dict[str, Any]]:
    """One probed row -> one row per clip (or the row itself: errors, images; or an error row).

    Clip rows inherit every column and set `start_frame`/`end_frame` (exclusive), `num_frames`
    (span length, for bucket choice), `start_time`/`end_time` (seconds), `scene_index`
    (0-based, in time order) and `parent_uri`/`parent_start_frame`/`parent_end_frame` (the clip
    in its source). With `mode: reencode` or `copy` (needs `output`) `uri` is the clip file
    and the span is relative to it. With a `frame_request` (virtual mode inside
    `latentforge run`) clip rows also carry the bucket frames `prepare` would decode
    (`frames`, and `_frames_for` = their sample_id) where detection's decode could make them.
    """
    if is_error(row) or row.get("media_type") != "video":
        yield passthrough(row)
        return
    uri = row["uri"]
    t0 = time.perf_counter()
    try:
        fps = float(row["fps"])
        span_start = as_int(row.get("start_frame"), 0)
        span_end = as_int(row.get("end_frame"), as_int(row.get("source_frames")))
        if not fps or span_end is None or span_end <= span_start:
            raise ValueError(f"empty span (frames [{span_start}, {span_end}))")
        region = skip_region(span_start, span_end, to_frames(opts.get("skip_start"), fps), to_frames(opts.get("skip_end"), fps))
        if region[1] <= region[0]:
            yield _error(row, f"{uri}: nothing left after skip_start/skip_end ({span_end - span_start} frames)", t0, 0, span_end - span_start)
            return
        collector = None
        if frame_request is not None and opts.get("mode", "virtual") == "virtual":
            collector = ClipFrames(row, region, fps, opts, frame_request)
        detection = detect_video(uri, region[0], region[1], fps, opts, storage_options, run_segments, collector, idle_cpus)
    except Exception as e:  # noqa: BLE001 - a bad file fails its row, not the job
        reason = str(e).strip() or type(e).__name__
        yield _error(row, f"{uri}: scene detection failed ({reason})", t0, 0, 0)
        return
    if detection.last_frame < 0:
        yield _error(row, f"{uri}: no decodable frames in [{region[0]}, {region[1]})", t0, detection.decoded, span_end - span_start)
        return
    end = min(region[1], detection.last_frame + 1)
    spans = plan_clips(detection.cuts, (region[0], end), fps, opts)
    seconds = time.perf_counter() - t0
    if not spans:
        scenes = len(scenes_from_cuts(detection.cuts, region[0], end))
        yield _error(row, f"{uri}: no clips: all {scenes} scenes filtered out", t0, detection.decoded, span_end - span_start)
        return
    mode = opts.get("mode", "virtual")
    for i, (a, b) in enumerate(spans):
        clip = with_split_columns(row)
        clip.update(
            parent_uri=uri,
            parent_start_frame=a,
            parent_end_frame=b,
            scene_index=i,
            start_time=round(a / fps, 6),
            end_time=round(b / fps, 6),
            start_frame=a,
            end_frame=b,
            num_frames=b - a,
        )
        if i == 0:
            clip["_seconds_split_scenes"] = seconds
            clip["_decoded_frames_split_scenes"] = detection.decoded
            clip["_source_frames_split"] = span_end - span_start
        if collector is not None:
            attach_frames(clip, collector, frame_request)
        if mode != "virtual":
            try:
                clip = write_clip(clip, row, opts, output, storage_options)
            except Exception as e:  # noqa: BLE001
                reason = str(e).strip() or type(e).__name__
                failed = error_row(clip, STAGE, f"{uri}: writing clip {i + 1} failed ({reason})")
                yield failed
                continue
        yield clip


def write_clip(clip: dict[str, Any], row: dict[str, Any], opts: Mapping[str, Any], output: str | None, so: dict[str, Any] | None) -> dict[str, Any]:
    """The clip's file (`mode: reencode` or `copy`) under `<output>/clips/`; the row then points
    at it, its span relative to the file (copy keeps a keyframe-aligned margin)."""
    if not output:
        raise ValueError("mode reencode/copy needs an output location")
    mode = opts["mode"]
    uri = row["uri"]
    a, b = clip["parent_start_frame"], clip["parent_end_frame"]
    fps = float(row["fps"])
    ext = ".mp4" if mode == "reencode" else (os.path.splitext(uri)[1].lower() or ".mp4")
    url = join(output, "clips", clip_name(opts.get("clip_name", "{stem}-Scene-{scene:03d}"), uri, clip["scene_index"], a, ext))
    tmp = tmp_path_for(url, so)
    comment = f"latentforge clip: {uri} frames [{a}, {b})"
    rotation = as_int(row.get("rotation"), 0) or 0
    t0 = time.perf_counter()
    try:
        if mode == "reencode":
            written, decoded, has_audio = write_clip_reencode(
                uri, tmp, a, b, fps, rotation, int(opts.get("crf", 22)), str(opts.get("preset", "veryfast")),
                bool(opts.get("audio", True)), comment, so,
            )
            if written == 0:
                raise ValueError("no frames decoded in the span")
            first, stop, rel_start, rel_end = a, a + written, 0, written
        elif mode == "copy":
            first, stop, has_audio = write_clip_copy(uri, tmp, a, b, fps, rotation, bool(opts.get("audio", True)), comment, so)
            decoded = 0
            rel_start, rel_end = a - first, b - first
        else:
            raise ValueError(f"unknown mode {mode!r}; allowed: {', '.join(MODES)}")
        place_clip(tmp, url, so)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    out = dict(clip)
    out.update(
        uri=url if "://" in url else os.path.abspath(url),
        start_frame=rel_start,
        end_frame=rel_end,
        num_frames=rel_end - rel_start,
        source_frames=stop - first,
        has_audio=bool(has_audio),
    )
    out["_seconds_split_write"] = time.perf_counter() - t0
    out["_decoded_frames_split_write"] = decoded
    return out


def _error(row: dict[str, Any], reason: str, t0: float, decoded: int, source_frames: int) -> dict[str, Any]:
    out = error_row(with_split_columns(row), STAGE, reason)
    out["_seconds_split_scenes"] = time.perf_counter() - t0
    out["_decoded_frames_split_scenes"] = decoded
    out["_source_frames_split"] = source_frames
    return out
