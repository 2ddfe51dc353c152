"""`latentforge submit | status | logs | stop` against a real two-node Ray cluster of its own
(`ray start` head with the job server, plus a worker node, all on 127.0.0.1), never the
session's embedded Ray: a job runs the same `latentforge run` and writes a complete output, a
reused submission id is refused with exit 2, a running job stops, and no credential is printed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from latentforge.cluster import jobs
from latentforge.config import ConfigError
from latentforge.formats.shards import read_table
from latentforge.sample_media import make_image, make_video

REPO = Path(__file__).resolve().parents[1]
SECRET = "lf-test-secret-5f1d"  # a fake credential in storage_options: must never be printed
# `ray start` turns --node-ip-address=127.0.0.1 into the machine's outward address, and refuses a
# worker node when multi-node is "disabled"; these two patches keep every node on loopback.
RAY_START = (
    "import ray._private.ray_constants as c, ray._private.services as s; c.ENABLE_RAY_CLUSTER = True; "
    "s.resolve_ip_for_localhost = lambda host: host; from ray.scripts.scripts import main; main()"
)


# ---------------------------------------------------------------------------------------------
# without a cluster


def test_shipped_config_applies_overrides_makes_paths_absolute_and_drops_the_address(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("cfg.yaml").write_text("input: data/in.jsonl\noutput: out\nmodel: tiny\nbuckets: 64x64x9\nray:\n  address: ray://h:10001\n")
    data = jobs.shipped_config("cfg.yaml", ["encode_video.batch_size=2", "output=s3://b/p", "storage_options.key=K"])
    assert data["input"] == str(tmp_path / "data" / "in.jsonl")
    assert data["output"] == "s3://b/p" and data["encode_video"] == {"batch_size": 2}
    assert data["storage_options"] == {"key": "K"} and "address" not in data["ray"]
    assert "caption" not in data  # only what was set: the cluster's latentforge fills in defaults
    with pytest.raises(ConfigError):
        jobs.shipped_config("cfg.yaml", ["buckets=65x64x9"])


def test_driver_resources_and_addresses(monkeypatch):
    assert jobs.driver_resources() == {"entrypoint_num_cpus": 0, "entrypoint_num_gpus": 0, "entrypoint_resources": None}
    assert jobs.driver_resources(1, "latentforge_driver")["entrypoint_resources"] == {"latentforge_driver": 0.001}
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert jobs.resolve_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # for `run`, not the job server
    assert jobs.resolve_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert jobs.resolve_address() == "http://head:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "api:8265")
    assert jobs.resolve_address() == "http://api:8265"
    assert jobs.resolve_address("https://x") == "https://x"
    assert jobs.env_vars(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}


def test_an_id_ray_refuses_at_submission_is_a_job_error(tmp_path, monkeypatch):
    """The pre-check can race another submit; Ray's own refusal reads the same."""

    class Refusing:
        def get_job_info(self, job_id):
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")

        def submit_job(self, **kwargs):
            assert Path(kwargs["runtime_env"]["working_dir"], jobs.CONFIG_NAME).is_file()
            assert kwargs["entrypoint_num_gpus"] == 0 and kwargs["entrypoint"] == jobs.ENTRYPOINT
            raise RuntimeError("Request failed with status code 500: ValueError: Job with submission_id x already exists.")

    monkeypatch.setattr(jobs, "client", lambda address=None: Refusing())
    cfg = _config(tmp_path, _dataset(tmp_path / "data"))
    with pytest.raises(jobs.JobError, match="submission id 'x' is already used"):
        jobs.submit(str(cfg), [], submission_id="x")


def test_submit_overwrite_runs_latentforge_run_overwrite(tmp_path, monkeypatch):
    submitted = []

    class Accepting:
        def get_job_info(self, job_id):
            raise RuntimeError("does not exist")

        def submit_job(self, **kwargs):
            submitted.append(kwargs["entrypoint"])
            return "raysubmit_1"

    monkeypatch.setattr(jobs, "client", lambda address=None: Accepting())
    cfg = _config(tmp_path, _dataset(tmp_path / "data"))
    jobs.submit(str(cfg), [], overwrite=True)
    jobs.submit(str(cfg), [])
    assert submitted == [f"{jobs.ENTRYPOINT} --overwrite", jobs.ENTRYPOINT]


def test_unreachable_job_server_is_one_line_exit_2(tmp_path):
    cfg = _config(tmp_path, _dataset(tmp_path / "data"))
    result = _cli(["submit", str(cfg), "--address", f"http://127.0.0.1:{_free_port()}"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("latentforge: cannot reach the Ray job server") and result.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# a real cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agent_ports() -> list[str]:
    return [f"--{name}={_free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")]


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    return {**env, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}


def _cli(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "latentforge.cli", *args], cwd=cwd, env=_cli_env(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def cluster():
    """A head node (2 CPUs, job server on a free port) and a worker node (1 CPU), started as
    processes of their own under a private --temp-dir, and killed by PID at the end: `ray stop`
    would also end every other Ray on this machine."""
    temp_dir = tempfile.mkdtemp(prefix="lfj", dir="/tmp")  # short: Ray's socket paths have a length limit
    (Path(temp_dir) / "blocked").write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    env.update(RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    # The job must get LATENTFORGE_HOME from `submit --env`: here it points below a file, unusable.
    env["LATENTFORGE_HOME"] = str(Path(temp_dir) / "blocked" / "home")
    gcs, dashboard = _free_port(), _free_port()
    common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = [
        "--head", f"--port={gcs}", "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}", f"--ray-client-server-port={_free_port()}", f"--temp-dir={temp_dir}",
    ]
    procs = []
    # The worker node gets a temp dir of its own: nodes sharing one would share runtime_resources/,
    # and one node's runtime env agent would delete the job's working_dir under the other's driver.
    worker = [f"--address=127.0.0.1:{gcs}", "--num-cpus=1", f"--temp-dir={temp_dir}/w"]
    for name, args in (("head", head), ("worker", worker)):
        log = open(Path(temp_dir) / f"{name}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-c", RAY_START, "start", *args, *common, *_agent_ports()],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_nodes(address, 2, procs, temp_dir)
        yield address
    finally:
        _kill(procs, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_nodes(address: str, count: int, procs: list[subprocess.Popen], temp_dir: str, timeout_s: float = 120) -> None:
    from ray.util.state import list_nodes

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if len([n for n in list_nodes(address=address, raise_on_missing_output=False) if n.state == "ALIVE"]) >= count:
                return
        except Exception:
            pass
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            logs = "\n".join((Path(temp_dir) / f"{n}.log").read_text()[-2000:] for n in ("head", "worker"))
            raise RuntimeError(f"the test cluster did not come up:\n{logs}")
        time.sleep(0.5)


def _kill(procs: list[subprocess.Popen], temp_dir: str) -> None:
    """Every process our two `ray start`s started (GCS, raylets, dashboard, workers), by PID:
    their descendants, and any process left behind that names our --temp-dir."""
    found = []
    for p in procs:
        try:
            root = psutil.Process(p.pid)
            found += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for proc in psutil.process_iter(["cmdline"]):
        if proc not in found and any(temp_dir in arg for arg in proc.info["cmdline"] or ()):
            found.append(proc)
    for proc in reversed(found):
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(found, timeout=10)
    for p in procs:
        p.wait(timeout=10)


def _dataset(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    make_video(folder / "wide.mp4", 128, 64, 12, 24)
    make_video(folder / "square.mp4", 64, 64, 12, 24)
    make_image(folder / "still.png", 80, 80)
    rows = [
        {"media_path": "wide.mp4", "caption": "A wide shot of a bouncing square."},
        {"media_path": "square.mp4", "caption": "A square clip."},
        {"media_path": "still.png", "caption": "A still image."},
    ]
    (folder / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "dataset.jsonl"


def _config(folder: Path, manifest: Path, output: str = "out") -> Path:
    cfg = {
        "input": os.path.relpath(manifest, folder),  # relative: `submit` makes it absolute from its cwd
        "output": output,
        "model": "tiny",
        "buckets": "64x64x9;64x64x1",
        "storage_options": {"secret": SECRET},
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(cfg))
    return folder / "job.yaml"


@pytest.fixture(scope="module")
def finished(cluster, tmp_path_factory):
    """`latentforge submit --wait` of a three-input dataset, with LATENTFORGE_HOME carried by --env."""
    from latentforge.models import model_root

    model_root("tiny")  # built once here, in the session's LATENTFORGE_HOME, which the job reads
    folder = tmp_path_factory.mktemp("job")
    cfg = _config(folder, _dataset(folder / "data"))
    started = time.monotonic()
    result = _cli(
        ["submit", cfg.name, "--address", cluster, "--wait", "--submission-id", "lf-job-ok", "--ship-package",
         "--env", "LATENTFORGE_HOME", "--set", "encode_video.batch_size=2"],
        folder,
    )
    return folder, result, time.monotonic() - started



@pytest.mark.ray
def test_submit_wait_runs_latentforge_run_as_a_job(finished):
    folder, result, seconds = finished
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.startswith("submitted lf-job-ok to http://127.0.0.1:")
    assert '"latents_written": 3' in result.stdout  # the job's own `latentforge run` summary, streamed
    assert "lf-job-ok: SUCCEEDED" in result.stderr
    latents = read_table(str(folder / "out"), "latents").to_pylist()
    assert len(latents) == 3 and {r["num_frames"] for r in latents} == {9, 1}
    run = json.loads((folder / "out" / "run.json").read_text())
    assert run["counts"]["latents_written"] == 3 and run["counts"]["errors"] == 0
    assert run["config"]["storage_options"] == {"secret": "***"}
    assert SECRET not in result.stdout + result.stderr
    assert seconds < 150


@pytest.mark.ray
def test_status_logs_and_a_reused_submission_id(cluster, finished):
    folder, _, _ = finished
    status = _cli(["status", "lf-job-ok", "--address", cluster], folder)
    assert status.returncode == 0, status.stderr
    assert "status:     SUCCEEDED" in status.stdout and f"output:     {folder / 'out'}" in status.stdout
    assert "entrypoint: python -m latentforge.cli run latentforge.yaml" in status.stdout
    logs = _cli(["logs", "lf-job-ok", "--address", cluster], folder)
    assert logs.returncode == 0 and '"latents_written": 3' in logs.stdout
    for out in (status, logs):
        assert SECRET not in out.stdout + out.stderr
    again = _cli(["submit", "job.yaml", "--address", cluster, "--submission-id", "lf-job-ok"], folder)
    assert again.returncode == 2
    assert again.stderr.startswith("latentforge: submission id 'lf-job-ok' is already used") and again.stderr.count("\n") == 1
    missing = _cli(["status", "no-such-job", "--address", cluster], folder)
    assert missing.returncode == 2 and "no job 'no-such-job'" in missing.stderr


@pytest.mark.ray
def test_stop_a_running_job(cluster, finished, tmp_path):
    folder, _, _ = finished
    submitted = _cli(["submit", "job.yaml", "--address", cluster, "--submission-id", "lf-job-stop", "--ship-package",
                      "--env", "LATENTFORGE_HOME", "--set", f"output={tmp_path / 'out'}"], folder)
    assert submitted.returncode == 0, submitted.stderr
    client = jobs.client(cluster)
    deadline = time.monotonic() + 60
    while client.get_job_status("lf-job-stop").value not in ("RUNNING", *jobs.TERMINAL) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.get_job_status("lf-job-stop").value == "RUNNING"
    stopped = _cli(["stop", "lf-job-stop", "--address", cluster], folder)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == "lf-job-stop: STOPPED"
    assert "status:     STOPPED" in _cli(["status", "lf-job-stop", "--address", cluster], folder).stdout
    assert not (tmp_path / "out" / "run.json").exists()


S3_KEY_ID = "lf-test-key-id-93c2"  # fake credentials the job gets through --env: never printed
S3_SECRET = "lf-test-s3-secret-7a4e"


def _local_ray(cluster: str):
    """The in-process Ray for the local run: the session's if this process has one, else an
    embedded one started here (address="local": never RAY_ADDRESS, nor the last `ray start`'s
    address file). Either way it is not the test cluster. Returns whether it started one."""
    import ray
    from ray.data import DataContext
    from ray.util.state import list_nodes

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        DataContext.get_current().enable_progress_bars = False
    cluster_nodes = {n.node_id for n in list_nodes(address=cluster, raise_on_missing_output=False)}
    assert ray.get_runtime_context().get_node_id() not in cluster_nodes
    return started


@pytest.mark.ray
def test_s3_end_to_end_through_submit_equals_a_local_run(cluster, s3_endpoint, tmp_path, monkeypatch):
    """Raw media and manifest in one bucket on moto's S3 server, shards to another: a job
    (credentials through --env, the endpoint in storage_options) writes what an in-process run
    of the same config writes, and neither the credentials nor the config is printed."""
    import s3fs

    from latentforge.config import load_config
    from latentforge.models import model_root
    from latentforge.pipelines import run

    model_root("tiny")  # the job reads the session's LATENTFORGE_HOME (--env), as `finished` does
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # the local run must not join the test cluster
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    fs.mkdir("lf-job-raw")
    fs.mkdir("lf-job-shards")
    manifest = _dataset(tmp_path / "data")
    for name in ("wide.mp4", "square.mp4", "still.png"):
        fs.put(str(manifest.parent / name), f"lf-job-raw/set/media/{name}")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    fs.pipe(
        "lf-job-raw/set/dataset.jsonl",
        "".join(json.dumps({**r, "media_path": f"media/{r['media_path']}"}) + "\n" for r in rows).encode(),
    )
    # Byte-equal latents need the same float arithmetic in both runs: torch's CPU kernels round
    # differently with another thread count or batch shape (~1e-7), and a model actor computes on
    # its node's CPUs / actors per node (docs/benchmarks.md), i.e. 2 or 1 threads on this cluster
    # by placement. Four actors per pool make every actor one-threaded in both runs (2 // 2 and
    # 1 // 2 on the cluster's nodes, 2 // 4 locally), and batches of one fix the shapes.
    pools = {"max_actors": 4, "batch_size": 1}
    cfg_file = tmp_path / "s3.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "input": "s3://lf-job-raw/set/dataset.jsonl",
        "output": "s3://lf-job-shards/out",
        "model": "tiny",
        "buckets": "64x64x9;64x64x1",
        "encode_video": pools,
        "encode_text": pools,
        "storage_options": options,
    }))

    started = time.monotonic()
    result = _cli(
        ["submit", cfg_file.name, "--address", cluster, "--wait", "--submission-id", "lf-job-s3", "--ship-package",
         "--env", "LATENTFORGE_HOME", "--env", "AWS_ACCESS_KEY_ID", "--env", "AWS_SECRET_ACCESS_KEY",
         "--env", "AWS_DEFAULT_REGION=us-east-1"],
        tmp_path,
    )
    job_seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert '"latents_written": 3' in result.stdout and "lf-job-s3: SUCCEEDED" in result.stderr
    printed = [result.stdout + result.stderr]
    for command in ("status", "logs"):
        out = _cli([command, "lf-job-s3", "--address", cluster], tmp_path)
        assert out.returncode == 0, out.stderr
        printed.append(out.stdout + out.stderr)
    assert "output:     s3://lf-job-shards/out" in printed[1]
    run_json = fs.cat("lf-job-shards/out/run.json").decode()
    assert json.loads(run_json)["counts"]["latents_written"] == 3
    for text in (*printed, run_json):
        assert S3_KEY_ID not in text and S3_SECRET not in text

    # The same config run in this process, to another prefix of the same bucket.
    started_here = _local_ray(cluster)
    try:
        # the session's Ray may already run, with workers started before the credentials were set
        # in this process's environment: give them to the local run as storage options
        cfg = load_config(
            str(cfg_file),
            ["output=s3://lf-job-shards/local", f"storage_options.key={S3_KEY_ID}", f"storage_options.secret={S3_SECRET}"],
        )
        summary = run(cfg)
    finally:
        if started_here:
            import ray

            ray.shutdown()
    assert summary["counts"]["latents_written"] == 3 and summary["counts"]["errors"] == 0

    def table(output: str, name: str, key: str) -> dict[str, dict]:
        rows = read_table(output, name, storage_options=options).to_pylist()
        assert len({r[key] for r in rows}) == len(rows)
        return {r[key]: r for r in rows}

    job_latents, local_latents = (table(f"s3://lf-job-shards/{p}", "latents", "sample_id") for p in ("out", "local"))
    assert len(job_latents) == 3 and job_latents.keys() == local_latents.keys()
    assert {r["uri"] for r in job_latents.values()} == {f"s3://lf-job-raw/set/media/{n}" for n in ("wide.mp4", "square.mp4", "still.png")}
    for sample_id, row in job_latents.items():
        other = local_latents[sample_id]
        for column in ("bucket", "num_frames", "caption_id", "latent_shape", "latent_dtype"):
            assert row[column] == other[column], (sample_id, column)
        if row["latent_bytes"] != other["latent_bytes"]:
            a, b = (np.frombuffer(r["latent_bytes"], dtype=row["latent_dtype"]) for r in (row, other))
            pytest.fail(f"{row['uri']}: latents differ in {int((a != b).sum())} of {a.size} values, by up to {float(np.abs(a - b).max()):.3g}")
    job_embeddings, local_embeddings = (table(f"s3://lf-job-shards/{p}", "embeddings", "caption_id") for p in ("out", "local"))
    assert len(job_embeddings) == 3 and job_embeddings.keys() == local_embeddings.keys()
    for caption_id, row in job_embeddings.items():
        for column in ("embedding_shape", "embedding_dtype", "embedding_bytes"):
            assert row[column] == local_embeddings[caption_id][column], (caption_id, column)
    assert job_seconds < 150
