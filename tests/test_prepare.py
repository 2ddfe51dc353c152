"""probe and prepare on generated and real media: frames are the right ones, errors are rows."""

import numpy as np
import pytest

from latentforge.buckets import Bucket, parse_buckets
from latentforge.operators.frames import assign_bucket, decode_video_frames, load_frames
from latentforge.operators.probe import probe
from latentforge.sample_media import make_image, make_video


def _all_frames(path, bucket):
    import av

    with av.open(str(path)) as c:
        n = sum(1 for _ in c.decode(video=0))
    return decode_video_frames(str(path), 0, list(range(n)), bucket)


def test_probe_reads_metadata_and_rotation(tmp_path):
    plain = probe({"uri": str(make_video(tmp_path / "a.mp4", 160, 96, 30, 24, audio=True)), "media_type": "video"})
    assert (plain["width"], plain["height"], plain["num_frames"], plain["fps"]) == (160, 96, 30, 24.0)
    assert plain["has_audio"] is True and plain["rotation"] == 0 and plain["error"] is None
    rotated = probe({"uri": str(make_video(tmp_path / "r.mp4", 160, 96, 10, 24, rotation=-90)), "media_type": "video"})
    # a phone clip stored landscape with a -90 display matrix is a portrait clip
    assert (rotated["width"], rotated["height"], rotated["rotation"]) == (96, 160, 270)


def test_probe_failures_are_rows(tmp_path):
    missing = probe({"uri": str(tmp_path / "nope.mp4"), "media_type": "video"})
    assert missing["error_stage"] == "probe" and "file not found" in missing["error"]
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    row = probe({"uri": str(corrupt), "media_type": "video"})
    assert row["error_stage"] == "probe" and str(corrupt) in row["error"]
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert probe({"uri": str(empty), "media_type": "video"})["error_stage"] == "probe"


def test_seeked_span_equals_sequential_decode(tmp_path):
    path = make_video(tmp_path / "long.mp4", 192, 108, 120, 24)  # keyframe every 12 frames
    bucket = Bucket(96, 64, 9)
    everything = _all_frames(path, bucket)
    for start in (0, 13, 50, 100):
        got = decode_video_frames(str(path), start, list(range(start, start + 9)), bucket)
        np.testing.assert_array_equal(got, everything[start : start + 9])


def test_a_clips_frames_come_from_the_heap_not_a_mapping_of_their_own(tmp_path):
    """A clip's frames array (over 32 MB here, like most training buckets) is served from
    malloc's heap, where the next clip reuses its pages. glibc maps each allocation over 32 MB
    afresh by default and unmaps it on free, so the kernel faulted in and zeroed every page of
    every clip's frames: a fifth of prepare's time (operators/base.reuse_freed_memory). Checked
    with glibc's own accounting of its mappings (mallinfo2's hblkhd)."""
    from latentforge.operators.base import malloc_mapped_bytes

    if malloc_mapped_bytes() is None:
        pytest.skip("not glibc 2.33 or later: malloc keeps its own policy")
    path = make_video(tmp_path / "wide.mp4", 832, 480, 40, 24)
    row = assign_bucket(probe({"uri": str(path), "media_type": "video"}), parse_buckets("832x480x33"), None)
    frames = load_frames(row)["frames"]
    assert frames.nbytes > 32 << 20
    assert malloc_mapped_bytes() < frames.nbytes, "the frames array has a mapping of its own"


# A prepare task's block, as Ray Data makes it: three 832x480x49 clips (rows are added until
# the block passes 128 MB), then their frames copied into the block's tensor column.
_BLOCK_CYCLE = """
import numpy as np
from latentforge.operators.base import malloc_free_bytes, reuse_freed_memory
reuse_freed_memory()
rows = [np.ones((49, 480, 832, 3), np.uint8) for _ in range(3)]
block = np.concatenate([r.reshape(-1) for r in rows])
freed = sum(r.nbytes for r in rows) + block.nbytes
del rows, block
print(freed, malloc_free_bytes())
"""


def test_a_prepare_worker_keeps_a_blocks_freed_memory_for_the_next_block():
    """When a block is handed on, its rows' frames and Ray Data's copy of them are freed at once
    (about 350 MB here). The process keeps that memory for the next block instead of giving it
    back to the kernel: glibc trimmed the heap once more than 256 MB lay free at its top, and
    every block then came on pages the kernel faulted in and zeroed again (8% of the pipeline's
    throughput, docs/benchmarks.md). A fresh process, so that this test's own heap is not
    measured."""
    import subprocess
    import sys

    from latentforge.operators.base import malloc_free_bytes

    if malloc_free_bytes() is None:
        pytest.skip("not glibc 2.33 or later: malloc keeps its own policy")
    out = subprocess.run([sys.executable, "-c", _BLOCK_CYCLE], capture_output=True, text=True, check=True).stdout
    freed, kept = (int(v) for v in out.split())
    assert kept >= freed, f"{kept >> 20} MB of {freed >> 20} MB freed stayed with the process"


def test_fps_resampling_takes_the_computed_frames(tmp_path):
    path = make_video(tmp_path / "v.mp4", 160, 96, 60, 30)
    buckets = parse_buckets("96x64x9;96x64x17")
    row = assign_bucket(probe({"uri": str(path), "media_type": "video", "start_frame": 4}), buckets, target_fps=15)
    assert row["bucket"] == "96x64x17" and row["fps"] == 15.0 and row["source_fps"] == 30.0
    out = load_frames(row, target_fps=15)
    everything = _all_frames(path, Bucket(96, 64, 1))
    np.testing.assert_array_equal(out["frames"], everything[4 : 4 + 34 : 2])
    assert out["num_frames"] == 17


def test_too_short_and_short_decode_are_error_rows(tmp_path):
    buckets = parse_buckets("96x64x17")
    short = assign_bucket(probe({"uri": str(make_video(tmp_path / "s.mp4", 160, 96, 12, 24)), "media_type": "video"}), buckets)
    assert short["error_stage"] == "prepare" and "too short: 12 frames" in short["error"]
    # the container claims more frames than decode: the row fails with the reason, no crash
    row = assign_bucket(probe({"uri": str(make_video(tmp_path / "t.mp4", 160, 96, 20, 24)), "media_type": "video"}), buckets)
    row["start_frame"] = 10
    failed = load_frames(row)
    assert failed["error_stage"] == "prepare" and "decoded" in failed["error"]


def test_image_cover_crop(tmp_path):
    path = make_image(tmp_path / "wide.png", 300, 100)
    buckets = parse_buckets("96x64x17;64x96x17")
    row = load_frames(assign_bucket(probe({"uri": str(path), "media_type": "image"}), buckets))
    assert row["bucket"] == "96x64x1" and row["frames"].shape == (1, 64, 96, 3) and row["frames"].dtype == np.uint8


def test_real_rotated_variable_rate_clip(shared_media):
    """HEVC 10-bit stored 1920x1080 with rotation -90 and an edit list: portrait frames come out."""
    row = probe({"uri": str(shared_media / "hevc_rotated_edit_list.mp4"), "media_type": "video"})
    assert (row["width"], row["height"]) == (1080, 1920)
    row = load_frames(assign_bucket(row, parse_buckets("64x96x17;96x64x17")))
    assert row["error"] is None and row["frames"].shape == (17, 96, 64, 3)


@pytest.mark.parametrize("name, size", [("tears_of_steel_10s.mp4", (640, 360)), ("hdr10_av1_vertical.mp4", (720, 1280)), ("friday.mp4", (640, 480))])
def test_real_clips_probe(shared_media, name, size):
    row = probe({"uri": str(shared_media / name), "media_type": "video"})
    assert row["error"] is None and (row["width"], row["height"]) == size
