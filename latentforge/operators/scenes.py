"""split_scenes: one video row -> one row per clip span, found by PySceneDetect's detectors.

Detection reads small frames made by FFmpeg's scaler (a `VideoReformatter` per pass, so its
scaling context is built once) and feeds them to a PySceneDetect detector's `process_frame`
itself: no full-size RGB frame is ever made, and PySceneDetect's own downscaling is not used
(its factor is 1 because the frames are already small). A long video is detected in segments
that can run in parallel (`plan_segments` / `detect_segment` / `merge_detections`); each
segment decodes a short overlap on both sides so its detector has the same recent history as a
single pass would, and keeps only the cuts inside its own range, so the merged cut list is the
one-pass list.

The clip-list math (`clip_spans`, `skip_region`, `to_frames`) is pure and documented in
docs/scenes.md. Output modes: `virtual` (spans only; `uri` stays the source), `reencode`
(libx264 + AAC clip files holding exactly the span) and `copy` (stream copy from the keyframe
at or before the span to the keyframe at or after its end; the row's span points at the exact
scene frames inside that file). No Ray here: the pipeline passes `run_segments` to fan
segments out over the cluster.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
import tempfile
import time
import uuid
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Iterator, Mapping, Sequence

import av
import numpy as np

from latentforge.buckets import Bucket, choose_bucket, frame_indices
from latentforge.operators.base import Resources, error_row, has_value, is_error, stable_hash
from latentforge.operators.frames import FRAMES_FOR, NO_FRAMES, BucketFramer, assign_bucket
from latentforge.operators.probe import open_media
from latentforge.storage import get_fs, is_local, join, write_bytes_atomic

RESOURCES = Resources(num_cpus=1)
STAGE = "split_scenes"
DETECTORS = ("content", "adaptive", "threshold", "histogram", "hash")
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
# Probe and bookkeeping columns that a manifest line does not repeat (probe finds them again).
_NOT_IN_MANIFEST = frozenset(
    {"uri", "media_type", "caption", "source_frames", "width", "height", "rotation", "has_audio", "num_frames",
     "error", "error_stage", "media_path"}
)
_MANIFEST_FIRST = ("media_path", "start_frame", "end_frame", "fps", "scene_index", "caption", *SPLIT_COLUMNS[:3], "start_time", "end_time")


# ---------------------------------------------------------------------------------------------
# Durations: frames (int), seconds (float, "5s", "5.5") or a timecode ("00:00:05.000")

_SECONDS = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*s?$")
_TIMECODE = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


def parse_duration(value: Any) -> tuple[str, float]:
    """('frames', n) or ('seconds', s) for an option value; ValueError says what is accepted.

    int or a string of digits -> frames; float, "2.5", "5s" -> seconds; "HH:MM:SS[.nnn]" or
    "MM:SS[.nnn]" -> seconds. Negative values are refused.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected frames (15), seconds (2.5, '5s') or a timecode ('00:00:05.000'), got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        return "frames", float(value)
    if isinstance(value, float):
        if value < 0 or math.isnan(value):
            raise ValueError(f"must be a non-negative number of seconds, got {value}")
        return "seconds", value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return "frames", float(int(text))
        m = _SECONDS.match(text)
        if m:
            return "seconds", float(m.group(1))
        m = _TIMECODE.match(text)
        if m:
            hours, minutes, seconds = m.groups()
            return "seconds", int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
    raise ValueError(
        f"expected frames (15), seconds (2.5, '5s') or a timecode ('00:00:05.000'), got {value!r}"
    )


def to_frames(value: Any, fps: float) -> int | None:
    """An option value in frames at `fps` (seconds round to the nearest frame); None stays None."""
    if value is None:
        return None
    unit, amount = parse_duration(value)
    if unit == "frames":
        return int(amount)
    return int(math.floor(amount * float(fps) + 0.5))


# ---------------------------------------------------------------------------------------------
# Clip-list math (pure)


def skip_region(start: int, end: int, skip_start: int | None, skip_end: int | None) -> tuple[int, int]:
    """The part of [start, end) left after dropping `skip_start` frames at the front and
    `skip_end` at the back (intros, credits). May be empty (start >= end)."""
    return start + (skip_start or 0), end - (skip_end or 0)


def scenes_from_cuts(cuts: Sequence[int], start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) split at each cut strictly inside it; no cut -> one scene."""
    bounds = [start, *sorted({int(c) for c in cuts if start < c < end}), end]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def chunk_scene(start: int, end: int, max_len: int | None) -> list[tuple[int, int]]:
    """[start, end) cut into consecutive pieces of `max_len` frames; the last holds the rest."""
    if not max_len or end - start <= max_len:
        return [(start, end)]
    return [(a, min(a + max_len, end)) for a in range(start, end, max_len)]


def clip_spans(
    cuts: Sequence[int],
    start: int,
    end: int,
    *,
    shorter_than: int | None = None,
    max_len: int | None = None,
    max_clips: int | None = None,
) -> list[tuple[int, int]]:
    """Scenes of [start, end) from the cuts -> pieces of at most `max_len` frames -> drop pieces
    shorter than `shorter_than` -> the first `max_clips`. Spans are [start, end) in source frames."""
    spans: list[tuple[int, int]] = []
    for a, b in scenes_from_cuts(cuts, start, end):
        spans.extend(chunk_scene(a, b, max_len))
    if shorter_than:
        spans = [(a, b) for a, b in spans if b - a >= shorter_than]
    if max_clips is not None:
        spans = spans[: max(0, int(max_clips))]
    return spans


def plan_clips(cuts: Sequence[int], region: tuple[int, int], fps: float, opts: Mapping[str, Any]) -> list[tuple[int, int]]:
    """`clip_spans` with the config's options (frames, seconds or timecodes) at `fps`."""
    return clip_spans(
        cuts,
        region[0],
        region[1],
        shorter_than=to_frames(opts.get("filter_shorter_than"), fps),
        max_len=to_frames(opts.get("max_scene_len"), fps),
        max_clips=opts.get("max_scenes"),
    )


# ---------------------------------------------------------------------------------------------
# Detectors


def min_scene_frames(opts: Mapping[str, Any], fps: float) -> int:
    return to_frames(opts.get("min_scene_len", 15), fps) or 0


def make_detector(opts: Mapping[str, Any], fps: float) -> Any:
    """The configured PySceneDetect detector; lengths are handed over in frames at `fps`."""
    from scenedetect.detector import FlashFilter
    from scenedetect.detectors import (
        AdaptiveDetector,
        ContentDetector,
        HashDetector,
        HistogramDetector,
        ThresholdDetector,
    )

    kind = opts.get("detector", "content")
    msl = min_scene_frames(opts, fps)
    p = dict(opts.get(kind) or {})
    if kind == "content":
        return ContentDetector(
            threshold=float(p.get("threshold", 27.0)),
            min_scene_len=msl,
            weights=ContentDetector.Components(*p.get("weights", ContentDetector.DEFAULT_COMPONENT_WEIGHTS)),
            luma_only=bool(p.get("luma_only", False)),
            kernel_size=p.get("kernel_size"),
            filter_mode=FlashFilter.Mode[str(p.get("filter_mode", "merge")).upper()],
        )
    if kind == "adaptive":
        return AdaptiveDetector(
            adaptive_threshold=float(p.get("adaptive_threshold", 3.0)),
            min_scene_len=msl,
            window_width=int(p.get("window_width", 2)),
            min_content_val=float(p.get("min_content_val", 15.0)),
            weights=ContentDetector.Components(*p.get("weights", ContentDetector.DEFAULT_COMPONENT_WEIGHTS)),
            luma_only=bool(p.get("luma_only", False)),
            kernel_size=p.get("kernel_size"),
        )
    if kind == "threshold":
        return ThresholdDetector(
            threshold=float(p.get("threshold", 12.0)),
            min_scene_len=msl,
            fade_bias=float(p.get("fade_bias", 0.0)),
            add_final_scene=bool(p.get("add_final_scene", False)),
            method=ThresholdDetector.Method[str(p.get("method", "floor")).upper()],
            min_out_length=to_frames(p.get("min_out_length", 0), fps) or 0,
        )
    if kind == "histogram":
        return HistogramDetector(threshold=float(p.get("threshold", 0.2)), bins=int(p.get("bins", 128)), min_scene_len=msl)
    if kind == "hash":
        return HashDetector(
            threshold=float(p.get("threshold", 0.35)),
            size=int(p.get("size", 8)),
            lowpass=int(p.get("lowpass", 2)),
            min_scene_len=msl,
        )
    raise ValueError(f"unknown detector {kind!r}; allowed: {', '.join(DETECTORS)}")


def detector_memory(opts: Mapping[str, Any], fps: float) -> int:
    """Least overlap for a segment's detector to decide as a single pass would: it cannot cut
    during its first `min_scene_len` frames (length counts from its first frame), then needs
    `min_scene_len` more to see the cut that would suppress or merge the next, plus the
    adaptive window. Runs of candidate frames longer than the overlap (long fades, flashing)
    are the limit; docs/scenes.md says so."""
    kind = opts.get("detector", "content")
    window = int((opts.get("adaptive") or {}).get("window_width", 2)) if kind == "adaptive" else 0
    return 2 * min_scene_frames(opts, fps) + 2 * window + 2


def detect_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Detector frame size: the longer side `size` (never upscaled), aspect kept, even sides,
    as PySceneDetect's automatic downscale does for its default 256."""
    longest = max(width, height)
    scale = min(1.0, size / float(longest)) if size else 1.0
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


# ---------------------------------------------------------------------------------------------
# Segments


@dataclass(frozen=True)
class Segment:
    """Frames [own_start, own_end) are this segment's: its cuts there count. It feeds the
    detector frames [decode_start, decode_end) (own range plus overlap on each side); decoding
    starts at the keyframe at or before decode_start."""

    index: int
    own_start: int
    own_end: int
    decode_start: int
    decode_end: int
    last: bool


def plan_segments(start: int, end: int, fps: float, segment_seconds: float | None, overlap_frames: int) -> list[Segment]:
    """[start, end) as one segment, or as n equal segments of at most `segment_seconds`."""
    length = end - start
    seg = int(round((segment_seconds or 0) * fps))
    if seg <= 0 or length <= seg:
        return [Segment(0, start, end, start, end, True)]
    n = math.ceil(length / seg)
    bounds = [start + (length * k) // n for k in range(n)] + [end]
    return [
        Segment(
            k,
            bounds[k],
            bounds[k + 1],
            max(start, bounds[k] - overlap_frames),
            min(end, bounds[k + 1] + overlap_frames),
            k == n - 1,
        )
        for k in range(n)
    ]


@dataclass
class Detection:
    cuts: list[int]
    last_frame: int  # last frame index the detector saw (-1: none)
    decoded: int  # frames decoded, including those between the keyframe and decode_start


def iter_frames(container: Any, stream: Any, start_frame: int, fps: float) -> Iterator[tuple[int, Any]]:
    """(frame index, frame) from the keyframe at or before `start_frame` on.

    The index is recovered from the presentation time (the rule `prepare` uses after a seek),
    so a segment that starts mid-file numbers frames exactly as a pass from the start; a
    repeated timestamp (variable frame rate) adds nothing. Frames before `start_frame` (from the
    keyframe on) are yielded too: callers count them as decoded and skip them.
    """
    time_base = float(stream.time_base)
    origin = stream.start_time or 0
    if start_frame > 0:
        target = origin + int((start_frame / fps) / time_base)
        container.seek(max(origin, target), stream=stream, backward=True)
    counter = -1
    previous = -1
    for frame in container.decode(stream):
        counter += 1
        if frame.pts is not None:
            index = int(round((frame.pts - origin) * time_base * fps))
        elif start_frame > 0:
            raise ValueError("frames have no timestamps, so a span cannot be found after a seek")
        else:
            index = counter
        if index <= previous:
            continue
        previous = index
        yield index, frame


def small_frames(
    uri: str,
    segment: Segment,
    fps: float,
    size: int = 256,
    storage_options: dict[str, Any] | None = None,
    stats: dict[str, int] | None = None,
) -> Iterator[tuple[int, Any, Any]]:
    """(index, BGR uint8 frame whose longer side is `size`, the decoded frame) for the frames of
    [decode_start, decode_end): FFmpeg's scaler makes the small frame straight from the decoded
    picture (one cached scaling context), so no full-size RGB frame exists.

    Decoding is exact. (Skipping FFmpeg's deblocking filter, `skip_loop_filter`, was measured:
    on reference frames it saves 10-28% of decode time but errors build up over each GOP and
    jump back at keyframes, which gave false cuts on grainy footage; on non-reference frames
    only it saves nothing measurable.)
    """
    from av.video.reformatter import VideoReformatter

    reformatter = VideoReformatter()
    dims = None
    decoded = 0
    try:
        with open_media(uri, storage_options) as source, av.open(source) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in iter_frames(container, stream, segment.decode_start, fps):
                decoded += 1
                if index < segment.decode_start:
                    continue
                if index >= segment.decode_end:
                    break
                if dims is None:
                    dims = detect_size(frame.width, frame.height, size)
                yield index, reformatter.reformat(frame, dims[0], dims[1], "bgr24", interpolation="AREA").to_ndarray(), frame
    finally:
        if stats is not None:
            stats["decoded"] = decoded


def prefetch(items: Iterator[Any], depth: int = 8) -> Iterator[Any]:
    """Run a generator in a background thread, `depth` items ahead: FFmpeg decodes and scales
    (without the GIL) while the detector works on the previous frames."""
    import queue
    import threading

    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    break
                buffer.put((True, item))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            buffer.put((False, e))
        finally:
            buffer.put((True, done))

    thread = threading.Thread(target=produce, name="latentforge-decode", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = buffer.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full buffer
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(0.05)
        if hasattr(items, "close"):
            items.close()  # the producer is gone: finish the generator here (closes the file)


def detect_segment(
    uri: str,
    segment: Segment,
    fps: float,
    opts: Mapping[str, Any],
    storage_options: dict[str, Any] | None = None,
    collector: "ClipFrames | None" = None,
) -> Detection:
    """Run the configured detector over one segment; returns the cuts in its own range.
    A `collector` sees every decoded frame and every cut as it is found (one decode per video)."""
    from scenedetect.common import FrameTimecode

    detector = make_detector(opts, fps)
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    cuts: list[Any] = []
    last = -1
    stats: dict[str, int] = {}
    frames = small_frames(
        uri, segment, fps, int(opts.get("detect_size", 256)), storage_options, stats
    )
    for index, image, frame in prefetch(frames):
        last = index
        found = detector.process_frame(FrameTimecode(index, rate), image)
        cuts += found
        if collector is not None:
            collector.add(index, frame, [int(c.frame_num) for c in found])
    if segment.last and last >= 0:
        found = detector.post_process(FrameTimecode(last, rate))
        cuts += found
        if collector is not None:
            collector.add(None, None, [int(c.frame_num) for c in found])
    own = sorted({int(c.frame_num) for c in cuts if segment.own_start <= c.frame_num < segment.own_end})
    return Detection(own, last, stats.get("decoded", 0))


def merge_detections(detections: Sequence[Detection]) -> Detection:
    """Segments' cut lists -> the video's (each cut belongs to exactly one segment)."""
    cuts = sorted({c for d in detections for c in d.cuts})
    return Detection(cuts, detections[-1].last_frame if detections else -1, sum(d.decoded for d in detections))


# ---------------------------------------------------------------------------------------------
# One decode per video: bucket frames made during detection


@dataclass(frozen=True)
class FrameRequest:
    """What `prepare` decodes for each clip (its config), so detection's decode can make it."""

    buckets: tuple[Any, ...]  # latentforge.buckets.Bucket
    target_fps: float | None = None
    resize_filter: str = "area"
    budget_mb: int = 1024


class ClipFrames:
    """The bucket frames of the clips a detection pass finds, made from the frames it decodes.

    A detector reports a cut some frames after it happened, so the last `lookback` decoded
    frames are held as FFmpeg frames; when a clip start (the region start, a cut, a
    `max_scene_len` piece) becomes known, its first frames are made from them and the rest as
    they are decoded. Only the frames the longest bucket would use are made, in every
    resolution the video's clips can be bucketed to. Whatever cannot be had exactly gets no
    frames and `prepare` decodes it as before, so the output is the same either way: a start
    reported after its frames left the lookback, frames beyond `budget_mb`, a video whose frame
    numbers jump (variable frame rate, a missing first frame).
    """

    def __init__(self, row: Mapping[str, Any], region: tuple[int, int], fps: float, opts: Mapping[str, Any], request: FrameRequest):
        self.request = request
        self.region_start = region[0]
        self.fps = fps
        self.opts = opts
        self.max_len = to_frames(opts.get("max_scene_len"), fps)
        video = [b for b in request.buckets if b.frames > 1]
        self.longest = max((b.frames for b in video), default=0)
        resolutions = set()
        for n in {b.frames for b in video}:  # the choice only changes where a bucket's F is reached
            b = choose_bucket(request.buckets, int(row["width"]), int(row["height"]), n)
            if b is not None:
                resolutions.add((b.width, b.height))
        rotation = int(row.get("rotation") or 0)
        self.framers = {r: BucketFramer(Bucket(r[0], r[1], 1), rotation, request.resize_filter) for r in sorted(resolutions)}
        self.clip_bytes = self.longest * sum(w * h * 3 for w, h in resolutions)
        self.budget = int(request.budget_mb) * 2**20
        self.lookback = detector_memory(opts, fps) + 2
        self.ring: dict[int, tuple[Any, dict[tuple[int, int], Any]]] = {}  # index -> (frame, made images)
        self.clips: dict[int, dict[int, dict[tuple[int, int], Any]]] = {}  # clip start -> index -> images
        self.needed: dict[int, list[int]] = {}  # clip start -> source indices still to make
        self.used = 0
        self.cuts: list[int] = []
        self.next_start: int | None = region[0]
        self.previous: int | None = None
        self.enabled = bool(self.framers) and self.clip_bytes > 0

    def _drop(self, start: int) -> None:
        if self.clips.pop(start, None) is not None:
            self.used -= self.clip_bytes
        self.needed.pop(start, None)

    def _disable(self) -> None:
        self.enabled = False
        self.ring.clear()
        self.clips.clear()
        self.needed.clear()

    def _open(self, start: int) -> None:

        if start in self.clips or self.used + self.clip_bytes > self.budget:
            return
        end = start + self.max_len if self.max_len else None
        indices = frame_indices(start, self.longest, self.fps, self.request.target_fps)
        self.clips[start] = {}
        self.needed[start] = [i for i in dict.fromkeys(indices) if end is None or i < end]
        self.used += self.clip_bytes

    def add(self, index: int | None, frame: Any, cuts: Sequence[int]) -> None:
        """Frame `index` was decoded and shown to the detector, which reported `cuts`
        (index None: the end of the stream, the detector's last cuts)."""
        if not self.enabled:
            return
        if index is not None:
            expected = self.region_start if self.previous is None else self.previous + 1
            if index != expected:
                self._disable()
                return
            self.previous = index
            self.ring[index] = (frame, {})
            if len(self.ring) > self.lookback:
                del self.ring[next(iter(self.ring))]
        for cut in sorted(cuts):
            if cut <= self.region_start:
                continue
            if self.cuts and cut <= self.cuts[-1]:
                self._disable()  # cuts out of order: nothing here can be trusted
                return
            self._cut(cut)
        if index is None or not self.enabled:
            return
        while self.next_start is not None and self.next_start <= index:
            self._open(self.next_start)
            self.next_start = self.next_start + self.max_len if self.max_len else None
        for start in list(self.needed):
            self._fill(start, index)

    def _cut(self, cut: int) -> None:
        """Scenes before `cut` are final: keep frames only for the clips they give."""
        self.cuts.append(cut)
        kept = plan_clips(self.cuts, (self.region_start, cut), self.fps, self.opts)
        starts = {a for a, _ in kept}
        for start in list(self.clips):
            if start >= cut or start not in starts:
                self._drop(start)
        for start, indices in self.needed.items():
            self.needed[start] = [i for i in indices if i < cut]
        max_scenes = self.opts.get("max_scenes")
        self.next_start = None if max_scenes is not None and len(kept) >= int(max_scenes) else cut

    def _fill(self, start: int, upto: int) -> None:
        todo = self.needed[start]
        made = self.clips[start]
        while todo and todo[0] <= upto:
            entry = self.ring.get(todo[0])
            if entry is None:  # reported after its frames left the lookback
                self._drop(start)
                return
            frame, images = entry
            for resolution, framer in self.framers.items():
                if resolution not in images:
                    images[resolution] = framer(frame)
            made[todo.pop(0)] = images
        if not todo:
            del self.needed[start]

    def frames_for(self, start: int, bucket: Any) -> Any:
        """uint8 [F, H, W, 3] of the clip starting at `start` in `bucket`, or None."""

        made = self.clips.get(start) if self.enabled else None
        if made is None or (bucket.width, bucket.height) not in self.framers:
            return None
        indices = frame_indices(start, bucket.frames, self.fps, self.request.target_fps)
        if any(i not in made for i in indices):
            return None
        return np.ascontiguousarray(np.stack([made[i][(bucket.width, bucket.height)] for i in indices]))


def detect_video(
    uri: str,
    start: int,
    end: int,
    fps: float,
    opts: Mapping[str, Any],
    storage_options: dict[str, Any] | None = None,
    run_segments: Callable[[list[dict[str, Any]]], list[Detection]] | None = None,
    collector: ClipFrames | None = None,
) -> Detection:
    """Cuts of [start, end): one pass, or segments (in parallel where `run_segments` fans them
    out) when the span is longer than `segment_seconds`. Only a one-pass detection feeds the
    `collector` (segments run elsewhere and their frames stay there)."""
    overlap = max(int(math.ceil(float(opts.get("overlap_seconds", 5.0)) * fps)), detector_memory(opts, fps))
    segments = plan_segments(start, end, fps, opts.get("segment_seconds"), overlap)
    calls = [dict(uri=uri, segment=s, fps=fps, opts=dict(opts), storage_options=storage_options) for s in segments]
    if len(calls) > 1 and run_segments is not None:
        return merge_detections(run_segments(calls))
    if len(calls) == 1:
        return detect_segment(**calls[0], collector=collector)
    return merge_detections([detect_segment(**c) for c in calls])


# ---------------------------------------------------------------------------------------------
# Clip files


def _rate(stream: Any) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate)


def write_clip_reencode(
    uri: str,
    dest: str,
    start: int,
    end: int,
    fps: float,
    rotation: int = 0,
    crf: int = 22,
    preset: str = "veryfast",
    audio: bool = True,
    comment: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[int, int, bool]:
    """Frames [start, end) of `uri` as an H.264 (libx264, yuv420p) mp4 at `dest`, with the audio
    of the same time range as AAC. Returns (frames written, frames decoded, has audio)."""
    written = 0
    decoded = 0
    with open_media(uri, storage_options) as source, av.open(source) as src, av.open(dest, "w", format="mp4") as out:
        vin = src.streams.video[0]
        vin.thread_type = "AUTO"
        ain = src.streams.audio[0] if (audio and src.streams.audio) else None
        rate = _rate(vin)
        vout = out.add_stream("libx264", rate=rate)
        vout.pix_fmt = "yuv420p"
        vout.width, vout.height = vin.codec_context.width, vin.codec_context.height  # as stored
        vout.options = {"crf": str(crf), "preset": preset}
        if rotation:
            vout.set_display_rotation(rotation)
        if comment:
            out.metadata["comment"] = comment
        aout = None
        resampler = None
        if ain is not None:
            layout = ain.layout.name if ain.layout else "stereo"
            aout = out.add_stream("aac", rate=ain.rate or 48000, layout=layout)
            resampler = av.AudioResampler(format="fltp", layout=layout, rate=ain.rate or 48000)
        t0 = start / fps
        t1 = end / fps
        video_done = False
        audio_done = ain is None
        v_origin = vin.start_time or 0
        v_tb = float(vin.time_base)
        origin_seconds = v_origin * v_tb
        if start > 0:
            target = v_origin + int(t0 / v_tb)
            src.seek(max(v_origin, target), stream=vin, backward=True)
        previous = -1
        counter = -1
        next_sample = 0  # audio samples written so far
        streams = [vin] + ([ain] if ain is not None else [])
        for packet in src.demux(*streams):
            if video_done and audio_done:
                break
            if packet.stream is vin:
                if video_done:
                    continue
                for frame in packet.decode():
                    counter += 1
                    decoded += 1
                    if frame.pts is None:
                        if start > 0:
                            raise ValueError("frames have no timestamps, so a span cannot be found after a seek")
                        index = counter
                    else:
                        index = int(round((frame.pts - v_origin) * v_tb * fps))
                    if index <= previous:
                        continue
                    previous = index
                    if index < start:
                        continue
                    if index >= end:
                        video_done = True
                        break
                    if frame.format.name != "yuv420p":
                        frame = frame.reformat(format="yuv420p")
                    frame.pts = written  # the clip's own clock: frame i at i / rate
                    frame.time_base = 1 / rate
                    frame.pict_type = av.video.frame.PictureType.NONE  # no keyframe forced where the source had one
                    for p in vout.encode(frame):
                        out.mux(p)
                    written += 1
            elif ain is not None and not audio_done:
                for frame in packet.decode():
                    if frame.pts is None:
                        continue
                    t = float(frame.pts * frame.time_base) - origin_seconds
                    for rframe in resampler.resample(frame):
                        n = rframe.samples
                        sr = rframe.sample_rate
                        a = int(round((t - t0) * sr))  # first sample of this frame, relative to t0
                        total = int(round((t1 - t0) * sr))
                        t += n / sr
                        lo = max(0, next_sample - a)
                        hi = min(n, total - a)
                        if a >= total:
                            audio_done = True
                            break
                        if hi <= lo:
                            continue
                        data = rframe.to_ndarray()[:, lo:hi]
                        chunk = av.AudioFrame.from_ndarray(data.copy(), format="fltp", layout=rframe.layout.name)
                        chunk.sample_rate = sr
                        chunk.pts = None
                        for p in aout.encode(chunk):
                            out.mux(p)
                        next_sample = a + hi
        for p in vout.encode():
            out.mux(p)
        if aout is not None:
            for p in aout.encode():
                out.mux(p)
    return written, decoded, aout is not None and next_sample > 0


def keyframe_range(uri: str, start: int, end: int, fps: float, storage_options: dict[str, Any] | None = None) -> tuple[int, int]:
    """[first, stop) in source frames that a stream copy of [start, end) holds: from the
    keyframe at or before `start` to the keyframe at or after `end` (or the end of the file).
    Reads packets only, decodes nothing."""
    return _copy_packets(uri, start, end, fps, None, storage_options, audio=False)


def _copy_packets(
    uri: str,
    start: int,
    end: int,
    fps: float,
    sink: Callable[[Any, str, float], None] | None,
    storage_options: dict[str, Any] | None,
    audio: bool = True,
) -> tuple[int, int]:
    """Walk the packets a stream copy of [start, end) takes, handing each to `sink(packet, kind,
    base_seconds)`; returns the source frames [first, stop) the copy holds."""
    with open_media(uri, storage_options) as source, av.open(source) as src:
        vin = src.streams.video[0]
        ain = src.streams.audio[0] if (audio and src.streams.audio) else None
        v_origin = vin.start_time or 0
        v_tb = float(vin.time_base)
        if start > 0:
            src.seek(max(v_origin, v_origin + int((start / fps) / v_tb)), stream=vin, backward=True)
        first = None
        stop = None
        base = 0.0  # presentation time (s) of the first copied frame
        last_index = -1
        held_audio: list[tuple[float, Any]] = []  # audio past `end` until the stop keyframe is known
        streams = [vin] + ([ain] if ain is not None else [])
        for packet in src.demux(*streams):
            if packet.pts is None and packet.dts is None:
                continue  # a stream's flush packet
            if packet.stream is vin:
                pts = packet.pts if packet.pts is not None else packet.dts
                index = int(round((pts - v_origin) * v_tb * fps))
                if packet.is_keyframe:
                    if first is None:
                        if index > start:
                            raise ValueError(f"no keyframe at or before frame {start}")
                        first = index
                        base = float(pts * v_tb)
                    elif index >= end:
                        stop = index
                        break
                if first is None or index < first:
                    continue  # leading frames of an open GOP refer to the GOP before
                last_index = max(last_index, index)
                if sink is not None:
                    sink(packet, "video", base)
            elif first is not None and packet.pts is not None:
                t = float(packet.pts * packet.time_base)
                if t < base:
                    continue
                if t - v_origin * v_tb < end / fps:
                    if sink is not None:
                        sink(packet, "audio", base)
                else:
                    held_audio.append((t, packet))
        if first is None:
            raise ValueError(f"no video packets at frame {start}")
        stop = stop if stop is not None else last_index + 1
        if sink is not None:
            for t, packet in held_audio:
                if t - v_origin * v_tb < stop / fps:
                    sink(packet, "audio", base)
    return first, stop


def write_clip_copy(
    uri: str,
    dest: str,
    start: int,
    end: int,
    fps: float,
    rotation: int = 0,
    audio: bool = True,
    comment: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[int, int, bool]:
    """Stream copy (no re-encode) of the packets from the keyframe at or before `start` to the
    keyframe at or after `end`. Returns (first, stop, has audio): the file holds source frames
    [first, stop)."""
    with open_media(uri, storage_options) as source, av.open(source) as src:
        vin = src.streams.video[0]
        ain = src.streams.audio[0] if (audio and src.streams.audio) else None
        with av.open(dest, "w", format=_container_format(dest)) as out:
            vout = out.add_stream_from_template(vin, opaque=True)  # no encoder lookup (AV1 decodes with libdav1d)
            if rotation:
                vout.set_display_rotation(rotation)
            aout = out.add_stream_from_template(ain) if ain is not None else None
            if comment:
                out.metadata["comment"] = comment
            wrote_audio = False

            def sink(packet: Any, kind: str, base: float) -> None:
                nonlocal wrote_audio
                target = vout if kind == "video" else aout
                if target is None:
                    return
                shift = int(round(base / float(packet.time_base)))
                if packet.pts is not None:
                    packet.pts -= shift
                if packet.dts is not None:
                    packet.dts -= shift
                packet.stream = target
                out.mux(packet)
                wrote_audio = wrote_audio or kind == "audio"

            first, stop = _copy_packets(uri, start, end, fps, sink, storage_options, audio=ain is not None)
    return first, stop, wrote_audio


def _container_format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}.get(ext, "mp4")


def clip_name(template: str, parent_uri: str, scene_index: int, start: int, ext: str) -> str:
    """The clip file's name: `template` with {stem}, {scene} (1-based), {hash}, {start}, + ext."""
    stem = os.path.splitext(posixpath.basename(parent_uri.rstrip("/")))[0]
    name = template.format(stem=stem, scene=scene_index + 1, hash=stable_hash(parent_uri, length=8), start=start)
    return name + ext


def _place(local_tmp: str, url: str, storage_options: dict[str, Any] | None) -> None:
    """Move a finished local file to `url` whole or not at all."""
    fs, path = get_fs(url, storage_options)
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(local_tmp, path)
        return
    with open(local_tmp, "rb") as f:
        write_bytes_atomic(fs, path, f.read())
    os.remove(local_tmp)


def _tmp_for(url: str, storage_options: dict[str, Any] | None) -> str:
    """A temp path for a clip: in the destination folder locally (rename is atomic there)."""
    fs, path = get_fs(url, storage_options)
    name = os.path.basename(path)
    if is_local(fs):
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
    else:
        folder = tempfile.gettempdir()
    return os.path.join(folder, f".tmp-{uuid.uuid4().hex}-{name}")


# ---------------------------------------------------------------------------------------------
# Rows


def _int(value: Any, default: int | None = None) -> int | None:
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
        span_start = _int(row.get("start_frame"), 0)
        span_end = _int(row.get("end_frame"), _int(row.get("source_frames")))
        if not fps or span_end is None or span_end <= span_start:
            raise ValueError(f"empty span [{span_start}, {span_end})")
        region = skip_region(span_start, span_end, to_frames(opts.get("skip_start"), fps), to_frames(opts.get("skip_end"), fps))
        if region[1] <= region[0]:
            yield _error(row, f"{uri}: nothing left after skip_start/skip_end ({span_end - span_start} frames)", t0, 0, span_end - span_start)
            return
        collector = None
        if frame_request is not None and opts.get("mode", "virtual") == "virtual":
            collector = ClipFrames(row, region, fps, opts, frame_request)
        detection = detect_video(uri, region[0], region[1], fps, opts, storage_options, run_segments, collector)
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
                clip = _write_clip(clip, row, opts, output, storage_options)
            except Exception as e:  # noqa: BLE001
                reason = str(e).strip() or type(e).__name__
                failed = error_row(clip, STAGE, f"{uri}: writing clip {i + 1} failed ({reason})")
                yield failed
                continue
        yield clip


def attach_frames(clip: dict[str, Any], collector: ClipFrames, request: FrameRequest) -> None:
    """Give a clip row the frames `prepare` would decode for it, when detection made them."""

    clip["frames"], clip[FRAMES_FOR] = NO_FRAMES, None
    bucketed = assign_bucket(clip, list(request.buckets), request.target_fps)
    if is_error(bucketed):
        return
    w, h, f = (int(v) for v in bucketed["bucket"].split("x"))

    frames = collector.frames_for(int(clip["start_frame"]), Bucket(w, h, f))
    if frames is not None:
        clip["frames"], clip[FRAMES_FOR] = frames, bucketed["sample_id"]


def _write_clip(clip: dict[str, Any], row: dict[str, Any], opts: Mapping[str, Any], output: str | None, so: dict[str, Any] | None) -> dict[str, Any]:
    if not output:
        raise ValueError("mode reencode/copy needs an output location")
    mode = opts["mode"]
    uri = row["uri"]
    a, b = clip["parent_start_frame"], clip["parent_end_frame"]
    fps = float(row["fps"])
    ext = ".mp4" if mode == "reencode" else (os.path.splitext(uri)[1].lower() or ".mp4")
    url = join(output, "clips", clip_name(opts.get("clip_name", "{stem}-Scene-{scene:03d}"), uri, clip["scene_index"], a, ext))
    tmp = _tmp_for(url, so)
    comment = f"latentforge clip: {uri} frames [{a}, {b})"
    rotation = _int(row.get("rotation"), 0) or 0
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
        _place(tmp, url, so)
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


# ---------------------------------------------------------------------------------------------
# Manifest lines and part files (resume)


_SPEED_ONLY = ("enabled", "segment_seconds", "overlap_seconds", "shared_decode_mb")


def part_key(uri: str, start: Any, end: Any, opts: Mapping[str, Any]) -> str:
    """Id of one source's clip list: the source, its span as given, and every option that
    changes clips (not `enabled`, `segment_seconds`, `overlap_seconds`, `shared_decode_mb`: those
    change speed only)."""
    relevant = {k: v for k, v in sorted(opts.items()) if k not in _SPEED_ONLY}
    return stable_hash(uri, _int(start, 0), _int(end), json.dumps(relevant, sort_keys=True, default=str), length=24)


def row_part_key(row: dict[str, Any], opts: Mapping[str, Any]) -> str:
    """`part_key` of a probed row: its end counts only when it stops before the file does."""
    end = _int(row.get("end_frame"))
    frames = _int(row.get("source_frames"))
    if end is not None and frames is not None and end >= frames:
        end = None
    return part_key(row["uri"], row.get("start_frame"), end, opts)


def manifest_line(row: dict[str, Any]) -> dict[str, Any]:
    """A clip row as a clips.jsonl line (LTX-2 style; `media_path` absolute here)."""
    line: dict[str, Any] = {
        "media_path": row["uri"],
        "start_frame": _int(row.get("start_frame")),
        "end_frame": _int(row.get("end_frame")),
        "fps": float(row["fps"]) if has_value(row.get("fps")) else None,
        "scene_index": _int(row.get("scene_index")),
        "caption": row.get("caption") if has_value(row.get("caption")) else None,
        "parent_uri": row.get("parent_uri"),
        "parent_start_frame": _int(row.get("parent_start_frame")),
        "parent_end_frame": _int(row.get("parent_end_frame")),
        "start_time": row.get("start_time"),
        "end_time": row.get("end_time"),
    }
    for key, value in row.items():
        if key.startswith("_") or key in line or key in _NOT_IN_MANIFEST:
            continue
        line[key] = plain(value)
    return line


def plain(value: Any) -> Any:
    """numpy scalars/arrays and NaN (what Ray Data batches make of values) -> JSON values."""
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


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

