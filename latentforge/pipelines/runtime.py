"""The one runtime: a list of stages -> Ray Data, and the same list -> `plan`'s lines.

`execute` connects to Ray, sets the data context, runs each pass (a `source` up to its
`write`), keeps what the sinks counted in the job, and returns; the pipeline's own `summarize`
turns that into run.json (`write_summary` adds what every run.json has). The Ray arguments of a
stage come from `ray_args` alone: the op's declared `Resources` with the config's overrides.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import ray

from latentforge.cluster import cluster_has_gpus, connect, embedded_cpus, wait_for_local_actors_to_exit
from latentforge.config import ConfigError, PipelineConfig
from latentforge.formats.manifest_files import ManifestError
from latentforge.formats.shards import ERRORS
from latentforge.pipelines.backpressure import install as bound_blocks_in_flight
from latentforge.pipelines.gpu_fit import PoolNeed, gpu_nodes, problem
from latentforge.pipelines.input import cluster_cpus
from latentforge.pipelines.outputs import sweep
from latentforge.pipelines.progress import reporting, start_progress, timeline
from latentforge.pipelines.run_summary import fixed_cost, write_summary
from latentforge.pipelines.stages import Job, Stage, active
from latentforge.pipelines.tally import end_actors, totals
from latentforge.storage import get_fs, join

log = logging.getLogger("latentforge")


@dataclass(frozen=True)
class StagePlan:
    """One line of `latentforge plan`: a stage as the runtime would run it."""

    name: str
    runs_as: str
    resources: str
    detail: str


# ---------------------------------------------------------------------------------------------
# Resources


def _override(stage: Stage, cfg: PipelineConfig, key: str) -> Any:
    section = getattr(cfg, stage.config) if stage.config else None
    return getattr(section, key, None)


def ray_args(stage: Stage, job: Job) -> dict[str, Any]:
    """What Ray gets for a stage: its declared resources, the config section's `num_cpus` /
    `num_gpus` / `memory` where set (`num_gpus` only for ops that use GPUs), no GPUs on a run
    without them. CPU-only actor pools are created with SPREAD spelled out: it is Ray Data's
    default placement for them, and it keeps their remote args different from the 1-CPU map
    before them, so Ray Data never fuses decoding into a model actor (docs/decisions.md)."""
    declared = stage.resources
    cpus = _override(stage, job.cfg, "num_cpus")
    gpus = declared.num_gpus
    if gpus and _override(stage, job.cfg, "num_gpus") is not None:
        gpus = _override(stage, job.cfg, "num_gpus")
    if not job.use_gpus:
        gpus = 0
    if cpus is None:
        cpus = declared.num_cpus
        if not job.use_gpus and declared.num_cpus_without_gpus is not None:
            cpus = declared.num_cpus_without_gpus
    memory = _override(stage, job.cfg, "memory") or declared.memory
    args: dict[str, Any] = {"num_cpus": cpus}
    if stage.kind == "actors":
        args["num_gpus"] = gpus
        if not job.use_gpus:
            args["scheduling_strategy"] = "SPREAD"
    elif gpus:
        args["num_gpus"] = gpus
    if memory:
        args["memory"] = memory
    return args


# Sink write tasks hold no CPU: they encode a block's latents or embeddings (a few ms per row)
# and wait on storage. At Ray Data's default of one CPU, its reservation kept that CPU for the
# write operator, so on a 2-CPU machine `prepare` ran one task at a time (docs/scale.md).
WRITE_CPUS = 0
CPUS_PER_WRITE = 4


def write_concurrency(embedded: bool, cpus: int) -> int | None:
    """Sink write tasks at once. Holding no CPU, nothing else bounds them, and each one at once
    is a worker process of its own (a start and its imports, 1-2 CPU-s, then 150 MiB). On the
    embedded Ray the machine is fixed: one write per CPUS_PER_WRITE CPUs (one on a laptop) keeps
    up with writes of a few ms per row. On a cluster None, Ray Data's default: a number fixed at
    the start would cap a cluster whose autoscaler grows it from a small head (docs/scale.md)."""
    return max(1, cpus // CPUS_PER_WRITE) if embedded else None


def job_write_concurrency(job: Job) -> int | None:
    """`write_concurrency` for this job: the connected Ray's CPUs, else (plan, before a start)
    what the embedded Ray would get."""
    return write_concurrency(job.embedded, cluster_cpus() if ray.is_initialized() else embedded_cpus(job.cfg.ray.num_cpus))


ROW_TASKS = ("map", "flat_map")


def row_task_args(stages: list[Stage], job: Job) -> dict[str, dict[str, Any]]:
    """Ray arguments of the map and flat_map stages: consecutive ones share the largest of theirs,
    so Ray Data fuses them into one task per block (probe -> bucket -> finalize_caption ->
    prepare is one task). Separate, each was its own operator with its own share of Ray Data's
    reservation and its own trip through the object store (docs/scale.md, "One task for
    consecutive row stages")."""
    shared: dict[str, dict[str, Any]] = {}
    run: list[Stage] = []
    for stage in [*stages, None]:
        if stage is not None and stage.kind in ROW_TASKS:
            run.append(stage)
            continue
        merged: dict[str, Any] = {}
        for member in run:
            for key, value in ray_args(member, job).items():
                merged[key] = max(merged.get(key, 0), value)
        shared.update({member.name: merged for member in run})
        run = []
    return shared


def pool_size(stage: Stage, job: Job) -> tuple[int, int | None]:
    """(min, max) actors of a pool; max None lets Ray Data's autoscaling actor pool grow.

    `max_actors: auto` (the default): on GPU runs no cap, so the pool grows with queued work up to
    what the cluster has or its autoscaler can add (spot GPU workers scaling from zero); on
    CPU-only runs one actor per node with CPUs, each computing on all the node's cores
    (`node_threads`). An explicit number always wins."""
    section = getattr(job.cfg, stage.config)
    low, high = section.min_actors, section.max_actors
    if high != "auto":
        return low, high
    if job.use_gpus:
        return low, None
    return low, max(low, cpu_nodes())


def cpu_nodes() -> int:
    """Alive nodes with CPUs in the connected cluster (1 when Ray is not started: the embedded
    local Ray is one node)."""
    if not ray.is_initialized():
        return 1
    return max(1, sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0))


def shuffle_partitions() -> int:
    """Partitions of a Ray Data shuffle (groupby, join): one per CPU of the cluster. Ray's
    default (200) is meant for large clusters; on a small one most partitions would be empty."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def batch_size(stage: Stage, job: Job) -> int | None:
    if stage.batch_size is not None:
        return stage.batch_size(job)
    if stage.kind == "actors":
        return getattr(job.cfg, stage.config).batch_size
    return None


def cpu_actors_per_node(max_actors: int) -> int:
    """How many actors of one CPU-only model pool share a node: Ray Data spreads an actor pool
    over the nodes, so ceil(max_actors / nodes with CPUs). Nodes that join later only make this
    an overestimate (fewer threads, never oversubscription)."""
    return max(1, math.ceil(max_actors / cpu_nodes()))


def describe_resources(stage: Stage, job: Job, shared: dict[str, dict[str, Any]] | None = None) -> str:
    """`plan`'s resources column, made from `ray_args` (and `row_task_args`) so it says what Ray gets."""
    if stage.kind == "source":
        return "-"
    if stage.kind == "write":
        at_once = job_write_concurrency(job)
        return "no CPU" + (f", {at_once} at once" if at_once else "")
    args = (shared or {}).get(stage.name) or ray_args(stage, job)
    if stage.kind != "actors":
        gpus = f", {args['num_gpus']:g} GPU" if args.get("num_gpus") else ""
        return f"{args['num_cpus']:g} CPU{gpus}/task"
    low, high = pool_size(stage, job)
    if high is None:
        now = f"; the cluster has {ray.cluster_resources().get('GPU', 0):g} GPUs now" if ray.is_initialized() else ""
        size = f"{low}..auto actors (grows with queued work up to what the cluster has or can add{now})"
    else:
        size = f"{low}..{high} actors" if low != high else f"{low} actor(s)"
    each = f"{args['num_gpus']:g} GPU each" if job.use_gpus and args["num_gpus"] else f"{args['num_cpus']:g} CPU each (no GPU)"
    return f"{size}, {each}, batch {batch_size(stage, job)}"


def plan(stages: list[Stage], job: Job) -> list[StagePlan]:
    """The stages this config runs, as `run` would run them, without running anything."""
    stages = active(stages, job.cfg)
    shared = {name: args for stages_of_pass in passes(stages) for name, args in row_task_args(stages_of_pass, job).items()}
    return [StagePlan(s.name, s.ray_name, describe_resources(s, job, shared), s.describe(job)) for s in stages]


def gpu_fit_problem(stages_of_pass: list[Stage], job: Job) -> str | None:
    """What to change when a pass's GPU pools cannot all start on the connected cluster (gpu_fit.py)."""
    if not job.use_gpus or not ray.is_initialized():
        return None
    needs = [PoolNeed(s.config, ray_args(s, job).get("num_gpus", 0), pool_size(s, job)[0]) for s in stages_of_pass if s.kind == "actors"]
    return problem(needs, *gpu_nodes())


# ---------------------------------------------------------------------------------------------
# Running


def configure_data_context(cfg: PipelineConfig) -> None:
    """Settings that matter when spot nodes come and go, set here rather than left to chance.

    Ray Data already restarts a lost actor and retries its tasks without limit; on top of that
    an actor whose model load fails (a flaky disk or download on a fresh node) is retried, and a
    run that stops making progress (no GPU node ever arrives) fails after a bounded time, and
    the blocks waiting between stages are bounded in number as well as in bytes.
    """
    ctx = ray.data.DataContext.get_current()
    ctx.actor_init_retry_on_errors = True
    ctx.actor_init_max_retries = cfg.ray.actor_init_retries
    ctx.execution_no_progress_timeout_s = cfg.ray.no_progress_timeout_s
    bound_blocks_in_flight(ctx)  # cheap stages may not run far ahead of slow ones (docs/scale.md)


def start(cfg: PipelineConfig, new_run: bool = True) -> Job:
    """Connect (or start an embedded Ray), set the data context, decide GPUs; a new run of a
    pipeline also clears the errors of the last one (an export of an output keeps them)."""
    started = time.time()
    embedded = connect(cfg.ray.address, cfg.ray.num_cpus)
    connected = time.time() - started
    configure_data_context(cfg)
    use_gpus = cluster_has_gpus() if cfg.ray.use_gpus is None else bool(cfg.ray.use_gpus)
    if new_run:
        clear_errors(cfg)
    job = Job(cfg, use_gpus, started=started, embedded=embedded)
    job.state["ray_start_seconds"] = round(connected, 3)
    return job


def clear_errors(cfg: PipelineConfig) -> None:
    """Error rows describe the latest run: failed samples are retried, so old reports go."""
    fs, path = get_fs(join(cfg.output, ERRORS), cfg.storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def passes(stages: list[Stage]) -> list[list[Stage]]:
    """A stage list cut into passes, each from a `source` to its `write`."""
    out: list[list[Stage]] = []
    for stage in stages:
        if stage.kind == "source" or not out:
            out.append([])
        out[-1].append(stage)
    return out


def apply(stage: Stage, ds: Any, job: Job, resources: dict[str, Any] | None = None) -> Any:
    """One stage onto a Ray Dataset; `resources` replaces the stage's own Ray arguments (a map
    that shares a task with its neighbours, `row_task_args`)."""
    if stage.kind == "write":
        sink = stage.op(**stage.args(job))
        sink.progress = job.state.get("progress")  # rows finished -> progress lines, run.json's timeline
        ds.write_datasink(sink, ray_remote_args={"num_cpus": WRITE_CPUS}, concurrency=job_write_concurrency(job))
        job.results[stage.name] = sink.result
        if stage.after is not None:
            stage.after(job)
        return ds
    kwargs = stage.args(job)
    resources = resources or ray_args(stage, job)
    if stage.kind == "map":
        return ds.map(stage.op, fn_kwargs=kwargs, **resources)
    if stage.kind == "flat_map":
        return ds.flat_map(stage.op, fn_kwargs=kwargs, **resources)
    if stage.kind == "batches":
        return ds.map_batches(stage.op, fn_kwargs=kwargs, batch_size=batch_size(stage, job), batch_format="numpy", **resources)
    low, high = pool_size(stage, job)
    if stage.node_threads and not job.use_gpus:
        kwargs["cpu_actors_per_node"] = cpu_actors_per_node(high or low)
    return ds.map_batches(
        stage.op,
        fn_constructor_kwargs=kwargs,
        batch_size=batch_size(stage, job),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
        **resources,
    )


def dataset(stages_of_pass: list[Stage], job: Job, rows: Any) -> Any:
    """A pass's rows through its stages up to (not including) its write: a lazy Ray Dataset."""
    ds = rows if isinstance(rows, ray.data.Dataset) else ray.data.from_items(rows)
    shared = row_task_args(stages_of_pass, job)
    for stage in stages_of_pass:
        if stage.kind not in ("source", "write"):
            ds = apply(stage, ds, job, shared.get(stage.name))
    return ds


def execute(stages: list[Stage], job: Job) -> Job:
    """Run every pass of the active stages in order. A pass whose source has no rows is skipped
    (nothing to do: an output that is complete, or a text pass with no new caption). A config or
    input problem that a Ray task found is raised as itself, without Ray's wrapping."""
    leaving: list[str] = []  # model actor classes of finished passes, whose processes may still be exiting
    for stages_of_pass in passes(active(stages, job.cfg)):
        if (misfit := gpu_fit_problem(stages_of_pass, job)) is not None:
            raise ConfigError(misfit)  # before any actor waits for a GPU that never comes
        source, rest = stages_of_pass[0], stages_of_pass[1:]
        actors = [stage.op.__name__ for stage in rest if stage.kind == "actors"]
        t0 = time.perf_counter()
        try:
            rows = source.read(job)
            for stage in rest:
                if stage.setup is not None:
                    stage.setup(job)
            if isinstance(rows, ray.data.Dataset) or rows:  # a source may hand over a Ray Dataset
                if job.embedded and actors and leaving:  # one model process at a time on this machine (docs/scale.md)
                    wait_for_local_actors_to_exit(leaving)
                    leaving = []
                ds = dataset(rest, job, rows)
                for stage in rest:
                    if stage.kind == "write":
                        apply(stage, ds, job)
                leaving += actors
        except Exception as e:
            own = user_error(e)
            if own is None or own is e:
                raise
            raise own from None
        job.phase_seconds[source.phase or source.name] = time.perf_counter() - t0
    return job


def user_error(e: BaseException) -> BaseException | None:
    """The ConfigError or ManifestError behind an exception, also through Ray's task errors."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, (ConfigError, ManifestError)) and not isinstance(exc, ray.exceptions.RayError):
            return exc
        todo.extend([exc.__cause__, exc.__context__, getattr(exc, "cause", None)])
    return None


# ---------------------------------------------------------------------------------------------
# run.json


def run(stages: list[Stage], cfg: PipelineConfig, summarize: Callable[[Job], tuple[dict[str, Any], tuple[str, ...]]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start, execute the list, summarise; returns the summary also written to run.json."""
    started_at = datetime.now(timezone.utc).isoformat()
    job = start(cfg)
    job.state["progress"] = start_progress(job.started)
    try:
        with reporting(job):  # a progress line per interval in job logs; Ray Data's bars on a terminal
            execute(stages, job)
        if "tally" in job.state and not totals(job.state["tally"])["counts"].get("input_rows"):
            raise ManifestError(f"{cfg.input}: no rows (the input is empty)")
        removed = sweep(cfg.output, cfg.storage_options)  # what a killed earlier run left half-written
        fields, module_versions = summarize(job)
        fields.update(extra or {})
        fields["temporary_files_removed"] = removed
        fields["timeline"] = timeline(job.state["progress"])  # rows finished per time bin, bounded
        fields["fixed_cost_seconds"] = fixed_cost(job, fields["timeline"])
        return write_summary(job, fields, module_versions, started_at)
    finally:
        end_actors(job.state.get("tally"), job.state.get("progress"))  # one run's bookkeeping, gone with it
