"""The pipelines' entry points (`run`, `plan`, `export_output`, `verify_output`, ...), with
the named stage lists; `latentforge.pipelines` hands these out on first use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from latentforge.cluster import cluster_has_gpus, connect
from latentforge.config import PipelineConfig, apply_overrides, load_config
import latentforge.pipelines.caption as caption
import latentforge.pipelines.export as export
import latentforge.pipelines.fingerprint as fingerprint
import latentforge.pipelines.precompute as precompute
import latentforge.pipelines.previews as previews
import latentforge.pipelines.report as report
import latentforge.pipelines.report_html as report_html
import latentforge.pipelines.runtime as runtime
import latentforge.pipelines.split as split
import latentforge.pipelines.verify as verify
from latentforge.pipelines.caption import enabled as caption_enabled
from latentforge.pipelines.caption_settings import preflight as caption_preflight
from latentforge.pipelines.checks import check_models, check_storage
from latentforge.formats.shards import write_run_summary
from latentforge.pipelines.runtime import StagePlan
from latentforge.pipelines.stages import Job, Stage, active


@dataclass(frozen=True)
class Pipeline:
    stages: list[Stage]
    summarize: Callable[[Job], tuple[dict[str, Any], tuple[str, ...]]]


PIPELINES: dict[str, Pipeline] = {
    "split": Pipeline(split.PIPELINE, split.summarize),
    "caption": Pipeline(caption.PIPELINE, caption.summarize),
    "precompute": Pipeline(precompute.STAGES + export.STAGES, precompute.summarize),
    "all": Pipeline(precompute.STAGES + export.STAGES, precompute.summarize),
}


def plan(cfg: PipelineConfig, use_gpus: bool | None = None) -> list[StagePlan]:
    """The stages this config runs, with buckets, models and resources, without running them.
    With `ray.address` set it joins that cluster (nothing is started), so `auto` pool sizes and
    GPUs are what the cluster has now."""
    return runtime.plan(PIPELINES[cfg.pipeline].stages, _planning_job(cfg, use_gpus))


def _planning_job(cfg: PipelineConfig, use_gpus: bool | None) -> Job:
    """The Job `plan` describes: on the cluster `ray.address` names (joined, nothing started),
    with GPUs as asked, else as `ray.use_gpus` says, else as that cluster has them; without an
    address, the embedded Ray a run would start."""
    if cfg.ray.address:
        connect(cfg.ray.address)
        if use_gpus is None:
            use_gpus = cluster_has_gpus() if cfg.ray.use_gpus is None else cfg.ray.use_gpus
    return Job(cfg, bool(use_gpus), embedded=not cfg.ray.cluster_address())


def fit_problems(cfg: PipelineConfig, use_gpus: bool | None = None) -> list[str]:
    """`plan`'s check that each pass's GPU pools can start together on the connected cluster
    (nothing to check without `ray.address`: the embedded Ray has no GPUs to share)."""
    if not cfg.ray.address:
        return []
    job = _planning_job(cfg, use_gpus)
    stages = active(PIPELINES[cfg.pipeline].stages, cfg)
    return [p for part in runtime.passes(stages) if (p := runtime.gpu_fit_problem(part, job))]


def preflight(cfg: PipelineConfig) -> None:
    """Checks that need neither Ray nor data, made before Ray starts, so that a config that
    cannot run fails in a second with a ConfigError instead of after the cluster spins up:
    the input is there and readable, the output writable, the captioner's settings work."""
    if caption_enabled(cfg):  # settings first: they need no I/O
        caption_preflight(cfg)
    check_storage(cfg)
    check_models(cfg, caption_enabled(cfg))


def run(cfg: PipelineConfig, overwrite: bool = False, make_report: bool = True) -> dict[str, Any]:
    """Run the pipeline the config names; returns the summary also written to run.json.
    An output made with other result options is refused (docs/outputs.md), unless `overwrite`,
    which deletes its earlier results first. A run that writes latents ends with its report
    (report.html; docs/report.md), which never fails the run: run.json's `report` says how it went."""
    preflight(cfg)
    now = fingerprint.fingerprint(fingerprint.result_options(cfg, split.enabled(cfg), caption_enabled(cfg)))
    if overwrite:
        fingerprint.clear_output(cfg.output, cfg.storage_options)
    else:
        fingerprint.check(cfg, now)
    pipeline = PIPELINES[cfg.pipeline]
    summary = runtime.run(pipeline.stages, cfg, pipeline.summarize, extra={"fingerprint": now})
    if (made := previews.previews_after_run(cfg, summary)) is not None:  # decode.samples_per_bucket
        summary["previews"] = made
    if not make_report:
        summary["report"] = {"skipped": "--no-report"}
    elif cfg.pipeline in ("split", "caption"):
        summary["report"] = {"skipped": f"the {cfg.pipeline} pipeline writes a manifest, not latents"}
    else:
        summary["report"] = report_html.report_after_run(cfg)
    write_run_summary(cfg.output, summary, cfg.storage_options)
    return summary


def export_output(output: str, formats: list[str], to: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """`latentforge export`: an existing output's shards in trainer layouts; returns the counts.
    The output's run.json and errors are left as they are."""
    storage_options = _storage_options(overrides)
    ctx, buckets, _ = export.output_context(output, storage_options)
    cfg = load_config(
        None,
        list(overrides or []),
        input=export.recorded_input(output, storage_options) or output,  # media are named relative to it
        output=output,
        model=ctx.model,
        buckets=";".join(buckets),
        export=list(formats),
        export_to=to,
    )
    job = runtime.execute(export.STAGES, runtime.start(cfg, new_run=False))
    return {"output": output, "to": {name: export.export_root(cfg, name) for name in formats}, **export.counts(job)}


def verify_output(output: str, input_url: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """`latentforge verify`: the report of `verify.verify`, on the embedded Ray or a cluster."""
    options = _joined(overrides)
    return verify.verify(output, input_url, options.get("input_format") or "auto", options.get("storage_options") or {})


def inspect_output(output: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """`latentforge inspect`: the output's summary (`report.collect`), on the embedded Ray or a cluster."""
    options = _joined(overrides)
    return report.collect(output, options.get("storage_options") or {})


def report_output(output: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """`latentforge inspect --report`: (re)build report.html of an existing output."""
    options = _joined(overrides)
    return report_html.build_report(output, options.get("storage_options") or {})


def _joined(overrides: list[str] | None) -> dict[str, Any]:
    """The --set overrides of a command on an existing output, after joining the Ray they name
    (`ray.address`, `ray.num_cpus`), or starting the embedded one."""
    options = apply_overrides({}, list(overrides or []))
    ray_options = options.get("ray") or {}
    connect(ray_options.get("address"), ray_options.get("num_cpus"))
    return options


def _storage_options(overrides: list[str] | None) -> dict[str, Any]:
    """storage_options from --set overrides alone (the shards must be read to know the model)."""
    return apply_overrides({}, list(overrides or [])).get("storage_options") or {}
