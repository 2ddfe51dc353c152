"""The one frame clock: which decoded frame is frame i of a video.

prepare (frames.py), captioning, scene detection, the frames detection makes for prepare (one
decode per video) and the clip writers all number frames here, so a frame index means the same
picture everywhere (docs/decisions.md, "Buckets and frames"):

- The rate is the stream's `average_rate`, else `guessed_rate`, else `base_rate`: probe's rule,
  so a row's `fps` is the clock's rate.
- A frame's time in frames is `(pts - start_time) * time_base * rate`, rounded half up. Frame i
  is the first frame shown whose time rounds to i or more: with a variable frame rate a second
  frame in the same slot adds nothing and a slot no frame reaches takes the next frame shown.
  On a constant frame rate this is decode order.
- A frame without a timestamp comes one frame after the frame before it (a stream without any
  is counted from the file start). After a seek a span cannot be found without timestamps: an
  error. A file that cannot seek is decoded from its start.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Iterator

_HALF = Fraction(1, 2)


def stream_rate(stream: Any) -> Fraction:
    """A stream's frame rate: `average_rate`, else `guessed_rate`, else `base_rate` (probe's
    order: the average keeps indices, durations and a row's fps on one scale)."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise ValueError("no frame rate in the container")
    return Fraction(rate)


class FrameClock:
    """Presentation times <-> frame indices of one video stream (exact arithmetic)."""

    def __init__(self, stream: Any):
        self.rate = stream_rate(stream)
        self.origin = int(stream.start_time or 0)
        self.frames_per_tick = Fraction(stream.time_base) * self.rate

    def index_at(self, pts: int) -> int:
        """The frame slot a timestamp falls in (rounded half up)."""
        return math.floor((pts - self.origin) * self.frames_per_tick + _HALF)

    def nominal_pts(self, index: int) -> int:
        """Where frame `index` would be shown at a constant rate (rounded down to a tick)."""
        return self.origin + math.floor(index / self.frames_per_tick)

    def earliest_pts(self, index: int) -> int:
        """The least timestamp whose slot is `index` or later."""
        return self.origin + math.ceil((index - _HALF) / self.frames_per_tick)

    def numbering(self, start_frame: int = 0, after_seek: bool = False) -> "FrameNumbers":
        return FrameNumbers(self, start_frame, after_seek)


class FrameNumbers:
    """One pass over decoded frames: the indices (>= start_frame, each once, in order) that
    each frame is, by the clock's rule. For callers that decode packets themselves."""

    def __init__(self, clock: FrameClock, start_frame: int, after_seek: bool):
        self.clock = clock
        self.next = start_frame  # the next index to hand out
        self.slot: int | None = None if after_seek else -1  # slot of the frame before (unknown after a seek)

    def indices(self, frame: Any) -> range:
        if frame.pts is not None:
            slot = self.clock.index_at(frame.pts)
        elif self.slot is None:
            raise ValueError("frames have no timestamps, so a span cannot be found after a seek")
        else:
            slot = self.slot + 1
        self.slot = slot
        if slot < self.next:
            return range(0)  # before the start, or a second frame in a slot already given
        given = range(self.next, slot + 1)
        self.next = slot + 1
        return given


def seek_to_frame(container: Any, stream: Any, start_frame: int, clock: FrameClock) -> bool:
    """Seek so that decoding reaches every frame that can be frame `start_frame`: to the
    keyframe at or before its nominal time, or further back when that keyframe lies after the
    earliest time frame `start_frame` can have and a frame before the keyframe falls in between
    (variable rate, or a demuxer that seeks by decode time). Returns whether a seek happened
    (False: decoding starts at the file start)."""
    if start_frame <= 0:
        return False
    earliest = clock.earliest_pts(start_frame)
    nominal = max(clock.origin, clock.nominal_pts(start_frame))
    try:
        keyframe = _seek(container, stream, nominal)
    except OSError:
        return False  # not seekable (a raw elementary stream): decode from the start
    target = nominal
    if keyframe is not None and keyframe > max(earliest, clock.origin):
        behind, step = None, max(1, nominal - earliest)
        for _ in range(32):  # back until the landing keyframe is before every candidate
            back = max(clock.origin, earliest - step)
            behind = _seek(container, stream, back)
            if behind is None or behind < earliest or back == clock.origin:
                break
            step *= 4
        if behind is not None and (earliest <= behind < keyframe or _any_pts_in(container, stream, earliest, keyframe)):
            target = back
    container.seek(target, stream=stream, backward=True)
    return True


def _seek(container: Any, stream: Any, pts: int) -> int | None:
    """Seek to the keyframe at or before `pts` (as the demuxer finds it); its pts."""
    container.seek(pts, stream=stream, backward=True)
    for packet in container.demux(stream):
        if packet.pts is not None:
            return packet.pts
        if packet.dts is None and packet.size == 0:
            break  # end of the stream
    return None


def _any_pts_in(container: Any, stream: Any, low: int, keyframe: int) -> bool:
    """Whether a packet from here up to the keyframe at `keyframe` has pts in [low, keyframe)."""
    for packet in container.demux(stream):
        if packet.pts is None:
            if packet.dts is None and packet.size == 0:
                break
            continue
        if packet.pts >= keyframe:
            break
        if packet.pts >= low:
            return True
    return False


def iter_indexed_frames(
    container: Any, stream: Any, start_frame: int = 0, stats: dict[str, int] | None = None
) -> Iterator[tuple[int, Any]]:
    """(index, frame) for start_frame, start_frame + 1, ... until the stream ends: a seek when
    the span starts after frame 0, then the clock's rule. A frame may come under several
    indices (slots a variable rate skips). `stats["decoded"]` counts every frame decoded."""
    clock = FrameClock(stream)
    numbers = clock.numbering(start_frame, seek_to_frame(container, stream, start_frame, clock))
    if stats is not None:
        stats.setdefault("decoded", 0)
    for frame in container.decode(stream):
        if stats is not None:
            stats["decoded"] += 1
        for index in numbers.indices(frame):
            yield index, frame
