"""prepare: choose each clip's bucket from probe metadata, then decode exactly its frames.

Bucket choice is separate from decoding so that a rerun can skip finished samples before any
frame is decoded. Decoding seeks to the span, stops after the last needed frame, and lets
FFmpeg's scaler produce the resized frame (no full-size RGB is made and shrunk afterwards).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from latentforge.buckets import Bucket, available_frames, choose_bucket, cover_resize, frame_indices, frame_step
from latentforge.formats.pixels import rgb8
from latentforge.operators import audio as audio_op
from latentforge.operators.base import Resources, reuse_freed_memory
from latentforge.operators.frame_clock import iter_indexed_frames
from latentforge.rows import error_row, has_value, is_error, stable_hash
from latentforge.operators.probe import open_media
from latentforge.operators.time_limit import SampleTimeout, sample_limit, within

RESOURCES = Resources(num_cpus=1)
STAGE = "prepare"
# Rows without frames (failed, or already in the output) carry an empty array, not None, so the
# column stays one tensor type from block to block in Ray Data.
NO_FRAMES = np.zeros((0, 0, 0, 3), dtype=np.uint8)
# The sample_id whose frames a row already carries (made by split_scenes during detection).
FRAMES_FOR = "_frames_for"

_AV_FILTERS = {"area": "AREA", "bilinear": "BILINEAR", "bicubic": "BICUBIC", "lanczos": "LANCZOS"}
SCALER_THREADS = 1  # a task holds one CPU; the scaler's slice threads only add hand-offs (benchmarks/bench_overlap.py)
_PIL_FILTERS = {
    "area": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def sample_id(uri: str, start_frame: int, end_frame: int, bucket: str, target_fps: float | None = None) -> str:
    """Deterministic id of one training sample: the source, its span and its bucket."""
    parts: tuple[Any, ...] = (uri, int(start_frame), int(end_frame), bucket)
    if target_fps:
        parts += (float(target_fps),)
    return stable_hash(*parts, length=24)


def assign_bucket(row: dict[str, Any], buckets: Sequence[Bucket], target_fps: float | None = None) -> dict[str, Any]:
    """Row with probe metadata -> row with `bucket`, `sample_id` and the output fps, or an error."""
    out = {"bucket": None, "sample_id": None, "source_fps": None, **row}
    if is_error(row):
        return out
    is_image = row["media_type"] == "image"
    fps = float(row["fps"] or 0.0)
    frames = 1 if is_image else available_frames(int(row["num_frames"]), fps, target_fps)
    bucket = choose_bucket(buckets, int(row["width"]), int(row["height"]), frames, is_image=is_image)
    if bucket is None:
        shortest = min((b.frames for b in buckets if b.frames > 1), default=None)
        at = f" at {target_fps:g} fps" if target_fps and not is_image else ""
        return error_row(out, STAGE, f"{row['uri']}: too short: {frames} frames{at}, shortest video bucket has {shortest}")
    out["bucket"] = str(bucket)
    out["sample_id"] = sample_id(row["uri"], row["start_frame"], row["end_frame"], str(bucket), target_fps)
    out["source_fps"] = fps
    if not is_image:
        out["fps"] = fps / frame_step(fps, target_fps)  # the rate of the frames actually encoded
    return out


def _crop(frame: np.ndarray, bucket: Bucket, left: int, top: int) -> np.ndarray:
    return frame[top : top + bucket.height, left : left + bucket.width]


class BucketFramer:
    """A decoded frame -> its bucket image: FFmpeg's scaler resizes to cover the bucket (in the
    stored orientation), then rotation and the center crop. The one rule for `prepare` and for
    the frames split_scenes makes during detection, so both give the same bytes."""

    def __init__(self, bucket: Bucket, rotation: int = 0, resize_filter: str = "area"):
        self.bucket = bucket
        self.quarter_turns = (int(rotation or 0) // 90) % 4
        self.interpolation = _AV_FILTERS[resize_filter]
        self.plan: Any = None
        # One scaler for every frame: `frame.to_ndarray(width=...)` makes a new one per frame,
        # and FFmpeg's scaler starts and joins its slice threads each time (a quarter of
        # prepare's CPU in a profile, docs/benchmarks.md).
        self.reformatter = VideoReformatter()

    def __call__(self, frame: Any) -> np.ndarray:
        turned = self.quarter_turns % 2
        if self.plan is None:
            # Display size after rotation decides the resize; FFmpeg scales in stored orientation.
            w, h = (frame.height, frame.width) if turned else (frame.width, frame.height)
            self.plan = cover_resize(w, h, self.bucket.width, self.bucket.height)
        sw, sh = self.plan.resize_width, self.plan.resize_height
        if turned:
            sw, sh = sh, sw
        rgb = self.reformatter.reformat(frame, width=sw, height=sh, format="rgb24", interpolation=self.interpolation, threads=SCALER_THREADS).to_ndarray()
        if self.quarter_turns:
            rgb = np.rot90(rgb, k=self.quarter_turns)
        return _crop(rgb, self.bucket, self.plan.left, self.plan.top)


def decode_video_frames(
    source: Any,
    start_frame: int,
    indices: Sequence[int],
    bucket: Bucket,
    rotation: int = 0,
    resize_filter: str = "area",
    stats: dict[str, int] | None = None,
    then: Callable[[Any, Any], None] | None = None,
) -> np.ndarray:
    """Decode the given source frame indices, resized to cover `bucket` and center-cropped.
    `then(container, stream)` runs on the same open container after the frames (the clip's audio).

    Frames are numbered by the frame clock (`iter_indexed_frames`: a seek to the span, then
    presentation times), so a span deep in a long file costs one GOP, not the prefix, and
    detection's frames are these frames.
    """
    slots: dict[int, list[int]] = {}  # source frame index -> its places in the clip
    for place, index in enumerate(indices):
        slots.setdefault(index, []).append(place)
    last = max(slots)
    clip: np.ndarray | None = None  # filled as frames decode: no list of frames, no stacking copy
    found: set[int] = set()
    to_bucket = BucketFramer(bucket, rotation, resize_filter)
    counts: dict[str, int] = {}
    shown, current = None, None
    with av.open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in iter_indexed_frames(container, stream, min(start_frame, min(slots)), counts):
            if index in slots:
                if frame is not shown:  # a slot a variable rate skipped reuses the next frame's image
                    shown, current = frame, to_bucket(frame)
                if clip is None:
                    clip = np.empty((len(indices), *current.shape), dtype=np.uint8)
                clip[slots[index]] = current
                found.add(index)
            if index >= last:
                break
        if then is not None:
            then(container, stream)
    if stats is not None:
        stats["decoded"] = counts.get("decoded", 0)
    missing = sorted(set(slots).difference(found))
    if missing:
        raise ValueError(
            f"decoded {len(found)} of {len(slots)} needed frames; the file ends before frame {missing[0]} "
            "(the container's frame count is larger than what decodes)"
        )
    return clip


def load_image(source: Any, bucket: Bucket, resize_filter: str = "area") -> np.ndarray:
    with Image.open(source) as im:
        im = rgb8(im)
        plan = cover_resize(im.width, im.height, bucket.width, bucket.height)
        im = im.resize((plan.resize_width, plan.resize_height), _PIL_FILTERS[resize_filter])
        arr = np.asarray(im)
    return np.ascontiguousarray(_crop(arr, bucket, plan.left, plan.top))[None]


def _decode(
    row: dict[str, Any], bucket: Bucket, indices: Sequence[int], resize_filter: str, storage_options: Any, stats: dict, then: Any = None
) -> np.ndarray:
    with open_media(row["uri"], storage_options) as source:
        if row["media_type"] == "image":
            return load_image(source, bucket, resize_filter)
        rotation = int(row.get("rotation") or 0)
        return decode_video_frames(source, int(row["start_frame"]), indices, bucket, rotation, resize_filter, stats, then)


def load_frames(
    row: dict[str, Any],
    target_fps: float | None = None,
    resize_filter: str = "area",
    storage_options: dict[str, Any] | None = None,
    time_limit: tuple[float, float] | None = None,
    audio_rate: int | None = None,
) -> dict[str, Any]:
    """Row with a bucket -> row with `frames` (uint8 [F, H, W, 3]) and `num_frames` = F.
    With `audio_rate` (encode_video.with_audio), also the span's audio from the same open
    container (audio.py's columns).

    `time_limit` = (base seconds, seconds per source frame read): a decode that runs past it
    (a hung FFmpeg or read) makes the row an error and leaves its thread behind (time_limit.py)."""
    reuse_freed_memory()  # each clip's frames on the last clip's pages, not fresh ones
    out = {"frames": NO_FRAMES, **row}
    out.setdefault("_seconds_prepare", 0.0)
    out.setdefault("_decoded_frames_prepare", 0)
    if is_error(row):
        return out
    t0 = time.perf_counter()
    w, h, f = (int(v) for v in row["bucket"].split("x"))
    bucket = Bucket(w, h, f)
    given = row.get("frames")
    if has_value(row.get(FRAMES_FOR)) and row[FRAMES_FOR] == row.get("sample_id") and np.shape(given) == (f, h, w, 3):
        # split_scenes made exactly these while decoding for detection (one decode per video)
        out["frames"] = np.asarray(given, dtype=np.uint8)
        out["num_frames"] = f
        return out
    stats = {"decoded": 1}
    try:
        indices: Sequence[int] = [0]
        if row["media_type"] != "image":
            source_fps = float(row.get("source_fps") or row["fps"])
            indices = frame_indices(int(row["start_frame"]), f, source_fps, target_fps)
        read = max(indices) - int(row.get("start_frame") or 0) + 1
        limit = sample_limit(read, *time_limit) if time_limit is not None else None
        def audio(container: Any, stream: Any) -> None:  # the span's audio, from the same open container
            out.update(audio_op.span_audio_columns(container, stream, indices[0], f, float(row["fps"]), audio_rate))

        then = audio if audio_rate and row["media_type"] != "image" else None
        frames = within(limit, _decode, row, bucket, indices, resize_filter, storage_options, stats, then)
    except SampleTimeout as e:
        return error_row(out, STAGE, f"{row['uri']}: timed out decoding ({e}; prepare.time_limit_s)")
    except Exception as e:  # noqa: BLE001 - a bad file fails its row, not the job
        reason = str(e).strip() or type(e).__name__
        return error_row(out, STAGE, f"{row['uri']}: decode failed ({reason})")
    out["frames"] = frames
    out["num_frames"] = int(frames.shape[0])
    out["_seconds_prepare"] = time.perf_counter() - t0
    out["_decoded_frames_prepare"] = stats["decoded"]
    return out

