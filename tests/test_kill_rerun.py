"""A run killed hard part way, then run again, ends with exactly what an uninterrupted run
writes (issue 11): the same sample ids and caption ids, each once, byte-equal tensors, no
temporary file left.

The killed run is a `latentforge run` in its own process group, with its embedded Ray; it gets
SIGKILL (group and every descendant: Ray's raylet and workers included) once its first latent
shard is on disk, so the kill lands while other samples are being decoded and encoded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from latentforge.formats.shards import read_table
from latentforge.sample_media import make_video

REPO = Path(__file__).resolve().parents[1]
CLIPS = 10


def _config(root: Path, name: str) -> Path:
    config = root / f"{name}.yaml"
    config.write_text(
        f"input: {root / 'dataset.jsonl'}\noutput: {root / name}\nmodel: tiny\nbuckets: \"64x64x9;96x64x9;64x96x9\"\n"
        "encode_video:\n  batch_size: 1\n  max_actors: 1\nray:\n  num_cpus: 2\n"
    )
    return config


def _command(config: Path) -> list[str]:
    return [sys.executable, "-m", "latentforge.cli", "run", str(config)]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)  # an embedded Ray of its own, not the session's
    return env


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)


def _tables(out: Path) -> tuple[dict, dict]:
    latents = {r["sample_id"]: r for r in read_table(str(out), "latents").to_pylist()}
    encoder = next((out / "embeddings").iterdir()).name
    embeddings = {r["caption_id"]: r for r in read_table(str(out), f"embeddings/{encoder}").to_pylist()}
    return latents, embeddings


@pytest.mark.ray
def test_a_killed_run_rerun_equals_an_uninterrupted_one(tmp_path):
    sizes = [(96, 64), (64, 96), (64, 64)]
    rows = []
    for i in range(CLIPS):
        w, h = sizes[i % 3]
        make_video(tmp_path / f"clip{i}.mp4", w, h, 20 + i, 24, cuts=[10] if i % 2 else ())
        rows.append({"media_path": f"clip{i}.mp4", "caption": f"Clip {i % 4} of the set."})
    (tmp_path / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    whole = subprocess.run(_command(_config(tmp_path, "whole")), env=_env(), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = _config(tmp_path, "killed")
    proc = subprocess.Popen(_command(killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    latents = tmp_path / "killed" / "latents"
    while time.monotonic() < deadline and proc.poll() is None:
        if latents.exists() and any(latents.rglob("part-*.parquet")):
            break
        time.sleep(0.05)
    finished_before_kill = proc.poll() is not None
    _kill_tree(proc)
    assert not finished_before_kill, "the run ended before it could be killed; make it longer"
    partial = len(read_table(str(tmp_path / "killed"), "latents", ["sample_id"]))
    assert 0 < partial < CLIPS, f"the kill should land part way ({partial} of {CLIPS} latents written)"

    again = subprocess.run(_command(killed), env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert summary["counts"]["latents_skipped_existing"] == partial  # what was done stayed done

    want_latents, want_embeddings = _tables(tmp_path / "whole")
    got_latents, got_embeddings = _tables(tmp_path / "killed")
    assert len(read_table(str(tmp_path / "killed"), "latents", ["sample_id"])) == len(got_latents) == CLIPS  # each once
    assert got_latents.keys() == want_latents.keys()
    for sid, row in want_latents.items():
        assert got_latents[sid]["latent_bytes"] == row["latent_bytes"], sid
    assert got_embeddings.keys() == want_embeddings.keys()
    for cid, row in want_embeddings.items():
        assert got_embeddings[cid]["embedding_bytes"] == row["embedding_bytes"], cid
    assert not [p for p in (tmp_path / "killed").rglob(".tmp-*")], "a temporary file of the killed run is left"
