"""caption: the captioning stage, and the `caption` pipeline that writes a reviewable manifest.

As a stage (`add_stage`, used by precompute for `caption.enabled: true` or `pipeline: all`):
rows without a caption (or every row with `override: true`) get one before caption
finalisation and `prepare`; rows whose latent is already in the output are not captioned again.

As a pipeline (`pipeline: caption`, `run`): source -> probe -> [split_scenes when enabled] ->
caption -> a manifest in LTX-2's dataset format (`caption`, `media_path`, `start_frame` /
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

import csv
import io
import json
import logging
import math
import os
import posixpath
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Iterable

import numpy as np
import ray
from ray.data import Datasink
from ray.data.datasource.datasink import WriteResult

from latentforge import __version__
from latentforge.cluster import cluster_has_gpus
from latentforge.config import ConfigError, PipelineConfig
from latentforge.formats.shards import ERRORS, LATENTS, existing_values, shard_name, sum_write_returns, write_error_shard, write_run_summary
from latentforge.operators import captioning as cap_op
from latentforge.operators import probe as probe_op
from latentforge.operators.base import error_kind, has_value, is_error
from latentforge.pipelines.precompute import (
    StagePlan,
    _clear_errors,
    _clip_stage_module,
    _pool_resources,
    _versions,
    configure_data_context,
    provenance,
    stage_enabled,
)
from latentforge.storage import get_fs, join, write_bytes_atomic

log = logging.getLogger("latentforge")

PARTS = "captions/_parts"
DEFAULT_MANIFEST = "captions.jsonl"
MANIFEST_EXTENSIONS = (".jsonl", ".json", ".csv")
CHRONOEDIT_MANIFEST = "metadata.csv"

# Row columns that are not passed through to the manifest: the contract columns the manifest
# writes itself, what probe measures (precompute measures it again), and pipeline state.
_NOT_PASSTHROUGH = frozenset(
    {"uri", "media_type", "caption", "caption_id", "bucket", "sample_id", "source_fps", "frames"}
    | set(probe_op.PROBE_COLUMNS)
)


# ---------------------------------------------------------------------------------------------
# Settings


def caption_options(cfg: PipelineConfig) -> cap_op.CaptionOptions:
    c = cfg.caption
    custom = None
    if c.prompt_file:
        try:
            with open(c.prompt_file, encoding="utf-8") as f:
                custom = f.read()
        except OSError as e:
            raise ConfigError(f"caption.prompt_file: cannot read {c.prompt_file} ({e.strerror or e})") from None
        if not custom.strip():
            raise ConfigError(f"caption.prompt_file: {c.prompt_file} is empty")
    return cap_op.CaptionOptions(
        task=c.task,
        cot=c.cot,
        prompt=c.prompt,
        custom_prompt=custom,
        model=c.model,
        model_path=c.model_path,
        family=c.family,
        max_new_tokens=c.max_new_tokens,
        temperature=c.temperature,
        max_pixels=c.max_pixels,
        max_frames=c.max_frames,
        dtype=c.dtype,
        use_8bit=c.use_8bit,
        use_4bit=c.use_4bit,
        attn_implementation=c.attn_implementation,
        no_audio=c.no_audio,
        micro_batch=c.batch_size,
    )


def _family(cfg: PipelineConfig) -> str | None:
    from latentforge.captioner_models import family_from_name

    c = cfg.caption
    if c.family != "auto":
        return c.family
    return family_from_name(c.model_path or c.model)


def _hears_audio(cfg: PipelineConfig) -> bool:
    c = cfg.caption
    return c.backend == "transformers" and not c.no_audio and c.task == "describe" and _family(cfg) == "qwen2.5-omni"


def _quantization_key(cfg: PipelineConfig) -> str | None:
    """caption.use_8bit / caption.use_4bit when the captioner loads bitsandbytes weights."""
    c = cfg.caption
    if c.backend != "transformers":
        return None
    return "caption.use_8bit" if c.use_8bit else ("caption.use_4bit" if c.use_4bit else None)


def _quantization_error(key: str, why: str) -> ConfigError:
    return ConfigError(
        f"{key}: bitsandbytes quantization needs CUDA GPUs and {why}; set {key}: false, or run where "
        "the captioner gets GPUs (ray.use_gpus: true where GPU workers scale from zero)"
    )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def preflight(cfg: PipelineConfig) -> None:
    """What can be refused before Ray starts (`pipelines.run` calls it): bitsandbytes
    quantisation where the captioner cannot get a GPU (ray.use_gpus: false, or an embedded local
    Ray on a machine without CUDA), an unreadable prompt file. On a cluster the GPUs are known only
    once connected; `_check` refuses quantisation there."""
    key = _quantization_key(cfg)
    if key is not None:
        use_gpus = cfg.ray.use_gpus
        if use_gpus is None and ray.is_initialized():  # already connected (a notebook, tests): ask it
            use_gpus = cluster_has_gpus()
            if not use_gpus:
                raise _quantization_error(key, "the Ray cluster this process is connected to has no GPUs")
        if use_gpus is None and not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
            use_gpus = _cuda_available()  # the embedded local Ray has this machine's GPUs
            if not use_gpus:
                raise _quantization_error(key, "this machine has no CUDA (the run would use an embedded local Ray)")
        if use_gpus is False:
            raise _quantization_error(key, "ray.use_gpus is false")
    caption_options(cfg)  # reads the prompt file


def _check(cfg: PipelineConfig, use_gpus: bool) -> None:
    """Refuse what cannot work before any work starts."""
    key = _quantization_key(cfg)
    if key is not None and not use_gpus:
        raise _quantization_error(key, "this run uses none")
    caption_options(cfg)  # reads the prompt file


def _api_key(cfg: PipelineConfig):
    from latentforge.operators.caption_api import Secret

    name = cfg.caption.api_key_env
    return Secret(os.environ.get(name) if name else None)


def manifest_url(cfg: PipelineConfig) -> str:
    url = cfg.caption.manifest or join(cfg.output, DEFAULT_MANIFEST)
    ext = posixpath.splitext(url.rstrip("/"))[1].lower()
    if ext not in MANIFEST_EXTENSIONS:
        raise ConfigError(f"caption.manifest: {url!r} must end with one of {', '.join(MANIFEST_EXTENSIONS)}")
    return url


# ---------------------------------------------------------------------------------------------
# Plan


def plan_stages(cfg: PipelineConfig, use_gpus: bool | None = None) -> list[StagePlan]:
    """The caption stage's two steps, as `latentforge plan` prints them. Refuses bitsandbytes
    quantisation when the plan has no GPUs and this machine no CUDA."""
    c = cfg.caption
    use_gpus = bool(use_gpus)
    key = _quantization_key(cfg)
    if key is not None and not use_gpus and not _cuda_available():
        raise _quantization_error(key, "it gets no GPUs in this plan and this machine has no CUDA (`latentforge plan --gpus` plans for a GPU cluster)")
    keep = "every row (override)" if c.override else "rows without a caption"
    if c.task == "edit":
        frames = f"first + last frame of each span (ChronoEdit pair), <= {c.max_pixels} px each"
    else:
        frames = f"{c.fps:g} fps, <= {c.max_frames} frames, <= {c.max_pixels} px per frame"
        if _hears_audio(cfg):
            frames += " + 16 kHz audio"
    prompt = f"prompt file {c.prompt_file}" if c.prompt_file else (f"{c.task} prompt" + (" (cot)" if c.cot else "") if c.task == "edit" else f"{c.prompt} prompt")
    if c.backend == "openai":
        size = f"{c.min_actors}..{c.max_actors} actors" if c.min_actors != c.max_actors else f"{c.min_actors} actor(s)"
        pool = f"{size}, no GPU, {c.concurrency} requests in flight each"
        detail = (
            f"OpenAI-compatible {c.base_url} model {c.model}; {'mp4 video' if c.send_video else 'JPEG frames'}; "
            f"timeout {c.timeout_s:g} s, {c.max_retries} retries; key from ${c.api_key_env or '(none)'}; {prompt}"
        )
    else:
        pool = _pool_resources(c, use_gpus, actor_cpus(cfg, use_gpus))
        dtype = c.dtype or ("bfloat16" if use_gpus else "float32")
        quant = " 8-bit" if c.use_8bit else (" 4-bit" if c.use_4bit else "")
        detail = (
            f"transformers {c.model_path or c.model} ({_family(cfg) or 'family from config.json'}); dtype {dtype}{quant}; "
            f"max {c.max_new_tokens} new tokens; {prompt}"
        )
    return [
        StagePlan("caption_frames", "map", f"{cap_op.RESOURCES.num_cpus:g} CPU/task", f"{keep}: {frames}"),
        StagePlan("caption", "actor pool", pool, detail),
    ]


def plan(cfg: PipelineConfig, use_gpus: bool | None = None) -> list[StagePlan]:
    """`pipeline: caption`: source -> probe -> [split] -> caption -> manifest."""
    stages = [
        StagePlan("source", "driver", "-", f"read {cfg.input} (format: {cfg.input_format})"),
        StagePlan("probe", "map", f"{probe_op.RESOURCES.num_cpus:g} CPU/task", "container metadata via PyAV; unreadable media -> error rows"),
    ]
    if stage_enabled(cfg, "split"):
        stages += _clip_stage_module("split").plan_stages(cfg)
    stages += plan_stages(cfg, use_gpus)
    stages.append(
        StagePlan("sink", "write", "-", f"{join(cfg.output, PARTS)}/ (resume), {manifest_url(cfg)} and {join(cfg.output, ERRORS)}/")
    )
    return stages


# ---------------------------------------------------------------------------------------------
# The stage


def _wire(ds: Any, cfg: PipelineConfig, use_gpus: bool, cached: dict[str, str]) -> Any:
    c = cfg.caption
    so = cfg.storage_options
    options = caption_options(cfg)
    ds = ds.map(
        cap_op.prepare_caption_input,
        fn_kwargs={
            "fps": c.fps,
            "max_frames": c.max_frames,
            "max_pixels": c.max_pixels,
            "override": c.override,
            "task": c.task,
            "with_audio": _hears_audio(cfg),
            "cached": cached,
            "storage_options": so,
        },
        num_cpus=cap_op.RESOURCES.num_cpus,
    )
    if c.backend == "openai":
        from latentforge.operators.caption_api import OpenAICaptioner

        actor, kwargs = OpenAICaptioner, {
            "options": options,
            "base_url": c.base_url,
            "api_key": _api_key(cfg),
            "api_key_env": c.api_key_env,
            "concurrency": c.concurrency,
            "timeout_s": c.timeout_s,
            "max_retries": c.max_retries,
            "backoff_s": c.backoff_s,
            "send_video": c.send_video,
        }
        batch_size, num_gpus = max(c.batch_size, c.concurrency), 0  # a batch keeps every thread busy
    else:
        actor, kwargs = cap_op.TransformersCaptioner, {"options": options, "lazy": True}
        batch_size, num_gpus = c.batch_size, (c.num_gpus if use_gpus else 0)
    ds = ds.map_batches(
        actor,
        fn_constructor_kwargs=kwargs,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=c.min_actors, max_size=c.max_actors),
        num_gpus=num_gpus,
        num_cpus=actor_cpus(cfg, use_gpus),
    )
    return ds.map_batches(
        write_part,
        fn_kwargs={"parts_url": join(cfg.output, PARTS), "storage_options": so},
        batch_size=None,
        batch_format="numpy",
        num_cpus=0.25,
    )


def actor_cpus(cfg: PipelineConfig, use_gpus: bool) -> float:
    """CPUs a caption actor reserves. Without GPUs the default is 0: the actor then shares CPUs
    with the map tasks instead of holding one for its lifetime, so a small machine running the
    VAE actor too (precompute) never ends up with no CPU left for probe and prepare tasks."""
    if cfg.caption.num_cpus is not None:
        return cfg.caption.num_cpus
    return 1.0 if use_gpus and cfg.caption.backend == "transformers" else 0.0


def _use_gpus(cfg: PipelineConfig) -> bool:
    return cluster_has_gpus() if cfg.ray.use_gpus is None else bool(cfg.ray.use_gpus)


# Part keys in an output when `add_stage` wired captioning into a precompute run: what the
# parts hold beyond them at the end is what that run captioned (`stage_counts`).
_PARTS_BEFORE: dict[str, frozenset] = {}


def add_stage(ds: Any, cfg: PipelineConfig) -> Any:
    """Captioning inside `latentforge run` (precompute): called between probe and prepare."""
    use_gpus = _use_gpus(cfg)
    _check(cfg, use_gpus)
    so = cfg.storage_options
    cached = read_parts(cfg.output, so)
    _PARTS_BEFORE[cfg.output] = frozenset(cached)
    # Clips whose latent is already written need no caption: skip them before any frame is
    # decoded (the bucket, hence the sample id, follows from probe metadata alone).
    done = existing_values(cfg.output, LATENTS, "sample_id", so)
    ds = ds.map(
        _mark_done_latents,
        fn_kwargs={"buckets": cfg.bucket_list(), "target_fps": cfg.prepare.target_fps, "done": frozenset(done)},
        num_cpus=0.25,
    )
    log.info("latentforge: captioning with %s (%s backend), %d captions from earlier runs", cfg.caption.model, cfg.caption.backend, len(cached))
    ds = _wire(ds, cfg, use_gpus, cached)
    return ds.map(_drop_caption_columns, num_cpus=0.25)


def stage_counts(cfg: PipelineConfig) -> dict[str, int]:
    """run.json counts of a precompute run that captioned (after its last row is written):
    `captioned`, the clips the model captioned in this run, i.e. the part records written since
    `add_stage` (a clip whose caption came from an earlier run's parts, or the input, is not
    counted; caption errors are error rows, counted with the other errors)."""
    before = _PARTS_BEFORE.pop(cfg.output, frozenset())
    return {"captioned": len(read_part_records(cfg.output, cfg.storage_options).keys() - before)}


def _mark_done_latents(row: dict[str, Any], buckets: list, target_fps: float | None, done: frozenset) -> dict[str, Any]:
    """Rows whose latent is in the output, or that no bucket fits (prepare fails them anyway),
    are marked so that captioning skips them; the row itself is unchanged."""
    from latentforge.operators.frames import assign_bucket

    out = dict(row)
    out["_caption_not_needed"] = False
    if is_error(row):
        return out
    b = assign_bucket(row, buckets, target_fps)
    out["_caption_not_needed"] = bool(is_error(b) or b.get("sample_id") in done)
    return out


def _drop_caption_columns(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith(("_caption_", "_span_", "_input_index"))}


# ---------------------------------------------------------------------------------------------
# Parts (resume) and the manifest


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _batch_rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    n = len(next(iter(batch.values()))) if batch else 0
    return [{k: _plain(v[i]) for k, v in batch.items()} for i in range(n)]


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
    for row in _batch_rows(batch):
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


def _media_path(uri: str, manifest_dir: str) -> str:
    """Relative to the manifest's folder when the media lies under it (the manifest then moves
    with its data, as LTX-2 datasets do), else the absolute path or URL."""
    if "://" in manifest_dir or "://" in uri:
        prefix = manifest_dir.rstrip("/") + "/"
        return uri[len(prefix) :] if uri.startswith(prefix) else uri
    base = os.path.abspath(manifest_dir)
    path = os.path.abspath(uri)
    if path.startswith(base.rstrip(os.sep) + os.sep):
        return os.path.relpath(path, base).replace(os.sep, "/")
    return path


def manifest_rows(records: Iterable[dict[str, Any]], manifest: str, chronoedit: bool = False) -> list[dict[str, Any]]:
    """Part records -> manifest lines: caption, media_path, the span when any row is a span
    (every row then has start_frame / end_frame, so CSV cells are never blank), passthrough."""
    records = sorted(records, key=lambda r: (tuple(r["order"]), r["uri"], r["key"]))
    folder = manifest.rstrip("/").rsplit("/", 1)[0] if "/" in manifest else "."
    spans = any(r["span"] for r in records)
    rows = []
    for r in records:
        media = _media_path(r["uri"], folder)
        if chronoedit:
            key = r["columns"].get("key")
            line: dict[str, Any] = {"key": key if has_value(key) else posixpath.splitext(posixpath.basename(media))[0], "video": media, "prompt": r["caption"]}
            line.update({k: v for k, v in r["columns"].items() if k not in line})
            rows.append(line)
            continue
        line = {"caption": r["caption"], "media_path": media}
        if spans:
            line["start_frame"] = r["start_frame"] if r["start_frame"] is not None else 0
            line["end_frame"] = r["end_frame"] if r["end_frame"] is not None else 1
            if r["media_type"] == "video" and r.get("fps"):
                line["fps"] = r["fps"]
        line.update({k: v for k, v in r["columns"].items() if k not in line and k not in ("start_frame", "end_frame")})
        rows.append(line)
    return rows


def manifest_bytes(rows: list[dict[str, Any]], url: str) -> bytes:
    """JSONL, JSON (a list) or CSV by the extension; CSV cells that are lists or objects are JSON."""
    ext = posixpath.splitext(url)[1].lower()
    if ext == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    if ext == ".json":
        return (json.dumps(rows, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    columns: dict[str, None] = {}
    for r in rows:
        columns.update(dict.fromkeys(r))
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else ("" if v is None else v)) for k, v in r.items()})
    return buf.getvalue().encode("utf-8")


def write_manifest(url: str, records: Iterable[dict[str, Any]], storage_options: dict | None = None) -> int:
    """Write the manifest of this run's clips (part records, see `part_record`); returns its row
    count. A clip seen twice (a retried block) is written once."""
    unique = {r["key"]: r for r in records}
    chronoedit = posixpath.basename(url) == CHRONOEDIT_MANIFEST
    rows = manifest_rows(unique.values(), url, chronoedit=chronoedit)
    fs, path = get_fs(url, storage_options)
    write_bytes_atomic(fs, path, manifest_bytes(rows, url))
    return len(rows)


# ---------------------------------------------------------------------------------------------
# The caption pipeline


class CaptionSink(Datasink):
    """Counts rows by outcome, collects the manifest records of good rows (so the manifest
    always shows this run's input: its captions, spans and columns), writes error rows."""

    def __init__(self, output: str, storage_options: dict | None = None):
        self.output = output
        self.storage_options = storage_options or {}
        self.result: dict[str, Any] = {}

    def get_name(self) -> str:
        return "latentforge[captions]"

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
        import pyarrow as pa

        t0 = time.perf_counter()
        counts: Counter = Counter()
        kinds: Counter = Counter()
        seconds: Counter = Counter()
        records: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for block in blocks:
            block_rows = block.to_pylist() if isinstance(block, pa.Table) else block.to_dict("records")
            for row in block_rows:
                row = {k: _plain(v) for k, v in row.items()}
                for k, v in row.items():
                    if k.startswith("_seconds_") and v:
                        seconds[k[len("_seconds_") :]] += float(v)
                counts["rows"] += 1
                if is_error(row):
                    errors.append(row)
                    kinds[error_kind(row)] += 1
                    continue
                records.append(part_record(row))
                if row.get("_caption_generated"):
                    counts["captioned"] += 1
                elif row.get("_caption_cached"):
                    counts["captions_from_earlier_runs"] += 1
                else:
                    counts["captions_kept"] += 1
        write_error_shard(self.output, errors, self.storage_options)  # to_table drops "_" columns
        seconds["write_captions"] += time.perf_counter() - t0
        return {"counts": dict(counts), "errors": dict(kinds), "seconds": dict(seconds), "records": records}

    def on_write_complete(self, write_result: WriteResult) -> None:
        returns = write_result.write_returns
        records = [record for r in returns for record in r["records"]]
        self.result = {**sum_write_returns(returns, ("counts", "errors", "seconds")), "records": records}


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """`pipeline: caption`: caption what has no caption and write the manifest; returns the
    summary also written to run.json."""
    from latentforge.cluster import connect
    from latentforge.formats.manifests import read_manifest

    started, started_at = time.time(), datetime.now(timezone.utc).isoformat()
    preflight(cfg)  # before Ray starts
    connect(cfg.ray.address, cfg.ray.num_cpus)
    configure_data_context(cfg)
    use_gpus = _use_gpus(cfg)
    url = manifest_url(cfg)
    _check(cfg, use_gpus)
    so = cfg.storage_options

    rows = read_manifest(cfg.input, cfg.input_format, so)
    for i, row in enumerate(rows):
        row["_input_index"] = i
        row["_span_given"] = has_value(row.get("start_frame")) or has_value(row.get("end_frame"))
    _clear_errors(cfg)
    cached = read_parts(cfg.output, so)
    log.info("latentforge: %d input rows, %d captions from earlier runs in %s", len(rows), len(cached), join(cfg.output, PARTS))

    t0 = time.perf_counter()
    ds = ray.data.from_items(rows)
    ds = ds.map(probe_op.probe, fn_kwargs={"storage_options": so}, num_cpus=probe_op.RESOURCES.num_cpus)
    if stage_enabled(cfg, "split"):
        ds = _clip_stage_module("split").add_stage(ds, cfg)
    ds = _wire(ds, cfg, use_gpus, cached)
    sink = CaptionSink(cfg.output, so)
    ds.write_datasink(sink)
    caption_wall = time.perf_counter() - t0

    t1 = time.perf_counter()
    written = write_manifest(url, sink.result.get("records", []), so)
    manifest_seconds = time.perf_counter() - t1

    result_counts = sink.result.get("counts", {})
    counts = {
        "input_rows": len(rows),
        "rows": result_counts.get("rows", 0),
        "captioned": result_counts.get("captioned", 0),
        "captions_kept": result_counts.get("captions_kept", 0),
        "captions_from_earlier_runs": result_counts.get("captions_from_earlier_runs", 0),
        "errors": sum(sink.result.get("errors", {}).values()),
        "errors_by_reason": sink.result.get("errors", {}),
        "manifest_rows": written,
    }
    c = cfg.caption
    summary = {
        "latentforge": __version__,
        "pipeline": "caption",
        "started_at": started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "wall_seconds": round(time.time() - started, 3),
        "phase_wall_seconds": {"caption": round(caption_wall, 3), "manifest": round(manifest_seconds, 3)},
        "stage_seconds": {k: round(v, 3) for k, v in sorted(sink.result.get("seconds", {}).items())},
        "counts": counts,
        "manifest": url,
        "captioner": {
            "backend": c.backend,
            "model": c.model_path or c.model,
            "family": _family(cfg),
            "task": c.task,
            "prompt": "file" if c.prompt_file else c.prompt,
            **({"base_url": c.base_url, "api_key_env": c.api_key_env} if c.backend == "openai" else {}),
        },
        "used_gpus": use_gpus,
        **provenance(cfg, _versions()),
    }
    write_run_summary(cfg.output, summary, so)
    return summary
