"""Captioning on local Ray with the tiny random-weight Qwen2.5-VL: the caption pipeline and its
manifest, skip / override, resume from part files, the manifest feeding precompute unchanged,
captioning inside `latentforge run`, ChronoEdit edit captions, and split -> caption -> precompute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentforge.cli import main
from latentforge.config import load_config
from latentforge.formats.manifests import read_manifest
from latentforge.formats.shards import read_table
from latentforge.sample_media import make_image, make_video

pytestmark = pytest.mark.ray

BUCKETS = "64x64x9;96x64x9;64x96x9"
CAPTIONER = ["caption.model=tiny-qwen2.5-vl", "caption.max_new_tokens=6", "caption.max_pixels=4096", "caption.batch_size=2"]


def _dataset(folder: Path) -> Path:
    entries = [
        ("wide.mp4", make_video(folder / "clips/wide.mp4", 160, 96, 30, 24), None),
        ("tall.mp4", make_video(folder / "clips/tall.mp4", 96, 160, 24, 24), None),
        ("square.mp4", make_video(folder / "clips/square.mp4", 80, 80, 20, 24), "A person wrote this caption."),
        ("still.png", make_image(folder / "clips/still.png", 100, 80), None),
        ("missing.mp4", None, None),
    ]
    rows = [{"media_path": f"clips/{name}", "caption": caption, "source_id": i} for i, (name, _, caption) in enumerate(entries)]
    rows.append({"media_path": "clips/wide.mp4", "caption": None, "source_id": 5, "start_frame": 12, "end_frame": 30})  # a span
    manifest = folder / "dataset.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture(scope="module")
def captioned(tmp_path_factory, ray_local):
    from latentforge.pipelines import run

    folder = tmp_path_factory.mktemp("caption")
    manifest = _dataset(folder)
    cfg = load_config(
        None,
        CAPTIONER + [f"caption.manifest={folder / 'captions.jsonl'}"],
        input=str(manifest),
        output=str(folder / "out"),
        model="tiny",
        buckets=BUCKETS,
        pipeline="caption",
    )
    summary = run(cfg)
    return cfg, folder, summary


def test_caption_pipeline_writes_a_reviewable_manifest(captioned):
    cfg, folder, summary = captioned
    counts = summary["counts"]
    assert counts["input_rows"] == 6 and counts["rows"] == 6
    assert counts["captioned"] == 4 and counts["captions_kept"] == 1 and counts["manifest_rows"] == 5
    assert counts["errors_by_reason"] == {"probe/file not found": 1}
    assert json.loads(Path(cfg.output, "run.json").read_text())["counts"] == counts

    lines = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
    assert [line["source_id"] for line in lines] == [0, 1, 2, 3, 5]  # input order, passthrough kept
    # one row is a span, so every row carries start/end (end exclusive), relative media paths
    assert [(line["media_path"], line["start_frame"], line["end_frame"]) for line in lines] == [
        ("clips/wide.mp4", 0, 30), ("clips/tall.mp4", 0, 24), ("clips/square.mp4", 0, 20), ("clips/still.png", 0, 1), ("clips/wide.mp4", 12, 30),
    ]
    by_id = {line["source_id"]: line for line in lines}
    assert by_id[2]["caption"] == "A person wrote this caption."  # has a caption: untouched
    for i in (0, 1, 3, 5):  # machine captions: non-empty, cleaned (no control characters, trimmed)
        assert by_id[i]["caption"].strip() == by_id[i]["caption"] and by_id[i]["caption"]
    assert not {"fps", "width", "uri", "error"} & set(by_id[3])  # probe columns are not passed through

    # it reads back as an LTX-2 manifest, and the relative paths resolve
    rows = read_manifest(str(folder / "captions.jsonl"))
    assert all(Path(r["uri"]).exists() and r["error"] is None for r in rows)
    assert [r["caption"] for r in rows] == [line["caption"] for line in lines]
    errors = read_table(cfg.output, "errors").to_pylist()
    assert [Path(e["uri"]).name for e in errors] == ["missing.mp4"]


def test_rerun_skips_what_was_captioned_and_a_stopped_job_resumes(captioned):
    from latentforge.pipelines import run
    from latentforge.pipelines.caption import PARTS

    cfg, folder, first = captioned
    before = (folder / "captions.jsonl").read_text()
    parts = sorted(Path(cfg.output, PARTS).glob("part-*.jsonl"))
    assert parts and sum(len(p.read_text().splitlines()) for p in parts) == 4  # what the model captioned

    again = run(cfg)
    assert again["counts"]["captioned"] == 0
    # nothing left to caption: the captioner's actor never loads its model (lazy, issue 13)
    assert first["stage_seconds"].get("caption_model_load", 0) > 0
    assert again["stage_seconds"].get("caption_model_load", 0) == 0
    assert again["counts"]["captions_from_earlier_runs"] == 4 and again["counts"]["captions_kept"] == 1
    assert (folder / "captions.jsonl").read_text() == before
    assert sorted(Path(cfg.output, PARTS).glob("part-*.jsonl")) == parts  # nothing written twice

    # a job stopped half way: one part never landed, and a temp file is lying around
    lost = next(p for p in parts if any(json.loads(line)["generated"] for line in p.read_text().splitlines()))
    lost_generated = sum(json.loads(line)["generated"] for line in lost.read_text().splitlines())
    lost.unlink()
    (lost.parent / ".tmp-dead-part-x.jsonl").write_text("{broken")
    resumed = run(cfg)
    assert resumed["counts"]["captioned"] == lost_generated
    assert resumed["counts"]["captions_from_earlier_runs"] == 4 - lost_generated
    assert (folder / "captions.jsonl").read_text() == before  # greedy decoding: the same captions

    # the manifest follows the input: a caption written into the input since wins over the part
    data = Path(cfg.input)
    original = data.read_text()
    edited = [json.loads(line) for line in original.splitlines()]
    edited[0]["caption"] = "Reviewed by hand."
    edited[1]["note"] = "new column"
    data.write_text("".join(json.dumps(r) + "\n" for r in edited))
    try:
        third = run(cfg)
    finally:
        data.write_text(original)
    lines = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
    assert third["counts"]["captioned"] == 0 and third["counts"]["captions_kept"] == 2
    assert lines[0]["caption"] == "Reviewed by hand." and lines[1]["note"] == "new column"
    run(cfg)  # back to the original input for the tests after this one


def test_manifest_feeds_precompute_unchanged(captioned, tmp_path):
    _, folder, _ = captioned
    lines = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
    config = tmp_path / "precompute.yaml"
    config.write_text(
        f"input: {folder / 'captions.jsonl'}\noutput: {tmp_path / 'pre'}\nmodel: tiny\nbuckets: '{BUCKETS}'\npipeline: precompute\n"
    )
    assert main(["run", str(config)]) == 0
    latents = read_table(str(tmp_path / "pre"), "latents").to_pylist()
    assert len(latents) == 5 and not read_table(str(tmp_path / "pre"), "errors").num_rows
    expected = {(line["media_path"].split("/")[-1], line["start_frame"]): line for line in lines}
    for row in latents:
        line = expected[(Path(row["uri"]).name, row["start_frame"])]
        assert row["caption"] == line["caption"] and row["source_id"] == line["source_id"]
        assert row["end_frame"] == line["end_frame"] and row["caption_id"]
    emb = read_table(str(tmp_path / "pre"), "embeddings")
    assert emb.num_rows == len({r["caption_id"] for r in latents})


def test_chronoedit_pairs_captioned_with_the_edit_task(tmp_path, ray_local):
    from latentforge.formats.chronoedit import make_chronoedit_dataset
    from latentforge.pipelines import run

    pairs = []
    for i in range(3):
        pairs.append(
            {
                "before": str(make_image(tmp_path / f"in/{i}a.png", 64, 48, seed=i)),
                "after": str(make_image(tmp_path / f"in/{i}b.png", 64, 48, seed=i + 5)),
                "prompt": "Turn the square blue." if i == 0 else None,
                "key": f"edit{i}",
            }
        )
    result = make_chronoedit_dataset(pairs, tmp_path / "edits")
    assert result["missing_prompts"] == 2
    cfg = load_config(
        None,
        CAPTIONER + ["caption.task=edit", "caption.cot=true", f"caption.manifest={tmp_path / 'edits' / 'metadata.csv'}"],
        input=result["dataset"],
        output=str(tmp_path / "out"),
        model="tiny",
        buckets=BUCKETS,
        pipeline="caption",
    )
    summary = run(cfg)
    assert summary["counts"]["captioned"] == 2 and summary["counts"]["captions_kept"] == 1
    header = (tmp_path / "edits" / "metadata.csv").read_text().splitlines()[0]
    assert header.split(",")[:3] == ["key", "video", "prompt"]
    rows = read_manifest(str(tmp_path / "edits"))  # the chronoedit reader
    assert [r["key"] for r in rows] == ["edit0", "edit1", "edit2"]
    assert rows[0]["caption"] == "Turn the square blue." and all(r["caption"] for r in rows)
    assert all(Path(r["uri"]).exists() for r in rows)


def test_audio_aware_captioner_in_the_pipeline(tmp_path, ray_local):
    """Qwen2.5-Omni (tiny twin): the clip's audio travels with its frames through Ray."""
    from latentforge.pipelines import plan, run

    media = tmp_path / "media"
    make_video(media / "loud.mp4", 96, 64, 36, 24, audio=True)
    make_video(media / "silent.mp4", 96, 64, 36, 24)
    rows = [{"media_path": "loud.mp4", "caption": "An old caption."}, {"media_path": "silent.mp4", "caption": None}]
    (media / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        None,
        ["caption.model=tiny-qwen2.5-omni", "caption.max_new_tokens=4", "caption.max_pixels=4096", "caption.override=true"],
        input=str(media / "dataset.jsonl"),
        output=str(tmp_path / "out"),
        model="tiny",
        buckets=BUCKETS,
        pipeline="caption",
    )
    assert "16 kHz audio" in next(s.detail for s in plan(cfg) if s.name == "caption_frames")
    summary = run(cfg)
    # override: the old caption is replaced as well
    assert summary["counts"]["captioned"] == 2 and summary["counts"]["captions_kept"] == 0 and summary["counts"]["errors"] == 0
    assert summary["captioner"]["family"] == "qwen2.5-omni" and summary["stage_seconds"]["caption_model_load"] > 0
    rows = read_manifest(str(Path(cfg.output) / "captions.jsonl"))
    assert [Path(r["uri"]).name for r in rows] == ["loud.mp4", "silent.mp4"]
    assert rows[0]["caption"] != "An old caption." and all(r["caption"] for r in rows)


def test_split_caption_precompute(tmp_path, ray_local):
    """pipeline: all: scene clips -> captions -> latents in one run. Rows with a caption keep it,
    every scene of an uncaptioned video gets its own. (Without the split stage, the same run
    with caption.enabled: true checks captioning inside `latentforge run`.)"""
    import importlib.util

    from latentforge import sample_media
    from latentforge.pipelines import plan, run

    has_split = importlib.util.find_spec("latentforge.pipelines.split") is not None
    folder = tmp_path / "raw"
    # shots that differ in brightness and texture as well as hue, when sample_media has them
    draw = getattr(sample_media, "scene_frame", None)
    kwargs = {"frame_fn": draw} if draw else {}
    make_video(folder / "cuts.mp4", 160, 96, 96, 24, cuts=(30, 61), **kwargs)
    make_video(folder / "square.mp4", 80, 80, 20, 24)
    make_image(folder / "still.png", 100, 80)
    rows = [
        {"media_path": "cuts.mp4", "caption": None},
        {"media_path": "square.mp4", "caption": "A person wrote this caption."},
        {"media_path": "still.png", "caption": None},
    ]
    (folder / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        None,
        CAPTIONER + ["encode_text.enabled=false"] + ([] if has_split else ["caption.enabled=true"]),
        input=str(folder / "dataset.jsonl"),
        output=str(tmp_path / "out"),
        model="tiny",
        buckets=BUCKETS,
        pipeline="all" if has_split else "precompute",
    )
    names = [s.name for s in plan(cfg)]
    assert names.index("probe") < names.index("caption_frames") < names.index("caption") < names.index("prepare")
    summary = run(cfg)
    latents = read_table(cfg.output, "latents").to_pylist()
    by_name: dict = {}
    for r in latents:
        by_name.setdefault(Path(r["uri"]).name, []).append(r)
    assert summary["counts"]["latents_written"] == len(latents) and not summary["counts"]["errors"]
    assert [r["caption"] for r in by_name["square.mp4"]] == ["A person wrote this caption."]  # kept
    assert all(r["caption"] and r["caption_id"] for r in latents)  # every clip has a caption
    assert not any(k.startswith("_caption") for k in latents[0])
    assert summary["stage_seconds"]["caption"] > 0
    parts = list(Path(cfg.output, "captions/_parts").glob("part-*.jsonl"))
    generated = sum(len(p.read_text().splitlines()) for p in parts)  # what a killed run would keep
    if has_split:
        clips = sorted((r["start_frame"], r["end_frame"]) for r in by_name["cuts.mp4"])
        assert clips == [(0, 30), (30, 61), (61, 96)]  # one latent per scene, each captioned
        assert generated == 4
    else:
        assert generated == 2
    # run.json counts what the model captioned in this run (the kept caption is not counted)
    assert summary["counts"]["captioned"] == generated
    assert json.loads(Path(cfg.output, "run.json").read_text())["counts"]["captioned"] == generated
