"""Span math of split_scenes (pure): durations in frames, the region left after skips, the clip
list from a cut list, and the segments a long video is detected in. docs/scenes.md ("The clip
list, step by step") is the contract these functions implement."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

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
# Segments


def idle_parts(length: int, fps: float, idle_cpus: int, min_segment_seconds: float | None) -> int:
    """How many segments a video of `length` frames is cut into so that CPUs idle as it starts
    work on it too: one per idle CPU besides its own, none shorter than `min_segment_seconds`.
    A segment also reads the overlap either side, so short segments cost more than they save."""
    if not min_segment_seconds or idle_cpus <= 0 or not fps:
        return 1
    longest = int(length // (min_segment_seconds * float(fps)))
    return max(1, min(1 + int(idle_cpus), longest))


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


def plan_segments(
    start: int, end: int, fps: float, segment_seconds: float | None, overlap_frames: int, parts: int = 1
) -> list[Segment]:
    """[start, end) as one segment, or as n equal segments of at most `segment_seconds`, and at
    least `parts` of them (`idle_parts`)."""
    length = end - start
    seg = int(round((segment_seconds or 0) * fps))
    n = max(math.ceil(length / seg) if seg > 0 else 1, min(parts, length), 1)
    if n == 1:
        return [Segment(0, start, end, start, end, True)]
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
