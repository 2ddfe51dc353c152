"""run.json: the fields every run writes (times, the fixed cost, versions, the redacted config
and command line) and the figures pipelines share (stage seconds, decoded frames per source
frame). The file's fields are listed in docs/outputs.md."""

from __future__ import annotations

import platform
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any

import ray

from latentforge import __version__
from latentforge.config import PipelineConfig
from latentforge.formats.shards import write_run_summary
from latentforge.pipelines.stages import Job
from latentforge.pipelines.tally import totals

SECRET_WORDS = ("key", "secret", "token", "password", "credential")


def is_secret(name: str) -> bool:
    """A config key or option name that may hold a credential (storage_options.key, ...)."""
    return any(word in name.lower() for word in SECRET_WORDS)


def redacted_argv(argv: list[str]) -> list[str]:
    """The command line for run.json: `--set storage_options.secret=...` and the like masked
    (a credential passed on the command line must not land in the output beside the data)."""
    out = []
    for arg in argv:
        for m in re.finditer(r"([\w.-]+)=", arg):  # also --set=storage_options.key=...
            if is_secret(m.group(1).rsplit(".", 1)[-1]):
                arg = arg[: m.end()] + "***"
                break
        out.append(arg)
    return out


def redacted(cfg: PipelineConfig) -> dict[str, Any]:
    """The config for run.json and logs, with anything that looks like a credential masked."""
    data = cfg.model_dump(mode="json")

    def mask(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: ("***" if is_secret(k) else mask(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [mask(v) for v in node]
        return node

    data["storage_options"] = mask(data.get("storage_options", {}))
    return data


def versions(*modules: str) -> dict[str, str]:
    """Versions of latentforge, Python, Ray and the named packages a pipeline ran."""
    import importlib.metadata

    out = {"latentforge": __version__, "python": platform.python_version(), "ray": ray.__version__}
    for name in modules:
        out[name] = importlib.metadata.version(name)
    return out


def seconds_of(result: dict[str, Any], *more: dict[str, Any]) -> dict[str, float]:
    """Per-stage busy seconds that sinks added up, rounded, in name order."""
    total: dict[str, float] = {}
    for r in (result, *more):
        total.update(r.get("seconds", {}))
    return {k: round(v, 3) for k, v in sorted(total.items())}


def decode_figures(decoded: dict[str, int], source_frames: int) -> dict[str, Any]:
    """run.json's decoded frames per source frame: how often each source frame was decoded."""
    return {"source_frames": source_frames, "decoded_per_source_frame": round(sum(decoded.values()) / source_frames, 4) if source_frames else None}


def write_summary(job: Job, fields: dict[str, Any], module_versions: tuple[str, ...], started_at: str) -> dict[str, Any]:
    """run.json: what the pipeline reported, between the times and the provenance every run has."""
    cfg = job.cfg
    summary = {
        "latentforge": __version__,
        **({"pipeline": fields.pop("pipeline")} if "pipeline" in fields else {}),
        "started_at": started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "wall_seconds": round(time.time() - job.started, 3),
        "phase_wall_seconds": {k: round(v, 3) for k, v in job.phase_seconds.items()},
        **fields,
        "versions": versions(*module_versions),
        "config": redacted(cfg),
        "command": redacted_argv(sys.argv),
    }
    write_run_summary(cfg.output, summary, cfg.storage_options)
    return summary


def fixed_cost(job: Job, timeline_: dict[str, Any]) -> dict[str, float | None]:
    """What a run pays before its rows flow, from the run's start (docs/outputs.md, run.json):
    starting or joining Ray, the first read task, the first row any sink finished."""
    first_started = totals(job.state.get("tally"))["first_started"] if "tally" in job.state else None
    firsts = (timeline_ or {}).get("first_row_seconds") or {}
    return {
        "ray_start": job.state.get("ray_start_seconds"),
        "first_task": round(first_started - job.started, 3) if first_started is not None else None,
        "first_output_row": min(firsts.values()) if firsts else None,
    }
