"""Shared fixtures: generated media, the real clips in ../shared/media, a local Ray, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = Path(os.environ.get("LATENTFORGE_SHARED_MEDIA", REPO.parent / "shared" / "media"))


@pytest.fixture(scope="session", autouse=True)
def _tiny_model_home(tmp_path_factory):
    """Tiny models are built once per test session into a private home, never the user's cache."""
    if "LATENTFORGE_HOME" not in os.environ:
        os.environ["LATENTFORGE_HOME"] = str(tmp_path_factory.mktemp("latentforge_home"))
    yield


@pytest.fixture(scope="session")
def tiny_home(_tiny_model_home) -> Path:
    """Every tiny twin built once per session (they are cached under LATENTFORGE_HOME)."""
    from latentforge.models import PRESETS, model_root

    for name, preset in PRESETS.items():
        if preset.tiny and name != "tiny":
            model_root(name)
    return Path(os.environ["LATENTFORGE_HOME"])


@pytest.fixture
def shared_media() -> Path:
    if not (SHARED_MEDIA / "README.md").exists():
        pytest.skip(f"real media not found at {SHARED_MEDIA} (set LATENTFORGE_SHARED_MEDIA to its folder)")
    return SHARED_MEDIA


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session, 2 CPUs as on the CI machine."""
    import ray

    from latentforge.cluster import local_worker_env

    if not ray.is_initialized():
        local_worker_env(2)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP API (moto's server) on loopback, for the whole session."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        server.start()
        try:
            yield f"http://127.0.0.1:{server._server.server_port}"
        finally:
            server.stop()


def run_scenario(script: str, workdir: Path, timeout_s: float) -> dict:
    """Run a test file's `__main__` scenario (a Ray cluster of its own: `ray.cluster_utils.Cluster`)
    in a subprocess, never beside the session's local Ray, and return the result.json it wrote
    into `workdir`. Token auth is off for the throwaway loopback cluster and its driver."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    try:
        proc = subprocess.run([sys.executable, script, str(workdir)], env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"scenario ran over {timeout_s}s\n{(e.stderr or b'')[-4000:]!r}")
    result_file = workdir / "result.json"
    if proc.returncode != 0 or not result_file.exists():
        pytest.fail(f"scenario failed (rc {proc.returncode})\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return json.loads(result_file.read_text())
