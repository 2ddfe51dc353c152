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


# --- issue 12: memory switches, compute vs storage dtype ----------------------------------------

from latentforge.models import video_dtypes  # noqa: E402
from latentforge.operators import vae_memory  # noqa: E402

GIB = 2**30


def test_memory_rule_turns_switches_on_only_for_buckets_that_do_not_fit():
    small = vae_memory.plan_memory("ltx2", 25, 256, 256, "bfloat16", 80 * GIB, 2 * GIB, batch_size=4)
    assert (small.tiling, small.framewise, small.micro_batch, small.fits) == (False, False, 4, True)
    big = vae_memory.plan_memory("ltx2", 121, 768, 1280, "bfloat16", 24 * GIB, 2 * GIB, batch_size=4)
    assert big.framewise and big.tiling and big.micro_batch == 1  # frame-wise first, then tiles
    assert big.clip_bytes < vae_memory.clip_bytes("ltx2", 121, 768, 1280, "bfloat16", False, False) / 10
    mid = vae_memory.plan_memory("ltx2", 121, 512, 768, "bfloat16", 80 * GIB, 2 * GIB, batch_size=4)
    assert mid.framewise and not mid.tiling  # frame-wise alone is enough here
    # Wan goes through time in chunks: its need does not grow with the clip's length
    assert vae_memory.clip_bytes("wan", 81, 480, 832, "float32", False, False) == vae_memory.clip_bytes("wan", 5, 480, 832, "float32", False, False)
    # micro-batches: as many clips as fit, never more than asked
    batch = vae_memory.plan_memory("wan", 49, 480, 832, "float32", 24 * GIB, GIB, batch_size=8)
    assert 1 <= batch.micro_batch < 8 and batch.micro_batch * batch.clip_bytes <= (24 - 1) * GIB * vae_memory.USABLE_SHARE
    # overrides win; on the CPU nothing is planned unless asked
    assert vae_memory.plan_memory("wan", 9, 64, 64, "float32", 80 * GIB, GIB, 4, tiling="on").tiling
    assert not vae_memory.plan_memory("ltx2", 121, 768, 1280, "bfloat16", 24 * GIB, GIB, 4, tiling="off", framewise="off").tiling
    cpu = vae_memory.plan_memory("ltx2", 121, 768, 1280, "float32", None, GIB, 4)
    assert (cpu.tiling, cpu.framewise, cpu.micro_batch) == (False, False, 4)
    assert not vae_memory.plan_memory("ltx2", 1000, 2160, 3840, "bfloat16", 8 * GIB, 2 * GIB, 4).fits


def test_the_stage_sets_the_vae_switches_per_bucket(monkeypatch):
    """On a (pretended) 4 GiB GPU the big bucket is encoded tiled and the small one is not."""
    stage = VideoEncodeStage("tiny-ltx-video", dtype="float32", device="cpu", micro_batch=4)
    stage.memory_bytes = 4 * GIB
    seen = []
    real = stage.encode
    monkeypatch.setattr(stage, "encode", lambda x: (seen.append((x.shape[2], stage.vae.use_tiling, stage.vae.use_framewise_encoding)), real(x))[1])
    big, small = (9, 1024, 1024, 3), (9, 64, 64, 3)
    stage(_batch([small, big]))
    assert (64, False, False) in seen and (1024, True, True) in seen
    assert stage.memory_plan(big).micro_batch < stage.memory_plan(small).micro_batch == 4


@pytest.mark.parametrize("name", ["tiny-wan2.1", "tiny-ltx-video", "tiny-hunyuanvideo", "tiny-ltx2"])
def test_a_tiled_encode_keeps_the_latent_shape_and_is_repeatable(name):
    """Tiles small enough that a clip is cut into several: the latent has the untiled
    shape and the same value on every run. How close it is to the untiled latent depends on
    trained weights (random tiny twins differ by 17-100% relative L2: docs/models.md), so
    closeness is benchmarks/gpu_check.py's to report, not this test's."""
    preset = get_preset(name)
    f, m = preset.frame_modulus + preset.frame_remainder, preset.spatial_multiple
    x = frames_to_input(_batch([(f, 4 * m, 6 * m, 3)])["frames"][0][None])
    vae = load_vae(preset)
    with torch.no_grad():
        whole = vae.encode(x).latent_dist.mean
        vae.enable_tiling(tile_sample_min_height=2 * m, tile_sample_min_width=2 * m, tile_sample_stride_height=m, tile_sample_stride_width=m)
        tiled = [vae.encode(x).latent_dist.mean for _ in range(2)]
    assert tiled[0].shape == whole.shape and torch.equal(tiled[0], tiled[1])
    assert not torch.equal(tiled[0], whole)  # the tiles did run


def test_compute_float32_store_bfloat16_stores_the_bf16_of_the_float32_latent():
    frames = _batch([(5, 32, 32, 3)])
    original = frames["frames"][0].copy()
    stage = VideoEncodeStage("tiny-wan2.1", dtype="bfloat16", compute_dtype="float32", device="cpu")
    assert (stage.compute_name, stage.dtype_name) == ("float32", "bfloat16")
    out = stage(frames)
    stored = from_columns({k: out[k][0] for k in out}, "latent")
    assert out["latent_dtype"][0] == "bfloat16"
    with torch.no_grad():
        expected = load_vae(get_preset("tiny-wan2.1")).encode(frames_to_input(original[None])).latent_dist.mean[0]
    assert torch.equal(stored, expected.to(torch.bfloat16))


def test_dtypes_follow_config_then_the_output_then_the_device():
    assert video_dtypes("wan", None, None, use_gpus=True) == ("float32", "bfloat16")
    assert video_dtypes("ltx2", None, None, use_gpus=True) == ("bfloat16", "bfloat16")
    assert video_dtypes("hunyuanvideo", None, None, use_gpus=True) == ("float16", "bfloat16")
    assert video_dtypes("ltx2", None, None, use_gpus=False) == ("float32", "float32")
    made_on_gpu = {"compute": "bfloat16", "storage": "bfloat16"}
    assert video_dtypes("ltx2", None, None, use_gpus=False, recorded=made_on_gpu) == ("bfloat16", "bfloat16")  # resume on CPU
    assert video_dtypes("ltx2", "float32", None, use_gpus=False, recorded=made_on_gpu) == ("float32", "bfloat16")


@pytest.mark.parametrize("name", ["tiny-ltx-video", "tiny-ltx2", "tiny-hunyuanvideo"])
def test_the_framewise_switch_reaches_the_vae(name):
    """A frame-wise plan must change how the class encodes a clip longer than its 16-frame
    tiles (the LTX classes read another flag than their name says: vae.py's use_plan)."""
    preset = get_preset(name)
    m = preset.spatial_multiple
    f = 33  # more than 16 frames; F % 8 == 1 and F % 4 == 1
    batch = _batch([(f, m, m, 3)])
    latents = {}
    for mode in ("off", "on"):
        stage = VideoEncodeStage(name, dtype="float32", device="cpu", framewise=mode)
        out = stage({k: v.copy() for k, v in batch.items()})
        latents[mode] = from_columns({k: out[k][0] for k in out}, "latent")
    assert latents["on"].shape == latents["off"].shape
    assert not torch.equal(latents["on"], latents["off"])


def test_a_vae_call_that_never_returns_fails_its_rows_then_restarts_the_actor(monkeypatch):
    """A hung GPU call (test double: it waits on an event) makes its rows error rows within the
    limit; the actor's next batch ends the process (Ray restarts the actor and retries that
    batch) instead of computing beside a thread stuck in the model (issue 11)."""
    import threading

    from latentforge.operators import time_limit

    stage = VideoEncodeStage("tiny-wan2.1", dtype="float32", device="cpu", micro_batch=1, call_time_limit_s=0.5)
    real, release = stage.encode, threading.Event()

    def hangs_on_marked(stack):
        if (stack[:, 0, 0, 0, 0] == 204).any():
            release.wait(60)
        return real(stack)

    monkeypatch.setattr(stage, "encode", hangs_on_marked)
    batch = _batch([(5, 32, 32, 3)] * 2)
    batch["frames"][0][0, 0, 0, 0] = 0
    batch["frames"][1][0, 0, 0, 0] = 204
    out = stage(batch)
    release.set()
    assert out["error"][0] is None and out["latent_bytes"][0] is not None
    assert out["error_stage"][1] == "encode_video" and "did not return" in out["error"][1] and "call_time_limit_s" in out["error"][1]
    exits = []
    monkeypatch.setattr(time_limit.os, "_exit", lambda code: exits.append(code) or (_ for _ in ()).throw(SystemExit(code)))
    with pytest.raises(SystemExit):
        stage(_batch([(5, 32, 32, 3)]))
    assert exits == [time_limit.STUCK_EXIT_CODE]


def test_first_frame_latent_is_the_wan_i2v_condition():
    """encode_video.first_frame_latent: the stored condition equals the VAE's mean of the first
    frame followed by zeros in [-1, 1], as diffusers' WanImageToVideoPipeline builds it."""
    batch = _batch([(9, 32, 48, 3), (9, 32, 48, 3)])
    frames = [f.copy() for f in batch["frames"]]
    stage = VideoEncodeStage("tiny-wan2.1", dtype="float32", device="cpu", first_frame_latent=True)
    out = stage(batch)
    vae = load_vae(get_preset("tiny-wan2.1"))
    for i, f in enumerate(frames):
        image = frames_to_input(f[None, :1])  # [1, 3, 1, H, W]
        condition = torch.cat([image, torch.zeros(1, 3, 8, 32, 48)], dim=2)
        with torch.no_grad():
            expected = vae.encode(condition).latent_dist.mean[0]
        stored = from_columns({k: out[k][i] for k in out}, "first_frame_latent")
        torch.testing.assert_close(stored, expected)
        assert stored.shape == from_columns({k: out[k][i] for k in out}, "latent").shape
    plain = VideoEncodeStage("tiny-wan2.1", dtype="float32", device="cpu")(_batch([(9, 32, 48, 3)]))
    assert "first_frame_latent_bytes" not in plain
