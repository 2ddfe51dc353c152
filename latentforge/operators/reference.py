"""reference: each target's IC-LoRA reference frames, made on the CPU side beside `prepare`.

A reference is prepared the target's way, as LTX-2's trainer does (ltx-trainer
scripts/process_videos.py, `MediaDataset` with `main_media_column`): the target's bucket (scaled
down by `downscale_factor`), the same cover resize and center crop, the same frames (the
target's source frame indices: a reference is frame-aligned with its target), then LTX-2's
VAE-aligned temporal subsampling (`_compute_temporal_subsample_indices`: frame 0, then every
k-th frame from frame 1). Two sources:

- the manifest's `reference` (formats/references.py): that file is decoded;
- `canny`: Canny edges of the target's own prepared frames (OpenCV, as LTX-2's
  scripts/compute_reference.py: grayscale, cv2.Canny(low, high), the edge map on all three
  channels), for rows whose manifest names no reference.

The frames leave as `reference_frames` (uint8 [F_r, H_r, W_r, 3]); encode_video turns them into
`reference_latent_*` (operators/reference_encode.py). No torch here: CPU workers import this.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from latentforge.buckets import Bucket, frame_indices
from latentforge.formats.references import REFERENCE
from latentforge.operators.base import Resources
from latentforge.operators.frames import NO_FRAMES, decode_video_frames, load_image
from latentforge.operators.probe import open_media, probe_video
from latentforge.operators.time_limit import SampleTimeout, sample_limit, within
from latentforge.rows import error_row, has_value, is_error

RESOURCES = Resources(num_cpus=1)
STAGE = "reference"
FRAMES = "reference_frames"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def subsample_positions(num_frames: int, factor: int) -> list[int]:
    """LTX-2's VAE-aligned temporal subsampling: frame 0 (the VAE's lone first latent frame),
    then every `factor`-th frame from frame 1, so each kept group of the VAE spans `factor` of
    the target's. Positions into the target's `num_frames` frames."""
    if factor <= 1 or num_frames <= 1:
        return list(range(num_frames))
    return [0, *range(1, num_frames, factor)]


def canny_frames(frames: np.ndarray, low: int, high: int) -> np.ndarray:
    """uint8 RGB [F, H, W, 3] -> Canny edge frames, uint8 [F, H, W, 3], 0 or 255 on all channels."""
    import cv2  # only the canny kind needs OpenCV

    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        edges = cv2.Canny(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY), low, high)
        out[i] = edges[:, :, None]
    return out


def downscale(frames: np.ndarray, size: Bucket) -> np.ndarray:
    """Frames resized to `size` (area filter), for references of a downscale_factor above 1."""
    if frames.shape[1:3] == (size.height, size.width):
        return frames
    import cv2

    return np.stack([cv2.resize(f, (size.width, size.height), interpolation=cv2.INTER_AREA) for f in frames])


def _decode_reference(uri: str, indices: Sequence[int], size: Bucket, resize_filter: str, storage_options: Any, stats: dict) -> np.ndarray:
    with open_media(uri, storage_options) as source:
        if uri.split("?", 1)[0].lower().endswith(IMAGE_EXTENSIONS):
            return load_image(source, size, resize_filter)  # one frame, as LTX-2 prepares an image
        rotation = int(probe_video(source)["rotation"])
    with open_media(uri, storage_options) as source:
        return decode_video_frames(source, min(indices), indices, size, rotation, resize_filter, stats)


def _target_indices(row: dict[str, Any], frames: int, target_fps: float | None) -> list[int]:
    """The target's frames as indices of the file its reference is aligned with: the source
    file, also for a clip that split_scenes wrote as its own file (`split.mode: copy|reencode`,
    whose row counts frames in the clip file and keeps `parent_start_frame`)."""
    start = int(row.get("start_frame") or 0)
    offset = 0
    if has_value(row.get("parent_start_frame")) and has_value(row.get("parent_uri")) and row["parent_uri"] != row["uri"]:
        offset = int(row["parent_start_frame"]) - start
    if row.get("media_type") == "image" or frames == 1:
        return [start + offset]
    source_fps = float(row.get("source_fps") or row["fps"])
    return [i + offset for i in frame_indices(start, frames, source_fps, target_fps)]


def make_reference(
    row: dict[str, Any],
    kind: str,
    canny_low: int = 100,
    canny_high: int = 200,
    downscale_factor: int = 1,
    temporal_scale_factor: int = 1,
    target_fps: float | None = None,
    resize_filter: str = "area",
    storage_options: dict[str, Any] | None = None,
    time_limit: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Row with prepared `frames` -> row with `reference_frames`, `reference` (the file, or
    `canny:<low>-<high>` for generated ones) and `reference_fps`; a reference that cannot be
    read makes the row an error naming the file."""
    out = {REFERENCE: None, "reference_fps": None, **row, FRAMES: NO_FRAMES}
    out.setdefault("_seconds_reference", 0.0)
    out.setdefault("_decoded_frames_reference", 0)
    frames = row.get("frames")
    if is_error(row) or row.get("_done") or frames is None or np.size(frames) == 0:
        return out
    t0 = time.perf_counter()
    w, h, f = (int(v) for v in row["bucket"].split("x"))
    size = Bucket(w // downscale_factor, h // downscale_factor, f)
    keep = subsample_positions(f, temporal_scale_factor)
    ref = row.get(REFERENCE)
    if has_value(ref):
        indices = [_target_indices(row, f, target_fps)[p] for p in keep]
        stats = {"decoded": 0}
        try:
            limit = sample_limit(max(indices) - min(indices) + 1, *time_limit) if time_limit is not None else None
            ref_frames = within(limit, _decode_reference, str(ref), indices, size, resize_filter, storage_options, stats)
        except FileNotFoundError:
            return error_row(out, STAGE, f"{row['uri']}: reference file not found ({ref})")
        except SampleTimeout as e:
            return error_row(out, STAGE, f"{row['uri']}: reference timed out decoding ({ref}: {e}; prepare.time_limit_s)")
        except Exception as e:  # noqa: BLE001 - a bad reference fails its row, not the job
            reason = str(e).strip() or type(e).__name__
            return error_row(out, STAGE, f"{row['uri']}: reference decode failed ({ref}: {reason})")
        out["_decoded_frames_reference"] = stats.get("decoded", 0)
    elif kind == "canny":
        edges = canny_frames(np.asarray(frames, dtype=np.uint8)[keep], canny_low, canny_high)
        ref_frames = downscale(edges, size)
        out[REFERENCE] = f"canny:{canny_low}-{canny_high}"
    else:
        return error_row(out, STAGE, f"{row['uri']}: no reference (reference.kind: manifest needs a reference column value on every row)")
    out[FRAMES] = np.ascontiguousarray(ref_frames, dtype=np.uint8)
    fps = float(row.get("fps") or 0.0)
    out["reference_fps"] = fps / temporal_scale_factor if len(ref_frames) > 1 else fps  # process_videos: fps / factor
    out["_seconds_reference"] = time.perf_counter() - t0
    return out
