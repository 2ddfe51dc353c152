"""Activation memory per voxel of each full-size VAE's encode, measured on the CPU (issue 12).

The VAE memory rule (latentforge/operators/vae_memory.py) estimates an encode's peak memory as
bytes-per-voxel x the voxels the encoder holds at once. This script measures that factor for
the published architectures (the classes' default configs, which are the released ones; Wan
2.2's from its diffusers config) with random weights, so nothing is downloaded and the compute
is the real one. For each family it encodes float32 clips of two sizes in fresh processes and
takes the slope of peak RSS against voxels: weights, allocator pools and the import cost
cancel. On a GPU the caching allocator and cuDNN workspaces add to this; the rule keeps a
margin for that (docs/models.md, "VAE memory").

    python benchmarks/vae_memory_calibrate.py            # all families (~2 minutes on 2 cores)
    python benchmarks/vae_memory_calibrate.py wan2.1     # one

Nothing here asserts; the figures go into vae_memory.BYTES_PER_VOXEL by hand, with the date.
"""

from __future__ import annotations

import json
import subprocess
import sys

# Full-size configs (the published ones). None: the class's defaults are the released config.
FULL_CONFIGS: dict[str, tuple[str, dict | None]] = {
    "wan2.1": ("AutoencoderKLWan", None),
    "wan2.2": (
        "AutoencoderKLWan",
        dict(
            base_dim=160, decoder_base_dim=256, z_dim=48, in_channels=12, out_channels=12, patch_size=2,
            is_residual=True, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True],
            scale_factor_spatial=16, scale_factor_temporal=4,
        ),
    ),
    "ltx-video": ("AutoencoderKLLTXVideo", None),
    "ltx2": ("AutoencoderKLLTX2Video", None),
    "cogvideox": ("AutoencoderKLCogVideoX", None),
    "hunyuanvideo": ("AutoencoderKLHunyuanVideo", None),
}
FRAMES = 9  # F % 8 == 1 and F % 4 == 1: every family takes it
SIZES = (64, 128)

CHILD = r"""
import json, resource, sys, torch, diffusers
family, cls, config, frames, size = json.loads(sys.argv[1])
torch.manual_seed(0)
vae = getattr(diffusers, cls)(**(config or {})).eval()
params = sum(p.numel() for p in vae.parameters())
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with torch.no_grad():
    vae.encode(torch.zeros(1, 3, frames, 32, 32))  # warm: allocator pools and lazy inits
    before = peak()
    vae.encode(torch.zeros(1, 3, frames, size, size))
print(json.dumps({"params": params, "peak_delta": peak() - before, "before": before}))
"""


def measure(family: str, size: int) -> dict:
    cls, config = FULL_CONFIGS[family]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([family, cls, config, FRAMES, size])], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    families = sys.argv[1:] or list(FULL_CONFIGS)
    for family in families:
        small, large = (measure(family, s) for s in SIZES)
        voxels = [FRAMES * s * s for s in SIZES]
        slope = (large["peak_delta"] - small["peak_delta"]) / (voxels[1] - voxels[0])
        print(
            f"{family:<13} params {large['params'] / 1e6:7.1f} M  peak +{small['peak_delta'] / 2**20:7.1f} MiB at "
            f"{FRAMES}x{SIZES[0]}^2, +{large['peak_delta'] / 2**20:7.1f} MiB at {FRAMES}x{SIZES[1]}^2  "
            f"-> {slope:8.0f} bytes per voxel (float32)",
            flush=True,
        )


if __name__ == "__main__":
    main()
