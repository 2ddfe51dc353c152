"""IC-LoRA references (operators/reference.py, reference_encode.py, the ltx2 export's
reference_latents/): a reference is prepared the target's way and encoded by the same VAE.

Oracles: the stored reference latent equals the tiny VAE's encode of (a) cv2.Canny applied here
to the target's prepared frames, (b) the manifest's reference video decoded with the target's
bucket and frames. One small pipeline run (three rows, 64x64x9, no text) serves the Ray tests."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from latentforge.buckets import Bucket
from latentforge.config import ConfigError, load_config
from latentforge.formats.export.base import ExportSample
from latentforge.formats.export.ltx2 import LTX2Exporter
from latentforge.formats.manifests import read_manifest
from latentforge.formats.tensors import from_columns, to_columns
from latentforge.operators.frames import assign_bucket, decode_video_frames, load_frames
from latentforge.operators.probe import probe
from latentforge.operators.reference import canny_frames, make_reference, subsample_positions
from latentforge.sample_media import make_video

BUCKETS = "64x64x9"
MODEL = "tiny-wan2.1"


def _edges(frame: np.ndarray, low=100, high=200) -> np.ndarray:
    return cv2.Canny(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), threshold1=low, threshold2=high)


# ---------------------------------------------------------------------------------------------
# Pure functions


def test_temporal_subsampling_is_ltx2s_vae_aligned_pattern():
    assert subsample_positions(9, 1) == list(range(9))
    assert subsample_positions(9, 2) == [0, 1, 3, 5, 7]  # frame 0, then every 2nd from frame 1
    assert subsample_positions(17, 4) == [0, 1, 5, 9, 13]
    assert subsample_positions(1, 2) == [0]
    assert len(subsample_positions(49, 2)) == (49 - 1) // 2 + 1


def test_canny_frames_are_opencv_edges_on_three_channels():
    rng = np.random.default_rng(0)
    frames = (rng.random((2, 32, 48, 3)) * 255).astype(np.uint8)
    frames[:, 8:24, 10:30] = 255  # a hard edge
    out = canny_frames(frames, 50, 150)
    assert out.shape == frames.shape and out.dtype == np.uint8
    for i in range(2):
        for c in range(3):
            np.testing.assert_array_equal(out[i, :, :, c], _edges(frames[i], 50, 150))
    assert set(np.unique(out)) <= {0, 255} and out.any()


def test_manifest_reference_columns_resolve_like_the_media_column(tmp_path):
    rows = [
        {"video": "a.mp4", "caption": "a", "reference_video": "refs/a.mp4"},  # LTX-2's name
        {"video": "b.mp4", "caption": "b", "reference_path": "/abs/b.mp4"},  # compute_reference's legacy name
        {"video": "c.mp4", "caption": "c", "reference": "../outside.mp4"},
        {"video": "d.mp4", "caption": "d"},
    ]
    (tmp_path / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b, c, d = read_manifest(str(tmp_path / "dataset.jsonl"))
    assert a["reference"] == str(tmp_path / "refs" / "a.mp4") and a["reference_video"] == "refs/a.mp4"
    assert b["reference"] == "/abs/b.mp4"
    assert c["error"] and "leaves the manifest's folder" in c["error"]
    assert d["reference"] is None and d["error"] is None


def test_reference_scale_factors_are_checked_against_the_vae():
    with pytest.raises(ConfigError, match="temporal_scale_factor 2"):
        load_config(None, ["reference.kind=canny", "reference.temporal_scale_factor=2"], input="x", output="y", model=MODEL, buckets="64x64x13")
    with pytest.raises(ConfigError, match="downscale_factor 3"):
        load_config(None, ["reference.kind=canny", "reference.downscale_factor=3"], input="x", output="y", model=MODEL, buckets="64x64x9")
    load_config(None, ["reference.kind=canny", "reference.temporal_scale_factor=2"], input="x", output="y", model=MODEL, buckets="64x64x9")


def test_ltx2_export_writes_reference_latents_in_the_latents_form(tmp_path):
    mean = [0.1 * (i % 5) for i in range(128)]
    std = [1.0 + 0.01 * i for i in range(128)]
    from latentforge.formats.export.base import ExportContext

    ctx = ExportContext(model="ltx2", family="ltx2", text_encoder=None, dataset_root="/data",
                        latent_metadata={"vae_normalization": {"latents_mean": mean, "latents_std": std, "scaling_factor": 1.0}})
    g = torch.Generator().manual_seed(0)
    target, ref = torch.randn(128, 3, 2, 2, generator=g), torch.randn(128, 2, 1, 1, generator=g)
    row = {"sample_id": "s", "uri": "/data/clips/a.mp4", "bucket": "64x64x17", "fps": 24.0, "reference_fps": 12.0,
           "media_type": "video", "start_frame": 0, "end_frame": 17, "source_frames": 17,
           **to_columns("latent", target, "float32"), **to_columns("reference_latent", ref, "float32")}
    files = dict(LTX2Exporter().files([ExportSample(row, None)], ctx))
    assert set(files) == {".precomputed/latents/clips/a.pt", ".precomputed/reference_latents/clips/a.pt"}
    data = torch.load(io.BytesIO(files[".precomputed/reference_latents/clips/a.pt"]), map_location="cpu", weights_only=True)
    expected = (ref - torch.tensor(mean).view(-1, 1, 1, 1)) / torch.tensor(std).view(-1, 1, 1, 1)
    assert data["latents"].dtype == torch.bfloat16
    torch.testing.assert_close(data["latents"].float(), expected.to(torch.bfloat16).float())
    assert (data["num_frames"], data["height"], data["width"], data["fps"]) == (2, 1, 1, 12.0)
    assert LTX2Exporter().paths(ExportSample(row, None), ctx)[-1] == ".precomputed/reference_latents/clips/a.pt"
    without = {k: v for k, v in row.items() if not k.startswith("reference_latent")}
    assert len(LTX2Exporter().files([ExportSample(without, None)], ctx)) == 1


# ---------------------------------------------------------------------------------------------
# With the tiny VAE


@pytest.fixture(scope="module")
def vae():
    from latentforge.models import get_preset, load_vae

    return load_vae(get_preset(MODEL))


def _encode(vae, frames: np.ndarray) -> torch.Tensor:
    from latentforge.operators.vae import frames_to_input

    with torch.no_grad():
        return vae.encode(frames_to_input(frames[None])).latent_dist.mean[0]


def _prepared(uri: str, buckets=BUCKETS) -> dict:
    return load_frames(assign_bucket(probe({"uri": uri, "media_type": "video"}), load_config(
        None, [], input="x", output="y", model=MODEL, buckets=buckets).bucket_list()))


def test_temporal_subsampling_keeps_the_targets_frames_and_shape(tmp_path, vae):
    target = make_video(tmp_path / "t.mp4", 80, 64, 12, 24)
    ref = make_video(tmp_path / "r.mp4", 80, 64, 12, 24, cuts=[4])
    row = {**_prepared(str(target)), "reference": str(ref)}
    out = make_reference(row, "manifest", temporal_scale_factor=2)
    assert out["error"] is None and out["reference_frames"].shape == (5, 64, 64, 3)
    expected = decode_video_frames(str(ref), 0, [0, 1, 3, 5, 7], Bucket(64, 64, 9))
    np.testing.assert_array_equal(out["reference_frames"], expected)
    assert out["reference_fps"] == row["fps"] / 2
    from latentforge.models import get_preset

    target_shape, reference = get_preset(MODEL).latent_shape(9, 64, 64), _encode(vae, out["reference_frames"])
    assert target_shape[0] == 3 and tuple(reference.shape[1:]) == (2, *target_shape[1:])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, ray_local):
    from latentforge.pipelines import run

    folder = tmp_path_factory.mktemp("reference")
    make_video(folder / "edges.mp4", 96, 64, 12, 24)
    make_video(folder / "paired.mp4", 80, 64, 12, 24)
    make_video(folder / "refs" / "paired_depth.mp4", 80, 64, 12, 24, cuts=[3])
    make_video(folder / "orphan.mp4", 64, 64, 10, 24)
    rows = [
        {"video": "edges.mp4", "caption": "Canny from its own frames."},
        {"video": "paired.mp4", "caption": "Its own reference.", "reference_video": "refs/paired_depth.mp4"},
        {"video": "orphan.mp4", "caption": "Reference missing.", "reference": "refs/missing.mp4"},
    ]
    (folder / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, ["reference.kind=canny", "encode_text.enabled=false"], input=str(folder / "dataset.jsonl"),
                      output=str(folder / "out"), model=MODEL, buckets=BUCKETS)
    summary = run(cfg)
    from latentforge.formats.shards import read_table

    latents = {Path(r["uri"]).name: r for r in read_table(cfg.output, "latents").to_pylist()}
    errors = {Path(r["uri"]).name: r for r in read_table(cfg.output, "errors").to_pylist()}
    return folder, latents, errors, summary


@pytest.mark.ray
def test_canny_references_chain_into_reference_latents_of_the_targets_shape(reference_run, vae):
    folder, latents, _, _ = reference_run
    row = latents["edges.mp4"]
    frames = _prepared(str(folder / "edges.mp4"))["frames"]
    edges = np.repeat(np.stack([_edges(f) for f in frames])[..., None], 3, axis=-1)
    stored = from_columns(row, "reference_latent")
    assert row["reference"] == "canny:100-200" and row["reference_fps"] == row["fps"]
    assert tuple(stored.shape) == tuple(from_columns(row, "latent").shape)
    torch.testing.assert_close(stored, _encode(vae, edges), rtol=1e-4, atol=1e-5)


@pytest.mark.ray
def test_a_manifest_reference_is_prepared_the_targets_way(reference_run, vae):
    folder, latents, _, _ = reference_run
    row = latents["paired.mp4"]
    ref = folder / "refs" / "paired_depth.mp4"
    assert row["reference"] == str(ref)
    prepared = decode_video_frames(str(ref), 0, list(range(9)), Bucket(64, 64, 9))  # the target's bucket and frames
    torch.testing.assert_close(from_columns(row, "reference_latent"), _encode(vae, prepared), rtol=1e-4, atol=1e-5)


@pytest.mark.ray
def test_a_missing_reference_is_an_error_row_naming_it(reference_run):
    folder, latents, errors, summary = reference_run
    assert "orphan.mp4" not in latents
    err = errors["orphan.mp4"]
    assert err["error_stage"] == "reference" and str(folder / "refs" / "missing.mp4") in err["error"]
    assert summary["counts"]["errors_by_reason"] == {"reference/reference file not found": 1}
    assert summary["counts"]["latents_written"] == 2


def test_a_clip_file_of_split_scenes_takes_its_reference_frames_from_the_parents_span(tmp_path):
    target = make_video(tmp_path / "clip.mp4", 64, 64, 9, 24)  # stands for a clip written by split (copy/reencode)
    ref = make_video(tmp_path / "parent_ref.mp4", 64, 64, 14, 24, cuts=[6])
    row = {**_prepared(str(target)), "reference": str(ref), "parent_uri": str(tmp_path / "parent.mp4"), "parent_start_frame": 4}
    out = make_reference(row, "manifest")
    np.testing.assert_array_equal(out["reference_frames"], decode_video_frames(str(ref), 4, list(range(4, 13)), Bucket(64, 64, 9)))
