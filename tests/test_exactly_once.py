"""One row per sample (issue 11): a manifest that names a clip twice (the same line twice, or
the same clip with two captions) gives one latent row per sample_id, the extra rows counted;
a rerun changes nothing; the shard rewrite keeps every other row."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentforge.config import load_config
from latentforge.formats.shards import read_table, shard_name
from latentforge.pipelines.outputs import remove_duplicates
from latentforge.sample_media import make_video


@pytest.mark.ray
def test_a_clip_named_twice_is_one_sample(tmp_path, ray_local, tiny_home):
    from latentforge.pipelines import precompute, run

    for name in ("a", "b", "c"):
        make_video(tmp_path / f"{name}.mp4", 96, 64, 12, 24)
    rows = [
        {"media_path": "a.mp4", "caption": "A red square."},
        {"media_path": "b.mp4", "caption": "B first caption."},
        {"media_path": "a.mp4", "caption": "A red square."},  # the same line again
        {"media_path": "b.mp4", "caption": "B second caption."},  # the same clip, another caption
        {"media_path": "c.mp4", "caption": "C."},
    ]
    (tmp_path / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # one row per block: the duplicates land in different tasks, as on a cluster
    cfg = load_config(None, ["encode_video.batch_size=1"], input=str(tmp_path / "dataset.jsonl"),
                      output=str(tmp_path / "out"), model="tiny", buckets="64x64x9")
    counts = run(cfg)["counts"]
    latents = read_table(cfg.output, "latents", ["sample_id", "caption", "caption_id"]).to_pylist()
    assert Counter(r["sample_id"] for r in latents).most_common(1)[0][1] == 1
    assert len(latents) == 3
    assert counts["latents_written"] == 3 and counts["duplicate_rows_skipped"] == 2 and counts["input_rows"] == 5
    b = [r for r in latents if r["caption"].startswith("B")]
    both = {"B first caption.", "B second caption."}
    assert len(b) == 1 and b[0]["caption"] in both  # the one whose caption_id sorts first
    embedded = read_table(cfg.output, precompute._encoder_table(cfg), ["caption_id"]).column("caption_id").to_pylist()
    assert sorted(embedded) == sorted(r["caption_id"] for r in latents)  # no embedding for the dropped caption
    again = run(cfg)["counts"]
    assert again["latents_written"] == 0 and again["latents_skipped_existing"] == 5 and again["duplicate_rows_skipped"] == 0
    assert sorted(read_table(cfg.output, "latents", ["sample_id"]).column("sample_id").to_pylist()) == sorted(r["sample_id"] for r in latents)


def _shard(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / shard_name(r["sample_id"] for r in rows)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_remove_duplicates_keeps_every_other_row(tmp_path):
    out = tmp_path / "out"
    bucket = out / "latents" / "bucket=64x64x9"
    _shard(bucket, [{"sample_id": "s1", "caption_id": "c9", "v": 1}, {"sample_id": "s2", "caption_id": "c2", "v": 2}])
    _shard(bucket, [{"sample_id": "s1", "caption_id": "c1", "v": 3}, {"sample_id": "s3", "caption_id": "c3", "v": 4}])
    _shard(bucket, [{"sample_id": "s4", "caption_id": "c4", "v": 5}, {"sample_id": "s4", "caption_id": "c4", "v": 5}])
    assert remove_duplicates(str(out), "latents", "sample_id") == (2, 4)
    rows = read_table(str(out), "latents").to_pylist()
    assert sorted((r["sample_id"], r["caption_id"]) for r in rows) == [("s1", "c1"), ("s2", "c2"), ("s3", "c3"), ("s4", "c4")]
    assert not list(bucket.glob(".tmp-*"))
    assert remove_duplicates(str(out), "latents", "sample_id") == (0, 4)
