"""The head of every pipeline: the input manifest (read on the driver) and probe."""

from __future__ import annotations

from typing import Any

from latentforge.formats.manifests import read_manifest
from latentforge.operators import probe as probe_op
from latentforge.pipelines.stages import Job, Stage, always


def read_input(job: Job) -> list[dict[str, Any]]:
    """The manifest's rows, kept in `job.state["input"]` for the input counts of run.json."""
    cfg = job.cfg
    rows = read_manifest(cfg.input, cfg.input_format, cfg.storage_options)
    job.state["input"] = rows
    return rows


def describe_source(job: Job) -> str:
    return f"read {job.cfg.input} (format: {job.cfg.input_format})"


def source(read=read_input, phase: str = "video", describe=describe_source, enabled=always) -> Stage:
    """A source stage: the manifest by default, or a pipeline's own reading of it."""
    return Stage("source", "source", None, describe, read=read, phase=phase, enabled=enabled)


def storage(job: Job) -> dict[str, Any]:
    return {"storage_options": job.cfg.storage_options}


PROBE = Stage(
    "probe",
    "map",
    probe_op.probe,
    lambda job: "container metadata via PyAV; unreadable media -> error rows",
    resources=probe_op.RESOURCES,
    args=storage,
)
