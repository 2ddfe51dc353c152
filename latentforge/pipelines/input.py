"""The head of every pipeline: the input, read by Ray tasks, and probe.

The driver only decides the read parts (`plan_reads`: the format, and which files or byte
ranges); each part's rows are made by a task (`read_part_rows`), which reports its counts to the
run's tally. So the driver's memory does not grow with the manifest, and the first task starts
as soon as the parts are known, whatever the manifest's length.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from latentforge.formats.manifests import plan_reads, read_part
from latentforge.operators import probe as probe_op
from latentforge.pipelines.stages import LIGHT, Job, Stage, always
from latentforge.pipelines.tally import report, start_tally, totals
from latentforge.rows import is_error

# A row's place in the input: read part << INDEX_BITS | row within the part (sortable, unique).
INDEX_BITS = 32
READ_OPERATORS = ("FromItems", "FlatMap(read_part_rows)", "StreamingRepartition")  # as Ray Data names them
MAX_ROWS_PER_BLOCK = 512
BLOCKS_PER_CPU = 4


def read_part_rows(
    part: dict[str, Any], storage_options: dict[str, Any], tally: Any, keep: dict[str, Any] | None = None, allow_outside: bool = False
) -> list[dict[str, Any]]:
    """One read part's rows, each with its `_input_index`; the part's counts go to the tally.
    `keep` ({"fn", "kwargs"}) lets a pipeline drop or mark rows in the same task:
    `fn(rows, part, **kwargs) -> (rows, counts)`, its counts reported with the part's."""
    started = time.time()
    rows = read_part(part, storage_options, allow_outside)
    base = int(part["index"]) << INDEX_BITS
    for i, row in enumerate(rows):
        row["_input_index"] = base + i
    good = [r for r in rows if not is_error(r)]
    counts = {
        "input_rows": len(rows),
        "videos": sum(1 for r in good if r.get("media_type") == "video"),
        "images": sum(1 for r in good if r.get("media_type") == "image"),
    }
    if keep is not None:
        rows, more = keep["fn"](rows, part, **keep["kwargs"])
        counts.update(more)
    report(tally, part["index"], counts, started)
    return rows


def read_input(job: Job, keep: dict[str, Any] | None = None) -> Any:
    """The manifest as a Ray Dataset (one task per read part); kept in `job.state["source"]`."""
    cfg = job.cfg
    # the run's Progress actor keeps the read counts too (started before the run executes);
    # a read outside `runtime.run` starts its own tally, first, so it starts while parts are planned
    job.state["tally"] = tally = job.state.get("progress") or start_tally()
    parts = [dict(part, index=i) for i, part in enumerate(plan_reads(cfg.input, cfg.input_format, cfg.storage_options))]
    job.state["read_parts"] = len(parts)
    ds = ray.data.from_items(parts, override_num_blocks=len(parts)).flat_map(
        read_part_rows,
        fn_kwargs={"storage_options": cfg.storage_options, "tally": tally, "keep": keep, "allow_outside": cfg.input_allow_outside},
        num_cpus=LIGHT.num_cpus,
    )
    ds = ds.repartition(target_num_rows_per_block=rows_per_block(sum(p["rows_estimate"] for p in parts), cluster_cpus()))
    job.state["source"] = ds
    return ds


def rows_per_block(rows_estimate: int, cpus: int) -> int:
    """Rows per block after the read: a read part is one block, so a small manifest would be
    one task for every stage after it. Blocks are cut so each CPU gets several (down to one row
    per block for a small input), and at most MAX_ROWS_PER_BLOCK rows, so a large input does not
    pay Ray's per-block cost per row."""
    return max(1, min(MAX_ROWS_PER_BLOCK, rows_estimate // (BLOCKS_PER_CPU * max(1, cpus))))


def cluster_cpus() -> int:
    return int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1


def input_counts(job: Job) -> dict[str, int]:
    """What the read tasks counted: input_rows, videos and images (good rows by media type), and
    what a pipeline's read hook added."""
    return totals(job.state.get("tally"))["counts"]


def first_task_seconds(job: Job) -> float | None:
    """Seconds from the run's start to the first read task: the fixed cost before any row moves."""
    first = totals(job.state.get("tally"))["first_started"]
    return round(first - job.started, 3) if first is not None else None


def describe_source(job: Job) -> str:
    return f"read {job.cfg.input} (format: {job.cfg.input_format}) in Ray tasks, one per read part"


def source(read=read_input, phase: str = "video", describe=describe_source, enabled=always) -> Stage:
    """A source stage: the manifest by default, or a pipeline's own reading of it."""
    return Stage("source", "source", None, describe, read=read, phase=phase, enabled=enabled, operators=READ_OPERATORS)


def _probe_args(job: Job) -> dict[str, Any]:
    return {"storage_options": job.cfg.storage_options, "time_limit_s": job.cfg.prepare.time_limit_s}


PROBE = Stage(
    "probe",
    "map",
    probe_op.probe,
    lambda job: "container metadata via PyAV; unreadable media -> error rows",
    resources=probe_op.RESOURCES,
    args=_probe_args,
)
