"""`latentforge verify` (issue 11): passes on a clean output, and catches a deleted shard, a
duplicated row, a truncated shard, a missing embedding and a leftover temporary file, each by
its kind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from latentforge.config import load_config
from latentforge.sample_media import make_image, make_video

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def clean_output(tmp_path_factory, ray_local, tiny_home):
    from latentforge.pipelines import run

    root = tmp_path_factory.mktemp("verify")
    rows = []
    for i, (w, h) in enumerate([(96, 64), (64, 96), (80, 80), (96, 64)]):
        make_video(root / f"v{i}.mp4", w, h, 12, 24)
        rows.append({"media_path": f"v{i}.mp4", "caption": f"Clip number {i}."})
    make_image(root / "still.png", 80, 64)
    rows.append({"media_path": "still.png", "caption": "A still."})
    (root / "broken.mp4").write_bytes(b"")
    rows.append({"media_path": "broken.mp4", "caption": "Empty."})
    (root / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, ["encode_video.batch_size=1"], input=str(root / "dataset.jsonl"), output=str(root / "out"),
                      model="tiny", buckets="64x64x9;64x64x1")
    run(cfg)
    return root


def _copy(clean_output: Path, tmp_path: Path) -> Path:
    shutil.copytree(clean_output / "out", tmp_path / "out")
    return tmp_path / "out"


def _verify(out: Path, clean_output: Path | None = None) -> dict:
    from latentforge.pipelines import verify_output

    return verify_output(str(out), str(clean_output / "dataset.jsonl") if clean_output else None)


def _latent_shards(out: Path) -> list[Path]:
    return sorted((out / "latents").rglob("*.parquet"))


def test_a_clean_output_passes(clean_output, capsys):
    from latentforge.cli import main

    report = _verify(clean_output / "out", clean_output)
    assert report["ok"], report["problems"]
    assert report["latents"]["rows"] == 5 and report["errors"]["rows"] == 1
    assert main(["verify", str(clean_output / "out"), "--input", str(clean_output / "dataset.jsonl")]) == 0


def test_each_defect_is_caught_by_kind(clean_output, tmp_path):
    from latentforge.cli import main

    out = _copy(clean_output, tmp_path)
    shards = _latent_shards(out)
    deleted = shards[0]
    deleted.unlink()  # a deleted shard: its input rows are no longer accounted for
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])  # a truncated shard
    table = pq.read_table(shards[2])
    pq.write_table(table, shards[2].parent / "part-copy.parquet")  # the same rows twice
    (shards[3].parent / ".tmp-0123-part-x.parquet").write_bytes(b"half")  # an interrupted write
    wrong = pq.read_table(shards[3])
    shapes = wrong.column("latent_shape").to_pylist()
    shapes[0] = [shapes[0][0], shapes[0][1] + 1, *shapes[0][2:]]  # one latent frame too many
    pq.write_table(wrong.set_column(wrong.schema.get_field_index("latent_shape"), "latent_shape", [shapes]), shards[3])
    embedding = sorted((out / "embeddings").rglob("*.parquet"))[0]
    embedding.unlink()  # captions without embedding
    report = _verify(out, clean_output)
    kinds = set(report["problems"])
    assert {"shard does not open", "sample_id twice", "leftover temporary file", "caption without embedding",
            "input row not accounted for", "latent shape off its bucket"} <= kinds, report["problems"]
    assert not report["ok"]
    assert main(["verify", str(out)]) == 1
