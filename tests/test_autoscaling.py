"""Pools that scale (docs/cluster.md): on a cluster whose GPU workers scale from zero, a
precompute run with `ray.use_gpus: true` and `max_actors: auto` makes the autoscaler add GPU
nodes, the VAE pool grows past one actor, and the job completes.

The cluster is Ray's fake multi-node autoscaler (`ray.cluster_utils.AutoscalingCluster`'s
provider, `RAY_FAKE_CLUSTER=1`): a head with CPUs and no GPUs, and a worker type of
{CPU: 1, GPU: 1} nodes from 0 to 2. The GPUs are fake; the tiny models compute on the CPU in the
actors (torch sees no CUDA, `operators/devices.py`).

The scenario runs in a subprocess (this file run as a script), never beside the session's local
Ray. It does not call `AutoscalingCluster.start()`/`shutdown()` themselves: both run
`ray stop --force`, which kills every Ray on the machine (the session's `ray_local`, another
test run's cluster), and ray 2.60's wheel lacks the `fake_multi_node/example.yaml` its
constructor reads. `_FakeGpuCluster` below is the same recipe (the class's config layout and
`ray start --head --autoscaling-config` with `RAY_FAKE_CLUSTER=1`) on a free port and its own
temp dir, and it stops only the processes it started: those carrying its marker in their
environment, which every process of the cluster inherits (head, autoscaler, fake nodes, workers).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

CLIPS = 12
GPU_WORKERS_MAX = 2
SCENARIO_TIMEOUT_S = 180  # the whole subprocess: cluster start, run, shutdown
MARKER = "LATENTFORGE_AUTOSCALING_TEST_CLUSTER"


def test_gpu_pool_grows_on_an_autoscaling_cluster(tmp_path):
    marker = uuid.uuid4().hex
    env = {**os.environ, MARKER: marker}  # LATENTFORGE_HOME (conftest) goes along
    env.pop("RAY_ADDRESS", None)
    # ray 2.60 turns token auth on for a new `ray start` head; the driver would then need the
    # token too. A throwaway loopback cluster needs none: off for the cluster and its driver.
    env["RAY_AUTH_MODE"] = "disabled"
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=SCENARIO_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"scenario ran over {SCENARIO_TIMEOUT_S}s\n--- stdout\n{_tail(e.stdout)}\n--- stderr\n{_tail(e.stderr)}")
    finally:
        _stop_processes(marker)  # whatever the scenario left behind (nothing, when it ends well)
    wall = time.monotonic() - t0
    result_file = tmp_path / "result.json"
    if proc.returncode != 0 or not result_file.exists():
        pytest.fail(f"scenario failed (rc {proc.returncode}, {wall:.0f}s)\n--- stdout\n{_tail(proc.stdout)}\n--- stderr\n{_tail(proc.stderr)}")
    result = json.loads(result_file.read_text())
    print(f"autoscaling scenario ({wall:.0f}s): {json.dumps({k: v for k, v in result.items() if k != 'summary'}, indent=1)}")
    counts = result["summary"]["counts"]

    assert result["head_gpus"] == 0, "the head must have no GPUs, or nothing needs autoscaling"
    assert result["summary"]["used_gpus"] is True
    assert counts["input_rows"] == CLIPS
    assert counts["latents_written"] == CLIPS, counts
    assert counts["errors"] == 0, counts
    assert counts["embeddings_written"] == CLIPS, counts  # every clip has its own caption
    assert result["max_gpu_nodes"] <= GPU_WORKERS_MAX, result
    assert result["max_gpu_nodes"] >= 1, "the autoscaler added no GPU node for the model actors"
    # the pool grew: Ray Data asked for a second actor while work queued up. Whether that actor
    # also came up before the work ran out depends on node start-up against the machine's load,
    # so the count of actors alive at once is printed above, not asserted.
    assert len(result["video_actors"]) >= 2, f"the VideoEncodeStage pool never grew past one actor: {result['video_actors']}"
    # every video actor held a (fake) GPU, on a GPU node the autoscaler added, never the head
    assert all(a["gpus"] == 1 and a["node"] != result["head_node"] for a in result["video_actors"].values()), result["video_actors"]


# ---------------------------------------------------------------------------------------------
# The scenario (run as `python tests/test_autoscaling.py WORKDIR`; writes WORKDIR/result.json)


def _tail(text: str | bytes | None, n: int = 6000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]


def _own_processes(marker: str) -> list:
    """Processes whose environment carries this run's marker: the cluster's and nobody else's."""
    import psutil

    me = psutil.Process()
    spared = {me.pid, *(p.pid for p in me.parents())}  # the scenario and whoever started it
    mine = []
    for p in psutil.process_iter():
        if p.pid in spared:
            continue
        try:
            if p.environ().get(MARKER) == marker:
                mine.append(p)
        except (psutil.Error, OSError):
            continue
    return mine


def _stop_processes(marker: str) -> None:
    """SIGTERM this run's processes by pid, then SIGKILL what is left after a grace period."""
    import psutil

    procs = _own_processes(marker)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _FakeGpuCluster:
    """AutoscalingCluster's recipe, confined to this test's own processes (see the module doc)."""

    def __init__(self, root: Path, head_cpus: int, gpu_workers_max: int, idle_timeout_minutes: float):
        self.root = root
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.head_cpus = head_cpus
        self.temp_dir: str | None = None
        self.marker = os.environ[MARKER]  # set by the test, inherited by every cluster process
        self.config = {
            "cluster_name": "latentforge_fake_gpu",
            "max_workers": gpu_workers_max,
            "provider": {
                "type": "fake_multinode",
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
                "gcs_address": self.address,  # the fake nodes join this cluster, not :6379
            },
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
                "gpu_worker": {
                    "resources": {"CPU": 1, "GPU": 1, "object_store_memory": 150 * 2**20},
                    "node_config": {},
                    "min_workers": 0,
                    "max_workers": gpu_workers_max,
                },
            },
            "head_node_type": "ray.head.default",
            "auth": {},
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": idle_timeout_minutes,
            "docker": {},
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
        }

    def start(self) -> None:
        config = self.root / "autoscaling.json"
        config.write_text(json.dumps(self.config))
        # Ray's unix sockets live under the temp dir and their paths must stay under ~107
        # characters, which pytest's tmp_path is too deep for: a short folder of our own.
        self.temp_dir = tempfile.mkdtemp(prefix="lf-as-")
        # RAY_TMPDIR: the fake worker nodes take no temp dir from the provider; this keeps theirs
        # in the same folder instead of /tmp/ray.
        env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1", "RAY_TMPDIR": self.temp_dir}
        cmd = [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head",
            f"--autoscaling-config={config}",
            f"--port={self.port}",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.head_cpus}",
            "--num-gpus=0",
            f"--object-store-memory={200 * 2**20}",
            f"--temp-dir={self.temp_dir}",
            "--include-dashboard=false",
            f"--ray-client-server-port={_free_port()}",
            "--disable-usage-stats",
        ]  # fmt: skip
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=90)
        if done.returncode != 0:
            raise RuntimeError(f"ray start failed (rc {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")

    def shutdown(self) -> None:
        _stop_processes(self.marker)
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


class _Watcher(threading.Thread):
    """Polls the cluster: alive GPU nodes, and the actors of the VAE pool (from the GCS actor
    table; the state API would need the dashboard this cluster runs without)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.max_gpu_nodes = 0
        self.gpu_nodes_seen: set[str] = set()
        self.max_alive_video_actors = 0
        self.video_actors: dict[str, dict] = {}
        self.errors: list[str] = []
        self.t0 = time.monotonic()

    def poll(self) -> None:
        import ray
        from ray.core.generated import gcs_pb2

        gpu_nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]
        self.max_gpu_nodes = max(self.max_gpu_nodes, len(gpu_nodes))
        self.gpu_nodes_seen.update(gpu_nodes)
        accessor = ray._private.state.state._connect_and_get_accessor()
        alive = 0
        for raw in accessor.get_actor_table(None, None):
            a = gcs_pb2.ActorTableData.FromString(raw)
            if "VideoEncodeStage" not in a.repr_name:  # set once the actor's __init__ ran
                continue
            state = gcs_pb2.ActorTableData.ActorState.Name(a.state)
            alive += state == "ALIVE"
            seen = self.video_actors.setdefault(a.actor_id.hex(), {"alive_at_s": round(time.monotonic() - self.t0, 1)})
            seen.update(state=state, node=a.address.node_id.hex(), gpus=a.required_resources.get("GPU", 0))
        self.max_alive_video_actors = max(self.max_alive_video_actors, alive)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - a missed poll is not a failed run
                self.errors.append(repr(e))
            self.stop.wait(0.5)


def _dataset(folder: Path) -> Path:
    from latentforge.sample_media import make_video

    folder.mkdir(parents=True)
    rows = []
    for i in range(CLIPS):
        make_video(folder / f"clip{i}.mp4", 256, 256, 36, 24)
        rows.append({"media_path": f"clip{i}.mp4", "caption": f"Clip number {i} of a square drifting.", "source_id": i})
    manifest = folder / "dataset.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def scenario(root: Path) -> dict:
    import ray

    from latentforge.config import load_config
    from latentforge.models import model_root
    from latentforge.pipelines import run

    model_root("tiny")  # build the tiny twin once here, not in each actor at once
    manifest = _dataset(root / "media")
    cluster = _FakeGpuCluster(root, head_cpus=2, gpu_workers_max=GPU_WORKERS_MAX, idle_timeout_minutes=1.0)
    cluster.start()
    watcher = _Watcher()
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        head = next(n for n in ray.nodes() if n.get("Alive"))
        head_gpus = head["Resources"].get("GPU", 0)
        watcher.start()
        cfg = load_config(
            None,
            [
                "ray.use_gpus=true",
                f"ray.address={cluster.address}",
                "ray.no_progress_timeout_s=120",
                "encode_video.batch_size=1",
                "encode_text.batch_size=1",
            ],
            input=str(manifest),
            output=str(root / "out"),
            model="tiny",
            buckets="256x256x33",
        )
        t0 = watcher.t0 = time.monotonic()
        summary = run(cfg)
        run_seconds = time.monotonic() - t0
        watcher.poll()
        watcher.stop.set()
        watcher.join(5)
        return {
            "run_seconds": round(run_seconds, 1),
            "video_phase_seconds": summary["phase_wall_seconds"]["video"],
            "head_node": head["NodeID"],
            "head_gpus": head_gpus,
            "max_gpu_nodes": watcher.max_gpu_nodes,
            "gpu_nodes_seen": len(watcher.gpu_nodes_seen),
            "video_actors": watcher.video_actors,
            "max_alive_video_actors": watcher.max_alive_video_actors,
            "watch_errors": watcher.errors[:5],
            "summary": summary,
        }
    finally:
        watcher.stop.set()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # as the test sets it
    workdir = Path(sys.argv[1])
    out = scenario(workdir)
    (workdir / "result.json").write_text(json.dumps(out, default=str))
