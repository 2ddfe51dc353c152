"""How a VAE encode stays within a GPU's memory: which of diffusers' switches to turn on for a
bucket (spatial tiling, frame-wise encoding), and how many clips share one call.

An encode's peak activation memory is estimated as bytes-per-voxel x the frames the encoder
holds at once x the pixels of a frame (or of a tile, when tiled). The frames held at once
follow each class's own encode loop: the Wan VAEs go through time causally in chunks of four
frames with a feature cache, CogVideoX in batches of eight, HunyuanVideo frame-wise in tiles of
16 frames by default, and the LTX VAEs take every frame at once unless frame-wise encoding is
on. The bytes per voxel were measured with `benchmarks/vae_memory_calibrate.py` on the
full-size architectures (float32 on the CPU; scaled by the compute dtype's size). Only a share
of the memory left after the weights is planned with (`USABLE_SHARE`): the CUDA caching
allocator, cuDNN workspaces and fragmentation take the rest. docs/models.md, "VAE memory",
lists the thresholds this gives for the documented buckets.

Tiling changes latents slightly (tiles are blended where they overlap), so the choice depends
only on the bucket, the dtype and the GPU's memory, is reported per bucket by `plan`, and can be
pinned with `encode_video.tiling` / `encode_video.framewise` for an output made on mixed GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

# float32 activation bytes per voxel held at once, measured 2026-11-30 by
# benchmarks/vae_memory_calibrate.py (the published configs, random weights, on the CPU): the
# slope over 9-frame clips of 64^2 and 128^2, per frame held at once (Wan: 4 of the 9; the
# others all 9), rounded up. Wan is the larger of Wan 2.1 (3159) and Wan 2.2 (2423).
BYTES_PER_VOXEL: dict[str, float] = {
    "wan": 3200.0,
    "ltx-video": 450.0,
    "ltx2": 4300.0,
    "cogvideox": 3400.0,
    "hunyuanvideo": 3400.0,
}
# Parameters of the full-size encoders+decoders (the same calibration run), for `plan`'s
# thresholds; the actor counts its own loaded weights instead.
PARAMS: dict[str, float] = {"wan": 705e6, "ltx-video": 419e6, "ltx2": 1223e6, "cogvideox": 216e6, "hunyuanvideo": 247e6}
# A tile's (height, width) in pixels when tiled: the classes' tile_sample_min_height / _width
# (CogVideoX's are half its 480x720 sample size). Wan 2.2 tiles after its 2x2 patchify, so its
# tiles cover twice the pixels each way (`tile_scale`, the VAE's patch_size).
TILE: dict[str, tuple[int, int]] = {
    "wan": (256, 256), "ltx-video": (512, 512), "ltx2": (512, 512), "cogvideox": (240, 360), "hunyuanvideo": (256, 256),
}
FRAMEWISE_FRAMES = 16  # tile_sample_min_num_frames of the LTX and HunyuanVideo VAEs
USABLE_SHARE = 0.7
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class MemoryPlan:
    tiling: bool
    framewise: bool
    micro_batch: int
    clip_bytes: int  # estimated peak activation bytes of one clip with these switches
    fits: bool  # False: even with every switch on, one clip is estimated above the budget


def frames_at_once(family: str, frames: int, framewise: bool) -> int:
    """The frames an encode holds activations for at once, by the class's own loop."""
    if family == "wan":
        return min(frames, 4)
    if family == "cogvideox":  # batches of 8 frames, the first one taking the remainder
        return frames if frames < 16 else 8 + frames % 8
    if family in ("hunyuanvideo", "ltx-video", "ltx2") and framewise:
        return min(frames, FRAMEWISE_FRAMES)
    return frames


def has_framewise(family: str) -> bool:
    return family in ("hunyuanvideo", "ltx-video", "ltx2")


def clip_bytes(family: str, frames: int, height: int, width: int, dtype: str, tiling: bool, framewise: bool, tile_scale: int = 1) -> int:
    """Estimated peak activation bytes of one clip's encode."""
    tile_h, tile_w = (edge * tile_scale for edge in TILE[family])
    h, w = (min(height, tile_h), min(width, tile_w)) if tiling else (height, width)
    per_voxel = BYTES_PER_VOXEL[family] * DTYPE_BYTES[dtype] / 4
    return int(per_voxel * frames_at_once(family, frames, framewise) * h * w)


def plan_memory(
    family: str,
    frames: int,
    height: int,
    width: int,
    dtype: str,
    memory_bytes: int | None,
    weights_bytes: int,
    batch_size: int,
    tiling: str = "auto",
    framewise: str = "auto",
    tile_scale: int = 1,
) -> MemoryPlan:
    """The switches and micro-batch for one bucket on a device with `memory_bytes` (None: the
    CPU, where RAM is not planned for: no switch unless asked, the configured batch size).

    "auto" turns a switch on only when one clip does not fit without it: frame-wise encoding
    first where the class has it (exact for HunyuanVideo's default; it bounds the LTX VAEs'
    memory in time), then spatial tiling. The micro-batch is as many clips as fit, at most
    `batch_size`, at least one."""
    default_framewise = family == "hunyuanvideo"  # the class's own default
    use_framewise = {"on": True, "off": False}.get(framewise, default_framewise) and has_framewise(family)
    use_tiling = tiling == "on"
    if memory_bytes is None:
        return MemoryPlan(use_tiling, use_framewise, batch_size, clip_bytes(family, frames, height, width, dtype, use_tiling, use_framewise, tile_scale), True)
    budget = max(0, memory_bytes - weights_bytes) * USABLE_SHARE

    def need() -> int:
        return clip_bytes(family, frames, height, width, dtype, use_tiling, use_framewise, tile_scale)

    if framewise == "auto" and has_framewise(family) and need() > budget:
        use_framewise = True
    if tiling == "auto" and need() > budget:
        use_tiling = True
    per_clip = need()
    micro_batch = max(1, min(batch_size, int(budget // per_clip) if per_clip else batch_size))
    return MemoryPlan(use_tiling, use_framewise, micro_batch, per_clip, per_clip <= budget)


def switch_threshold_bytes(family: str, frames: int, height: int, width: int, dtype: str) -> int:
    """GPU memory below which "auto" turns a memory switch on for this bucket."""
    need = clip_bytes(family, frames, height, width, dtype, False, family == "hunyuanvideo")
    return int(need / USABLE_SHARE + PARAMS[family] * DTYPE_BYTES[dtype])


def describe_thresholds(family: str, buckets: list, dtype: str) -> str:
    """`plan`'s line: per bucket, the GPU memory below which tiling or frame-wise encoding turns on."""
    parts = []
    for b in buckets:
        gib = switch_threshold_bytes(family, b.frames, b.height, b.width, dtype) / 2**30
        parts.append(f"{b} {'tiled' if not has_framewise(family) else 'frame-wise/tiled'} below {gib:.0f} GiB")
    return "memory rule: " + ", ".join(parts)
