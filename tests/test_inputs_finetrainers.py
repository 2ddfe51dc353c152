"""The inputs finetrainers reads: WebDataset tar shards (local and on S3), Hugging Face
videofolder/imagefolder metadata files and Parquet manifests, with bad entries as error rows."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentforge.buckets import parse_buckets
from latentforge.formats.manifests import ManifestError, detect_format, read_manifest
from latentforge.operators.frames import assign_bucket, load_frames
from latentforge.operators.probe import probe
from latentforge.sample_media import make_image, make_video
from latentforge.storage import open_input, tar_member_url

BUCKETS = parse_buckets("64x64x9;64x64x1")


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def by_key(rows: list[dict]) -> dict:
    return {r["key"]: r for r in rows}


@pytest.fixture
def media(tmp_path) -> dict[str, bytes]:
    return {
        "video": make_video(tmp_path / "src" / "v.mp4", 96, 64, 12, 24).read_bytes(),
        "image": make_image(tmp_path / "src" / "i.png", 80, 64).read_bytes(),
    }


def webdataset_folder(root: Path, media: dict[str, bytes]) -> Path:
    write_tar(
        root / "shard-000.tar",
        [
            ("000.mp4", media["video"]),
            ("000.txt", b"  A square moves right.\n"),
            ("._000.mp4", b"\x00appledouble"),  # hidden: skipped
            ("001.png", media["image"]),
            ("001.json", json.dumps({"caption": "A still square.", "width": 80}).encode()),
            ("clips/002.mp4", media["video"]),
            ("clips/002.jpg", media["image"]),  # a thumbnail: the video wins
            ("clips/002.json", json.dumps({"text": ["", "From text."]}).encode()),
            ("003.txt", b"a caption without media"),
            ("004.mp4", media["video"]),
            ("004.txt", "caf\u00e9".encode("latin-1")),
            ("005.mp4", media["video"]),
            ("005.json", b"{oops"),
            ("006.webm", media["video"]),  # no caption member: not captioned yet
        ],
    )
    write_tar(root / "shard-001.tar", [("100.mp4", media["video"]), ("100.prompt", b"From a prompt field.")])
    (root / "shard-002.tar").write_bytes(b"this is not a tar archive at all" * 40)
    return root


def check_webdataset_rows(rows: list[dict], shard_url: str, bad_url: str) -> None:
    keys = by_key(rows)
    assert list(keys) == ["000", "001", "clips/002", "003", "004", "005", "006", "100", None]
    assert keys["000"]["uri"] == tar_member_url(shard_url, "000.mp4") == f"tar://000.mp4::{shard_url}"
    assert (keys["000"]["caption"], keys["000"]["media_type"], keys["000"]["shard"]) == ("A square moves right.", "video", shard_url)
    assert (keys["001"]["caption"], keys["001"]["media_type"]) == ("A still square.", "image")
    assert keys["clips/002"]["uri"].startswith("tar://clips/002.mp4::") and keys["clips/002"]["caption"] == "From text."
    assert keys["006"]["caption"] is None and keys["006"]["error"] is None
    assert keys["100"]["caption"] == "From a prompt field."
    assert all(keys[k]["error"] is None for k in ("000", "001", "clips/002", "006", "100"))
    assert keys["003"]["error"] == f"no media file for key 003 ({shard_url}: 003.txt)"
    assert keys["004"]["error"] == f"caption file is not UTF-8 (tar://004.txt::{shard_url})"
    assert keys["005"]["error"].startswith("caption file is not valid JSON") and f"tar://005.json::{shard_url}" in keys["005"]["error"]
    bad = keys[None]
    assert bad["uri"] == bad_url and bad["error"].startswith(f"unreadable tar ({bad_url}: ")
    assert {r["error_stage"] for r in rows if r["error"]} == {"source"}


def test_webdataset_shards_in_a_local_folder(tmp_path, media):
    root = webdataset_folder(tmp_path / "wds", media)
    assert detect_format(str(root)) == "webdataset"
    rows = read_manifest(str(root))
    check_webdataset_rows(rows, str(root / "shard-000.tar"), str(root / "shard-002.tar"))
    one = read_manifest(str(root / "shard-001.tar"))  # a single shard is an input too
    assert [r["key"] for r in one] == ["100"] and detect_format(str(root / "shard-001.tar")) == "webdataset"
    assert read_manifest(str(root), input_format="webdataset") == rows


def test_webdataset_member_cut_off_is_an_error_row(tmp_path, media):
    whole = write_tar(tmp_path / "whole.tar", [("a.mp4", media["video"]), ("a.txt", b"cap")])
    cut = tmp_path / "wds" / "cut.tar"
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[: 512 + len(media["video"]) // 2])
    rows = read_manifest(str(cut.parent))
    assert len(rows) == 1 and rows[0]["error"] is not None and str(cut) in rows[0]["error"]


def prepare(row: dict, storage_options: dict | None = None) -> dict:
    probed = probe(row, storage_options)
    assert probed["error"] is None, probed["error"]
    return load_frames(assign_bucket(probed, BUCKETS), storage_options=storage_options)


def test_tar_member_rows_probe_and_decode_locally(tmp_path, media):
    keys = by_key(read_manifest(str(webdataset_folder(tmp_path / "wds", media))))
    video = prepare(keys["000"])
    assert (video["width"], video["height"], video["source_frames"]) == (96, 64, 12)
    assert video["error"] is None and video["frames"].shape == (9, 64, 64, 3)
    image = prepare(keys["001"])
    assert image["error"] is None and image["frames"].shape == (1, 64, 64, 3)
    missing = probe({**keys["000"], "uri": tar_member_url(str(tmp_path / "wds" / "shard-000.tar"), "gone.mp4")})
    assert missing["error"].endswith("file not found")
    with open_input(keys["000"]["uri"]) as f:  # a seekable view of exactly the member's bytes
        assert f.read() == media["video"]
        f.seek(-4, io.SEEK_END)
        assert f.read() == media["video"][-4:]


def test_webdataset_shards_on_s3(tmp_path, media, s3_endpoint):
    import s3fs

    options = {"client_kwargs": {"endpoint_url": s3_endpoint}, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    fs.mkdir("lf-wds")
    root = webdataset_folder(tmp_path / "wds", media)
    for name in ("shard-000.tar", "shard-001.tar", "shard-002.tar"):
        fs.put(str(root / name), f"lf-wds/train/{name}")
    assert detect_format("s3://lf-wds/train/", options) == "webdataset"
    rows = read_manifest("s3://lf-wds/train/", storage_options=options)
    check_webdataset_rows(rows, "s3://lf-wds/train/shard-000.tar", "s3://lf-wds/train/shard-002.tar")
    keys = by_key(rows)
    video = prepare(keys["clips/002"], options)
    assert video["error"] is None and video["frames"].shape == (9, 64, 64, 3)
    image = prepare(keys["001"], options)
    assert image["error"] is None and image["frames"].shape == (1, 64, 64, 3)


# --- Hugging Face videofolder / imagefolder --------------------------------------------------


def test_hf_folder_metadata_jsonl_and_csv_in_sub_folders(tmp_path):
    root = tmp_path / "hf"
    (root / "videos").mkdir(parents=True)
    lines = [
        {"file_name": "videos/a.mp4", "caption": " A cat. ", "score": 0.9},
        {"file_name": "videos/b.png", "caption": "old caption, overridden below"},
        {"file_name": "videos/c.mov", "caption": ""},
    ]
    (root / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "{broken\n")
    with open(root / "videos" / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file_name", "text"], ["b.png", "A dog."], ["d.webm", "A bird."]])
    assert detect_format(str(root)) == "hf_folder"
    rows = read_manifest(str(root))
    summary = [(r["uri"], r["caption"], r["error"]) for r in rows]
    assert summary == [
        (str(root / "videos" / "a.mp4"), "A cat.", None),
        (str(root / "videos" / "c.mov"), None, "empty caption"),
        (None, None, "invalid JSON (line 4)"),
        (str(root / "videos" / "b.png"), "A dog.", None),  # the nearest metadata file wins
        (str(root / "videos" / "d.webm"), "A bird.", None),
    ]
    assert rows[0]["score"] == 0.9 and "file_name" not in rows[0] and "text" not in rows[3]
    # the sub-folder on its own, and a metadata.csv with file_name is HF's, not ChronoEdit's
    assert detect_format(str(root / "videos")) == "hf_folder"
    assert [r["caption"] for r in read_manifest(str(root / "videos"))] == ["A dog.", "A bird."]


def test_hf_folder_caption_columns_and_problems(tmp_path):
    root = tmp_path / "hf"
    root.mkdir()
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "x.mp4", "prompt": "By prompt."}) + "\n")
    assert read_manifest(str(root))[0]["caption"] == "By prompt."
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "x.mp4", "label": 3}) + "\n")
    row = read_manifest(str(root))[0]
    assert row["caption"] is None and row["error"] is None and row["label"] == 3  # no caption yet
    (root / "metadata.csv").write_text("file_name,caption\nx.mp4,dup\n")
    with pytest.raises(ManifestError, match="several metadata files"):
        read_manifest(str(root))
    (root / "metadata.csv").unlink()
    (root / "metadata.jsonl").write_text(json.dumps({"path": "x.mp4", "caption": "c"}) + "\n")
    with pytest.raises(ManifestError, match=r"metadata\.jsonl: no file_name column"):
        read_manifest(str(root))


# --- Parquet manifests --------------------------------------------------------------------------


def test_parquet_file_and_folder(tmp_path):
    data = tmp_path / "pq"
    data.mkdir()
    pq.write_table(
        pa.table({"media_path": ["clips/a.mp4", "b.png", None], "caption": ["A cat.", " ", "c"], "split": ["train", "val", "train"]}),
        data / "part-0.parquet",
    )
    (data / "sub").mkdir()
    pq.write_table(pa.table({"video": ["/abs/v.webm"], "caption": pa.array([None], pa.string())}), data / "sub" / "part-1.parquet")
    pq.write_table(pa.table({"url": ["x"]}), data / "sub" / "part-2.parquet")
    (data / "sub" / "part-3.parquet").write_bytes(b"PAR1 not really")
    assert detect_format(str(data / "part-0.parquet")) == "parquet"
    rows = read_manifest(str(data / "part-0.parquet"))
    assert [(r["uri"], r["caption"], r["split"], r["error"]) for r in rows] == [
        (str(data / "clips" / "a.mp4"), "A cat.", "train", None),
        (str(data / "b.png"), None, "val", "empty caption"),
        (None, "c", "train", "missing media path"),
    ]
    assert detect_format(str(data)) == "parquet"
    rows = read_manifest(str(data))
    assert [r["uri"] for r in rows[:4]] == [str(data / "clips" / "a.mp4"), str(data / "b.png"), None, "/abs/v.webm"]
    assert rows[3]["caption"] is None and rows[3]["error"] is None
    bad_columns, unreadable = rows[4], rows[5]
    assert bad_columns["uri"] == str(data / "sub" / "part-2.parquet")
    assert bad_columns["error"].startswith("no recognisable columns for parquet") and "part-2.parquet" in bad_columns["error"]
    assert unreadable["error"].startswith("unreadable Parquet") and str(data / "sub" / "part-3.parquet") in unreadable["error"]
    assert len(rows) == 6
    with pytest.raises(ManifestError, match="no recognisable columns"):  # a single bad file stops the run
        read_manifest(str(data / "sub" / "part-2.parquet"))
