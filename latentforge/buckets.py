"""Resolution/frame buckets: parsing, validation against a VAE's rules, choice per clip.

Pure functions, no models and no Ray, so the bucket math is unit-tested as a table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True, order=True)
class Bucket:
    width: int
    height: int
    frames: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"

    @property
    def log_aspect(self) -> float:
        return math.log(self.width / self.height)

    @property
    def area(self) -> int:
        return self.width * self.height


class BucketError(ValueError):
    """A bucket string that cannot be used with the chosen VAE."""


def parse_bucket(text: str) -> Bucket:
    parts = text.strip().lower().split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise BucketError(f"bucket {text.strip()!r} is not WxHxF (for example 832x480x49)")
    w, h, f = (int(p) for p in parts)
    if min(w, h, f) <= 0:
        raise BucketError(f"bucket {text.strip()!r}: width, height and frames must be positive")
    return Bucket(w, h, f)


def parse_buckets(spec: str | Iterable[str]) -> list[Bucket]:
    """'832x480x49;480x832x49' (or a list of such strings) -> unique buckets, in given order."""
    items = spec.split(";") if isinstance(spec, str) else list(spec)
    out: list[Bucket] = []
    for item in items:
        if item.strip():
            b = parse_bucket(item)
            if b not in out:
                out.append(b)
    if not out:
        raise BucketError("no buckets given: expected 'WxHxF;WxHxF;...'")
    return out


def validate_buckets(
    buckets: Sequence[Bucket], spatial_multiple: int, frame_modulus: int, frame_remainder: int, model: str
) -> None:
    """Raise with every offending bucket and the rule it breaks, before any work starts."""
    problems = []
    for b in buckets:
        if b.width % spatial_multiple or b.height % spatial_multiple:
            problems.append(f"{b}: width and height must be multiples of {spatial_multiple}")
        if b.frames % frame_modulus != frame_remainder % frame_modulus:
            problems.append(f"{b}: frames must satisfy F % {frame_modulus} == {frame_remainder}")
    if problems:
        raise BucketError(f"buckets not valid for model {model!r}: " + "; ".join(problems))


def available_frames(num_frames: int, source_fps: float, target_fps: float | None) -> int:
    """How many frames a span of `num_frames` source frames yields at `target_fps`."""
    if num_frames <= 0:
        return 0
    step = frame_step(source_fps, target_fps)
    return int(math.floor((num_frames - 1) / step + 1e-9)) + 1


def frame_step(source_fps: float, target_fps: float | None) -> float:
    """Source frames per output frame. Only downsampling: a higher target keeps the source rate."""
    if not target_fps or not source_fps or target_fps >= source_fps:
        return 1.0
    return source_fps / target_fps


def frame_indices(start_frame: int, count: int, source_fps: float, target_fps: float | None) -> list[int]:
    """Source frame indices of the first `count` output frames of a span (nearest-earlier frame)."""
    step = frame_step(source_fps, target_fps)
    return [start_frame + int(math.floor(i * step + 1e-9)) for i in range(count)]


def choose_bucket(
    buckets: Sequence[Bucket], width: int, height: int, frames: int, is_image: bool = False
) -> Bucket | None:
    """LTX-2's rule: nearest log aspect ratio, then the most frames the clip has, then largest area.

    Videos only use buckets with F > 1 (a video never becomes a still); images use F = 1
    buckets, or, when none are configured, the video buckets' resolutions at F = 1. Returns
    None when the clip is shorter than every candidate bucket.
    """
    if is_image:
        stills = [b for b in buckets if b.frames == 1]
        candidates = stills or sorted({Bucket(b.width, b.height, 1) for b in buckets})
    else:
        candidates = [b for b in buckets if 1 < b.frames <= frames]
    if not candidates:
        return None
    aspect = math.log(width / height)
    return min(
        candidates,
        key=lambda b: (round(abs(b.log_aspect - aspect), 9), -b.frames, -b.area),
    )


@dataclass(frozen=True)
class ResizePlan:
    """Scale to (resize_width, resize_height) keeping aspect, then crop the bucket at (left, top)."""

    resize_width: int
    resize_height: int
    left: int
    top: int


def cover_resize(width: int, height: int, bucket_width: int, bucket_height: int) -> ResizePlan:
    """Smallest aspect-preserving size that covers the bucket, and the centered crop offset."""
    scale = max(bucket_width / width, bucket_height / height)
    rw = max(bucket_width, int(math.ceil(width * scale - 1e-6)))
    rh = max(bucket_height, int(math.ceil(height * scale - 1e-6)))
    return ResizePlan(rw, rh, (rw - bucket_width) // 2, (rh - bucket_height) // 2)
