"""Bucket choice and frame-index math, as a table of cases."""

import math

import pytest

from latentforge.buckets import (
    Bucket,
    BucketError,
    available_frames,
    choose_bucket,
    cover_resize,
    frame_indices,
    parse_buckets,
    validate_buckets,
)

BUCKETS = parse_buckets("832x480x49;832x480x25;480x832x49;480x832x25;624x624x49;1024x352x25")


@pytest.mark.parametrize(
    "width, height, frames, is_image, expected",
    [
        (1920, 1080, 300, False, "832x480x49"),  # 16:9 landscape, long
        (1920, 1080, 30, False, "832x480x25"),  # landscape, only enough for 25 frames
        (1080, 1920, 120, False, "480x832x49"),  # portrait phone clip
        (720, 1280, 48, False, "480x832x25"),  # portrait, 48 frames: not 49
        (1000, 1000, 49, False, "624x624x49"),  # square, exactly 49
        (1244, 416, 60, False, "1024x352x25"),  # 3:1 banner: nearest aspect beats more frames
        (640, 480, 100, False, "832x480x49"),  # 4:3 (log 0.288): 832x480 (0.550) is nearer than square (0)
        (560, 480, 100, False, "624x624x49"),  # 7:6 (log 0.154) is nearer square
        (1920, 1080, 1, True, "832x480x1"),  # image: video buckets' resolutions at F = 1
        (427, 640, 1, True, "480x832x1"),  # portrait image
        (1920, 1080, 24, False, None),  # shorter than every video bucket
    ],
)
def test_choose_bucket(width, height, frames, is_image, expected):
    chosen = choose_bucket(BUCKETS, width, height, frames, is_image=is_image)
    assert (str(chosen) if chosen else None) == expected


def test_images_prefer_configured_still_buckets_and_videos_never_use_them():
    buckets = parse_buckets("512x512x1;832x480x1;832x480x49")
    assert str(choose_bucket(buckets, 1920, 1080, 1, is_image=True)) == "832x480x1"
    # a 200-frame video never lands in an F = 1 bucket, even when that bucket matches better
    assert str(choose_bucket(buckets, 1000, 1000, 200)) == "832x480x49"
    assert choose_bucket(buckets, 1000, 1000, 10) is None


def test_same_aspect_prefers_more_frames_then_larger_area():
    buckets = parse_buckets("416x240x49;832x480x25;832x480x49")
    assert str(choose_bucket(buckets, 1920, 1080, 100)) == "832x480x49"
    assert str(choose_bucket(buckets, 1920, 1080, 40)) == "832x480x25"


@pytest.mark.parametrize(
    "num_frames, source_fps, target_fps, expected",
    [
        (240, 24, None, 240),
        (240, 24, 12, 120),  # every second frame: 0, 2, ..., 238
        (100, 30, 24, 80),  # 30 -> 24 fps: step 1.25
        (100, 24, 30, 100),  # no upsampling: a higher target keeps the source rate
        (1, 24, 12, 1),
        (0, 24, None, 0),
    ],
)
def test_available_frames(num_frames, source_fps, target_fps, expected):
    assert available_frames(num_frames, source_fps, target_fps) == expected


def test_frame_indices_resample_from_span_start():
    assert frame_indices(10, 5, 24, None) == [10, 11, 12, 13, 14]
    assert frame_indices(10, 5, 24, 12) == [10, 12, 14, 16, 18]
    assert frame_indices(0, 5, 30, 24) == [0, 1, 2, 3, 5]  # i * 1.25, floored
    count = available_frames(100, 30, 24)
    assert frame_indices(0, count, 30, 24)[-1] <= 99


@pytest.mark.parametrize(
    "src, bucket, expected",
    [
        ((1920, 1080), (832, 480), (854, 480, 11, 0)),  # 16:9 is wider than 832x480: crop the sides
        ((1080, 1920), (480, 832), (480, 854, 0, 11)),
        ((640, 480), (624, 624), (832, 624, 104, 0)),
        ((100, 100), (624, 624), (624, 624, 0, 0)),  # upscale an exact aspect match
    ],
)
def test_cover_resize(src, bucket, expected):
    plan = cover_resize(*src, *bucket)
    assert (plan.resize_width, plan.resize_height, plan.left, plan.top) == expected
    assert plan.resize_width >= bucket[0] and plan.resize_height >= bucket[1]
    # aspect kept to within one pixel of rounding
    assert math.isclose(plan.resize_width / plan.resize_height, src[0] / src[1], rel_tol=2 / min(plan.resize_width, plan.resize_height))


def test_parse_and_validate_buckets():
    assert parse_buckets(" 832x480x49 ; 480x832x49;832x480x49 ") == [Bucket(832, 480, 49), Bucket(480, 832, 49)]
    with pytest.raises(BucketError, match="not WxHxF"):
        parse_buckets("832x480")
    with pytest.raises(BucketError, match="no buckets"):
        parse_buckets(" ; ")
    validate_buckets(parse_buckets("832x480x49;1x1x1".replace("1x1x1", "16x16x1")), 16, 4, 1, "wan2.1")
    with pytest.raises(BucketError) as err:
        validate_buckets(parse_buckets("840x480x49;832x480x48"), 32, 8, 1, "ltx2")
    message = str(err.value)
    assert "840x480x49: width and height must be multiples of 32" in message
    assert "832x480x48: frames must satisfy F % 8 == 1" in message
