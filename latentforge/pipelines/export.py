"""export: canonical shards -> a trainer's own layout (docs/exporters.md).

One pass per run on Ray: the latent shards are read by Ray Data's Parquet reader, joined on
`caption_id` with the embedding shards of the output's text encoder (a hash join on the
cluster, never on the driver), and each batch of joined rows goes to the layouts, which turn
samples into files. Every file is written whole or not at all, and a file that exists is not
written again, so a rerun, or a run killed half way and rerun, ends with each file once.

`latentforge export OUTPUT --format F --to DIR` runs it on its own; `export: [F, ...]` in a
config runs it at the end of `latentforge run`, into `export_to` (default <output>/export/<F>).
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from collections import Counter
from typing import Any

import pyarrow.parquet as pq
import ray

from latentforge.buckets import parse_bucket
from latentforge.config import ConfigError, PipelineConfig
from latentforge.formats.export.base import ExportContext, ExportSample
from latentforge.formats.export.registry import EXPORTERS
from latentforge.formats.manifest_files import parent_url
from latentforge.formats.shards import EMBEDDINGS, LATENTS, read_run_summary, shard_bucket, shard_paths
from latentforge.models import get_preset, text_encoder_name
from latentforge.pipelines.outputs import arrow_fs, id_set
from latentforge.pipelines.runtime import shuffle_partitions
from latentforge.pipelines.sinks import RowSink
from latentforge.pipelines.stages import LIGHT, Job, Stage, output_args
from latentforge.rows import batch_rows
from latentforge.storage import get_fs, join, write_bytes_atomic

log = logging.getLogger("latentforge")

# Columns of an embedding row that travel with a latent row through the join (pooled: HunyuanVideo;
# audio: LTX-2.3 text features).
EMBEDDING_COLUMNS = ("embedding_bytes", "embedding_shape", "embedding_dtype", "length")
EXTRA_EMBEDDING_COLUMNS = tuple(f"{name}_{part}" for name in ("pooled_embedding", "audio_embedding") for part in ("bytes", "shape", "dtype"))
DEFAULT_BATCH = 16


# ---------------------------------------------------------------------------------------------
# What the output holds


def _metadata(fs: Any, path: str) -> dict[str, Any]:
    with fs.open(path, "rb") as f:
        schema = pq.read_schema(f)
    raw = (schema.metadata or {}).get(b"latentforge")
    return json.loads(raw) if raw else {}


def output_context(output: str, storage_options: dict[str, Any] | None = None, input_url: str | None = None) -> tuple[ExportContext, list[str], str | None]:
    """(context, buckets present, embeddings folder or None) of an output, from its shards'
    metadata; media are named relative to the folder of `input_url` (the run's input)."""
    fs, root = get_fs(join(output, LATENTS), storage_options)
    shards = shard_paths(fs, root)
    if not shards:
        raise ConfigError(f"export: {join(output, LATENTS)} holds no latent shards (run the precompute pipeline first)")
    latent_meta = _metadata(fs, shards[0])
    model = latent_meta.get("model")
    if not model:
        raise ConfigError(f"export: {shards[0]} has no latentforge metadata naming its model")
    preset = get_preset(model)
    buckets = sorted({b for b in map(shard_bucket, shards) if b})
    for stacked in (False, True):  # the form encode_text stores by default, else LTX-2's stacked form
        encoder_folder = f"{EMBEDDINGS}/encoder={text_encoder_name(preset, ltx2_stacked_hidden_states=stacked)}"
        efs, eroot = get_fs(join(output, encoder_folder), storage_options)
        emb_shards = shard_paths(efs, eroot)
        if emb_shards:
            break
    embedding_meta = _metadata(efs, emb_shards[0]) if emb_shards else {}
    ctx = ExportContext(
        model=preset.name,
        family=preset.name.removeprefix("tiny-"),  # the real preset a tiny twin stands for
        text_encoder=encoder_folder.split("=", 1)[1] if emb_shards else None,
        latent_metadata=latent_meta,
        embedding_metadata=embedding_meta,
        dataset_root=_input_folder(input_url) if input_url else None,
    )
    return ctx, buckets, (join(output, encoder_folder) if emb_shards else None)


def recorded_input(output: str, storage_options: dict[str, Any] | None) -> str | None:
    """The input of the run that made an output, from its run.json (None when it has none)."""
    summary = read_run_summary(output, storage_options) or {}
    return (summary.get("config") or {}).get("input") or None


def _input_folder(source: str) -> str:
    """The folder media paths are relative to: a manifest's folder, or the input folder itself."""
    source = str(source)
    if source.lower().endswith((".json", ".jsonl", ".csv", ".txt", ".parquet")):
        source = parent_url(source) if "/" in source else "."
    return source.rstrip("/")


def check(formats: list[str], ctx: ExportContext, buckets: list[str], embeddings: str | None) -> None:
    """Refuse, before any work, a layout whose trainer cannot read this output."""
    for name in formats:
        if name not in EXPORTERS:
            raise ConfigError(f"export: unknown format {name!r}; formats: {', '.join(sorted(EXPORTERS))}")
        exporter = EXPORTERS[name]
        if ctx.family not in exporter.families:
            raise ConfigError(
                f"export: format {name!r} reads {', '.join(sorted(exporter.families))} latents; "
                f"this output holds {ctx.family} latents (model {ctx.model})"
            )
        refused = [f"{b} ({why})" for b in buckets if (why := exporter.bucket_problem(parse_bucket(b), ctx))]
        if refused:
            raise ConfigError(f"export: the {name} trainer cannot read bucket(s) " + "; ".join(refused))
        if exporter.needs_embeddings and embeddings is None:
            raise ConfigError(f"export: format {name!r} needs text embeddings and {ctx.model}'s are not in the output (encode_text.enabled)")


# ---------------------------------------------------------------------------------------------
# The batch stage


def export_batch(
    batch: dict[str, Any], formats: list[str], roots: dict[str, str], ctx: ExportContext, storage_options: dict | None, done: dict[str, Any]
) -> dict[str, Any]:
    """Write the files of a batch of joined rows in each layout; returns one small row per sample
    with what happened (`_exported_<format>`, `_existing_<format>`, `_seconds_export`)."""
    t0 = time.perf_counter()
    rows = batch_rows(batch)
    n = len(rows)
    samples = [ExportSample(latent=_latent_part(r), embedding=_embedding_part(r)) for r in rows]
    out: dict[str, list[Any]] = {"sample_id": [s.sample_id for s in samples]}
    for name in formats:
        exporter = EXPORTERS[name]
        fs, root = get_fs(roots[name], storage_options)
        ready = [s for s in samples if s.embedding is not None or not exporter.needs_embeddings]
        ready_ids = {s.sample_id for s in ready}
        todo, existing = [], set()
        for s in ready:
            paths = exporter.paths(s, ctx)
            if s.sample_id in done.get(name, ()) or (paths is not None and all(fs.exists(posixpath.join(root, p)) for p in paths)):
                existing.add(s.sample_id)
            else:
                todo.append(s)
        for relative, data in exporter.files(todo, ctx) if todo else ():
            path = posixpath.join(root, relative)
            if not fs.exists(path):
                write_bytes_atomic(fs, path, data)
        written = {s.sample_id for s in todo}
        out[f"_exported_{name}"] = [s.sample_id in written for s in samples]
        out[f"_existing_{name}"] = [s.sample_id in existing for s in samples]
        out[f"_no_embedding_{name}"] = [s.sample_id not in ready_ids for s in samples]
    out["_seconds_export"] = [(time.perf_counter() - t0) / max(n, 1)] * n
    return out


def _latent_part(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in EMBEDDING_COLUMNS and k not in EXTRA_EMBEDDING_COLUMNS}


def _embedding_part(row: dict[str, Any]) -> dict[str, Any] | None:
    if row.get("embedding_bytes") is None:
        return None
    return {k: row[k] for k in (*EMBEDDING_COLUMNS, *EXTRA_EMBEDDING_COLUMNS, "caption_id", "caption") if k in row}


class ExportSink(RowSink):
    """Counts what each layout wrote, found existing, or could not write for want of an embedding."""

    name = "export"

    def take(self, row: dict[str, Any], counts: Counter) -> None:
        for key, value in row.items():
            for prefix, label in (("_exported_", "exported"), ("_existing_", "skipped_existing"), ("_no_embedding_", "without_embedding")):
                if key.startswith(prefix) and value:
                    counts[f"{key[len(prefix):]}_{label}"] += 1


# ---------------------------------------------------------------------------------------------
# The stages


def export_root(cfg: PipelineConfig, name: str) -> str:
    return join(cfg.export_to, name) if cfg.export_to else join(cfg.output, "export", name)


def _setup(job: Job) -> None:
    cfg = job.cfg
    ctx, buckets, embeddings = output_context(cfg.output, cfg.storage_options, cfg.input)
    check(list(cfg.export), ctx, buckets, embeddings)
    # what earlier runs exported, per layout: listed by a Ray task, kept in the object store
    so = cfg.storage_options
    done = {name: id_set(exported_ids, name, export_root(cfg, name), so, unless_missing=export_root(cfg, name), storage_options=so) for name in cfg.export}
    job.state["export"] = {"ctx": ctx, "embeddings": embeddings, "done": done}


def exported_ids(name: str, root_url: str, storage_options: dict[str, Any] | None) -> set[str]:
    fs, root = get_fs(root_url, storage_options)
    return EXPORTERS[name].exported_ids(fs, root)


def read_joined(job: Job) -> Any:
    """The export pass's source: latent shards joined with their captions' embeddings, on Ray."""
    cfg = job.cfg
    _setup(job)
    fs, root = get_fs(join(cfg.output, LATENTS), cfg.storage_options)
    partitioning = ray.data.datasource.partitioning.Partitioning("hive", base_dir=root)
    latents = ray.data.read_parquet(root, filesystem=arrow_fs(fs), partitioning=partitioning)
    embeddings = job.state["export"]["embeddings"]
    if embeddings is None:
        return latents
    efs, eroot = get_fs(embeddings, cfg.storage_options)
    table = ray.data.read_parquet(eroot, filesystem=arrow_fs(efs))
    keep = [c for c in ("caption_id", *EMBEDDING_COLUMNS, *EXTRA_EMBEDDING_COLUMNS) if c in table.schema().names]
    return latents.join(table.select_columns(keep), join_type="left_outer", num_partitions=shuffle_partitions(), on=("caption_id",))


def _describe_source(job: Job) -> str:
    return f"{join(job.cfg.output, LATENTS)}/ joined with its embeddings on caption_id (Ray Data hash join)"


def enabled(cfg: PipelineConfig) -> bool:
    return bool(cfg.export)


def _batch_size(job: Job) -> int:
    sizes = [getattr(EXPORTERS[name], "samples_per_file", None) for name in job.cfg.export if name in EXPORTERS]
    return max([s for s in sizes if s] or [DEFAULT_BATCH])


def _finish(job: Job) -> None:
    """After the pass: each layout's index over what is under its root (CogVideoX's prompt.txt /
    videos.txt); kept with the pass's counts."""
    cfg = job.cfg
    for name in cfg.export:
        fs, root = get_fs(export_root(cfg, name), cfg.storage_options)
        for key, n in EXPORTERS[name].finish(fs, root).items():
            job.state.setdefault("export_index", {})[f"{name}_{key}"] = n


STAGES = [
    Stage(
        "source",
        "source",
        None,
        _describe_source,
        read=read_joined,
        phase="export",
        enabled=enabled,
        operators=("ListFiles", "ReadFilesParquetV2", "Project", "Join"),  # as Ray Data names them
    ),
    Stage(
        "export",
        "batches",
        export_batch,
        lambda job: "; ".join(f"{name} -> {export_root(job.cfg, name)}/" for name in job.cfg.export),
        resources=LIGHT,
        enabled=enabled,
        batch_size=_batch_size,
        args=lambda job: {
            "formats": list(job.cfg.export),
            "roots": {name: export_root(job.cfg, name) for name in job.cfg.export},
            "ctx": job.state["export"]["ctx"],
            "storage_options": job.cfg.storage_options,
            "done": job.state["export"]["done"],
        },
    ),
    Stage(
        "write_export",
        "write",
        ExportSink,
        lambda job: "counts per layout (files are written by the export stage); then each layout's index",
        enabled=enabled,
        args=output_args,
        after=_finish,
    ),
]


def counts(job: Job) -> dict[str, Any]:
    """run.json's export counts: per layout, samples exported, found existing, without embedding."""
    result = job.results.get("write_export", {})
    merged = {**result.get("counts", {}), **job.state.get("export_index", {})}
    return {"export": dict(sorted(merged.items())), "export_errors": result.get("errors", {})}
