"""The run report, `latentforge inspect` and progress lines (issue 15): a small run writes
report.html naming every bucket with the latents table's counts and every error kind with
run.json's counts, its figures are PNGs, the contact sheet has one tile per bucket cropped as
prepare crops, and inspect prints the same buckets and counts."""

from __future__ import annotations

import base64
import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import Image

from latentforge.config import load_config
from latentforge.sample_media import make_image, make_video

pytestmark = pytest.mark.ray

BUCKETS = "96x64x9;64x96x9;64x64x9;64x64x1"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_local):
    from latentforge.pipelines import run

    root = tmp_path_factory.mktemp("report")
    rows = []
    for i, (w, h) in enumerate([(96, 64), (64, 96), (80, 80), (96, 64)]):
        make_video(root / f"v{i}.mp4", w, h, 12, 24)
        rows.append({"media_path": f"v{i}.mp4", "caption": f"Clip number {i}."})
    make_video(root / "short.mp4", 96, 64, 4, 24)  # too short for any video bucket
    rows.append({"media_path": "short.mp4", "caption": "Too short."})
    make_image(root / "still.png", 80, 64)
    rows.append({"media_path": "still.png", "caption": "A still."})
    (root / "broken.mp4").write_bytes(b"")
    rows.append({"media_path": "broken.mp4", "caption": "Empty."})
    (root / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, ["encode_video.batch_size=2"], input=str(root / "dataset.jsonl"), output=str(root / "out"),
                      model="tiny", buckets=BUCKETS)
    summary = run(cfg)
    return root / "out", summary


def _bucket_counts(out: Path) -> dict[str, int]:
    table = pads.dataset(str(out / "latents"), partitioning="hive").to_table(columns=["bucket"])
    return dict(Counter(str(b) for b in table.column("bucket").to_pylist()))


def _page(out: Path) -> str:
    return (out / "report.html").read_text()


def test_report_names_every_bucket_and_error_kind_with_its_count(finished):
    out, summary = finished
    page = _page(out)
    shown = {m[0]: int(m[1]) for m in re.findall(r'<tr data-bucket="([^"]+)" data-rows="(\d+)"', page)}
    expected = _bucket_counts(out)
    assert shown == expected and len(expected) == 4, (shown, expected)
    kinds = {m[0]: int(m[1]) for m in re.findall(r'<tr data-kind="([^"]+)" data-count="(\d+)"', page)}
    run_json = json.loads((out / "run.json").read_text())
    assert kinds == run_json["counts"]["errors_by_reason"] and sum(kinds.values()) == 2, kinds
    assert run_json["report"]["contact_tiles"] == len(expected)
    assert summary["report"] == run_json["report"]
    assert run_json["timeline"]["rows"]["latents"] and sum(run_json["timeline"]["rows"]["latents"]) == 7
    # the fixed cost, in order: Ray up, then the first read task, then the first finished row
    fixed = run_json["fixed_cost_seconds"]
    assert 0 <= fixed["ray_start"] <= fixed["first_task"] <= fixed["first_output_row"] <= run_json["wall_seconds"], fixed
    assert fixed["first_output_row"] == min(run_json["timeline"]["first_row_seconds"].values())


def test_figures_are_pngs_and_the_page_is_self_contained(finished):
    out, _ = finished
    page = _page(out)
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(https?:|//|/)', page)  # no external asset
    for s in sources:
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()
    files = sorted((out / "report").glob("*.png"))
    assert {"buckets.png", "clip_length.png", "aspect_ratio.png", "errors.png", "stage_seconds.png", "wall_time.png"} <= {f.name for f in files}
    for f in files:
        with Image.open(f) as im:
            assert im.format == "PNG" and im.width > 10 and im.height > 10
    assert len(sources) == len(files)  # each PNG file is on the page, inline


def test_contact_sheet_has_one_tile_per_bucket_cropped_as_prepare_crops(finished):
    from latentforge.operators.frames import load_frames

    out, _ = finished
    page = _page(out)
    tiles = re.findall(r'<img class="contact"[^>]*data-bucket="([^"]+)"', page)
    assert sorted(tiles) == sorted(_bucket_counts(out))
    assert sorted(f.name for f in (out / "report").glob("contact-*.png")) == sorted(f"contact-bucket={b}.png" for b in tiles)
    # the 96x64x9 tile's first frame is prepare's first frame of the bucket's example sample
    rows = pads.dataset(str(out / "latents"), partitioning="hive").to_table(
        columns=["sample_id", "uri", "media_type", "start_frame", "end_frame", "fps", "source_fps", "rotation", "bucket"]).to_pylist()
    example = min((r for r in rows if r["bucket"] == "96x64x9"), key=lambda r: r["sample_id"])
    frames = load_frames(example)["frames"]
    with Image.open(out / "report" / "contact-bucket=96x64x9.png") as im:
        tile = np.asarray(im.convert("RGB"))
    scale = tile.shape[0] // 64
    assert tile.shape[0] == 64 * scale and tile.shape[1] == (3 * 96 + 2 * 4) * scale
    assert np.array_equal(tile[::scale, :96 * scale:scale], frames[0])


def test_inspect_prints_the_buckets_and_counts(finished, capsys):
    from latentforge.cli import main

    out, summary = finished
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    for bucket, n in _bucket_counts(out).items():
        assert re.search(rf"^\s+{re.escape(bucket)}\s+{n}$", text, re.M), text
    for kind, n in summary["counts"]["errors_by_reason"].items():
        assert f"{kind}: {n}" in text
    assert "encoders:" in text and "tiny-wan2.1" in text and "on storage" in text and "model=tiny" in text
    assert main(["inspect", str(out), "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["clips_per_source"] == {"1": 5}  # five sources kept, one clip each (no split)
    assert {k: v["rows"] for k, v in as_json["latents"]["buckets"].items()} == _bucket_counts(out)

    sample_id = pads.dataset(str(out / "latents"), partitioning="hive").to_table(columns=["sample_id"]).column(0)[0].as_py()
    assert main(["inspect", str(out), "--sample", sample_id]) == 0
    text = capsys.readouterr().out
    assert f"sample_id: \"{sample_id}\"" in text and "latent_shape:" in text and "latent_bytes" not in text
    assert "embedding (tiny-wan2.1" in text
    assert main(["inspect", str(out), "--sample", "no-such-id"]) == 1

    (out / "report.html").unlink()
    assert main(["inspect", str(out), "--report"]) == 0
    assert (out / "report.html").exists()
    assert main(["inspect", str(out / "latents" / "nothing-here")]) == 2  # not an output


def test_a_report_that_fails_never_fails_the_run(monkeypatch, caplog):
    from types import SimpleNamespace

    from latentforge.pipelines import report_html

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_html, "build_report", broken)
    with caplog.at_level("WARNING", logger="latentforge"):
        made = report_html.report_after_run(SimpleNamespace(output="/nowhere", storage_options={}))
    assert made == {"error": "RuntimeError: disk full"}
    assert "report could not be built" in caplog.text


def test_progress_line():
    from latentforge.pipelines.progress import format_line

    line = format_line(150, 5000, True, {"latents": 1234}, {"latents": 3}, {"latents": 8.2}, eta_sink="latents")
    assert line == "progress 2m30s | read 5000 input rows | latents: 1234 rows (3 errors), 8.2 rows/s, ETA 7m39s"
    line = format_line(5, 40, False, {"latents": 10, "embeddings/encoder=x": 2}, {}, {"latents": 2.0}, eta_sink="latents")
    assert "read 40 input rows so far" in line and "ETA" not in line and "embeddings/encoder=x: 2 rows, 0.0 rows/s" in line
    assert format_line(3, None, False, {}, {}, {}) == "progress 3s | starting (no rows written yet)"


def test_timeline_stays_bounded(ray_local):
    import ray

    from latentforge.pipelines.progress import MAX_BINS, Progress

    actor = Progress.remote(1000.0)
    ray.get([actor.add.remote("latents", 2, 0, 1000.0 + t) for t in range(0, 5000, 7)])
    timeline = ray.get(actor.timeline.remote())
    counts = timeline["rows"]["latents"]
    assert len(counts) <= MAX_BINS and sum(counts) == 2 * len(range(0, 5000, 7))
    assert timeline["bin_seconds"] * len(counts) >= 4993
    assert timeline["first_row_seconds"] == {"latents": 0.0}


def test_a_run_keeps_its_books_in_one_actor_and_leaves_none(finished):
    """The read tally and the progress counts share one actor (a Python process with Ray in it,
    about 125 MiB RSS), and the run ends it."""
    from datetime import datetime

    import ray
    from ray.core.generated import gcs_pb2

    _, summary = finished
    began, ended = (datetime.fromisoformat(summary[k]).timestamp() * 1000 for k in ("started_at", "finished_at"))
    accessor = ray._private.state.state._connect_and_get_accessor()
    books = [gcs_pb2.ActorTableData.FromString(raw) for raw in accessor.get_actor_table(None, None)]
    books = [a for a in books if a.class_name in ("Tally", "Progress", "ReadCounts") and began <= a.start_time <= ended]
    assert [a.class_name for a in books] == ["Progress"], [a.class_name for a in books]
    assert gcs_pb2.ActorTableData.ActorState.Name(books[0].state) == "DEAD"
    assert summary["counts"]["input_rows"] == 7  # the read counts reached the driver through it


def test_run_takes_no_report_and_inspect_is_a_command():
    from latentforge.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["run", "my.yaml", "--no-report"]).no_report
    assert not parser.parse_args(["run", "my.yaml"]).no_report
    args = parser.parse_args(["inspect", "out/demo", "--sample", "abc", "--report"])
    assert (args.output, args.sample, args.report) == ("out/demo", "abc", True)
