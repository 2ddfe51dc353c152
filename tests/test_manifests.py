"""Input readers: every supported layout, auto-detection, relative paths and bad rows."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from latentforge.formats.manifests import (
    ManifestError,
    detect_format,
    media_type_of,
    read_manifest,
)


def touch(path: Path, data: bytes = b"\x00media") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def good(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["error"] is None]


def assert_uniform(rows: list[dict]) -> None:
    keys = [list(r) for r in rows]
    assert all(k == keys[0] for k in keys), keys
    assert {"uri", "media_type", "caption", "error", "error_stage"} <= set(keys[0])


# --- ltx ------------------------------------------------------------------------------------


def test_ltx_jsonl_resolves_relative_paths_and_passes_columns_through(tmp_path):
    manifest = write_jsonl(
        tmp_path / "data" / "dataset.jsonl",
        [
            {"caption": "  a cat on a sofa \n", "media_path": "clips/cat.mp4", "split": "train"},
            {"caption": "a dog", "media_path": "../elsewhere/dog.PNG", "score": 0.5},
            {"caption": "absolute", "media_path": "/mnt/abs/x.webm"},
            {"caption": "remote", "media_path": "s3://bucket/k/y.mov"},
        ],
    )
    rows = read_manifest(str(manifest), allow_outside=True)
    assert_uniform(rows)
    assert [r["uri"] for r in rows] == [
        str(tmp_path / "data" / "clips" / "cat.mp4"),
        str(tmp_path / "elsewhere" / "dog.PNG"),
        "/mnt/abs/x.webm",
        "s3://bucket/k/y.mov",
    ]
    assert [r["media_type"] for r in rows] == ["video", "image", "video", "video"]
    assert rows[0]["caption"] == "a cat on a sofa"  # stripped, not otherwise changed
    assert rows[0]["split"] == "train" and rows[1]["split"] is None
    assert rows[1]["score"] == 0.5 and rows[0]["score"] is None
    assert "media_path" not in rows[0]  # consumed into uri
    assert all(r["error"] is None and r["error_stage"] is None for r in rows)
    # by default a path that climbs out of the manifest's folder is refused, the others are read
    refused = read_manifest(str(manifest))
    assert [r["error"] for r in refused] == [None, "media path leaves the manifest's folder (set input_allow_outside: true to read it)", None, None]
    assert refused[1]["uri"] == str(tmp_path / "elsewhere" / "dog.PNG")  # named in the error row


def test_media_paths_that_climb_out_are_told_apart(tmp_path):
    from latentforge.formats.manifest_readers import leaves

    assert [leaves("/d", p) for p in ("../x.mp4", "a/../../x.mp4", "..", "a/../x.mp4", "..clips/x.mp4", "/abs/x.mp4", "s3://b/x.mp4", "./x.mp4")] == [
        True, True, True, False, False, False, False, False,
    ]


def test_ltx_csv_and_json_with_video_alias(tmp_path):
    write_csv(tmp_path / "a" / "clips.csv", ["caption", "video", "extra"], [["one", "v/1.mp4", "x"], ["two", "v/2.mkv", "y"]])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "list.json").write_text(json.dumps([{"caption": "img", "image": "p.jpeg"}]))
    rows = read_manifest(str(tmp_path / "a" / "clips.csv"))
    assert detect_format(str(tmp_path / "a" / "clips.csv")) == "ltx"
    assert [(r["uri"], r["caption"], r["extra"]) for r in rows] == [
        (str(tmp_path / "a" / "v" / "1.mp4"), "one", "x"),
        (str(tmp_path / "a" / "v" / "2.mkv"), "two", "y"),
    ]
    rows = read_manifest(str(tmp_path / "b" / "list.json"))
    assert rows[0]["uri"] == str(tmp_path / "b" / "p.jpeg") and rows[0]["media_type"] == "image"


def test_ltx_folder_with_one_dataset_file(tmp_path):
    write_jsonl(tmp_path / "dataset.jsonl", [{"caption": "c", "media_path": "a.mp4"}])
    assert detect_format(str(tmp_path)) == "ltx"
    assert read_manifest(str(tmp_path))[0]["uri"] == str(tmp_path / "a.mp4")
    # two candidate manifests: refuse to guess
    write_csv(tmp_path / "dataset.csv", ["caption", "media_path"], [["c", "a.mp4"]])
    with pytest.raises(ManifestError, match="dataset.json"):
        read_manifest(str(tmp_path))


def test_ltx_null_caption_is_uncaptioned_but_blank_caption_is_an_error(tmp_path):
    manifest = write_jsonl(
        tmp_path / "clips.jsonl",
        [
            {"media_path": "a.mp4", "caption": None, "start_frame": 0, "end_frame": 49},
            {"media_path": "b.mp4", "caption": "   "},
            {"media_path": "", "caption": "no path"},
            {"caption": "no path key", "media_path": None},
            {"media_path": "c.xyz", "caption": "odd"},
            {"media_path": "noext", "caption": "odd"},
        ],
    )
    rows = read_manifest(str(manifest))
    assert_uniform(rows)
    assert rows[0]["error"] is None and rows[0]["caption"] is None and rows[0]["end_frame"] == 49
    assert [r["error"] for r in rows[1:]] == [
        "empty caption",
        "missing media path",
        "missing media path",
        "unsupported media type ('.xyz')",
        "unsupported media type (no extension)",
    ]
    assert all(r["error_stage"] == "source" for r in rows[1:])
    assert rows[2]["caption"] == "no path"  # an error row still says what it was


def test_ltx_csv_empty_caption_cell_is_an_error(tmp_path):
    manifest = write_csv(tmp_path / "dataset.csv", ["caption", "media_path"], [["", "a.mp4"], ["ok", "b.mp4"]])
    rows = read_manifest(str(manifest))
    assert [r["error"] for r in rows] == ["empty caption", None]


def test_jsonl_bad_line_becomes_an_error_row_not_an_exception(tmp_path):
    path = tmp_path / "dataset.jsonl"
    path.write_text('{"caption": "a", "media_path": "a.mp4"}\n{not json\n\n{"caption": "b", "media_path": "b.mp4"}\n')
    rows = read_manifest(str(path))
    assert [r["error"] for r in rows] == [None, "invalid JSON (line 2)", None]
    assert rows[1]["error_stage"] == "source"


def test_unrecognisable_columns_raise_naming_the_file(tmp_path):
    manifest = write_jsonl(tmp_path / "stuff.jsonl", [{"text": "a", "file": "a.mp4"}])
    with pytest.raises(ManifestError, match=r"stuff\.jsonl.*no recognisable columns"):
        read_manifest(str(manifest))
    with pytest.raises(ManifestError, match="no recognisable columns"):
        read_manifest(str(manifest), input_format="ltx")


# --- fastvideo --------------------------------------------------------------------------------


def test_fastvideo_cap_string_or_list(tmp_path):
    entries = [
        {"path": "a.mp4", "cap": ["", "  first real  ", "second"], "fps": 24, "resolution": {"width": 8, "height": 4}},
        {"path": "sub/b.mp4", "cap": "plain"},
        {"path": "c.mp4", "cap": ["", " "]},
        {"path": "d.mp4"},
    ]
    (tmp_path / "videos2caption.json").write_text(json.dumps(entries))
    for url in (str(tmp_path), str(tmp_path / "videos2caption.json")):
        assert detect_format(url) == "fastvideo"
        rows = read_manifest(url)
        assert_uniform(rows)
        assert [r["uri"] for r in rows] == [
            str(tmp_path / "videos" / "a.mp4"),
            str(tmp_path / "videos" / "sub" / "b.mp4"),
            str(tmp_path / "videos" / "c.mp4"),
            str(tmp_path / "videos" / "d.mp4"),
        ]
        assert rows[0]["caption"] == "first real"
        assert rows[0]["captions"] == ["", "  first real  ", "second"]
        assert rows[0]["resolution"] == {"width": 8, "height": 4} and rows[1]["fps"] is None
        assert rows[1]["caption"] == "plain" and rows[1]["captions"] == ["plain"]
        assert [r["error"] for r in rows] == [None, None, "empty caption", "empty caption"]


# --- lists ------------------------------------------------------------------------------------


def test_lists_pair_with_trailing_blank_lines_and_mixed_media(tmp_path):
    (tmp_path / "prompts.txt").write_text("a red ball\n  a blue cube  \n\nsunset\n\n\n")
    (tmp_path / "videos.txt").write_text("videos/1.mp4\nimages/2.webp\nvideos/3.mp4\nvideos/4.avi\n")
    assert detect_format(str(tmp_path)) == "lists"
    rows = read_manifest(str(tmp_path))
    assert_uniform(rows)
    assert [r["uri"] for r in rows] == [
        str(tmp_path / "videos" / "1.mp4"),
        str(tmp_path / "images" / "2.webp"),
        str(tmp_path / "videos" / "3.mp4"),
        str(tmp_path / "videos" / "4.avi"),
    ]
    assert [r["media_type"] for r in rows] == ["video", "image", "video", "video"]
    assert [r["caption"] for r in rows] == ["a red ball", "a blue cube", None, "sunset"]
    assert [r["error"] for r in rows] == [None, None, "empty caption", None]


def test_lists_with_different_line_counts_raise_naming_both_files(tmp_path):
    (tmp_path / "prompt.txt").write_text("one\ntwo\nthree\n")
    (tmp_path / "videos.txt").write_text("1.mp4\n2.mp4\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(str(tmp_path))
    message = str(info.value)
    assert "prompt.txt has 3 lines" in message and "videos.txt has 2" in message


# --- caption files ----------------------------------------------------------------------------


def test_caption_files_recursive_sorted_with_missing_and_empty_captions(tmp_path):
    touch(tmp_path / "b" / "clip.mp4")
    (tmp_path / "b" / "clip.txt").write_text("  a clip  \n")
    touch(tmp_path / "a" / "photo.JPG")
    (tmp_path / "a" / "photo.txt").write_text("a photo")
    touch(tmp_path / "a" / "uncaptioned.mov")
    touch(tmp_path / "c" / "blank.mp4")
    (tmp_path / "c" / "blank.txt").write_text("  \n")
    touch(tmp_path / "notes.md")
    touch(tmp_path / ".hidden" / "x.mp4")
    touch(tmp_path / "a" / "._photo.JPG")
    assert detect_format(str(tmp_path)) == "caption_files"
    rows = read_manifest(str(tmp_path))
    assert_uniform(rows)
    assert [(os.path.relpath(r["uri"], tmp_path), r["media_type"], r["caption"], r["error"]) for r in rows] == [
        ("a/photo.JPG", "image", "a photo", None),
        ("a/uncaptioned.mov", "video", None, None),
        ("b/clip.mp4", "video", "a clip", None),
        ("c/blank.mp4", "video", None, "empty caption"),
    ]
    assert rows[3]["error_stage"] == "source"


# --- chronoedit -------------------------------------------------------------------------------


def test_chronoedit_metadata_csv(tmp_path):
    write_csv(
        tmp_path / "metadata.csv",
        ["key", "video", "prompt", "input_image"],
        [["k1", "v/one.mp4", " turn the cup ", "f/one.png"], ["k2", "v/two.mp4", "", "f/two.png"]],
    )
    for url in (str(tmp_path), str(tmp_path / "metadata.csv")):
        assert detect_format(url) == "chronoedit"
        rows = read_manifest(url)
        assert_uniform(rows)
        assert rows[0]["uri"] == str(tmp_path / "v" / "one.mp4")
        assert rows[0]["caption"] == "turn the cup"
        assert rows[0]["key"] == "k1" and rows[1]["key"] == "k2"
        assert rows[0]["input_image"] == "f/one.png"  # unknown column, untouched
        assert "prompt" not in rows[0] and "video" not in rows[0]
        assert [r["error"] for r in rows] == [None, "empty caption"]


# --- folder -----------------------------------------------------------------------------------


def test_bare_folder_lists_media_recursively_without_captions(tmp_path):
    touch(tmp_path / "z.mp4")
    touch(tmp_path / "sub" / "a.png")
    touch(tmp_path / "sub" / "b.WEBM")
    touch(tmp_path / "readme.json")
    assert detect_format(str(tmp_path)) == "folder"
    rows = read_manifest(str(tmp_path))
    assert_uniform(rows)
    assert [r["uri"] for r in rows] == [str(tmp_path / "sub" / "a.png"), str(tmp_path / "sub" / "b.WEBM"), str(tmp_path / "z.mp4")]
    assert [r["media_type"] for r in rows] == ["image", "video", "video"]
    assert all(r["caption"] is None and r["error"] is None for r in rows)


def test_single_media_file_reads_as_folder_of_one(tmp_path):
    clip = touch(tmp_path / "one.mp4")
    assert detect_format(str(clip)) == "folder"
    assert [r["uri"] for r in read_manifest(str(clip))] == [str(clip)]


# --- override, errors -------------------------------------------------------------------------


def test_explicit_format_overrides_auto_detection(tmp_path):
    # a folder that auto-detects as lists, read as caption_files / folder on request
    (tmp_path / "prompt.txt").write_text("listed\n")
    (tmp_path / "videos.txt").write_text("clip.mp4\n")
    touch(tmp_path / "clip.mp4")
    touch(tmp_path / "other.mp4")
    (tmp_path / "other.txt").write_text("sidecar")
    assert detect_format(str(tmp_path)) == "lists"
    assert [r["caption"] for r in read_manifest(str(tmp_path))] == ["listed"]
    rows = read_manifest(str(tmp_path), input_format="caption_files")
    assert [(Path(r["uri"]).name, r["caption"]) for r in rows] == [("clip.mp4", None), ("other.mp4", "sidecar")]
    rows = read_manifest(str(tmp_path), input_format="folder")
    assert [Path(r["uri"]).name for r in rows] == ["clip.mp4", "other.mp4"]
    # a csv named anything read as chronoedit when asked
    write_csv(tmp_path / "edits.csv", ["key", "video", "prompt"], [["k", "clip.mp4", "p"]])
    assert read_manifest(str(tmp_path / "edits.csv"), input_format="chronoedit")[0]["key"] == "k"


def test_whole_input_problems_raise_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(str(tmp_path / "missing"))
    touch(tmp_path / "notes.md")
    with pytest.raises(ManifestError, match="no media files and no manifest"):
        read_manifest(str(tmp_path))
    with pytest.raises(ManifestError, match="unknown input format 'tfrecord'"):
        read_manifest(str(tmp_path), input_format="tfrecord")
    with pytest.raises(ManifestError, match="no videos2caption.json"):
        read_manifest(str(tmp_path), input_format="fastvideo")
    (tmp_path / "broken.json").write_text("{oops")
    with pytest.raises(ManifestError, match=r"broken\.json.*invalid JSON"):
        read_manifest(str(tmp_path / "broken.json"), input_format="ltx")
    with pytest.raises(ValueError):  # ManifestError is a ValueError for callers that catch those
        read_manifest(str(tmp_path / "broken.json"))
    with pytest.raises(ManifestError, match="reads a folder"):
        read_manifest(str(tmp_path / "notes.md"), input_format="lists")


def test_media_type_of_is_case_insensitive():
    assert media_type_of("A/B.MP4") == "video"
    assert media_type_of("s3://b/k/x.JpEg") == "image"
    assert media_type_of("x.gif") is None


def test_media_type_of_a_presigned_url_ignores_its_query():
    assert media_type_of("https://b.s3.amazonaws.com/c/x.mp4?X-Amz-Signature=ab.cd&X-Amz-Expires=60") == "video"
    assert media_type_of("http://host/still.PNG#frag") == "image"
    assert media_type_of("s3://b/odd?name.mp4") == "video"  # '?' is part of an S3 key


# --- object storage ---------------------------------------------------------------------------


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    import s3fs

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    if not fs.exists("lf-data"):
        fs.mkdir("lf-data")
    return fs, options


def test_ltx_jsonl_on_s3_gives_s3_urls(s3):
    fs, options = s3
    lines = [
        {"caption": "a", "media_path": "clips/a.mp4", "tag": 1},
        {"caption": "b", "media_path": "../other/b.png"},
        {"caption": " ", "media_path": "clips/c.mp4"},
    ]
    fs.pipe("lf-data/ds/dataset.jsonl", "".join(json.dumps(r) + "\n" for r in lines).encode())
    assert detect_format("s3://lf-data/ds", storage_options=options) == "ltx"
    rows = read_manifest("s3://lf-data/ds/dataset.jsonl", storage_options=options, allow_outside=True)
    assert [r["uri"] for r in rows] == ["s3://lf-data/ds/clips/a.mp4", "s3://lf-data/other/b.png", "s3://lf-data/ds/clips/c.mp4"]
    assert [r["media_type"] for r in rows] == ["video", "image", "video"]
    assert [r["tag"] for r in rows] == [1, None, None]
    assert [r["error"] for r in rows] == [None, None, "empty caption"]


def test_caption_files_on_s3(s3):
    fs, options = s3
    fs.pipe("lf-data/side/x/clip.mp4", b"\x00")
    fs.pipe("lf-data/side/x/clip.txt", b"caption from s3\n")
    fs.pipe("lf-data/side/y.png", b"\x00")
    assert detect_format("s3://lf-data/side/", storage_options=options) == "caption_files"
    rows = read_manifest("s3://lf-data/side/", storage_options=options)
    assert [(r["uri"], r["caption"]) for r in rows] == [
        ("s3://lf-data/side/x/clip.mp4", "caption from s3"),
        ("s3://lf-data/side/y.png", None),
    ]
