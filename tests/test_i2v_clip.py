"""I2V CLIP features and previews at the end of a run (issue 14).

`encode_video.i2v` stores `clip_feature_*`: what diffusers' WanImageToVideoPipeline.encode_image
makes of the clip's first frame (its CLIPImageProcessor, its CLIPVisionModel's
hidden_states[-2]), which is also the vision model's own output on the processed frame; the
FastVideo layout carries the stored features in its I2V columns as FastVideo reads them;
`decode.samples_per_bucket` leaves previews that PyAV opens, of the bucket's size and frame
count. One small tiny-wan2.1 run (video pass only: no text pass, no export pass, no report;
those passes are tested in test_export.py) serves the run tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from test_export_fastvideo import _fastvideo_files, _fastvideo_row

from latentforge.config import ConfigError, load_config
from latentforge.formats.shards import read_table
from latentforge.formats.tensors import from_columns
from latentforge.models.image_encoder import image_encoder_location
from latentforge.sample_media import make_image, make_video


def _batch(shapes, seed=0):
    rng = np.random.default_rng(seed)
    frames = np.empty(len(shapes), dtype=object)
    for i, shape in enumerate(shapes):
        frames[i] = rng.integers(0, 256, size=shape, dtype=np.uint8)
    return {"sample_id": np.array([f"s{i}" for i in range(len(shapes))], dtype=object), "frames": frames}


def test_clip_features_are_what_the_wan_i2v_pipeline_encodes():
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionModel

    from latentforge.operators.vae import VideoEncodeStage

    from latentforge.models import model_root

    folder = model_root(image_encoder_location("tiny-wan2.1", None, True, None))  # the twin's folder
    batch = _batch([(5, 32, 48, 3), (1, 48, 32, 3)])
    firsts = [f[0].copy() for f in batch["frames"]]
    stage = VideoEncodeStage("tiny-wan2.1", dtype="float32", device="cpu", image_encoder=folder)
    out = stage(batch)
    # the oracle: the real classes loaded on their own, and the diffusers pipeline's encode_image
    processor = CLIPImageProcessor.from_pretrained(folder, subfolder="image_processor")
    encoder = CLIPVisionModel.from_pretrained(folder, subfolder="image_encoder").eval()
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None, image_processor=processor, image_encoder=encoder)
    for i, first in enumerate(firsts):
        row = {k: out[k][i] for k in out}
        stored = from_columns(row, "clip_feature")
        with torch.no_grad():
            expected = pipe.encode_image(Image.fromarray(first), torch.device("cpu"))[0]
            vision = encoder(**processor(images=Image.fromarray(first), return_tensors="pt"), output_hidden_states=True)
        torch.testing.assert_close(stored, expected)
        torch.testing.assert_close(stored, vision.hidden_states[-2][0])
        assert stored.shape == (17, 32) and not torch.allclose(stored, vision.last_hidden_state[0])  # (32/8)^2 + 1 tokens
    assert stage.stored == ["latent", "clip_feature"]


def test_i2v_config_rules():
    cfg = load_config(None, ["encode_video.i2v=true"], input="in", output="out", model="tiny-wan2.1", buckets="64x64x9")
    assert image_encoder_location(cfg.model, None, True, None) == "tiny-wan2.1"  # resolved where it loads
    assert image_encoder_location("wan2.1", None, True, None) == "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
    assert image_encoder_location("wan2.2", None, True, None) is None  # Wan 2.2 I2V has no image encoder
    assert image_encoder_location("wan2.1", None, False, None) is None
    with pytest.raises(ConfigError, match="encode_video.i2v: the ltx2 family"):
        load_config(None, ["encode_video.i2v=true"], input="in", output="out", model="tiny-ltx2", buckets="64x64x9")
    with pytest.raises(ConfigError, match="encode_video.image_encoder is set but encode_video.i2v is false"):
        load_config(None, ["encode_video.image_encoder=some/repo"], input="in", output="out", model="tiny-wan2.1", buckets="64x64x9")
    from latentforge.pipelines.checks import check_models

    cfg = load_config(None, ["encode_video.i2v=true", "encode_video.image_encoder=/nowhere/i2v"], input="in", output="out", model="tiny-wan2.1", buckets="64x64x9")
    with pytest.raises(ConfigError, match="encode_video.image_encoder /nowhere/i2v: no image_encoder/config.json"):
        check_models(cfg, False)  # before Ray starts


@pytest.fixture(scope="module")
def i2v_run(tmp_path_factory, ray_local):
    """tiny-wan2.1, one clip and one image, i2v on, one preview per bucket."""
    from latentforge.pipelines import run

    root = tmp_path_factory.mktemp("i2v")
    make_video(root / "data" / "clip.mp4", 64, 64, 12, 24)
    make_image(root / "data" / "still.png", 64, 64)
    rows = [{"media_path": "clip.mp4", "caption": "A bouncing square."}, {"media_path": "still.png", "caption": "A still."}]
    (root / "data" / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        None,
        ["encode_video.i2v=true", "encode_text.enabled=false", "decode.samples_per_bucket=1"],
        input=str(root / "data" / "dataset.jsonl"), output=str(root / "out"), model="tiny-wan2.1", buckets="64x64x9;64x64x1",
    )
    return cfg, run(cfg, make_report=False)


@pytest.mark.ray
def test_run_stores_clip_features_and_fastvideo_carries_them(i2v_run, tmp_path):
    from latentforge.formats.export.base import ExportSample
    from latentforge.formats.export.fastvideo import FastVideoExporter
    from latentforge.formats.tensors import to_columns
    from latentforge.pipelines.export import output_context

    cfg, summary = i2v_run
    assert summary["counts"]["latents_written"] == 2 and summary["counts"]["errors"] == 0
    latents = {r["sample_id"]: r for r in read_table(cfg.output, "latents").to_pylist()}
    ctx, _, _ = output_context(cfg.output)
    embedding = {"length": 3, **to_columns("embedding", torch.ones(3, 8), "float32")}  # the text pass is not run here
    for path, data in FastVideoExporter().files([ExportSample(row, embedding) for row in latents.values()], ctx):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    files, lengths = _fastvideo_files(tmp_path)
    exported = {(row := _fastvideo_row(files, lengths, i))["id"]: row for i in range(sum(lengths))}
    assert exported.keys() == latents.keys()
    for sample_id, row in latents.items():
        clip = from_columns(row, "clip_feature")
        assert clip.shape == (17, 32) and row["first_frame_latent_shape"] == row["latent_shape"]
        got = exported[sample_id]  # as FastVideo reads it: np.frombuffer(bytes, float32).reshape(shape)
        assert got["clip_feature_dtype"] == "float32" and got["clip_feature_shape"] == [17, 32]
        torch.testing.assert_close(torch.from_numpy(np.frombuffer(got["clip_feature_bytes"], np.float32).reshape(17, 32).copy()), clip.float())
        assert got["first_frame_latent_bytes"] != b""


@pytest.mark.ray
def test_run_decodes_a_preview_per_bucket(i2v_run):
    cfg, summary = i2v_run
    assert summary["previews"] == {"samples_per_bucket": 1, "folder": "previews", "written": 2}
    assert json.loads((Path(cfg.output) / "run.json").read_text())["previews"]["written"] == 2
    (video,) = (Path(cfg.output) / "previews" / "64x64x9").glob("*.mp4")
    with av.open(str(video)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 9 and frames[0].shape == (64, 64, 3)
    (image,) = (Path(cfg.output) / "previews" / "64x64x1").glob("*.png")
    assert Image.open(image).size == (64, 64)
