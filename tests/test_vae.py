"""encode_video oracle per VAE family: a stored latent equals vae.encode(x).latent_dist.mean."""

import numpy as np
import pytest
import torch

from latentforge.formats.tensors import from_columns
from latentforge.models import get_preset, load_vae
from latentforge.operators.vae import VideoEncodeStage, frames_to_input

FAMILIES = ["tiny-wan2.1", "tiny-ltx-video", "tiny-cogvideox", "tiny-ltx2", "tiny-hunyuanvideo"]


def _batch(shapes, seed=0):
    rng = np.random.default_rng(seed)
    frames = np.empty(len(shapes), dtype=object)
    for i, shape in enumerate(shapes):
        frames[i] = rng.integers(0, 256, size=shape, dtype=np.uint8)
    return {
        "sample_id": np.array([f"s{i}" for i in range(len(shapes))], dtype=object),
        "frames": frames,
        "error": np.array([None] * len(shapes), dtype=object),
    }


@pytest.mark.parametrize("name", FAMILIES)
def test_stored_latent_equals_vae_mean(name):
    preset = get_preset(name)
    f = preset.frame_modulus + preset.frame_remainder  # the smallest multi-frame bucket: 9 or 5
    m = preset.spatial_multiple * 2
    # two shapes in one batch: the stage groups them and never stacks different shapes
    shapes = [(f, m, m, 3), (f, m, 2 * m, 3), (f, m, m, 3)]
    batch = _batch(shapes)
    frames = list(batch["frames"])
    stage = VideoEncodeStage(name, dtype="float32", device="cpu", store_logvar=True, micro_batch=4)
    out = stage(batch)

    vae = load_vae(preset)  # a fresh load through from_pretrained, as a user would
    for i, shape in enumerate(shapes):
        with torch.no_grad():
            dist = vae.encode(frames_to_input(frames[i][None])).latent_dist
        row = {k: out[k][i] for k in out}
        latent = from_columns(row, "latent")
        torch.testing.assert_close(latent, dist.mean[0])
        torch.testing.assert_close(from_columns(row, "logvar"), dist.logvar[0])
        assert tuple(latent.shape[1:]) == preset.latent_shape(shape[0], shape[1], shape[2])
    assert "frames" not in out


def test_failed_rows_pass_through_and_bf16_storage():
    batch = _batch([(5, 32, 32, 3), (0, 0, 0, 3)])
    batch["error"] = np.array([None, "x.mp4: too short"], dtype=object)
    out = VideoEncodeStage("tiny-wan2.1", dtype="bfloat16", device="cpu")(batch)
    assert out["latent_dtype"][0] == "bfloat16" and out["latent_bytes"][1] is None
    assert from_columns({k: out[k][0] for k in out}, "latent").dtype == torch.bfloat16


def test_frames_to_input_scales_to_minus_one_one():
    x = frames_to_input(np.array([[[[[0, 255, 127]]]]], dtype=np.uint8))
    assert x.shape == (1, 3, 1, 1, 1)
    torch.testing.assert_close(x.flatten(), torch.tensor([-1.0, 1.0, 127 / 127.5 - 1]))


def test_frames_to_input_on_a_device_is_bit_identical_on_cpu():
    """The uint8 -> device -> float path (used so a GPU receives uint8) changes nothing on the CPU."""
    frames = np.random.default_rng(1).integers(0, 256, size=(2, 5, 8, 16, 3), dtype=np.uint8)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        old = frames_to_input(frames).to("cpu", dtype)  # what encode() did before
        new = frames_to_input(frames, "cpu", dtype)
        assert new.dtype == dtype and new.shape == old.shape and torch.equal(new, old)


def test_cpu_threads_follow_the_node_cpus_not_ray_omp_default():
    from latentforge.operators.devices import node_cpus, set_cpu_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # what Ray's OMP_NUM_THREADS=1 gives a 0- or 1-CPU actor
        assert set_cpu_threads("cpu", None) == 1  # not asked to: unchanged
        assert set_cpu_threads("cuda", 1) == 1  # GPU actors keep Ray's setting
        assert set_cpu_threads("cpu", 1) == node_cpus()
        assert set_cpu_threads("cpu", node_cpus() + 1) == 1  # never below one thread
        stage = VideoEncodeStage("tiny-wan2.1", device="cpu", cpu_actors_per_node=1)
        assert stage.num_threads == torch.get_num_threads() == node_cpus()
    finally:
        torch.set_num_threads(before)


def test_one_bad_sample_costs_the_batch_nothing(monkeypatch):
    """A sample the VAE fails on, and one whose latent is NaN, become error rows of encode_video;
    the other samples of the same model call still get exactly the VAE's latent (issue 11)."""
    shapes = [(5, 32, 32, 3)] * 4
    batch = _batch(shapes)
    for i in (0, 3):
        batch["frames"][i][0, 0, 0, 0] = 0  # unmarked
    batch["frames"][1][0, 0, 0, 0] = 201  # the marked sample makes the call raise
    batch["frames"][2][0, 0, 0, 0] = 202  # this one gives NaN
    frames = [f.copy() for f in batch["frames"]]
    stage = VideoEncodeStage("tiny-wan2.1", dtype="float32", device="cpu", micro_batch=4)
    real = stage.encode

    def flaky(stack):
        if (stack[:, 0, 0, 0, 0] == 201).any():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        mean, logvar = real(stack)
        mean[stack[:, 0, 0, 0, 0] == 202] = float("nan")
        return mean, logvar

    monkeypatch.setattr(stage, "encode", flaky)
    out = stage(batch)
    assert [out["error_stage"][i] for i in range(4)] == [None, "encode_video", "encode_video", None]
    assert out["error"][1].startswith("vae encode failed (RuntimeError: CUDA error")
    assert "NaN or inf" in out["error"][2] and out["latent_bytes"][2] is None
    vae = load_vae(get_preset("tiny-wan2.1"))
    for i in (0, 3):
        with torch.no_grad():
            expected = vae.encode(frames_to_input(frames[i][None])).latent_dist.mean[0]
        torch.testing.assert_close(from_columns({k: out[k][i] for k in out}, "latent"), expected)


def test_out_of_memory_retries_smaller_then_tiled(monkeypatch):
    """A batch that runs out of memory is split until it fits; a single sample that still does
    not fit is tried once more with the VAE's tiling on. Every sample lands with the VAE's
    own latent, none becomes an error (issue 11)."""
    batch = _batch([(5, 32, 32, 3)] * 4)
    batch["frames"][3][0, 0, 0, 0] = 203  # this one fits only tiled
    frames = [f.copy() for f in batch["frames"]]
    stage = VideoEncodeStage("tiny-wan2.1", dtype="float32", device="cpu", micro_batch=4)
    real, calls = stage.encode, []

    def small_memory(stack):
        calls.append((len(stack), bool(getattr(stage.vae, "use_tiling", False))))
        if len(stack) > 2 or ((stack[:, 0, 0, 0, 0] == 203).any() and not stage.vae.use_tiling):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(stack)

    monkeypatch.setattr(stage, "encode", small_memory)
    out = stage(batch)
    assert out.get("error") is None or not any(out["error"])
    assert calls[0] == (4, False) and (2, False) in calls and calls[-1] == (1, True)
    vae = load_vae(get_preset("tiny-wan2.1"))
    for i in range(4):
        with torch.no_grad():
            expected = vae.encode(frames_to_input(frames[i][None])).latent_dist.mean[0]
        torch.testing.assert_close(from_columns({k: out[k][i] for k in out}, "latent"), expected)
