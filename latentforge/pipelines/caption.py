"""caption: the captioning stage, and the `caption` pipeline that writes a reviewable manifest.

As stages (`STAGES`, in precompute for `caption.enabled: true` or `pipeline: all`): rows
without a caption (or every row with `override: true`) get one before caption finalisation and
`prepare`; rows whose latent is already in the output (`_done`) are not captioned again.

As a pipeline (`PIPELINE`, `pipeline: caption`): source -> probe -> [split_scenes when
enabled] -> caption -> a manifest in LTX-2's dataset format (`caption`, `media_path`, `start_frame` /
`end_frame` when rows are spans, every passthrough column), plus `errors/` and `run.json`. A
person reviews and edits the manifest, then feeds it unchanged to `latentforge run` (precompute).

Resume: every batch the model captioned is written at once, whole or not at all, to
`<output>/captions/_parts/part-<hash of its clip keys>.jsonl` (in both modes). A rerun reads the
parts first and gives those clips their caption back without the model, so a stopped job keeps
what it captioned. The manifest is written at the end of `pipeline: caption` from the rows of
this run, in input order: its captions are the input's, the parts' or new ones, and its spans
and columns are the current input's. Delete `captions/_parts` to caption everything again
(for example with another model or prompt).
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from collections import Counter
from typing import Any

import numpy as np

from latentforge.config import PipelineConfig
from latentforge.formats.caption_manifest import merge_manifest, write_manifest_part
from latentforge.formats.shards import ERRORS, shard_name
from latentforge.operators import captioning as cap_op
from latentforge.operators import probe as probe_op
from latentforge.operators.caption_api import OpenAICaptioner
from latentforge.operators.captioner import TransformersCaptioner
from latentforge.pipelines.caption_settings import (
    api_key,
    caption_options,
    check,
    cuda_available,
    family,
    hears_audio,
    manifest_url,
    quantization_error,
    quantization_key,
)
from latentforge.pipelines.input import PROBE, first_task_seconds, input_counts, read_input, source
from latentforge.pipelines.run_summary import seconds_of
from latentforge.pipelines.sinks import RowSink, sum_write_returns
from latentforge.pipelines.split import STAGES as SPLIT_STAGES
from latentforge.pipelines.stages import LIGHT, Job, Stage, output_args
from latentforge.rows import batch_rows, has_value, is_error, plain
from latentforge.storage import get_fs, join, write_bytes_atomic

log = logging.getLogger("latentforge")

PARTS = "captions/_parts"
MANIFEST_PARTS = "captions/_manifest"  # each write task's manifest records, sorted; merged at the end

# Row columns that are not passed through to the manifest: the contract columns the manifest
# writes itself, what probe measures (precompute measures it again), and pipeline state.
_NOT_PASSTHROUGH = frozenset(
    {"uri", "media_type", "caption", "caption_id", "bucket", "sample_id", "source_fps", "frames"}
    | set(probe_op.PROBE_COLUMNS)
)


# ---------------------------------------------------------------------------------------------
# Parts (resume)


def part_record(row: dict[str, Any]) -> dict[str, Any]:
    """What a part file keeps of a captioned clip: enough to write its manifest line."""
    start, end, frames = row.get("start_frame"), row.get("end_frame"), row.get("source_frames")
    is_video = row.get("media_type") == "video"
    span = bool(is_video and (row.get("_span_given") or (has_value(start) and int(start) != 0) or (has_value(end) and has_value(frames) and int(end) != int(frames))))
    return {
        "key": row["_caption_key"],
        "order": [int(row.get("_input_index") or 0), int(start or 0)],
        "uri": row["uri"],
        "media_type": row.get("media_type"),
        "caption": row["caption"],
        "start_frame": int(start) if has_value(start) else None,
        "end_frame": int(end) if has_value(end) else None,
        "fps": row.get("fps"),
        "span": span,
        "generated": bool(row.get("_caption_generated")),
        "columns": {k: v for k, v in row.items() if k not in _NOT_PASSTHROUGH and not k.startswith("_")},
    }


def write_part(batch: dict[str, np.ndarray], parts_url: str, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """Write the clips this batch's model call captioned to one part file, atomically, named by
    the hash of their keys; the batch passes through unchanged."""
    records = []
    for row in batch_rows(batch):
        if row.get("_caption_generated") and not is_error(row) and row.get("_caption_key") and has_value(row.get("caption")):
            records.append(part_record(row))
    if records:
        name = shard_name(r["key"] for r in records).replace(".parquet", ".jsonl")
        fs, path = get_fs(join(parts_url, name), storage_options)
        data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")
        write_bytes_atomic(fs, path, data)
    return batch


def _part_paths(fs: Any, root: str) -> list[str]:
    if not fs.exists(root):
        return []
    return sorted(p for p in fs.find(root) if p.endswith(".jsonl") and not posixpath.basename(p).startswith(".tmp-"))


def read_part_records(output: str, storage_options: dict | None = None) -> dict[str, dict[str, Any]]:
    """key -> part record, over every finished part (the first part in name order wins)."""
    fs, root = get_fs(join(output, PARTS), storage_options)
    paths = _part_paths(fs, root)
    records: dict[str, dict[str, Any]] = {}
    if not paths:
        return records
    blobs = fs.cat(paths, on_error="return")
    for path in paths:
        data = blobs.get(path)
        if not isinstance(data, bytes):
            log.warning("latentforge: caption part %s unreadable; its clips will be captioned again", path)
            continue
        for line in data.decode("utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                records.setdefault(rec["key"], rec)
    return records


def read_parts(output: str, storage_options: dict | None = None) -> dict[str, str]:
    """key -> caption of every clip captioned by an earlier run into this output."""
    return {k: r["caption"] for k, r in read_part_records(output, storage_options).items()}


# ---------------------------------------------------------------------------------------------
# The stages


def enabled(cfg: PipelineConfig) -> bool:
    """Captioning runs in `pipeline: caption` and `all`, and in precompute when `caption.enabled`."""
    return cfg.pipeline in ("caption", "all") or cfg.caption.enabled


def in_run(cfg: PipelineConfig) -> bool:
    """Captioning inside `latentforge run` (precompute), before prepare."""
    return enabled(cfg) and cfg.pipeline != "caption"


def _plan_check(job: Job) -> None:
    """`plan` refuses bitsandbytes quantisation when it gets no GPUs and this machine no CUDA."""
    key = quantization_key(job.cfg)
    if key is not None and not job.use_gpus and not cuda_available():
        raise quantization_error(key, "it gets no GPUs in this plan and this machine has no CUDA (`latentforge plan --gpus` plans for a GPU cluster)")


def _setup(job: Job) -> None:
    """Before any frame is sampled: refuse what cannot work, read the captions of earlier runs."""
    cfg = job.cfg
    check(cfg, job.use_gpus)
    cached = read_part_records(cfg.output, cfg.storage_options)
    job.state["caption_parts_before"] = frozenset(cached)
    job.state["captions_cached"] = {k: r["caption"] for k, r in cached.items()}
    log.info("latentforge: captioning with %s (%s backend), %d captions from earlier runs", cfg.caption.model, cfg.caption.backend, len(cached))


def _frame_args(job: Job) -> dict[str, Any]:
    c = job.cfg.caption
    return {
        "fps": c.fps,
        "max_frames": c.max_frames,
        "max_pixels": c.max_pixels,
        "override": c.override,
        "task": c.task,
        "with_audio": hears_audio(job.cfg),
        "cached": job.state.get("captions_cached", {}),
        "storage_options": job.cfg.storage_options,
    }


def _describe_frames(job: Job) -> str:
    _plan_check(job)
    c = job.cfg.caption
    keep = "every row (override)" if c.override else "rows without a caption"
    if c.task == "edit":
        frames = f"first + last frame of each span (ChronoEdit pair), <= {c.max_pixels} px each"
    else:
        frames = f"{c.fps:g} fps, <= {c.max_frames} frames, <= {c.max_pixels} px per frame"
        if hears_audio(job.cfg):
            frames += " + 16 kHz audio"
    return f"{keep}: {frames}"


def _prompt(cfg: PipelineConfig) -> str:
    c = cfg.caption
    if c.prompt_file:
        return f"prompt file {c.prompt_file}"
    return f"{c.task} prompt" + (" (cot)" if c.cot else "") if c.task == "edit" else f"{c.prompt} prompt"


def _describe_vlm(job: Job) -> str:
    c = job.cfg.caption
    dtype = c.dtype or ("bfloat16" if job.use_gpus else "float32")
    quant = " 8-bit" if c.use_8bit else (" 4-bit" if c.use_4bit else "")
    return (
        f"transformers {c.model_path or c.model} ({family(job.cfg) or 'family from config.json'}); dtype {dtype}{quant}; "
        f"max {c.max_new_tokens} new tokens; {_prompt(job.cfg)}"
    )


def _describe_api(job: Job) -> str:
    c = job.cfg.caption
    return (
        f"OpenAI-compatible {c.base_url} model {c.model}; {'mp4 video' if c.send_video else 'JPEG frames'}; "
        f"{c.concurrency} requests in flight per actor; timeout {c.timeout_s:g} s, {c.max_retries} retries; "
        f"key from ${c.api_key_env or '(none)'}; {_prompt(job.cfg)}"
    )


def _api_args(job: Job) -> dict[str, Any]:
    c = job.cfg.caption
    return {
        "options": caption_options(job.cfg),
        "base_url": c.base_url,
        "api_key": api_key(job.cfg),
        "api_key_env": c.api_key_env,
        "concurrency": c.concurrency,
        "timeout_s": c.timeout_s,
        "max_retries": c.max_retries,
        "backoff_s": c.backoff_s,
        "send_video": c.send_video,
    }


def drop_caption_columns(row: dict[str, Any]) -> dict[str, Any]:
    """After captioning inside a run: the sampled frames and bookkeeping go, prepare is next."""
    return {k: v for k, v in row.items() if not k.startswith(("_caption_", "_span_", "_input_index"))}


STAGES = [
    Stage(
        "caption_frames",
        "map",
        cap_op.prepare_caption_input,
        _describe_frames,
        resources=cap_op.RESOURCES,
        enabled=enabled,
        setup=_setup,
        args=_frame_args,
    ),
    Stage(
        "caption",
        "actors",
        TransformersCaptioner,
        _describe_vlm,
        resources=TransformersCaptioner.resources,
        enabled=lambda cfg: enabled(cfg) and cfg.caption.backend == "transformers",
        config="caption",
        args=lambda job: {"options": caption_options(job.cfg), "lazy": True},
    ),
    Stage(
        "caption",
        "actors",
        OpenAICaptioner,
        _describe_api,
        resources=OpenAICaptioner.resources,
        enabled=lambda cfg: enabled(cfg) and cfg.caption.backend == "openai",
        config="caption",
        batch_size=lambda job: max(job.cfg.caption.batch_size, job.cfg.caption.concurrency),  # every thread busy
        args=_api_args,
    ),
    Stage(
        "write_caption_parts",
        "batches",
        write_part,
        lambda job: f"each captioned batch -> {join(job.cfg.output, PARTS)}/ (resume)",
        resources=LIGHT,
        enabled=enabled,
        args=lambda job: {"parts_url": join(job.cfg.output, PARTS), "storage_options": job.cfg.storage_options},
    ),
    Stage(
        "drop_caption_columns",
        "map",
        drop_caption_columns,
        lambda job: "sampled caption frames and bookkeeping columns dropped",
        resources=LIGHT,
        enabled=in_run,
    ),
]


def captioned_in_run(job: Job) -> dict[str, int]:
    """run.json's `captioned` of a precompute run: the clips the model captioned in this run,
    i.e. the part records written since the stage's setup (a caption from an earlier run's parts
    or from the input is not counted; caption errors are error rows, counted with the others)."""
    before = job.state.get("caption_parts_before", frozenset())
    return {"captioned": len(read_part_records(job.cfg.output, job.cfg.storage_options).keys() - before)}

# ---------------------------------------------------------------------------------------------
# The caption pipeline


class CaptionSink(RowSink):
    """Counts rows by outcome; each task's manifest records go to a sorted part that `merge_manifest`
    streams into the manifest (this run's input: captions, spans, columns); errors to errors/."""

    name = "captions"

    def __init__(self, output: str, storage_options: dict | None = None):
        super().__init__(output, storage_options)
        self._records: list[dict[str, Any]] = []

    def take(self, row: dict[str, Any], counts: Counter) -> None:
        row = {k: plain(v) for k, v in row.items()}
        self._records.append(part_record(row))
        if row.get("_caption_generated"):
            counts["captioned"] += 1
        elif row.get("_caption_cached"):
            counts["captions_from_earlier_runs"] += 1
        else:
            counts["captions_kept"] += 1

    def flush(self) -> dict[str, Any]:
        """The task's manifest records go to a sorted part under the output, not to the driver."""
        records, self._records = self._records, []
        return write_manifest_part(join(self.output, MANIFEST_PARTS), records, self.storage_options)

    def on_write_complete(self, write_result: Any) -> None:
        returns = write_result.write_returns
        parts = sorted({p for r in returns for p in r["manifest_parts"]})
        self.result = {**sum_write_returns(returns), "manifest_parts": parts, "manifest_spans": any(r["manifest_spans"] for r in returns)}


def read_caption_input(job: Job) -> Any:
    """The manifest's rows (each knows its place in the input, `_input_index`) marked with
    whether they named a span, so the manifest keeps the input's order and only writes spans
    where the input had them."""
    manifest_url(job.cfg)  # a bad manifest name fails before any work
    return read_input(job, keep={"fn": _mark_spans, "kwargs": {}})


def _mark_spans(rows: list[dict[str, Any]], part: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    for row in rows:
        row["_span_given"] = has_value(row.get("start_frame")) or has_value(row.get("end_frame"))
    return rows, {}


WRITE_CAPTIONS = Stage(
    "write_captions",
    "write",
    CaptionSink,
    lambda job: f"{manifest_url(job.cfg)} and {join(job.cfg.output, ERRORS)}/",
    args=output_args,
)

PIPELINE = [source(read_caption_input, phase="caption"), PROBE, *SPLIT_STAGES, *STAGES, WRITE_CAPTIONS]


def summarize(job: Job) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Write the manifest of this run's clips, then run.json's fields."""
    cfg = job.cfg
    result = job.results.get("write_captions", {})
    t0 = time.perf_counter()
    url = manifest_url(cfg)
    written = merge_manifest(url, result.get("manifest_parts", []), result.get("manifest_spans", False), cfg.storage_options, join(cfg.output, MANIFEST_PARTS))
    job.phase_seconds["manifest"] = time.perf_counter() - t0
    got = result.get("counts", {})
    errors = result.get("errors", {})
    kept = {k: got.get(k, 0) for k in ("captioned", "captions_kept", "captions_from_earlier_runs")}
    counts = {
        "input_rows": input_counts(job).get("input_rows", 0),
        "rows": sum(kept.values()) + sum(errors.values()),
        **kept,
        "errors": sum(errors.values()),
        "errors_by_reason": errors,
        "manifest_rows": written,
    }
    c = cfg.caption
    fields = {
        "pipeline": "caption",
        "first_task_seconds": first_task_seconds(job),
        "stage_seconds": seconds_of(result),
        "counts": counts,
        "manifest": url,
        "captioner": {
            "backend": c.backend,
            "model": c.model_path or c.model,
            "family": family(cfg),
            "task": c.task,
            "prompt": "file" if c.prompt_file else c.prompt,
            **({"base_url": c.base_url, "api_key_env": c.api_key_env} if c.backend == "openai" else {}),
        },
        "used_gpus": job.use_gpus,
    }
    return fields, ("torch", "diffusers", "transformers", "av")
