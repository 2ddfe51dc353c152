"""The `reference` section: IC-LoRA reference videos (docs/config.md, docs/decisions.md).

`kind` says where a target's reference comes from: `none` (no references), `manifest` (the
manifest's `reference` column, or one of LTX-2's names for it), `canny` (Canny edges of the
target's own prepared frames, OpenCV; rows whose manifest names a reference keep theirs). The
scale factors are LTX-2's `--reference-downscale-factor` / `--reference-temporal-scale-factor`
(ltx-trainer scripts/process_dataset.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from latentforge.buckets import Bucket
from latentforge.config.base import ConfigError, _Section


class ReferenceConfig(_Section):
    kind: Literal["none", "manifest", "canny"] = Field(
        "none", description="none; manifest: the manifest's reference column; canny: Canny edges of the target's frames "
        "for rows whose manifest names no reference"
    )
    canny_low: int = Field(100, ge=0, le=255, description="cv2.Canny threshold1 (LTX-2's compute_reference.py: 100)")
    canny_high: int = Field(200, ge=0, le=255, description="cv2.Canny threshold2 (LTX-2's compute_reference.py: 200)")
    downscale_factor: int = Field(1, ge=1, description="reference at 1/N of the target's width and height (LTX-2 --reference-downscale-factor)")
    temporal_scale_factor: int = Field(
        1, ge=1, description="keep frame 0, then every Nth frame of the target's frames (LTX-2 --reference-temporal-scale-factor)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> "ReferenceConfig":
        if self.canny_low > self.canny_high:
            raise ValueError(f"reference.canny_low {self.canny_low} is above canny_high {self.canny_high}")
        return self


def reference_bucket(bucket: Bucket, ref: ReferenceConfig) -> Bucket:
    """The size and frame count of a target's reference: the target's bucket scaled down by
    `downscale_factor`, with the frames temporal subsampling keeps."""
    frames = 1 if bucket.frames == 1 else (bucket.frames - 1) // ref.temporal_scale_factor + 1
    return Bucket(bucket.width // ref.downscale_factor, bucket.height // ref.downscale_factor, frames)


def check_reference_buckets(buckets: list[Bucket], ref: ReferenceConfig, preset: Any) -> None:
    """LTX-2's checks (process_dataset / compute_scaled_resolution_buckets / compute_latents):
    each bucket's reference must still be a size and frame count the VAE takes."""
    if ref.kind == "none":
        return
    d, k = ref.downscale_factor, ref.temporal_scale_factor
    for b in buckets:
        if b.width % d or b.height % d or (b.width // d) % preset.spatial_multiple or (b.height // d) % preset.spatial_multiple:
            raise ConfigError(
                f"reference.downscale_factor {d}: bucket {b} gives a {b.width / d:g}x{b.height / d:g} reference; "
                f"width and height must divide by {d} into multiples of {preset.spatial_multiple}"
            )
        if b.frames > 1 and k > 1:
            n = (b.frames - 1) // k + 1
            if (b.frames - 1) % k or n % preset.frame_modulus != preset.frame_remainder % preset.frame_modulus:
                raise ConfigError(
                    f"reference.temporal_scale_factor {k}: bucket {b} ({b.frames} frames) needs (frames - 1) divisible by {k} "
                    f"and {n} kept frames to be {preset.frame_modulus}k + {preset.frame_remainder}"
                )
