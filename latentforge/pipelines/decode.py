"""`latentforge decode OUTPUT`: stored latents back to pixels, so a person can look at exactly
what will be trained on (docs/outputs.md, "Looking at latents").

A few samples per bucket are read shard by shard (the first shards of each bucket until enough
rows are found: never the whole table), decoded with the VAE the output names in its shards'
metadata (`vae.decode`, the inverse of the stored latent mean), and written beside the output as
`previews/<bucket>/<sample_id>.mp4` at the clip's frame rate, or `.png` for images. The VAE runs
in this process (a GPU when one is visible), which suits a handful of previews.
"""

from __future__ import annotations

import io
import json
from typing import Any

import av
import numpy as np
import pyarrow.parquet as pq
import torch

from latentforge.config import ConfigError
from latentforge.formats.shards import LATENTS, shard_bucket, shard_paths
from latentforge.formats.tensors import from_columns
from latentforge.models import get_preset, load_vae
from latentforge.operators.devices import default_device
from latentforge.pipelines.decode_audio import AUDIO_COLUMNS, PreviewAudio, add_track, write_track
from latentforge.storage import get_fs, join, write_bytes_atomic

PREVIEWS = "previews"
COLUMNS = ["sample_id", "fps", "latent_bytes", "latent_shape", "latent_dtype"]


def vae_of(metadata: dict[str, Any]) -> Any:
    """The preset that made the latents, from the shards' metadata (a model_path run names its
    folder in `vae_id`)."""
    preset = get_preset(metadata["model"])
    vae_id = metadata.get("vae_id")
    return preset if not vae_id or vae_id == preset.repo or preset.tiny else get_preset(metadata["model"], vae_id)


def pick_samples(output: str, samples: int, bucket: str | None, storage_options: dict | None) -> tuple[dict[str, list[dict]], dict]:
    """Up to `samples` latent rows per bucket (the lowest sample_ids of each bucket's first shards),
    and the latents' metadata."""
    fs, root = get_fs(join(output, LATENTS), storage_options)
    paths = shard_paths(fs, root)
    if not paths:
        raise ConfigError(f"decode: {join(output, LATENTS)} holds no latent shards")
    by_bucket: dict[str, list[str]] = {}
    for p in paths:
        by_bucket.setdefault(shard_bucket(p) or "", []).append(p)
    if bucket is not None:
        if bucket not in by_bucket:
            raise ConfigError(f"decode: no bucket {bucket!r} in {join(output, LATENTS)} (buckets: {', '.join(sorted(by_bucket))})")
        by_bucket = {bucket: by_bucket[bucket]}
    metadata: dict = {}
    picked: dict[str, list[dict]] = {}
    for name, shard_list in sorted(by_bucket.items()):
        rows: list[dict] = []
        for path in shard_list:
            with fs.open(path, "rb") as f:
                names = set(pq.read_schema(f).names)
                f.seek(0)
                table = pq.read_table(f, columns=COLUMNS + [c for c in AUDIO_COLUMNS if c in names])
                f.seek(0)
                metadata = metadata or json.loads((pq.read_schema(f).metadata or {}).get(b"latentforge", b"{}"))
            rows += table.to_pylist()
            if len(rows) >= samples:
                break
        picked[name] = sorted(rows, key=lambda r: r["sample_id"])[:samples]
    return picked, metadata


def to_frames(pixels: torch.Tensor) -> np.ndarray:
    """VAE output [3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3]."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def media_bytes(frames: np.ndarray, fps: float, audio: tuple[np.ndarray, int] | None = None) -> tuple[bytes, str]:
    """An mp4 (H.264, yuv420p) of the frames at `fps` (with `audio` = (waveform, rate) as its AAC
    track), or a png for a single frame."""
    buffer = io.BytesIO()
    if frames.shape[0] == 1:
        from PIL import Image

        Image.fromarray(frames[0]).save(buffer, format="PNG")
        return buffer.getvalue(), "png"
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps or 24)))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "12", "preset": "veryfast"}
        track = add_track(container, audio)
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        write_track(container, track, audio)
    return buffer.getvalue(), "mp4"


def decode_output(output: str, samples: int = 2, bucket: str | None = None, to: str | None = None, storage_options: dict | None = None) -> list[str]:
    """Decode `samples` latents per bucket (or of one `bucket`) into previews; returns their URLs."""
    picked, metadata = pick_samples(output, samples, bucket, storage_options)
    device = default_device()
    vae = load_vae(vae_of(metadata), device=device, dtype=torch.float32)
    audio = PreviewAudio(vae_of(metadata), device)  # LTX-2 audio latents, when a row has one
    written = []
    for name, rows in picked.items():
        for row in rows:
            latent = from_columns(row, "latent").to(device=device, dtype=torch.float32)
            with torch.no_grad():
                pixels = vae.decode(latent[None]).sample[0]
            data, ext = media_bytes(to_frames(pixels), float(row.get("fps") or 24), audio(row))
            url = join(to or join(output, PREVIEWS), name, f"{row['sample_id']}.{ext}")
            fs, path = get_fs(url, storage_options)
            write_bytes_atomic(fs, path, data)
            written.append(url)
    return written
