"""Scene detection: PySceneDetect's detectors fed small frames made by FFmpeg's scaler, a decode
thread running ahead of the detector, and a long video cut into segments that can run in
parallel (`plan_segments` / `detect_segment` / `merge_detections`).

Frames are numbered by the frame clock (`operators.frame_clock`), the rule `prepare` uses, so a
segment that starts mid-file numbers frames as a pass from the start would, and the frames
handed to a `ClipFrames` collector are the ones `prepare` would decode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import av

from latentforge.operators.frame_clock import iter_indexed_frames
from latentforge.operators.probe import open_media
from latentforge.operators.scenes.spans import Segment, idle_parts, plan_segments, to_frames

DETECTORS = ("content", "adaptive", "threshold", "histogram", "hash")


class FrameSink(Protocol):
    """What sees a one-pass detection's frames and cuts as they come (`ClipFrames`)."""

    def add(self, index: int | None, frame: Any, cuts: Sequence[int]) -> None: ...


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


@dataclass
class Detection:
    cuts: list[int]
    last_frame: int  # last frame index the detector saw (-1: none)
    decoded: int  # frames decoded, including those between the keyframe and decode_start


def small_frames(
    uri: str,
    segment: Segment,
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
    counts: dict[str, int] = {}
    shown, small = None, None
    try:
        with open_media(uri, storage_options) as source, av.open(source) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in iter_indexed_frames(container, stream, segment.decode_start, counts):
                if index >= segment.decode_end:
                    break
                if dims is None:
                    dims = detect_size(frame.width, frame.height, size)
                if frame is not shown:  # a slot a variable rate skipped shows the next frame again
                    shown = frame
                    small = reformatter.reformat(frame, dims[0], dims[1], "bgr24", interpolation="AREA").to_ndarray()
                yield index, small, frame
    finally:
        if stats is not None:
            stats["decoded"] = counts.get("decoded", 0)


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
    collector: FrameSink | None = None,
) -> Detection:
    """Run the configured detector over one segment; returns the cuts in its own range.
    A `collector` sees every decoded frame and every cut as it is found (one decode per video)."""
    from scenedetect.common import FrameTimecode

    detector = make_detector(opts, fps)
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    cuts: list[Any] = []
    last = -1
    stats: dict[str, int] = {}
    frames = small_frames(uri, segment, int(opts.get("detect_size", 256)), storage_options, stats)
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


def detect_video(
    uri: str,
    start: int,
    end: int,
    fps: float,
    opts: Mapping[str, Any],
    storage_options: dict[str, Any] | None = None,
    run_segments: Callable[[list[dict[str, Any]]], list[Detection]] | None = None,
    collector: FrameSink | None = None,
    idle_cpus: Callable[[], int] | None = None,
) -> Detection:
    """Cuts of [start, end): one pass, or segments (in parallel where `run_segments` fans them
    out) when the span is longer than `segment_seconds`, or when `idle_cpus()` says CPUs wait
    for work as the video starts (`idle_parts`). Only a one-pass detection feeds the
    `collector` (segments run elsewhere and their frames stay there), so a video whose frames
    feed one is cut only past `segment_seconds`."""
    overlap = max(int(math.ceil(float(opts.get("overlap_seconds", 5.0)) * fps)), detector_memory(opts, fps))
    parts = 1
    shortest = opts.get("min_segment_seconds")
    if run_segments is not None and collector is None and idle_cpus is not None and shortest and end - start >= 2 * shortest * fps:
        parts = idle_parts(end - start, fps, idle_cpus(), shortest)
    segments = plan_segments(start, end, fps, opts.get("segment_seconds"), overlap, parts)
    calls = [dict(uri=uri, segment=s, fps=fps, opts=dict(opts), storage_options=storage_options) for s in segments]
    if len(calls) > 1 and run_segments is not None:
        return merge_detections(run_segments(calls))
    if len(calls) == 1:
        return detect_segment(**calls[0], collector=collector)
    return merge_detections([detect_segment(**c) for c in calls])
