"""The split pipeline on local Ray: clips.jsonl, clip files, resume, segments over Ray tasks, and
the hand-over to precompute (or split inside one `latentforge run` job) giving the same latents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from latentforge.cli import main
from latentforge.config import ConfigError, load_config
from latentforge.formats.manifests import read_manifest
from latentforge.formats.shards import read_table
from latentforge.formats.tensors import from_columns
from latentforge.operators.probe import probe
from latentforge.pipelines import run
from latentforge.sample_media import make_image, make_video, scene_frame

pytestmark = pytest.mark.ray

FPS = 24
BUCKETS = "96x64x9;96x64x17;64x64x1"
TRUTH = {  # name -> clips (parent spans) with default settings
    "a.mp4": [(0, 30), (30, 61), (61, 90), (90, 120)],
    "b.mp4": [(0, 47), (47, 69), (69, 100), (100, 150)],
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("split_media")
    make_video(folder / "a.mp4", 160, 96, 120, FPS, cuts=(30, 61, 90), frame_fn=scene_frame, audio=True)
    # 6.25 s: with segment_seconds 2 it is detected in 4 segments with cuts near their borders
    make_video(folder / "b.mp4", 128, 72, 150, FPS, cuts=(47, 69, 100), frame_fn=scene_frame)
    make_image(folder / "c.png", 100, 80)
    (folder / "corrupt.mp4").write_bytes(b"not a video" * 50)
    (folder / "empty.mp4").write_bytes(b"")
    rows = [
        {"media_path": "a.mp4", "caption": "Shots of colour.", "source_id": 1},
        {"media_path": "b.mp4", "caption": None, "source_id": 2},
        {"media_path": "c.png", "caption": "A still.", "source_id": 3},
        {"media_path": "corrupt.mp4", "caption": "x", "source_id": 4},
        {"media_path": "empty.mp4", "caption": "x", "source_id": 5},
    ]
    manifest = folder / "dataset.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder, manifest


def _cfg(manifest, out, *overrides, pipeline="split"):
    sets = ["split.segment_seconds=2", "split.overlap_seconds=0.5", "encode_text.enabled=false", *overrides]
    return load_config(None, sets, input=str(manifest), output=str(out), model="tiny-wan2.1", buckets=BUCKETS, pipeline=pipeline)


def _lines(out) -> list[dict]:
    return [json.loads(line) for line in Path(out, "clips.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def split_virtual(dataset, tmp_path_factory, ray_local):
    _, manifest = dataset
    cfg = _cfg(manifest, tmp_path_factory.mktemp("split_virtual") / "out")
    return cfg, run(cfg)


def test_split_writes_an_ltx_style_manifest(dataset, split_virtual):
    folder, _ = dataset
    cfg, summary = split_virtual
    lines = _lines(cfg.output)
    by_source: dict[str, list] = {}
    for line in lines:
        by_source.setdefault(Path(line["parent_uri"]).name, []).append(line)
        assert {"media_path", "start_frame", "end_frame", "fps", "scene_index", "caption"} <= set(line)
    for name, truth in TRUTH.items():
        got = by_source[name]
        assert [(x["start_frame"], x["end_frame"]) for x in got] == truth
        assert [x["scene_index"] for x in got] == list(range(len(truth)))
        assert all(x["media_path"] == str(folder / name) and x["fps"] == FPS for x in got)
    assert {x["caption"] for x in by_source["a.mp4"]} == {"Shots of colour."}
    assert {x["caption"] for x in by_source["b.mp4"]} == {None}  # not captioned yet
    assert by_source["c.png"][0]["start_frame"] == 0 and by_source["c.png"][0]["end_frame"] == 1
    assert all("source_id" in x for x in lines)  # manifest columns travel with the clips
    counts = summary["counts"]
    assert counts["clips"] == len(lines) == 9 and counts["clips_written"] == 8 and counts["images_written"] == 1
    assert counts["errors"] == 2 and counts["errors_by_reason"] == {"probe/not a video file": 1, "probe/empty file": 1}
    errors = read_table(cfg.output, "errors").to_pylist()
    assert sorted(Path(e["uri"]).name for e in errors) == ["corrupt.mp4", "empty.mp4"]
    # detection read every frame once, plus the segment overlaps of b.mp4
    assert summary["source_frames"] == 270 and summary["decoded_frames"]["split_scenes"] > 270
    assert summary["decoded_per_source_frame"] == pytest.approx(summary["decoded_frames"]["split_scenes"] / 270, abs=1e-3)
    assert json.loads(Path(cfg.output, "run.json").read_text())["counts"] == counts


def test_rerun_adds_no_line_and_resumes(split_virtual):
    cfg, _ = split_virtual
    before = _lines(cfg.output)
    again = run(cfg)
    assert again["counts"]["sources_skipped_existing"] == 3 and again["counts"]["clips_written"] == 0
    assert _lines(cfg.output) == before
    # a run killed after one source: its part is there, the others are not
    parts = sorted(Path(cfg.output, "clips", "_parts").glob("*.jsonl"))
    assert len(parts) == 3
    for p in parts[1:]:
        p.unlink()
    resumed = run(cfg)
    assert resumed["counts"]["sources_skipped_existing"] == 1
    assert _lines(cfg.output) == before


def test_clips_manifest_reads_back_as_spans(split_virtual):
    cfg, _ = split_virtual
    rows = read_manifest(str(Path(cfg.output, "clips.jsonl")))
    videos = [r for r in rows if r["media_type"] == "video"]
    assert len(videos) == 8 and all(r["error"] is None for r in rows)
    for r in videos:
        p = probe(r)
        assert (p["start_frame"], p["end_frame"]) == (r["start_frame"], r["end_frame"])  # probe keeps the span
        assert p["num_frames"] == r["end_frame"] - r["start_frame"]
    assert [r["caption"] for r in videos if Path(r["uri"]).name == "b.mp4"] == [None] * 4


def _latents(rows) -> dict[str, np.ndarray]:
    return {r["sample_id"]: from_columns(r, "latent").float().numpy() for r in rows}


def test_precompute_on_clips_equals_split_inside_one_run(dataset, split_virtual, tmp_path):
    _, manifest = dataset
    cfg, _ = split_virtual
    handed_over = _cfg(Path(cfg.output, "clips.jsonl"), tmp_path / "from_manifest", pipeline="precompute")
    summary = run(handed_over)
    # one job, each video detected in one pass: prepare takes the frames detection made
    one_job = _cfg(manifest, tmp_path / "one_job", "split.enabled=true", "split.segment_seconds=600", pipeline="precompute")
    summary_one = run(one_job)
    # one job, videos detected in segments (other tasks): prepare decodes the clips again
    segmented = _cfg(manifest, tmp_path / "segmented", "split.enabled=true", pipeline="precompute")
    summary_segmented = run(segmented)
    a = read_table(handed_over.output, "latents").to_pylist()
    b = read_table(one_job.output, "latents").to_pylist()
    c = read_table(segmented.output, "latents").to_pylist()
    assert len(a) == len(b) == len(c) == 9
    # same samples, same latents (the VAE's float sums may differ in the last bits when Ray
    # batches clips differently; the frames themselves are byte-equal: tests/test_scenes.py)
    expected = _latents(a)
    for other in (_latents(b), _latents(c)):
        assert other.keys() == expected.keys()
        for sample_id, latent in other.items():
            np.testing.assert_allclose(latent, expected[sample_id], rtol=1e-5, atol=1e-6)
    spans = sorted((Path(r["uri"]).name, r["start_frame"], r["end_frame"]) for r in b if r["media_type"] == "video")
    assert spans == sorted((name, s, e) for name, truth in TRUTH.items() for s, e in truth)
    for r in b:
        if r["media_type"] == "video":
            assert r["bucket"] == "96x64x17" and r["parent_uri"] == r["uri"]
    assert summary["counts"]["latents_written"] == summary_one["counts"]["latents_written"] == 9
    # one decode per video: detection read each source frame once, prepare only the image
    assert summary_one["decoded_frames"]["split_scenes"] == summary_one["source_frames"] == 270
    assert summary_one["decoded_frames"]["prepare"] == 1
    # segments: detection read the overlaps too, and prepare decoded every clip's frames again
    assert summary_segmented["decoded_frames"]["split_scenes"] > 270 and summary_segmented["decoded_frames"]["prepare"] > 8 * 17
    # rerun of the one job: clip lists come from the parts, nothing decoded again
    again = run(one_job)
    assert again["counts"]["latents_skipped_existing"] == 9 and not again["decoded_frames"].get("split_scenes")


def test_reencode_and_copy_modes_write_clip_files(dataset, tmp_path, ray_local):
    folder, manifest = dataset
    for mode in ("reencode", "copy"):
        cfg = _cfg(manifest, tmp_path / mode, f"split.mode={mode}")
        summary = run(cfg)
        lines = [x for x in _lines(cfg.output) if x["media_path"].endswith(".mp4")]
        assert len(lines) == 8 and summary["counts"]["clips_written"] == 8
        names = sorted(Path(x["media_path"]).name for x in lines)
        assert names == sorted(f"{s}-Scene-00{i}.mp4" for s in ("a", "b") for i in range(1, 5))
        for x in lines:
            assert x["media_path"].startswith("clips/")  # relative to clips.jsonl
            meta = probe({"uri": str(Path(cfg.output, x["media_path"])), "media_type": "video"})
            length = x["parent_end_frame"] - x["parent_start_frame"]
            assert x["end_frame"] - x["start_frame"] == length
            if mode == "reencode":
                assert (x["start_frame"], meta["source_frames"]) == (0, length)
            else:
                assert x["start_frame"] >= 0 and x["end_frame"] <= meta["source_frames"]
        rows = read_manifest(str(Path(cfg.output, "clips.jsonl")))
        assert all(r["error"] is None for r in rows)
        assert not list(Path(cfg.output).rglob(".tmp-*"))


def test_clip_name_collisions_are_refused(tmp_path, ray_local):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    make_video(tmp_path / "x" / "clip.mp4", 96, 64, 20, FPS)
    make_video(tmp_path / "y" / "clip.mp4", 96, 64, 20, FPS)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"media_path": p, "caption": None}) + "\n" for p in ("x/clip.mp4", "y/clip.mp4")))
    with pytest.raises(ConfigError, match=r"\{hash\}"):
        run(_cfg(manifest, tmp_path / "out", "split.mode=copy"))
    # the same check when the split runs inside `latentforge run`, before any clip is written
    with pytest.raises(ConfigError, match=r"\{hash\}"):
        run(_cfg(manifest, tmp_path / "out_run", "split.mode=copy", "split.enabled=true", pipeline="precompute"))
    assert not Path(tmp_path, "out_run", "clips").exists()
    # (quoted: unquoted braces are a YAML mapping)
    summary = run(_cfg(manifest, tmp_path / "out", "split.mode=copy", 'split.clip_name="{stem}-{hash}-Scene-{scene:03d}"'))
    assert summary["counts"]["clips"] == 2 and len(list(Path(tmp_path, "out", "clips").glob("clip-*-Scene-001.mp4"))) == 2


def test_plan_shows_the_split_stage(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("input: data/\noutput: s3://bucket/out\npipeline: split\nsplit:\n  detector: adaptive\n  mode: reencode\n")
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "split_scenes" in out and "detect-adaptive" in out and "crf 22, preset veryfast" in out
    assert "s3://bucket/out/clips.jsonl" in out and "encode_video" not in out
    path.write_text("input: data/\noutput: out/\nsplit:\n  enabled: true\n")
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.index("probe") < out.index("split_scenes") < out.index("prepare") < out.index("encode_video")


def test_split_from_and_to_s3(tmp_path, s3_endpoint, ray_local):
    import s3fs

    options = {"client_kwargs": {"endpoint_url": s3_endpoint}, "key": "testing", "secret": "testing-secret-value"}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    fs.mkdir("lf-split")
    fs.put(str(make_video(tmp_path / "a.mp4", 160, 96, 120, FPS, cuts=(30, 61, 90), frame_fn=scene_frame)), "lf-split/raw/a.mp4")
    fs.pipe("lf-split/raw/dataset.jsonl", (json.dumps({"media_path": "a.mp4", "caption": "c"}) + "\n").encode())
    cfg = load_config(
        None,
        ["split.mode=copy"],
        input="s3://lf-split/raw/dataset.jsonl",
        output="s3://lf-split/out",
        pipeline="split",
        storage_options=options,
    )
    summary = run(cfg)
    assert summary["counts"]["clips"] == 4 and summary["counts"]["errors"] == 0
    lines = [json.loads(x) for x in fs.cat("lf-split/out/clips.jsonl").decode().splitlines()]
    assert [x["media_path"] for x in lines] == [f"clips/a-Scene-00{i}.mp4" for i in range(1, 5)]
    assert [(x["parent_start_frame"], x["parent_end_frame"]) for x in lines] == TRUTH["a.mp4"]
    assert sorted(fs.ls("lf-split/out/clips", detail=False)) == sorted(
        ["lf-split/out/clips/_parts"] + [f"lf-split/out/clips/a-Scene-00{i}.mp4" for i in range(1, 5)]
    )
    rows = read_manifest("s3://lf-split/out/clips.jsonl", storage_options=options)
    meta = probe(rows[1], storage_options=options)
    assert meta["error"] is None and meta["uri"] == "s3://lf-split/out/clips/a-Scene-002.mp4"
    assert (meta["start_frame"], meta["end_frame"]) == (lines[1]["start_frame"], lines[1]["end_frame"])
    assert run(cfg)["counts"]["sources_skipped_existing"] == 1


def test_embedded_ray_tasks_run_at_the_drivers_priority(ray_local, monkeypatch):
    """Ray starts workers at niceness 15; an embedded Ray's run at the driver's, unless the user
    set RAY_worker_niceness (on a machine doing anything else, 15 made detection in a task 1.5-3x
    slower than in the driver)."""
    import os

    from latentforge.cluster import local_worker_priority

    def niceness() -> int:
        return os.nice(0)

    assert ray_local.get(ray_local.remote(num_cpus=0.25)(niceness).remote()) == os.nice(0)
    monkeypatch.setenv("RAY_worker_niceness", "10")
    local_worker_priority()
    assert os.environ["RAY_worker_niceness"] == "10"


def test_only_a_run_that_prepares_asks_detection_for_bucket_frames(tmp_path):
    """`pipeline: split` has no prepare: its detection must not make (and hold, and ship) bucket
    frames; inside precompute it does (docs/scenes.md, "One decode per video")."""
    from latentforge.pipelines.split import frame_request

    def cfg(**kw):
        return load_config(None, [], input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out"), model="tiny", buckets="96x64x9", **kw)

    assert frame_request(cfg(pipeline="split")) is None
    assert frame_request(cfg(pipeline="all")) is not None
