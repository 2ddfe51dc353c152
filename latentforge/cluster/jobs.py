"""Ray Jobs: `latentforge submit | status | logs | stop` (docs/cluster.md, "Submitting jobs").

`submit` validates the config here, writes it (with the --set overrides applied) as
`latentforge.yaml` into a temporary folder that travels as the job's `working_dir`, and starts
`python -m latentforge.cli run latentforge.yaml` on the cluster: the driver inside the job is the
same `latentforge run`, joining the cluster through the RAY_ADDRESS that Ray Jobs sets for it.
Overrides live in the shipped file, never on the entrypoint, and nothing here prints the
config, `storage_options` or `--env` values.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, TextIO

import yaml

import latentforge
from latentforge.config import load_config

CONFIG_NAME = "latentforge.yaml"
ENTRYPOINT = f"python -m latentforge.cli run {CONFIG_NAME}"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
QUIET_LOGGERS = ("ray.dashboard.modules", "ray._private.runtime_env")
DRIVER_RESOURCE_AMOUNT = 0.001  # a sliver of the custom resource: many drivers fit on one node
# Config keys naming local paths: made absolute from where `submit` runs, as `run` would read them
# (the job's working directory is a temporary copy of the shipped folder, not yours).
PATH_KEYS = (("input",), ("output",), ("model_path",), ("export_to",), ("caption", "manifest"))


class JobError(Exception):
    """A one-line reason a job command cannot go on (the CLI prints it and exits 2)."""


def resolve_address(address: str | None = None) -> str:
    """--address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS when it is an http(s) URL (a
    `ray://` or GCS address is for `latentforge run`, not for the job server), else the local
    dashboard. A bare host:port means http://host:port."""
    env = [os.environ.get("RAY_API_SERVER_ADDRESS"), os.environ.get("RAY_ADDRESS")]
    candidates = [address, env[0]] + [a for a in env[1:] if a and a.startswith(("http://", "https://"))]
    chosen = next((a for a in candidates if a), DEFAULT_ADDRESS)
    return chosen if "://" in chosen else f"http://{chosen}"


def client(address: str | None = None):
    """A JobSubmissionClient for the job server at `address`, or a JobError saying why not."""
    import ray.exceptions
    from ray.job_submission import JobSubmissionClient

    AuthenticationError = getattr(ray.exceptions, "AuthenticationError", ())  # token auth: Ray 2.52+

    url = resolve_address(address)
    for name in QUIET_LOGGERS:  # "Uploading package ..." and websocket notes: not for a one-line CLI
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return JobSubmissionClient(url)
    except AuthenticationError:
        raise JobError(
            f"the Ray job server at {url} requires a token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
            "(or put it in ~/.ray/auth_token)"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise JobError(f"cannot reach the Ray job server at {url}: {_first_line(e)}") from None


# ---------------------------------------------------------------------------------------------
# submit


def shipped_config(config: str, overrides: list[str]) -> dict[str, Any]:
    """The config as the job will read it: validated here (a ConfigError fails the submit before
    anything is sent), overrides applied, only the keys that were set (the cluster's latentforge
    fills in its defaults), local paths made absolute, and no `ray.address` (the driver joins
    the cluster the job runs in)."""
    cfg = load_config(config, overrides)
    data = cfg.model_dump(mode="json", exclude_unset=True)
    for keys in PATH_KEYS:
        node = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node.get(k), dict) else {}
        value = node.get(keys[-1])
        if isinstance(value, str) and value and "://" not in value:
            node[keys[-1]] = os.path.abspath(value)
    if isinstance(data.get("ray"), dict):
        data["ray"].pop("address", None)
    return data


def env_vars(items: Iterable[str]) -> dict[str, str]:
    """--env KEY=VALUE (or KEY: copy this shell's value) -> the job's environment variables."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not key:
            raise JobError(f"--env {item.split('=')[0]!r}: expected KEY=VALUE or KEY")
        if not sep:
            if key not in os.environ:
                raise JobError(f"--env {key}: not set in this shell (use {key}=VALUE)")
            value = os.environ[key]
        out[key] = value
    return out


def runtime_env(working_dir: str, *, ship_package: bool = False, pip: Iterable[str] = (), env: dict[str, str] | None = None) -> dict[str, Any]:
    """The job's runtime env: the folder holding the config, the latentforge package itself when
    asked (py_modules), pip requirements for clusters whose image lacks it, and variables."""
    out: dict[str, Any] = {"working_dir": working_dir}
    if ship_package:
        out["py_modules"] = [str(Path(latentforge.__file__).parent)]
    if pip:
        out["pip"] = list(pip)
    if env:
        out["env_vars"] = dict(env)
    return out


def driver_resources(driver_cpus: float = 0, driver_resource: str | None = None) -> dict[str, Any]:
    """submit_job's entrypoint_* arguments. Never a GPU. With none of them reserved Ray pins the
    driver to the head node; a custom resource that only the head / on-demand nodes advertise
    (`ray start --resources='{"latentforge_driver": 1}'`) lets it run on those and nowhere else."""
    if driver_cpus < 0:
        raise JobError(f"--driver-cpus {driver_cpus}: must be 0 or more")
    return {
        "entrypoint_num_cpus": driver_cpus,
        "entrypoint_num_gpus": 0,
        "entrypoint_resources": {driver_resource: DRIVER_RESOURCE_AMOUNT} if driver_resource else None,
    }


def submit(
    config: str,
    overrides: list[str],
    *,
    address: str | None = None,
    submission_id: str | None = None,
    ship_package: bool = False,
    pip: Iterable[str] = (),
    env: Iterable[str] = (),
    driver_cpus: float = 0,
    driver_resource: str | None = None,
    overwrite: bool = False,
) -> str:
    """Submit `latentforge run CONFIG` as a Ray job; returns its submission id. Raises ConfigError
    for a config that cannot run, JobError for anything the cluster refuses. `overwrite`: the job
    runs `latentforge run --overwrite` (clears the output's earlier results first)."""
    data = shipped_config(config, overrides)
    variables = env_vars(env)
    resources = driver_resources(driver_cpus, driver_resource)
    jobs = client(address)
    if submission_id and _exists(jobs, submission_id):  # refused before anything is uploaded
        raise JobError(_taken(submission_id))
    with tempfile.TemporaryDirectory(prefix="latentforge-job-") as workdir:
        prompt = (data.get("caption") or {}).get("prompt_file")
        if prompt:  # a local file the config names travels with it
            shutil.copyfile(prompt, Path(workdir) / "caption_prompt.txt")
            data["caption"]["prompt_file"] = "caption_prompt.txt"
        (Path(workdir) / CONFIG_NAME).write_text(yaml.safe_dump(data, sort_keys=False))
        try:
            return jobs.submit_job(
                entrypoint=ENTRYPOINT + (" --overwrite" if overwrite else ""),
                submission_id=submission_id,
                runtime_env=runtime_env(workdir, ship_package=ship_package, pip=pip, env=variables),
                metadata={"latentforge": latentforge.__version__, "config": Path(config).name, "output": str(data["output"])},
                **resources,
            )
        except RuntimeError as e:
            if "already exists" in str(e):
                raise JobError(_taken(submission_id)) from None
            raise JobError(f"the cluster refused the job: {_first_line(e)}") from None


def _taken(submission_id: str | None) -> str:
    return (
        f"submission id {submission_id!r} is already used on this cluster (Ray keeps the ids of finished "
        "jobs too); choose another --submission-id, or leave it out for a fresh one"
    )


def _exists(jobs: Any, job_id: str) -> bool:
    try:
        jobs.get_job_info(job_id)
        return True
    except RuntimeError:
        return False


# ---------------------------------------------------------------------------------------------
# status, logs, stop


def status_code(status: str) -> int:
    """The exit status `submit --wait` ends with: 0 on SUCCEEDED, 1 on FAILED or STOPPED."""
    return 0 if status == "SUCCEEDED" else 1


def info(jobs: Any, job_id: str) -> Any:
    try:
        return jobs.get_job_info(job_id)
    except RuntimeError as e:
        if "404" in str(e) or "does not exist" in str(e):
            raise JobError(f"no job {job_id!r} on this cluster") from None
        raise JobError(f"cannot read job {job_id!r}: {_first_line(e)}") from None


def describe(details: Any) -> list[str]:
    """`latentforge status` lines: what the job is and how it went, never its runtime env."""
    meta = details.metadata or {}
    lines = [
        f"job:        {details.submission_id or details.job_id}",
        f"status:     {_status(details.status)}",
        f"message:    {_first_line(details.message or '')}",
        f"entrypoint: {details.entrypoint}",
        f"started:    {_time(details.start_time)}",
        f"ended:      {_time(details.end_time)}",
    ]
    if meta.get("output"):
        lines.append(f"output:     {meta['output']}")
    return lines


def wait(jobs: Any, job_id: str, timeout_s: float | None = None, poll_s: float = 1.0) -> str:
    """Poll until the job reaches a terminal status; returns it."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = _status(jobs.get_job_status(job_id))
        if status in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return status
        time.sleep(poll_s)


def follow(jobs: Any, job_id: str, out: TextIO = sys.stdout) -> str:
    """Stream the job's logs until it ends (tail_job_logs), then return its terminal status."""

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except Exception as e:  # a dropped log stream must not lose the job's outcome: poll instead
        print(f"latentforge: log stream ended ({_first_line(e)}); waiting for job {job_id}", file=sys.stderr)
    return wait(jobs, job_id)


def logs(jobs: Any, job_id: str, out: TextIO = sys.stdout) -> None:
    info(jobs, job_id)  # a JobError for an unknown id
    out.write(jobs.get_job_logs(job_id))
    out.flush()


def stop(jobs: Any, job_id: str, timeout_s: float = 60) -> tuple[bool, str]:
    """Ask Ray to stop the job (SIGTERM to the driver, SIGKILL a few seconds later; its actors and
    tasks go with it) and wait for the end; returns (whether it was running, final status)."""
    info(jobs, job_id)
    was_running = jobs.stop_job(job_id)
    return was_running, wait(jobs, job_id, timeout_s=timeout_s, poll_s=0.5)


def _status(value: Any) -> str:
    return str(getattr(value, "value", value))


def _time(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _first_line(error: BaseException | str) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

