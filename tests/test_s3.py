"""Object storage end to end: manifest and media in a bucket, shards back to a bucket (moto's
S3 server on loopback, Ray workers reading through s3fs), credentials never written out."""

import json

import pytest

from latentforge.config import load_config
from latentforge.formats.shards import read_table
from latentforge.pipelines import run
from latentforge.sample_media import make_image, make_video

pytestmark = pytest.mark.ray


def test_precompute_from_and_to_s3(tmp_path, s3_endpoint, ray_local):
    import s3fs

    options = {
        "client_kwargs": {"endpoint_url": s3_endpoint},
        "key": "testing",
        "secret": "testing-secret-value",
    }
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    fs.mkdir("lf-e2e")
    fs.put(str(make_video(tmp_path / "a.mp4", 160, 96, 20, 24)), "lf-e2e/raw/clips/a.mp4")
    fs.put(str(make_video(tmp_path / "b.mp4", 96, 160, 12, 24)), "lf-e2e/raw/clips/b.mp4")
    fs.put(str(make_image(tmp_path / "c.png", 90, 60)), "lf-e2e/raw/clips/c.png")
    lines = [
        {"media_path": "clips/a.mp4", "caption": "A square moves right."},
        {"media_path": "clips/b.mp4", "caption": "A square moves down."},
        {"media_path": "clips/c.png", "caption": "A square moves right."},
        {"media_path": "clips/gone.mp4", "caption": "Missing object."},
    ]
    fs.pipe("lf-e2e/raw/dataset.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode())

    cfg = load_config(
        None,
        [],
        input="s3://lf-e2e/raw/dataset.jsonl",
        output="s3://lf-e2e/out",
        model="tiny-wan2.1",
        buckets="96x64x9;64x96x9",
        storage_options=options,
    )
    summary = run(cfg)
    assert summary["counts"]["latents_written"] == 3 and summary["counts"]["errors"] == 1
    latents = read_table(cfg.output, "latents", storage_options=options).to_pylist()
    assert sorted(r["uri"] for r in latents) == [f"s3://lf-e2e/raw/clips/{n}" for n in ("a.mp4", "b.mp4", "c.png")]
    assert {r["bucket"] for r in latents} == {"96x64x9", "64x96x9", "96x64x1"}
    errors = read_table(cfg.output, "errors", storage_options=options).to_pylist()
    assert "file not found" in errors[0]["error"]
    assert fs.glob("lf-e2e/out/latents/bucket=96x64x9/part-*.parquet")
    assert len(fs.glob("lf-e2e/out/embeddings/encoder=*/part-*.parquet")) >= 1

    run_json = fs.cat("lf-e2e/out/run.json").decode()
    assert "testing-secret-value" not in run_json  # credentials never land in outputs
    assert json.loads(run_json)["config"]["storage_options"]["secret"] == "***"

    again = run(cfg)  # resume against the bucket: nothing new
    assert again["counts"]["latents_written"] == 0 and again["counts"]["latents_skipped_existing"] == 3
