"""No hang holds the job (issue 11): a probe or decode that never returns becomes an error row
within the sample's time limit, and the other rows land."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from latentforge.config import load_config
from latentforge.formats.shards import read_table
from latentforge.operators import frames as frames_op
from latentforge.operators.time_limit import SampleTimeout, sample_limit, within
from latentforge.sample_media import make_video


def test_within_returns_raises_and_times_out():
    assert within(5, lambda a, b: a + b, 2, b=3) == 5
    with pytest.raises(KeyError):
        within(5, {}.__getitem__, "missing")  # the work's own error, as itself
    never = threading.Event()
    t0 = time.perf_counter()
    with pytest.raises(SampleTimeout, match="time limit"):
        within(0.3, never.wait)
    assert time.perf_counter() - t0 < 5
    never.set()
    assert within(None, lambda: "no limit") == "no limit"


def test_limit_grows_with_frames_read():
    assert sample_limit(0, 300, 0.5) == 300
    assert sample_limit(121, 300, 0.5) == 300 + 60.5
    assert sample_limit(-3, 10, 1) == 10


def test_a_hanging_decode_becomes_an_error_row(tmp_path, monkeypatch):
    clip = make_video(tmp_path / "a.mp4", 64, 64, 12, 24)
    row = {"uri": str(clip), "media_type": "video", "bucket": "64x64x9", "start_frame": 0, "fps": 24.0, "sample_id": "s"}
    landed = frames_op.load_frames(row, time_limit=(5, 0.1))
    assert landed["frames"].shape == (9, 64, 64, 3) and not landed.get("error")

    release = threading.Event()

    def hang(*args, **kwargs):  # a decoder deadlocked inside FFmpeg
        release.wait(60)

    monkeypatch.setattr(frames_op, "_decode", hang)
    t0 = time.perf_counter()
    out = frames_op.load_frames(row, time_limit=(0.5, 0.01))
    waited = time.perf_counter() - t0
    release.set()
    assert out["error_stage"] == "prepare" and "timed out decoding" in out["error"] and str(clip) in out["error"]
    assert 0.5 <= waited < 5  # 0.5 s + 9 frames x 0.01 s
    assert out["frames"].shape[0] == 0


@pytest.mark.ray
def test_a_file_that_blocks_on_open_does_not_hold_the_run(tmp_path, ray_local):
    """A FIFO named like a video blocks FFmpeg's open() for ever (as a dead network mount or a
    deadlocked demuxer would): probe gives up after its limit, the good clip lands."""
    make_video(tmp_path / "good.mp4", 64, 64, 12, 24)
    fifo = tmp_path / "hangs.mp4"
    os.mkfifo(fifo)
    lines = [{"media_path": "good.mp4", "caption": "A square moves."}, {"media_path": "hangs.mp4", "caption": "Never opens."}]
    (tmp_path / "dataset.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = load_config(
        None,
        ["prepare.time_limit_s=3", "encode_text.enabled=false"],
        input=str(tmp_path / "dataset.jsonl"),
        output=str(tmp_path / "out"),
        model="tiny-wan2.1",
        buckets="64x64x9",
    )
    from latentforge.pipelines import run

    try:
        summary = run(cfg)
    finally:
        try:  # let the stuck open() in the worker finish
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert summary["counts"]["latents_written"] == 1 and summary["counts"]["errors"] == 1
    (error,) = read_table(cfg.output, "errors").to_pylist()
    assert error["error_stage"] == "probe" and "timed out reading the container" in error["error"]
    assert str(fifo) in error["error"]
    assert [r["uri"] for r in read_table(cfg.output, "latents").to_pylist()] == [str(tmp_path / "good.mp4")]
