"""benchmarks/gpu_check.py off a GPU: it says it needs one and exits 0; its tables agree with the presets.

The GPU path itself is not run here (no CUDA on the CI machine); see docs/benchmarks.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so the no-CUDA path runs on every machine.
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_without_cuda_it_says_so_and_exits_0():
    proc = _run("--families", "wan2.1", "--skip-pipeline")
    assert proc.returncode == 0, proc.stderr
    assert "needs a CUDA GPU" in proc.stdout


def test_help():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    assert "--families" in proc.stdout and "--json" in proc.stdout


def test_unknown_family_is_refused():
    proc = _run("--families", "sora")
    assert proc.returncode == 2 and "unknown preset" in proc.stderr


def test_tables_follow_the_presets(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check

    from latentforge.models import get_preset

    assert set(gpu_check.BUCKETS) == set(gpu_check.FULL_CONFIGS)
    for name, (w, h, f) in [*gpu_check.BUCKETS.items(), *((n, gpu_check.SMALL) for n in gpu_check.BUCKETS)]:
        p = get_preset(name)
        assert w % p.spatial_multiple == 0 and h % p.spatial_multiple == 0, (name, w, h)
        assert f % p.frame_modulus == p.frame_remainder, (name, f)
    for _cls, _cfg, _config, tokens, presets in gpu_check.TEXT_ENCODERS.values():
        assert tokens == max(get_preset(n).max_sequence_length for n in presets)
