"""A corpus of bad and odd inputs in one run beside good files (issue 11): the good ones all
land, each bad one is an error row with the reason a person can act on, grouped by kind in
run.json, and the job ends normally."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from latentforge.config import load_config
from latentforge.formats.shards import read_table
from latentforge.rows import error_kind
from latentforge.sample_media import make_image, make_video

pytestmark = pytest.mark.ray


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _cut_midstream(src: Path, dst: Path) -> None:
    """The index first (faststart), then only the first 30% of the frames' data: probe reads a
    whole file's metadata, the decode runs out part way (a download cut short)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    data = dst.read_bytes()
    dst.write_bytes(data[: int(len(data) * 0.3)])


def build_corpus(root: Path) -> tuple[list[str], dict[str, str], list[str]]:
    """(manifest lines, expected error kind per media name, names that must land)."""
    make_video(root / "good_a.mp4", 96, 64, 12, 24)
    make_video(root / "good_b.mp4", 64, 96, 12, 24, cuts=[6])
    make_image(root / "good_c.png", 80, 64)
    make_video(root / "odd_size.mp4", 98, 62, 12, 24)  # odd size: landed after resize and crop
    make_video(root / "rotated.mp4", 96, 64, 12, 24, rotation=90)  # displayed portrait
    make_video(root / "named_mov.mov", 96, 64, 12, 24)  # an mp4 container behind .mov
    make_image(root / "png_named.jpg", 80, 64)  # PNG bytes behind .jpg: read by content
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(root / "deep16.png")
    make_image(root / "one_pixel.png", 1, 1)
    (root / "zero.mp4").write_bytes(b"")
    (root / "zero.png").write_bytes(b"")
    data = (root / "good_a.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    _cut_midstream(make_video(root / "src24.mp4", 96, 64, 24, 24), root / "cut_midstream.mp4")
    (root / "text.mp4").write_text("<html>403 Forbidden</html>\n" * 20)
    (root / "garbage.png").write_bytes(bytes(range(256)) * 8)
    _audio_only(root / "audio_only.mp4")
    make_video(root / "short.mp4", 96, 64, 4, 24)  # fewer frames than the shortest bucket
    (root / "anim.gif").write_bytes(b"GIF89a")
    (root / "noext").write_bytes(b"\x00")
    good = ["good_a.mp4", "good_b.mp4", "good_c.png", "odd_size.mp4", "rotated.mp4", "named_mov.mov", "png_named.jpg", "deep16.png", "one_pixel.png"]
    lines = [json.dumps({"media_path": name, "caption": f"Sample {name}."}) for name in good]
    expected = {
        "zero.mp4": "probe/empty file", "zero.png": "probe/empty file",
        "truncated.mp4": "probe/damaged or truncated container", "text.mp4": "probe/not a video file",
        "garbage.png": "probe/not an image file", "audio_only.mp4": "probe/no video stream",
        "missing.mp4": "probe/file not found", "short.mp4": "prepare/too short",
        "cut_midstream.mp4": "prepare/decode failed",
        "anim.gif": "source/unsupported media type", "noext": "source/unsupported media type",
        "../outside.mp4": "source/media path leaves the manifest's folder",
    }
    lines += [json.dumps({"media_path": name, "caption": f"Sample {name}."}) for name in expected]
    lines += [
        json.dumps({"media_path": "good_a.mp4", "caption": "   "}),  # blank caption
        json.dumps({"media_path": "good_a.mp4", "caption": 7}),  # not text
        json.dumps({"caption": "no media path"}),
        "{this is not json",
        json.dumps(["a", "list"]),
        json.dumps({"media_path": "good_b.mp4", "caption": "Beyond the end.", "start_frame": 500, "end_frame": 600}),
        json.dumps({"media_path": "good_a.mp4", "caption": "Sample good_a.mp4."}),  # the same line again
    ]
    return lines, expected, good


def test_a_corpus_of_bad_inputs_in_one_run(tmp_path, ray_local, tiny_home):
    from latentforge.pipelines import run

    data = tmp_path / "data"
    data.mkdir()
    lines, expected, good = build_corpus(data)
    (tmp_path / "outside.mp4").write_bytes((data / "good_a.mp4").read_bytes())
    (data / "dataset.jsonl").write_text("\n".join(lines) + "\n")
    cfg = load_config(None, [], input=str(data / "dataset.jsonl"), output=str(tmp_path / "out"), model="tiny", buckets="64x64x9;64x64x1")
    counts = run(cfg)["counts"]

    latents = read_table(cfg.output, "latents", ["uri"]).column("uri").to_pylist()
    assert sorted(Path(u).name for u in latents) == sorted(good)  # every good file landed, once
    errors = read_table(cfg.output, "errors").to_pylist()
    kind_of = {Path(e["uri"]).name: error_kind(e) for e in errors if e.get("uri")}
    for name, kind in expected.items():
        assert kind_of.get(Path(name).name) == kind, (name, [e["error"] for e in errors if Path(name).name in str(e.get("uri"))])
    by_kind = counts["errors_by_reason"]
    assert by_kind == {
        **Counter(expected.values()),
        "source/empty caption": 1, "source/caption is not text": 1, "source/missing media path": 1,
        "source/invalid JSON": 1, "source/not a JSON object": 1, "probe/empty span": 1,
    }
    assert counts["duplicate_rows_skipped"] == 1
    assert counts["input_rows"] == len(lines) and counts["latents_written"] == len(good)
    assert counts["errors"] == len(errors) == len(lines) - len(good) - 1  # every other row is an error, once
