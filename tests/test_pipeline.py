"""End to end on local Ray: every input ends as a latent row or an error row, latents equal the
VAE's own output, each distinct caption is embedded once, and reruns neither duplicate nor lose."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

import pytest
import torch

from latentforge.config import load_config
from latentforge.formats.shards import read_table
from latentforge.formats.tensors import from_columns
from latentforge.models import get_preset, load_text_pipeline, load_vae
from latentforge.operators.frames import assign_bucket, load_frames
from latentforge.operators.probe import probe
from latentforge.operators.text import encode_captions
from latentforge.operators.vae import frames_to_input
from latentforge.pipelines import precompute, run, runtime
from latentforge.pipelines.stages import Job, active
from latentforge.sample_media import make_image, make_video

pytestmark = pytest.mark.ray

BUCKETS = "96x64x17;96x64x9;64x96x9;64x64x9;96x32x9"
SAME = "A red square slides across a warm gradient."


def _dataset(folder: Path, shared: Path | None) -> tuple[Path, list[dict]]:
    entries = [
        ("landscape.mp4", make_video(folder / "landscape.mp4", 160, 96, 30, 24), "The video shows " + SAME[0].lower() + SAME[1:]),
        ("portrait.mp4", make_video(folder / "portrait.mp4", 96, 160, 12, 30), "A tall frame with a square drifting down."),
        ("square.mp4", make_video(folder / "square.mp4", 80, 80, 20, 24), SAME),  # same final caption as landscape
        ("banner.mp4", make_video(folder / "banner.mp4", 300, 100, 10, 25), "A wide banner of colour."),
        ("short.mp4", make_video(folder / "short.mp4", 160, 96, 5, 24), "Too short for any bucket."),
        ("still.png", make_image(folder / "still.png", 100, 80), "A single still frame."),
        ("missing.mp4", None, "This file does not exist."),
        ("corrupt.mp4", None, "Not a video at all."),
        ("empty_caption.mp4", make_video(folder / "empty_caption.mp4", 96, 64, 12, 24), "   "),
    ]
    (folder / "corrupt.mp4").write_bytes(b"not a video" * 50)
    rows = [{"media_path": name, "caption": caption, "source_id": i} for i, (name, _, caption) in enumerate(entries)]
    if shared is not None:
        rows.append({"media_path": str(shared / "tears_of_steel_10s.mp4"), "caption": "A city at night.", "source_id": 100})
        rows.append({"media_path": str(shared / "hevc_rotated_edit_list.mp4"), "caption": "A building.", "source_id": 101})
    manifest = folder / "dataset.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, rows


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, ray_local):
    from tests.conftest import SHARED_MEDIA

    folder = tmp_path_factory.mktemp("e2e")
    shared = SHARED_MEDIA if (SHARED_MEDIA / "tears_of_steel_10s.mp4").exists() else None
    manifest, rows = _dataset(folder / "media", shared)
    cfg = load_config(None, [], input=str(manifest), output=str(folder / "out"), model="tiny-wan2.1", buckets=BUCKETS)
    summary = run(cfg)
    return cfg, rows, summary


def _latents(cfg):
    return read_table(cfg.output, "latents").to_pylist()


def _errors(cfg):
    return read_table(cfg.output, "errors").to_pylist()


def test_every_input_is_a_latent_or_an_error(first_run):
    cfg, rows, summary = first_run
    latents, errors = _latents(cfg), _errors(cfg)
    assert len(latents) + len(errors) == len(rows)
    by_name = {Path(r["uri"]).name: r for r in latents}
    failed = {Path(r["uri"]).name: r for r in errors}
    assert set(by_name) | set(failed) == {Path(r["media_path"]).name for r in rows}
    assert "too short" in failed["short.mp4"]["error"] and failed["short.mp4"]["error_stage"] == "prepare"
    assert "file not found" in failed["missing.mp4"]["error"] and failed["missing.mp4"]["error_stage"] == "probe"
    assert failed["corrupt.mp4"]["error_stage"] == "probe"
    assert failed["empty_caption.mp4"]["error"] == "empty caption"
    assert {r["bucket"] for r in latents} >= {"96x64x17", "64x96x9", "64x64x9", "96x32x9", "96x64x1"}
    # manifest columns pass through untouched
    assert sorted(r["source_id"] for r in latents + errors) == sorted(r["source_id"] for r in rows)
    counts = summary["counts"]
    assert counts["latents_written"] == len(latents) and counts["errors"] == len(errors)
    assert json.loads(Path(cfg.output, "run.json").read_text())["counts"] == counts


def test_latent_shapes_follow_the_bucket_math(first_run):
    cfg, _, _ = first_run
    preset = get_preset(cfg.model)
    for row in _latents(cfg):
        w, h, f = (int(v) for v in row["bucket"].split("x"))
        assert row["latent_shape"][1:] == list(preset.latent_shape(f, h, w))
        assert row["num_frames"] == f
        assert from_columns(row, "latent").shape == tuple(row["latent_shape"])


def test_stored_latents_equal_the_vae_on_the_same_frames(first_run):
    cfg, _, _ = first_run
    vae = load_vae(get_preset(cfg.model))
    for row in _latents(cfg):
        source = {"uri": row["uri"], "media_type": row["media_type"]}
        prepared = load_frames(assign_bucket(probe(source), cfg.bucket_list()))
        assert prepared["bucket"] == row["bucket"] and prepared["sample_id"] == row["sample_id"]
        with torch.no_grad():
            expected = vae.encode(frames_to_input(prepared["frames"][None])).latent_dist.mean[0]
        torch.testing.assert_close(from_columns(row, "latent"), expected)


def test_each_distinct_caption_is_embedded_once_and_matches_encode_prompt(first_run):
    cfg, _, summary = first_run
    latents = _latents(cfg)
    preset = get_preset(cfg.model)
    embeddings = read_table(cfg.output, f"embeddings/encoder={preset.text_encoder_name}").to_pylist()
    ids = [e["caption_id"] for e in embeddings]
    assert len(ids) == len(set(ids)) == len({r["caption_id"] for r in latents})
    shared = [r for r in latents if r["caption"] == SAME]
    assert len(shared) == 2 and shared[0]["caption_id"] == shared[1]["caption_id"]  # opener stripped
    assert summary["counts"]["captions_distinct"] == len(ids)
    pipe = load_text_pipeline(preset)
    for e in embeddings:
        [(expected, length, _)] = encode_captions(pipe, preset, [e["caption"]], "cpu", torch.float32)
        assert e["length"] == length
        torch.testing.assert_close(from_columns(e, "embedding"), expected)


def test_rerun_adds_nothing_and_resume_restores_what_was_lost(first_run):
    cfg, rows, _ = first_run
    before = sorted(r["sample_id"] for r in _latents(cfg))
    again = run(cfg)
    assert again["counts"]["latents_written"] == 0
    assert again["counts"]["latents_skipped_existing"] == len(before)
    assert again["counts"]["embeddings_written"] == 0
    assert sorted(r["sample_id"] for r in _latents(cfg)) == before
    assert len(_errors(cfg)) == len(rows) - len(before)  # errors rewritten, not appended

    # a run killed half way: one bucket's shards and all embeddings never landed, and a
    # temp file from an interrupted write is lying around
    bucket_dir = Path(cfg.output, "latents", "bucket=96x64x17")
    lost = sum(len(pq.read_table(p)) for p in bucket_dir.glob("*.parquet"))
    shutil.rmtree(bucket_dir)
    shutil.rmtree(Path(cfg.output, "embeddings"))
    Path(cfg.output, "latents", "bucket=64x64x9", ".tmp-dead-part-x.parquet").write_bytes(b"partial")
    resumed = run(cfg)
    assert resumed["counts"]["latents_written"] == lost
    assert sorted(r["sample_id"] for r in _latents(cfg)) == before
    emb = read_table(cfg.output, f"embeddings/encoder={get_preset(cfg.model).text_encoder_name}")
    assert emb.num_rows == len({r["caption_id"] for r in _latents(cfg)})


def _explain(ds) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ds.explain()
    return buf.getvalue().split("Physical Plan (Optimized)")[-1]


@pytest.mark.parametrize("use_gpus", [False, True])
def test_prepare_runs_in_its_own_tasks_not_in_the_vae_actor(ray_local, tmp_path, use_gpus):
    """`prepare` stays in its own 1-CPU tasks: on a CPU-only run the VAE actor (1 CPU too) spells
    out Ray Data's SPREAD strategy so that the two are not fused; GPU runs keep num_gpus from the
    config and 1 CPU per actor."""
    cfg = load_config(None, [], input=str(tmp_path / "x.jsonl"), output=str(tmp_path / "out"), model="tiny-wan2.1", buckets=BUCKETS)
    job = Job(cfg, use_gpus)
    video_pass = runtime.passes(active(precompute.STAGES, cfg))[0]
    ds = runtime.dataset(video_pass, job, [{"media_path": "a.mp4", "uri": str(tmp_path / "a.mp4")}])
    physical = _explain(ds)
    assert "Map(prepare)->MapBatches(VideoEncodeStage)" not in physical
    assert "ActorPoolMapOperator[MapBatches(VideoEncodeStage)]" in physical
    encode_video = next(s for s in video_pass if s.name == "encode_video")
    args = runtime.ray_args(encode_video, job)
    if use_gpus:
        assert (args["num_gpus"], args["num_cpus"]) == (cfg.encode_video.num_gpus, 1.0)
        assert "scheduling_strategy" not in args
    else:
        assert args == {"num_gpus": 0, "num_cpus": 1.0, "scheduling_strategy": "SPREAD"}
        assert runtime.pool_size(encode_video, job) == (1, 1)  # auto on one CPU node: one actor
        assert runtime.cpu_actors_per_node(1) == 1


def test_consecutive_row_stages_run_as_one_task_per_block(ray_local, tmp_path):
    """probe -> bucket -> finalize_caption -> prepare share one task per block: Ray Data fuses
    map stages whose Ray arguments are equal, so they get the largest of theirs. Separate, each
    was an operator with its own share of Ray Data's reservation and its own trip through the
    object store, and on 2 CPUs `prepare` ran one task at a time (docs/scale.md). The plan shows
    what Ray gets."""
    cfg = load_config(None, [], input=str(tmp_path / "x.jsonl"), output=str(tmp_path / "out"), model="tiny-wan2.1", buckets=BUCKETS)
    job = Job(cfg, False)
    video_pass = runtime.passes(active(precompute.STAGES, cfg))[0]
    shared = runtime.row_task_args(video_pass, job)
    assert runtime.ray_args(next(s for s in video_pass if s.name == "finalize_caption"), job) == {"num_cpus": 0.25}
    assert {name: shared[name] for name in ("probe", "bucket", "finalize_caption", "prepare")} == dict.fromkeys(
        ("probe", "bucket", "finalize_caption", "prepare"), {"num_cpus": 1.0}
    )
    ds = runtime.dataset(video_pass, job, [{"media_path": "a.mp4", "uri": str(tmp_path / "a.mp4")}])
    assert "TaskPoolMapOperator[Map(probe)->Map(bucket_and_skip)->Map(finalize_caption)->Map(prepare)]" in _explain(ds)
    lines = {line.name: line.resources for line in runtime.plan(precompute.STAGES, job)}
    assert lines["finalize_caption"] == lines["prepare"] == "1 CPU/task"


def test_sink_writes_hold_no_cpu_and_run_few_at_once_on_one_machine(tmp_path):
    """Writes hold no CPU (Ray Data's reservation would keep one from decoding); on the embedded
    Ray one per 4 CPUs runs at once, since each is a worker process of its own; on a cluster Ray
    Data's default, which grows with the nodes its autoscaler adds (docs/scale.md)."""
    assert runtime.WRITE_CPUS == 0
    assert [runtime.write_concurrency(True, cpus) for cpus in (1, 2, 4, 7, 8, 64)] == [1, 1, 1, 1, 2, 16]
    assert runtime.write_concurrency(False, 2) is None and runtime.write_concurrency(False, 512) is None
    cfg = load_config(None, [], input=str(tmp_path / "x.jsonl"), output=str(tmp_path / "out"), model="tiny-wan2.1", buckets=BUCKETS)
    embedded = Job(cfg, False, embedded=True)
    lines = {line.name: line.resources for line in runtime.plan(precompute.STAGES, embedded)}
    assert lines["write_latents"] == f"no CPU, {runtime.job_write_concurrency(embedded)} at once"
    lines = {line.name: line.resources for line in runtime.plan(precompute.STAGES, Job(cfg, False))}
    assert lines["write_latents"] == "no CPU"


def test_cpu_model_actors_compute_on_every_cpu_of_the_node(ray_local):
    """Ray gives a 1-CPU actor OMP_NUM_THREADS=1; on CPU-only runs the encoders set torch's threads
    to the node's CPUs (divided among the pool's actors on a node) instead."""
    import os

    import numpy as np
    import ray

    from latentforge.operators.text import TextEncodeStage
    from latentforge.operators.vae import VideoEncodeStage

    class VideoThreads(VideoEncodeStage):
        def __call__(self, batch):
            return {**batch, "video_threads": np.full(len(batch["x"]), torch.get_num_threads())}

    class TextThreads(TextEncodeStage):
        def __call__(self, batch):
            return {**batch, "text_threads": np.full(len(batch["x"]), torch.get_num_threads())}

    cfg = load_config(None, [], input="x.jsonl", output="out", model="tiny-wan2.1", buckets=BUCKETS)
    job = Job(cfg, use_gpus=False)
    stages = {s.name: s for s in precompute.STAGES}
    ds = ray.data.from_items([{"x": 1}])
    for name, actor in (("encode_video", VideoThreads), ("encode_text", TextThreads)):
        stage = dataclasses.replace(stages[name], op=actor, args=lambda job: {"model": job.cfg.model}, batch_size=lambda job: 1)
        ds = runtime.apply(stage, ds, job)
    [row] = ds.take_all()
    node_cpus = min(len(os.sched_getaffinity(0)), int(ray.cluster_resources()["CPU"]))
    assert row["video_threads"] == row["text_threads"] == node_cpus
