"""The frame clock: one rule for which decoded frame is frame i, shared by prepare, detection,
the frames detection makes for prepare, and the clip writers (docs/decisions.md, "Buckets and
frames"). Checked on a constant-rate file with seeks, and on a variable-rate file whose
timestamps repeat a slot, skip one, and put a keyframe where a naive seek gets it wrong."""

from __future__ import annotations

import math
from fractions import Fraction
from types import SimpleNamespace

import av
import numpy as np
import pytest

from latentforge.buckets import Bucket, frame_indices
from latentforge.config import SplitConfig
from latentforge.operators import scenes
from latentforge.operators.frame_clock import FrameClock, iter_indexed_frames, stream_rate
from latentforge.operators.frames import FRAMES_FOR, BucketFramer, assign_bucket, decode_video_frames, load_frames
from latentforge.operators.probe import probe
from latentforge.operators.scenes.writers import write_clip_reencode
from latentforge.sample_media import make_video

# Milliseconds at about 25 fps: frames 10 and 11 share slot 10 (9.6 and 9.9 frames) and 11 is a
# keyframe, so a seek to frame 10's nominal time lands after the frame that is frame 10; slot 14
# gets no frame (13 -> 15), and frame 15 is a keyframe too.
VFR_MS = [40 * k for k in range(10)] + [384, 396, 440, 480, 520, 600] + [640 + 40 * k for k in range(24)]
VFR_KEYFRAMES = {0, 11, 15, 30}
BUCKET = Bucket(32, 24, 9)


def make_vfr(path, pts_ms=VFR_MS, keyframes=VFR_KEYFRAMES, b_frames=0, width=64, height=48):
    """H.264 in mp4 with the given presentation times (ms) and keyframes where asked. Without
    B-frames mp4 seeks land on keyframe 11 for frame 10; with them the demuxer seeks by decode
    time and lands on keyframe 15 for frame 14 (after the nominal time)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        s.options = {"crf": "18", "preset": "ultrafast", "g": "1000", "sc_threshold": "0", "bf": str(b_frames)}
        yy, xx = np.mgrid[0:height, 0:width]
        for i, t in enumerate(pts_ms):
            planes = [(xx * 4 + i * 9) % 256, (yy * 5 + i * 3) % 256, np.full_like(xx, (i * 37) % 256)]
            frame = av.VideoFrame.from_ndarray(np.stack(planes, -1).astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            if i in keyframes:
                frame.pict_type = av.video.frame.PictureType.I
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def pass_from_start(path):
    """Every decoded frame, no seek: (pts, rgb), and the stream's rate, time base, start."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [(f.pts, f.to_ndarray(format="rgb24")) for f in c.decode(s)]
        return frames, Fraction(s.average_rate), Fraction(s.time_base), s.start_time or 0


def documented_numbering(path) -> dict[int, int]:
    """The rule of docs/decisions.md written out on its own: a frame's slot is its time in
    frames at the average rate, rounded half up; frame i is the first frame whose slot >= i.
    Returns index -> position of that frame in presentation order."""
    frames, rate, tb, origin = pass_from_start(path)
    slots = [math.floor((pts - origin) * tb * rate + Fraction(1, 2)) for pts, _ in frames]
    return {i: next(k for k, s in enumerate(slots) if s >= i) for i in range(slots[-1] + 1)}


def clock_pass(path, start, count=None):
    stats: dict[str, int] = {}
    out = []
    with av.open(str(path)) as c:
        for index, frame in iter_indexed_frames(c, c.streams.video[0], start, stats):
            out.append((index, frame.pts, frame.to_ndarray(format="rgb24")))
            if count is not None and len(out) == count:
                break
    return out, stats["decoded"]


@pytest.fixture(scope="module", params=[0, 2], ids=["no-b-frames", "b-frames"])
def vfr(request, tmp_path_factory):
    return make_vfr(tmp_path_factory.mktemp("clock") / f"vfr-{request.param}.mp4", b_frames=request.param)


# ---------------------------------------------------------------------------------------------
# The rule, on made-up timestamps


def fake_stream(average=25, guessed=None, base=None, time_base=Fraction(1, 1000), start_time=0):
    return SimpleNamespace(average_rate=average, guessed_rate=guessed, base_rate=base, time_base=time_base, start_time=start_time)


def test_stream_rate_is_average_then_guessed_then_base():
    assert stream_rate(fake_stream(Fraction(30000, 1001), 30, 60)) == Fraction(30000, 1001)
    assert stream_rate(fake_stream(None, 24, 48)) == 24
    assert stream_rate(fake_stream(None, None, 48)) == 48
    with pytest.raises(ValueError, match="no frame rate"):
        stream_rate(fake_stream(None, None, None))


def numbered(pts_list, start=0, after_seek=False, stream=None):
    numbers = FrameClock(stream or fake_stream()).numbering(start, after_seek)
    return [list(numbers.indices(SimpleNamespace(pts=p))) for p in pts_list]


def test_slots_round_half_up_repeats_add_nothing_and_gaps_take_the_next_frame():
    # 25 fps in ms: slots 0, 0.5 -> 1, 1.4 -> 1 (repeat), 2, 4 (3 skipped), 5
    assert numbered([0, 20, 56, 80, 160, 200]) == [[0], [1], [], [2], [3, 4], [5]]
    # from a start: earlier slots give nothing, the first frame at or after it fills up to itself
    assert numbered([0, 40, 120, 160], start=2) == [[], [], [2, 3], [4]]
    # the stream's start_time is frame 0
    assert numbered([1000, 1040], stream=fake_stream(start_time=1000)) == [[0], [1]]


def test_missing_timestamps_count_on_but_cannot_be_found_after_a_seek():
    assert numbered([None, None, None]) == [[0], [1], [2]]  # a stream without any: decode order
    assert numbered([0, 40, None, 120]) == [[0], [1], [2], [3]]  # one missing: after the one before
    with pytest.raises(ValueError, match="no timestamps"):
        numbered([None], start=5, after_seek=True)


# ---------------------------------------------------------------------------------------------
# Constant frame rate: decode order, also after a seek


def test_constant_rate_is_decode_order_and_a_seek_costs_one_gop(tmp_path):
    path = make_video(tmp_path / "cfr.mp4", 64, 48, 48, 24)  # keyframe every 12 frames
    frames, *_ = pass_from_start(path)
    full, decoded = clock_pass(path, 0)
    assert [i for i, _, _ in full] == list(range(48)) and decoded == 48
    assert [pts for _, pts, _ in full] == [pts for pts, _ in frames]
    for start, most in ((30, 7), (24, 1), (47, 12)):  # mid-GOP, on a keyframe, the last frame
        got, decoded = clock_pass(path, start, 1)
        assert got[0][0] == start
        np.testing.assert_array_equal(got[0][2], frames[start][1])
        assert decoded <= most  # it seeked: the keyframe at or before, not the file start
    # prepare's decode is the clock's: the same frames from a seek as from the start
    indices = frame_indices(30, 9, 24.0, None)
    from_seek = decode_video_frames(str(path), 30, indices, BUCKET)
    framer = BucketFramer(BUCKET)
    with av.open(str(path)) as c:
        expected = [framer(f) for i, f in enumerate(c.decode(video=0)) if i in set(indices)]
    np.testing.assert_array_equal(from_seek, np.stack(expected))


# ---------------------------------------------------------------------------------------------
# Variable frame rate


def test_the_vfr_file_has_the_cases(vfr):
    with av.open(str(vfr)) as c:
        s = c.streams.video[0]
        assert s.average_rate == 25
        keyframes = sorted(p.pts for p in c.demux(s) if p.is_keyframe and p.pts is not None)
    frames, rate, tb, origin = pass_from_start(vfr)
    pts = [p for p, _ in frames]
    assert [pts.index(k) for k in keyframes] == sorted(VFR_KEYFRAMES)
    numbering = documented_numbering(vfr)
    assert numbering[10] == 10 and numbering[11] == 12  # frame 11 (a keyframe) repeats slot 10
    assert numbering[14] == numbering[15] == 15  # slot 14 takes the next frame shown


@pytest.mark.parametrize("start", range(40))
def test_vfr_every_start_numbers_frames_as_the_pass_from_the_start(vfr, start):
    numbering = documented_numbering(vfr)
    frames, *_ = pass_from_start(vfr)
    got, _ = clock_pass(vfr, start, 6)
    assert [i for i, _, _ in got] == [i for i in range(start, start + 6) if i in numbering]
    for index, pts, image in got:
        assert pts == frames[numbering[index]][0], f"frame {index} after a seek to {start}"
        np.testing.assert_array_equal(image, frames[numbering[index]][1])


@pytest.mark.parametrize("start", [0, 9, 10, 11, 14, 15, 20])
def test_vfr_prepare_decodes_the_documented_frames(vfr, start):
    numbering = documented_numbering(vfr)
    indices = frame_indices(start, BUCKET.frames, 25.0, None)
    with av.open(str(vfr)) as c:
        shown = list(c.decode(video=0))
    framer = BucketFramer(BUCKET)
    expected = np.stack([framer(shown[numbering[i]]) for i in indices])
    np.testing.assert_array_equal(decode_video_frames(str(vfr), start, indices, BUCKET), expected)


def test_vfr_detection_hands_prepare_exactly_its_own_frames(vfr):
    """One decode per video on a variable rate: every clip gets frames from detection, and they
    are byte-equal to what prepare decodes itself (with its seek) for the clip."""
    buckets = (BUCKET,)
    opts = SplitConfig(max_scene_len=10, content={"threshold": 100.0}).model_dump(mode="json")
    row = probe({"uri": str(vfr), "media_type": "video"})
    rows = list(scenes.split_video(row, opts, frame_request=scenes.FrameRequest(buckets)))
    assert [(r["start_frame"], r["end_frame"]) for r in rows] == [(0, 10), (10, 20), (20, 30), (30, 40)]
    for clip in rows:
        assert clip[FRAMES_FOR] is not None, f"clip at {clip['start_frame']} got no frames"
        plain_row = {k: v for k, v in clip.items() if k not in ("frames", FRAMES_FOR)}
        own = load_frames(assign_bucket(plain_row, list(buckets)))
        assert own["error"] is None and own["_decoded_frames_prepare"] > 0
        np.testing.assert_array_equal(clip["frames"], own["frames"])


def test_vfr_reencoded_clip_holds_one_frame_per_index(vfr, tmp_path):
    numbering = documented_numbering(vfr)
    written, decoded, _ = write_clip_reencode(str(vfr), str(tmp_path / "c.mp4"), 10, 20, 25.0)
    assert written == 10 and decoded > 0
    with av.open(str(tmp_path / "c.mp4")) as c:
        assert c.streams.video[0].frames == 10
    # the clip's frames are the source frames 10..19 by the rule (lossy: compare loosely)
    frames, *_ = pass_from_start(vfr)
    with av.open(str(tmp_path / "c.mp4")) as c:
        got = [f.to_ndarray(format="rgb24").astype(int) for f in c.decode(video=0)]
    for k, image in enumerate(got):
        diffs = [np.abs(image - frames[j][1]).mean() for j in range(len(frames))]
        assert int(np.argmin(diffs)) == numbering[10 + k]

