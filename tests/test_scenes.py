"""split_scenes without Ray: clip-list math, detectors on generated and real cuts, segments,
clip files (re-encoded and stream-copied) and failures as rows."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from latentforge.config import ConfigError, SplitConfig, load_config
from latentforge.buckets import parse_buckets
from latentforge.operators import scenes
from latentforge.operators.frames import FRAMES_FOR, NO_FRAMES, assign_bucket, load_frames
from latentforge.operators.probe import probe
from latentforge.sample_media import make_image, make_video, scene_frame

FPS = 24


def opts(**overrides) -> dict:
    return SplitConfig(**overrides).model_dump(mode="json")


def probed(path, **extra) -> dict:
    return probe({"uri": str(path), "media_type": "video", "caption": "a caption", "source_id": 7, **extra})


def clips_of(path, **overrides) -> list[dict]:
    return list(scenes.split_video(probed(path), opts(**overrides)))


def spans(rows) -> list[tuple[int, int]]:
    return [(r["start_frame"], r["end_frame"]) for r in rows]


def decode_all(path, start=0, count=None) -> np.ndarray:
    out = []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= start:
                out.append(f.to_ndarray(format="rgb24"))
            if count is not None and len(out) == count:
                break
    return np.stack(out)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    return {
        # hard cuts at known frames, 160x96 (the detector sees it at full size)
        "cuts": make_video(folder / "cuts.mp4", 160, 96, 150, FPS, cuts=(30, 61, 100), frame_fn=scene_frame, audio=True),
        # larger frames for the histogram / hash detectors, which need some resolution
        "cuts_hd": make_video(folder / "cuts_hd.mp4", 320, 180, 120, FPS, cuts=(40, 80), frame_fn=scene_frame),
        # one hard cut and a fade through black centred on frame 90
        "fade": make_video(folder / "fade.mp4", 160, 96, 140, FPS, cuts=(35,), fades=(90,), frame_fn=scene_frame),
        # 10 s, cuts on and next to the borders of 2 s segments (48-frame steps)
        "long": make_video(
            folder / "long.mp4", 128, 72, 240, FPS, cuts=(30, 48, 95, 144, 170, 193), frame_fn=scene_frame
        ),
        "folder": folder,
    }


# ---------------------------------------------------------------------------------------------
# Durations and clip-list math


@pytest.mark.parametrize(
    "value, fps, frames",
    [
        (15, 24, 15),
        ("15", 24, 15),
        (0.5, 24, 12),
        ("2.5", 24, 60),
        ("5s", 24, 120),
        ("1.5 s", 30, 45),
        ("00:00:05.000", 24, 120),
        ("00:01:00", 25, 1500),
        ("01:30.5", 10, 905),
        (None, 24, None),
        (0, 24, 0),
    ],
)
def test_durations_are_frames_seconds_or_timecodes(value, fps, frames):
    assert scenes.to_frames(value, fps) == frames


@pytest.mark.parametrize("bad", ["abc", "5m", -3, -0.5, True, "1:2:3:4"])
def test_bad_durations_are_refused_with_the_accepted_forms(bad):
    with pytest.raises(ValueError, match="frames|negative|seconds"):
        scenes.parse_duration(bad)


def test_config_names_the_field_and_the_allowed_values():
    with pytest.raises(ConfigError, match=r"split.detector: Input should be 'content', 'adaptive', 'threshold', 'histogram' or 'hash'"):
        load_config(None, ["split.detector=fancy"], input="in", output="out")
    with pytest.raises(ConfigError, match=r"split.mode: Input should be 'virtual', 'reencode' or 'copy'"):
        load_config(None, ["split.mode=move"], input="in", output="out")
    with pytest.raises(ConfigError, match=r"split.skip_start: .*timecode"):
        load_config(None, ["split.skip_start=soon"], input="in", output="out")
    with pytest.raises(ConfigError, match=r"split.clip_name: .*\{scene\}"):
        load_config(None, ["split.clip_name=clip"], input="in", output="out")
    cfg = load_config(None, ["split.filter_shorter_than=00:00:05.000", "split.max_scene_len=5s", "split.min_scene_len=0.6"], input="in", output="out")
    assert cfg.split.filter_shorter_than == "00:00:05.000" and cfg.split.min_scene_len == 0.6


def test_yaml_timecodes_stay_timecodes(tmp_path):
    # YAML 1.1 would read 00:00:05 as the number 5 (frames) and 1:30 as 90
    path = tmp_path / "c.yaml"
    path.write_text("input: in\noutput: out\nsplit:\n  skip_start: 00:00:05\n  skip_end: 1:30\n  max_scene_len: 48\n")
    cfg = load_config(path, ["split.filter_shorter_than=00:00:02"])
    assert (cfg.split.skip_start, cfg.split.skip_end, cfg.split.max_scene_len) == ("00:00:05", "1:30", 48)
    assert scenes.to_frames(cfg.split.skip_start, 24) == 120 and scenes.to_frames(cfg.split.skip_end, 10) == 900
    assert scenes.to_frames(cfg.split.filter_shorter_than, 24) == 48


CUTS = (30, 61, 100)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, [(0, 30), (30, 61), (61, 100), (100, 150)]),
        # cuts outside the range (or on its edges) do not split it
        ({"start": 30, "end": 100}, [(30, 61), (61, 100)]),
        # max_len: consecutive pieces of max_len, the last holds the rest
        ({"max_len": 20}, [(0, 20), (20, 30), (30, 50), (50, 61), (61, 81), (81, 100), (100, 120), (120, 140), (140, 150)]),
        # shorter_than drops pieces (after chunking) shorter than it
        ({"shorter_than": 35}, [(61, 100), (100, 150)]),
        ({"max_len": 20, "shorter_than": 20}, [(0, 20), (30, 50), (61, 81), (100, 120), (120, 140)]),
        # max_clips keeps the first N, after every other filter
        ({"shorter_than": 35, "max_clips": 1}, [(61, 100)]),
        ({"max_clips": 2}, [(0, 30), (30, 61)]),
    ],
)
def test_clip_spans(kwargs, expected):
    kwargs = dict(kwargs)
    start, end = kwargs.pop("start", 0), kwargs.pop("end", 150)
    assert scenes.clip_spans(CUTS, start, end, **kwargs) == expected


def test_no_cut_is_one_clip_and_skip_trims_the_region():
    assert scenes.clip_spans([], 0, 90) == [(0, 90)]
    assert scenes.skip_region(0, 150, 24, 48) == (24, 102)
    assert scenes.skip_region(10, 150, None, None) == (10, 150)
    assert scenes.clip_spans(CUTS, *scenes.skip_region(0, 150, 40, 30)) == [(40, 61), (61, 100), (100, 120)]
    options = opts(skip_start="1s", skip_end=30, filter_shorter_than="00:00:00.900", max_scene_len=1.5)
    region = scenes.skip_region(0, 150, scenes.to_frames(options["skip_start"], 24), scenes.to_frames(options["skip_end"], 24))
    # 1 s = 24 frames skipped, 30 at the end; 1.5 s = 36-frame pieces; 0.9 s = 22 frames least
    assert scenes.plan_clips(CUTS, region, 24, options) == [(30, 61), (61, 97)]


def test_segments_partition_the_span_with_overlap():
    segs = scenes.plan_segments(0, 240, 24, 2.0, 10)
    assert [(s.own_start, s.own_end) for s in segs] == [(0, 48), (48, 96), (96, 144), (144, 192), (192, 240)]
    assert [(s.decode_start, s.decode_end) for s in segs] == [(0, 58), (38, 106), (86, 154), (134, 202), (182, 240)]
    assert [s.last for s in segs] == [False] * 4 + [True]
    assert scenes.plan_segments(5, 40, 24, 2.0, 10) == [scenes.Segment(0, 5, 40, 5, 40, True)]
    assert len(scenes.plan_segments(0, 100, 24, None, 10)) == 1
    uneven = scenes.plan_segments(0, 100, 24, 2.0, 5)  # 3 equal parts rather than 48 + 48 + 4
    assert [s.own_end - s.own_start for s in uneven] == [33, 33, 34]
    # at least `parts`: a 10 s video under a 600 s segment_seconds, cut for 3 idle CPUs
    assert [(s.own_start, s.own_end) for s in scenes.plan_segments(0, 240, 24, 600.0, 10, parts=3)] == [(0, 80), (80, 160), (160, 240)]


def test_idle_cpus_cut_a_video_into_segments_no_shorter_than_the_least():
    # 93 s at 24 fps on two cores, one idle: two segments; with 7 idle, 3 (none under 30 s)
    assert scenes.idle_parts(93 * 24, 24, 1, 30.0) == 2
    assert scenes.idle_parts(93 * 24, 24, 7, 30.0) == 3
    assert scenes.idle_parts(93 * 24, 24, 0, 30.0) == 1  # every CPU busy: one pass
    assert scenes.idle_parts(50 * 24, 24, 4, 30.0) == 1  # too short to pay the overlap twice
    assert scenes.idle_parts(93 * 24, 24, 4, None) == 1  # switched off


# ---------------------------------------------------------------------------------------------
# Detection


def _near(found, truth, tolerance=1):
    return len(found) == len(truth) and all(abs(f - t) <= tolerance for f, t in zip(sorted(found), sorted(truth)))


def _detect(path, **overrides):
    row = probed(path)
    return scenes.detect_video(str(path), 0, row["end_frame"], row["fps"], opts(**overrides))


@pytest.mark.parametrize("detector", ["content", "adaptive", "histogram"])
def test_detectors_find_hard_cuts(media, detector):
    assert _near(_detect(media["cuts_hd"], detector=detector).cuts, [40, 80])
    assert _near(_detect(media["cuts"], detector=detector).cuts, [30, 61, 100])
    assert _near(_detect(media["long"], detector=detector).cuts, [30, 48, 95, 144, 170, 193])


def test_hash_detector(media):
    # the perceptual hash is sensitive to the moving square of these clips: a lower threshold
    assert _near(_detect(media["long"], detector="hash", hash={"threshold": 0.25}).cuts, [30, 48, 95, 144, 170, 193])
    assert _detect(media["long"], detector="hash", hash={"threshold": 1.0}).cuts == []


def test_fades(media):
    # the fade detector puts its cut in the middle of the black frames; content and adaptive
    # see the jump into and out of black, within a frame of it
    assert _near(_detect(media["fade"], detector="threshold").cuts, [90])
    assert _near(_detect(media["fade"], detector="content").cuts, [35, 90])
    assert _near(_detect(media["fade"], detector="adaptive").cuts, [35, 90])
    # fade_bias -1 moves the cut to where the fade out crossed the threshold
    assert _detect(media["fade"], detector="threshold", threshold={"fade_bias": -1.0}).cuts[0] < 90


def test_detector_parameters_reach_the_detector(media):
    assert _detect(media["cuts"], content={"threshold": 250.0}).cuts == []
    # min_scene_len (PySceneDetect's merge filter): a cut closer than it to the start or to the
    # previous candidate is dropped, and the next one is measured from the dropped candidate
    assert _detect(media["cuts"], min_scene_len=0).cuts == [30, 61, 100]
    assert _detect(media["cuts"], min_scene_len=35).cuts == [100]  # 30: near the start; 61: 31 after 30
    assert _detect(media["cuts_hd"], min_scene_len=40).cuts == [40, 80]
    assert _detect(media["cuts_hd"], min_scene_len="2s").cuts == []  # 48 frames
    assert _detect(media["cuts"], content={"filter_mode": "suppress"}, min_scene_len=35).cuts == [61, 100]
    frames = _detect(media["cuts"], detect_size=64)
    assert frames.cuts == [30, 61, 100] and frames.decoded == 150


@pytest.mark.parametrize("detector", ["content", "adaptive", "threshold", "histogram"])
def test_segmented_detection_equals_one_pass(media, detector):
    one = _detect(media["long"], detector=detector, segment_seconds=None)
    calls = []

    def fan_out(batch):  # what the Ray pipeline does in parallel, in order here
        calls.extend(batch)
        return [scenes.detect_segment(**c) for c in batch]

    row = probed(media["long"])
    options = opts(detector=detector, segment_seconds=2.0, overlap_seconds=0.5)
    seg = scenes.detect_video(str(media["long"]), 0, row["end_frame"], row["fps"], options, run_segments=fan_out)
    assert len(calls) == 5 and seg.decoded > one.decoded  # five segments, overlaps read twice
    assert seg.cuts == one.cuts and seg.last_frame == one.last_frame == 239
    if detector == "content":
        assert one.cuts == [30, 48, 95, 144, 170, 193]  # on, before and after the borders 48, 96, 144, 192
    # and through split_video: the same clip rows
    assert spans(scenes.split_video(row, options, run_segments=fan_out)) == spans(scenes.split_video(row, opts(detector=detector)))
    # idle CPUs cut it too (10 s, segments of at least 2 s: 1 + 3 idle = 4), to the same cuts
    calls.clear()
    idle = opts(detector=detector, segment_seconds=600.0, overlap_seconds=0.5, min_segment_seconds=2.0)
    assert scenes.detect_video(str(media["long"]), 0, 240, row["fps"], idle, run_segments=fan_out, idle_cpus=lambda: 3).cuts == one.cuts
    assert len(calls) == 4


# ---------------------------------------------------------------------------------------------
# Rows


def test_one_row_per_clip_inheriting_every_column(media):
    rows = clips_of(media["cuts"])
    assert spans(rows) == [(0, 30), (30, 61), (61, 100), (100, 150)]
    for i, r in enumerate(rows):
        assert r["scene_index"] == i and r["parent_uri"] == str(media["cuts"]) == r["uri"]
        assert r["num_frames"] == r["end_frame"] - r["start_frame"]
        assert r["start_time"] == pytest.approx(r["start_frame"] / FPS) and r["end_time"] == pytest.approx(r["end_frame"] / FPS)
        assert (r["parent_start_frame"], r["parent_end_frame"]) == (r["start_frame"], r["end_frame"])
        assert r["caption"] == "a caption" and r["source_id"] == 7 and r["fps"] == FPS and r["width"] == 160
        assert r["error"] is None
    assert rows[0]["_decoded_frames_split_scenes"] == 150 and rows[1]["_decoded_frames_split_scenes"] == 0
    assert len({tuple(sorted(r)) for r in rows}) == 1  # one set of columns


def test_options_change_the_clip_list_as_documented(media):
    assert spans(clips_of(media["cuts"], max_scenes=2)) == [(0, 30), (30, 61)]
    assert spans(clips_of(media["cuts"], skip_start=40, skip_end="1s")) == [(40, 61), (61, 100), (100, 126)]
    assert spans(clips_of(media["cuts"], filter_shorter_than="00:00:01.500")) == [(61, 100), (100, 150)]
    assert spans(clips_of(media["cuts"], max_scene_len=25, filter_shorter_than=10)) == [
        (0, 25), (30, 55), (61, 86), (86, 100), (100, 125), (125, 150)
    ]
    # a span given in the manifest is split inside itself only (the cut at 30 is closer than
    # min_scene_len to the span's start, so PySceneDetect does not report it)
    row = probed(media["cuts"], start_frame=20, end_frame=90)
    assert spans(scenes.split_video(row, opts())) == [(20, 61), (61, 90)]
    assert spans(scenes.split_video(row, opts(min_scene_len=5))) == [(20, 30), (30, 61), (61, 90)]


def test_failures_and_passthrough_are_rows(media):
    folder = media["folder"]
    image = make_image(folder / "still.png", 64, 48)
    [img] = scenes.split_video(probe({"uri": str(image), "media_type": "image"}), opts())
    assert (img["uri"], img["start_frame"], img["end_frame"], img["scene_index"], img["parent_uri"]) == (str(image), 0, 1, 0, str(image))
    failed = {"uri": "x.mp4", "media_type": "video", "error": "x.mp4: file not found", "error_stage": "probe"}
    [same] = scenes.split_video(failed, opts())
    assert same["error"] == failed["error"] and same["error_stage"] == "probe" and same["scene_index"] is None

    empty = folder / "empty.mp4"
    empty.write_bytes(b"")
    corrupt = folder / "corrupt.mp4"
    good = make_video(folder / "good.mp4", 96, 64, 30, FPS)
    corrupt.write_bytes(good.read_bytes()[:200] + b"\x00garbage" * 400)
    meta = {k: v for k, v in probed(good).items() if k in ("fps", "source_frames", "width", "height", "rotation", "has_audio")}
    for path in (empty, corrupt):
        row = {"uri": str(path), "media_type": "video", "start_frame": 0, "end_frame": 30, **meta, "error": None, "error_stage": None}
        [out] = scenes.split_video(row, opts())
        assert out["error_stage"] == "split_scenes" and str(path) in out["error"]
    [short] = clips_of(good, filter_shorter_than=100)
    assert short["error_stage"] == "split_scenes" and "no clips: all 1 scenes filtered out" in short["error"]
    [gone] = clips_of(good, skip_start=20, skip_end=20)
    assert gone["error_stage"] == "split_scenes" and "nothing left" in gone["error"]


@pytest.mark.media
def test_real_clips_with_default_settings(shared_media):
    tears = clips_of(shared_media / "tears_of_steel_10s.mp4")
    starts = [r["start_frame"] for r in tears][1:]
    assert _near(starts, [21, 65, 185])  # and nothing inside the HUD flicker at 187-219
    assert tears[-1]["end_frame"] == 240
    for name in ("flower.mp4", "friday.mp4", "bee.mp4"):
        rows = clips_of(shared_media / name)
        assert len(rows) == 1 and rows[0]["start_frame"] == 0 and rows[0]["end_frame"] == rows[0]["source_frames"], name


# ---------------------------------------------------------------------------------------------
# Clip files


def test_reencoded_clips_hold_their_span(media, tmp_path):
    rows = list(scenes.split_video(probed(media["cuts"]), opts(mode="reencode", crf=18), output=str(tmp_path)))
    assert [r["uri"].rsplit("/", 1)[1] for r in rows] == [f"cuts-Scene-00{i}.mp4" for i in range(1, 5)]
    source = decode_all(media["cuts"])
    for r in rows:
        a, b = r["parent_start_frame"], r["parent_end_frame"]
        assert (r["start_frame"], r["end_frame"], r["source_frames"], r["num_frames"]) == (0, b - a, b - a, b - a)
        clip = decode_all(r["uri"])
        assert clip.shape == source[a:b].shape  # frame count exact
        assert np.abs(clip.astype(np.int16) - source[a:b]).mean() < 4  # lossy, but the same frames
        meta = probe({"uri": r["uri"], "media_type": "video"})
        assert meta["fps"] == FPS and meta["has_audio"] and r["has_audio"]
    assert not list(tmp_path.rglob(".tmp-*"))


def test_stream_copy_cuts_on_keyframes_and_the_span_points_at_the_scene(media, tmp_path):
    rows = list(scenes.split_video(probed(media["cuts"]), opts(mode="copy"), output=str(tmp_path)))
    source = decode_all(media["cuts"])
    for r in rows:
        a, b = r["parent_start_frame"], r["parent_end_frame"]
        clip = decode_all(r["uri"])
        first = a - r["start_frame"]
        assert first <= a and (first == 0 or first in (24, 36, 48, 60, 72, 84, 96))  # keyframes: every 12 frames
        assert len(clip) == r["source_frames"] and first + len(clip) >= b
        np.testing.assert_array_equal(clip, source[first : first + len(clip)])  # bit-exact copy
        np.testing.assert_array_equal(clip[r["start_frame"] : r["end_frame"]], source[a:b])
        assert probe({"uri": r["uri"], "media_type": "video"})["has_audio"]


def test_clip_files_keep_rotation(tmp_path):
    path = make_video(tmp_path / "phone.mp4", 160, 96, 40, FPS, cuts=(20,), rotation=-90, frame_fn=scene_frame)
    row = probe({"uri": str(path), "media_type": "video"})
    for mode in ("reencode", "copy"):
        out = list(scenes.split_video(row, opts(mode=mode, min_scene_len=5), output=str(tmp_path / mode)))
        assert len(out) == 2
        for r in out:
            meta = probe({"uri": r["uri"], "media_type": "video"})
            assert (meta["width"], meta["height"], meta["rotation"]) == (96, 160, 270), mode


def test_part_records_rebuild_the_rows(media, tmp_path):
    row = probed(media["cuts"])
    rows = list(scenes.split_video(row, opts(mode="reencode"), output=str(tmp_path)))
    records = [json.loads(json.dumps(scenes.part_record(r))) for r in rows]
    again = scenes.rows_from_part(row, records)
    for a, b in zip(rows, again):
        assert {k: a[k] for k in scenes.CLIP_FIELDS} == {k: b[k] for k in scenes.CLIP_FIELDS}
        assert b["caption"] == "a caption" and b["source_id"] == 7
    line = records[1]["manifest"]
    assert (line["start_frame"], line["end_frame"], line["scene_index"], line["caption"], line["source_id"]) == (0, 31, 1, "a caption", 7)
    assert line["media_path"].endswith("cuts-Scene-002.mp4") and line["parent_start_frame"] == 30
    assert "width" not in line and "uri" not in line


# ---------------------------------------------------------------------------------------------
# One decode per video: bucket frames made during detection


SHARED_BUCKETS = tuple(parse_buckets("64x48x17;48x64x17;64x48x9;32x32x25"))


def shared_rows(path, buckets=SHARED_BUCKETS, target_fps=None, budget_mb=1024, **overrides):
    request = scenes.FrameRequest(buckets, target_fps, "area", budget_mb)
    return list(scenes.split_video(probed(path), opts(**overrides), frame_request=request))


def prepared(row, buckets=SHARED_BUCKETS, target_fps=None):
    """What prepare makes of the clip row when it decodes it itself."""
    plain_row = {k: v for k, v in row.items() if k not in ("frames", FRAMES_FOR)}
    return load_frames(assign_bucket(plain_row, list(buckets), target_fps), target_fps)


@pytest.mark.parametrize(
    "overrides, target_fps",
    [
        ({}, None),
        ({"detector": "adaptive"}, None),
        ({"max_scene_len": 20}, None),  # pieces start where no cut was reported
        ({}, 12.0),  # every other frame
        ({"skip_start": 5, "filter_shorter_than": 35}, None),
        ({"max_scenes": 2}, None),
    ],
)
def test_detection_makes_the_frames_prepare_would_decode(media, overrides, target_fps):
    rows = shared_rows(media["cuts"], target_fps=target_fps, **overrides)
    assert spans(rows) == spans(clips_of(media["cuts"], **overrides))  # the clip list does not change
    for row in rows:
        reference = prepared(row, target_fps=target_fps)
        assert row[FRAMES_FOR] == reference["sample_id"]  # every clip got its frames...
        np.testing.assert_array_equal(row["frames"], reference["frames"])  # ...byte for byte
        # and prepare takes them instead of decoding
        taken = load_frames(assign_bucket(row, list(SHARED_BUCKETS), target_fps), target_fps)
        assert taken["_decoded_frames_prepare"] == 0 and taken["frames"] is not NO_FRAMES


def test_shared_frames_follow_rotation(tmp_path):
    path = make_video(tmp_path / "phone.mp4", 160, 96, 40, FPS, cuts=(20,), rotation=-90, frame_fn=scene_frame)
    rows = shared_rows(path, min_scene_len=5)
    assert len(rows) == 2
    for row in rows:
        assert row["frames"].shape == (17, 64, 48, 3)  # portrait bucket: displayed orientation
        np.testing.assert_array_equal(row["frames"], prepared(row)["frames"])


def test_what_detection_cannot_make_is_left_to_prepare(media):
    # over the memory budget: no clip carries frames, prepare decodes them all, same clips
    rows = shared_rows(media["cuts"], budget_mb=0)
    assert spans(rows) == [(0, 30), (30, 61), (61, 100), (100, 150)]
    assert all(r[FRAMES_FOR] is None and r["frames"].size == 0 for r in rows)
    assert all(prepared(r)["_decoded_frames_prepare"] > 0 for r in rows)
    # a clip too short for every bucket gets none either (prepare makes it an error row)
    short = shared_rows(media["cuts"], buckets=tuple(parse_buckets("64x48x33")))
    assert [r[FRAMES_FOR] is None for r in short] == [True, True, False, False]
