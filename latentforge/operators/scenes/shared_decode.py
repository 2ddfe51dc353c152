"""One decode per video: the bucket frames `prepare` needs, made from the frames detection
decodes (docs/scenes.md, "One decode per video"). Both number frames with the frame clock and
make images with `BucketFramer`, so the frames are byte-equal to `prepare`'s own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from latentforge.buckets import Bucket, choose_bucket, frame_indices
from latentforge.operators.frames import FRAMES_FOR, NO_FRAMES, BucketFramer, assign_bucket
from latentforge.operators.scenes.detect import detector_memory
from latentforge.operators.scenes.spans import plan_clips, to_frames
from latentforge.rows import is_error


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
    reported after its frames left the lookback, frames beyond `budget_mb`. Frames come numbered
    by the frame clock (every index once, in order, also at a variable rate); a pass that breaks
    that is not used.
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
            held = self.ring.get(index - 1)
            self.previous = index
            # a slot a variable rate skipped holds the next frame: its images are made once
            self.ring[index] = held if held is not None and held[0] is frame else (frame, {})
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
