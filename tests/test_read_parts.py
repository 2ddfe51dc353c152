"""The input read in parts by Ray tasks (issue 10): byte ranges of a large JSONL manifest hold
every line exactly once; the driver never builds the rows; resume id sets live in Ray's object
store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentforge.config import load_config
from latentforge.formats import manifests
from latentforge.formats.manifests import ManifestError, plan_reads, read_manifest, read_part


def write_manifest(path: Path, n: int, bad_lines: tuple[int, ...] = ()) -> Path:
    lines = []
    for i in range(n):
        caption = f"caption {i} " + "x" * (i % 37)  # lines of different lengths cross range ends anywhere
        lines.append("{not json" if i in bad_lines else json.dumps({"media_path": f"clips/c{i:05d}.mp4", "caption": caption, "n": i}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("part_bytes", [97, 1000, 4096])
def test_byte_ranges_hold_every_line_once(tmp_path, monkeypatch, part_bytes):
    manifest = write_manifest(tmp_path / "dataset.jsonl", 500, bad_lines=(3, 250))
    whole = read_manifest(str(manifest))
    monkeypatch.setattr(manifests, "JSONL_PART_BYTES", part_bytes)
    parts = plan_reads(str(manifest))
    assert len(parts) == -(-manifest.stat().st_size // part_bytes)
    rows = [row for part in parts for row in read_part(part)]
    assert [r.get("n") for r in rows] == [r.get("n") for r in whole]
    assert [r["uri"] for r in rows] == [r["uri"] for r in whole]
    bad = [r["error"] for r in rows if r["error"]]
    assert len(bad) == 2 and all(e.startswith("invalid JSON") for e in bad)


def test_deciding_the_format_reads_only_the_head(tmp_path, monkeypatch):
    manifest = write_manifest(tmp_path / "dataset.jsonl", 50)
    monkeypatch.setattr(manifests, "JSONL_PART_BYTES", 512)
    opened = []
    import latentforge.formats.manifest_files as files

    real = files.read_text
    monkeypatch.setattr(files, "read_text", lambda *a, **k: opened.append(a[1]) or real(*a, **k))
    assert len(plan_reads(str(tmp_path))) > 1  # the folder: found by name
    assert len(plan_reads(str(manifest))) > 1  # the file: its columns from its head
    assert opened == []  # no whole-file read while planning


def test_an_empty_input_is_a_clear_error(tmp_path):
    (tmp_path / "videos.txt").write_text("\n")
    (tmp_path / "prompt.txt").write_text("\n")
    with pytest.raises(ManifestError, match="no rows"):
        read_manifest(str(tmp_path))


@pytest.mark.ray
def test_pipeline_reads_the_manifest_in_tasks_not_on_the_driver(tmp_path, ray_local, tiny_home, monkeypatch):
    """The driver process must not make rows: its read_part is poisoned, the workers' is not."""
    from latentforge.pipelines import run

    manifest = write_manifest(tmp_path / "dataset.jsonl", 300)
    monkeypatch.setattr(manifests, "JSONL_PART_BYTES", 4096)

    def poisoned(*args, **kwargs):
        raise AssertionError("the driver read manifest rows")

    monkeypatch.setattr(manifests, "read_part", poisoned)
    import latentforge.pipelines.input as input_stage

    monkeypatch.setattr(input_stage, "read_part", poisoned)
    cfg = load_config(None, [], input=str(manifest), output=str(tmp_path / "out"), model="tiny", buckets="64x64x9")
    summary = run(cfg)
    counts = summary["counts"]
    assert counts["input_rows"] == 300
    assert counts["errors"] == 300  # the clips do not exist: every row is an error row, none lost
    assert counts["errors_by_reason"] and sum(counts["errors_by_reason"].values()) == 300
    assert summary["first_task_seconds"] is not None and summary["first_task_seconds"] >= 0


@pytest.mark.ray
def test_id_sets_answer_membership_from_the_object_store(ray_local):
    from latentforge.pipelines.outputs import id_set

    ids = id_set(sorted, [f"{i:016x}" for i in range(0, 20000, 2)])
    assert ids.size == 10000
    assert "0000000000000002" in ids and "0000000000004e1e" in ids
    assert "0000000000000003" not in ids and "" not in ids and None not in ids
    empty = id_set(list, [])
    assert empty.size == 0 and "x" not in empty
