"""`latentforge decode` (issue 14): stored latents VAE-decoded back into previews a person can
open: an mp4 per clip with the bucket's size and frame count, a png per image; the decode of an
encode with the tiny VAE round-trips shapes. The output is written the way the latents sink
writes it (hive bucket partitions, the latentforge metadata naming the model)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
from PIL import Image

from latentforge.formats.shards import table_bytes, to_table
from latentforge.models import get_preset
from latentforge.operators.vae import VideoEncodeStage

REPO = Path(__file__).resolve().parents[1]


def _output(root: Path) -> Path:
    rng = np.random.default_rng(0)
    stage = VideoEncodeStage("tiny-wan2.1", dtype="float32", device="cpu")
    meta = {"model": "tiny-wan2.1", "vae_id": get_preset("tiny-wan2.1").repo, "vae_class": "AutoencoderKLWan"}
    for bucket, (w, h, f), n in (("64x32x9", (64, 32, 9), 3), ("48x48x1", (48, 48, 1), 1)):
        frames = np.empty(n, dtype=object)
        for i in range(n):
            frames[i] = rng.integers(0, 256, size=(f, h, w, 3), dtype=np.uint8)
        out = stage({"sample_id": np.array([f"{bucket}-{i}" for i in range(n)], dtype=object), "frames": frames, "error": np.array([None] * n, dtype=object)})
        rows = [{"sample_id": out["sample_id"][i], "fps": 12.0, **{k: out[k][i] for k in ("latent_bytes", "latent_shape", "latent_dtype")}} for i in range(n)]
        folder = root / "latents" / f"bucket={bucket}"
        folder.mkdir(parents=True)
        (folder / "part-a.parquet").write_bytes(table_bytes(to_table(rows), meta))
    return root


def test_decode_writes_previews_of_the_buckets_size_and_length(tmp_path):
    output = _output(tmp_path / "out")
    proc = subprocess.run(
        [sys.executable, "-m", "latentforge.cli", "decode", str(output), "--samples", "2"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(proc.stdout.split())
    assert written == sorted([
        str(output / "previews/64x32x9/64x32x9-0.mp4"), str(output / "previews/64x32x9/64x32x9-1.mp4"),
        str(output / "previews/48x48x1/48x48x1-0.png"),
    ])
    with av.open(written[-1]) as container:  # the mp4s come last in sorted order
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (32, 64, 3)
    assert Image.open(written[0]).size == (48, 48)


def test_decode_of_one_bucket_and_a_missing_one(tmp_path):
    from latentforge.config import ConfigError
    from latentforge.pipelines.decode import decode_output

    output = _output(tmp_path / "out")
    assert decode_output(str(output), samples=5, bucket="48x48x1", to=str(tmp_path / "p")) == [str(tmp_path / "p/48x48x1/48x48x1-0.png")]
    try:
        decode_output(str(output), bucket="1x1x1")
    except ConfigError as e:
        assert "no bucket '1x1x1'" in str(e) and "48x48x1" in str(e)
    else:
        raise AssertionError("a missing bucket must be refused")
