"""The README's main command on the shipped sample media gives the counts the README shows."""

import json
from pathlib import Path

import pytest

from latentforge.cli import main

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]


def test_readme_demo_runs_offline(tmp_path, ray_local, capsys):
    out = tmp_path / "demo"
    args = ["run", str(REPO / "examples/tiny.yaml"), "--set", f"output={out}", "--set", f"input={REPO / 'examples/media/dataset.jsonl'}"]
    assert main(args) == 0
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert counts["latents_written"] == 5 and counts["errors"] == 1
    assert counts["errors_by_reason"] == {"prepare/too short": 1}
    assert counts["captions_distinct"] == counts["embeddings_written"] == 4
    assert (out / "run.json").exists()
