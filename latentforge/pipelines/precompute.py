"""precompute: manifest -> probe -> prepare -> encode_video -> latent shards, then the distinct
captions of those latents -> encode_text -> embedding shards; run.json at the end.

Video and text run as two Ray Data passes: text reads its captions back from the latent shards,
so the VAE and a large text encoder (Gemma 3 12B for LTX-2) never need GPU memory at the same
time, each caption is encoded once across the whole dataset, and a run killed between the two
passes resumes with the text pass alone.
"""

from __future__ import annotations

import logging
import math
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import ray

from latentforge import __version__
from latentforge.cluster import cluster_has_gpus, connect
from latentforge.config import PipelineConfig
from latentforge.formats.manifests import read_manifest
from latentforge.formats.shards import EMBEDDINGS, ERRORS, LATENTS, ShardDatasink, existing_values, read_table, write_run_summary
from latentforge.models import get_preset, vae_normalization
from latentforge.operators import frames as frames_op
from latentforge.operators import probe as probe_op
from latentforge.operators import text as text_op
from latentforge.operators import vae as vae_op
from latentforge.operators.base import has_value, is_error
from latentforge.operators.captions import caption_id, final_caption
from latentforge.storage import get_fs, join

log = logging.getLogger("latentforge")



def configure_data_context(cfg: PipelineConfig) -> None:
    """Settings that matter when spot nodes come and go, set here rather than left to chance.

    Ray Data already restarts a lost actor and retries its tasks without limit; on top of that
    an actor whose model load fails (a flaky disk or download on a fresh node) is retried, and a
    run that stops making progress (no GPU node ever arrives) fails after a bounded time.
    """
    ctx = ray.data.DataContext.get_current()
    ctx.actor_init_retry_on_errors = True
    ctx.actor_init_max_retries = cfg.ray.actor_init_retries
    ctx.execution_no_progress_timeout_s = cfg.ray.no_progress_timeout_s


@dataclass(frozen=True)
class StagePlan:
    name: str
    runs_as: str
    resources: str
    detail: str


def _pool_resources(pool: Any, use_gpus: bool, cpu_actors: float) -> str:
    size = f"{pool.min_actors}..{pool.max_actors} actors" if pool.min_actors != pool.max_actors else f"{pool.min_actors} actor(s)"
    each = f"{pool.num_gpus:g} GPU each" if use_gpus else f"{cpu_actors:g} CPU each (no GPU)"
    return f"{size}, {each}, batch {pool.batch_size}"


def cpu_actors_per_node(max_actors: int) -> int:
    """How many actors of one CPU-only model pool share a node: Ray Data spreads an actor pool
    over the nodes (its default SPREAD strategy), so ceil(max_actors / nodes with CPUs). Nodes
    that join later only make this an overestimate (fewer threads, never oversubscription)."""
    nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)
    return max(1, math.ceil(max_actors / max(1, nodes)))


def model_pool_args(pool: Any, use_gpus: bool, num_cpus: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Ray arguments for map_batches, extra constructor kwargs) of a model actor pool
    (encode_video, encode_text); `num_cpus` is what the operator declares (Resources).

    GPU runs: `pool.num_gpus` GPUs and `num_cpus` CPUs per actor; torch's threads are left alone.

    CPU-only runs (docs/benchmarks.md, "CPU-only runs"):
    - each actor still reserves `num_cpus` (1), so the rest of a node stays schedulable for the
      1-CPU probe/split/prepare tasks: a 2-core machine keeps one CPU for them;
    - the actor sets torch's threads to its node's CPUs divided among the pool's actors on a node
      (`cpu_actors_per_node`), instead of the OMP_NUM_THREADS=1 that Ray gives a 1-CPU actor;
    - `scheduling_strategy="SPREAD"` is spelled out. It is what Ray Data uses for actor pools
      anyway, so placement does not change, but it makes the actor's remote args differ from the
      1-CPU `_prepare` map's; with equal args Ray Data fuses `_prepare` into the VAE actor, and
      decoding then runs inside the actor, one clip after the other (tests/test_pipeline.py
      checks the plan).
    """
    if use_gpus:
        return {"num_gpus": pool.num_gpus, "num_cpus": num_cpus}, {}
    args = {"num_gpus": 0, "num_cpus": num_cpus, "scheduling_strategy": "SPREAD"}
    return args, {"cpu_actors_per_node": cpu_actors_per_node(pool.max_actors)}


def plan(cfg: PipelineConfig, use_gpus: bool | None = None) -> list[StagePlan]:
    """The stages this config runs, with buckets, models and resources, without running them."""
    if cfg.pipeline not in ("precompute", "all"):
        raise NotImplementedError(
            f"pipeline {cfg.pipeline!r} is not available yet: this version runs 'precompute' "
            "(scene splitting and captioning are being built)"
        )
    preset = get_preset(cfg.model, cfg.model_path)
    use_gpus = bool(use_gpus)
    dev_dtype = "bfloat16" if use_gpus else "float32"

    def clip_stage_plans(name: str) -> list[StagePlan]:
        # a stage whose plan depends on GPUs (caption: resources, dtype, quantisation) takes use_gpus
        import inspect

        plan_stages = _clip_stage_module(name).plan_stages
        if "use_gpus" in inspect.signature(plan_stages).parameters:
            return plan_stages(cfg, use_gpus=use_gpus)
        return plan_stages(cfg)

    stages = [
        StagePlan("source", "driver", "-", f"read {cfg.input} (format: {cfg.input_format})"),
        StagePlan("probe", "map", f"{probe_op.RESOURCES.num_cpus:g} CPU/task", "container metadata via PyAV; unreadable media -> error rows"),
        *[stage for name in CLIP_STAGES if stage_enabled(cfg, name) for stage in clip_stage_plans(name)],
        StagePlan(
            "prepare",
            "map",
            f"{frames_op.RESOURCES.num_cpus:g} CPU/task",
            f"buckets {', '.join(str(b) for b in cfg.bucket_list())}; "
            f"fps {cfg.prepare.target_fps or 'source'}; resize {cfg.prepare.resize_filter} (cover + center crop)",
        ),
        StagePlan(
            "encode_video",
            "actor pool",
            _pool_resources(cfg.encode_video, use_gpus, vae_op.RESOURCES.num_cpus),
            f"{preset.vae_class} from {preset.repo}; latent mean{' + logvar' if cfg.encode_video.store_logvar else ''}; "
            f"dtype {cfg.encode_video.dtype or dev_dtype}",
        ),
        StagePlan("sink", "write", "-", f"{join(cfg.output, LATENTS)}/bucket=*/ and {join(cfg.output, ERRORS)}/"),
    ]
    if cfg.encode_text.enabled:
        extra = []
        if cfg.encode_text.trigger_word:
            extra.append(f"trigger word {cfg.encode_text.trigger_word!r}")
        if cfg.encode_text.strip_openers:
            extra.append("openers stripped")
        stages += [
            StagePlan(
                "encode_text",
                "actor pool",
                _pool_resources(cfg.encode_text, use_gpus, text_op.TextEncodeStage.resources.num_cpus),
                f"{preset.pipeline_class}.encode_prompt, max {preset.max_sequence_length} tokens, once per distinct caption"
                + (f"; {', '.join(extra)}" if extra else ""),
            ),
            StagePlan("sink", "write", "-", f"{join(cfg.output, EMBEDDINGS)}/encoder={preset.text_encoder_name}/"),
        ]
    return stages


def finalize_caption(row: dict[str, Any], trigger_word: str | None, strip_openers: bool) -> dict[str, Any]:
    """The text that will be encoded, and its caption_id. Runs after any captioning stage."""
    out = dict(row)
    text = row.get("caption")
    if has_value(text) and not is_error(row):
        text = final_caption(text, trigger_word, strip_openers) or None
    else:
        text = text if has_value(text) else None
    out["caption"] = text
    out["caption_id"] = caption_id(text) if text else None
    return out


# Optional stages between probe and prepare, in order; each lives in latentforge.pipelines.<name>
# with `add_stage(ds, cfg) -> ds` and `plan_stages(cfg[, use_gpus]) -> list[StagePlan]`, and
# optionally `check_input(rows, cfg)` (before any work) and `stage_counts(cfg)` (for run.json);
# it is configured by the config section of the same name.
CLIP_STAGES = ("split", "caption")


def stage_enabled(cfg: PipelineConfig, name: str) -> bool:
    """`pipeline: all` runs every stage; otherwise a stage runs when its section says enabled."""
    section = getattr(cfg, name, None)
    if section is None:
        return False
    return cfg.pipeline == "all" or bool(getattr(section, "enabled", False))


def _clip_stage_module(name: str) -> Any:
    import importlib

    return importlib.import_module(f"latentforge.pipelines.{name}")


def _bucket_and_skip(row: dict[str, Any], buckets: list, target_fps: float | None, done: frozenset) -> dict[str, Any]:
    out = frames_op.assign_bucket(row, buckets, target_fps)
    out["_done"] = bool(out.get("sample_id")) and out["sample_id"] in done
    return out


def _prepare(row: dict[str, Any], target_fps: float | None, resize_filter: str, storage_options: dict) -> dict[str, Any]:
    if row.get("_done"):
        return {"_seconds_prepare": 0.0, "_decoded_frames_prepare": 0, **row, "frames": frames_op.NO_FRAMES}
    return frames_op.load_frames(row, target_fps, resize_filter, storage_options)


def redacted(cfg: PipelineConfig) -> dict[str, Any]:
    """The config for run.json and logs, with anything that looks like a credential masked."""
    data = cfg.model_dump(mode="json")

    def mask(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: ("***" if any(s in k.lower() for s in ("key", "secret", "token", "password", "credential")) else mask(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [mask(v) for v in node]
        return node

    data["storage_options"] = mask(data.get("storage_options", {}))
    return data


def provenance(cfg: PipelineConfig, versions: dict[str, str]) -> dict[str, Any]:
    """What every run.json ends with: package versions, the config (credentials masked), the command."""
    return {"versions": versions, "config": redacted(cfg), "command": sys.argv}


def _versions() -> dict[str, str]:
    import av
    import diffusers
    import torch
    import transformers

    return {
        "latentforge": __version__,
        "python": platform.python_version(),
        "ray": ray.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "av": av.__version__,
    }


def _clear_errors(cfg: PipelineConfig) -> None:
    """Error rows describe the latest run: failed samples are retried, so old reports go."""
    fs, path = get_fs(join(cfg.output, ERRORS), cfg.storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def video_dataset(cfg: PipelineConfig, rows: list[dict[str, Any]], done: frozenset, use_gpus: bool) -> Any:
    """The video pass up to its sink: probe -> [clip stages] -> prepare -> encode_video.

    `_prepare` runs as 1-CPU tasks, never fused into the VAE actors (model_pool_args).
    """
    so = cfg.storage_options
    buckets = cfg.bucket_list()
    target_fps = cfg.prepare.target_fps
    video_pool = cfg.encode_video
    resources, actor_kwargs = model_pool_args(video_pool, use_gpus, vae_op.RESOURCES.num_cpus)
    ds = ray.data.from_items(rows)
    ds = ds.map(probe_op.probe, fn_kwargs={"storage_options": so}, num_cpus=probe_op.RESOURCES.num_cpus)
    for name in CLIP_STAGES:
        if stage_enabled(cfg, name):
            ds = _clip_stage_module(name).add_stage(ds, cfg)
    ds = ds.map(
        finalize_caption,
        fn_kwargs={"trigger_word": cfg.encode_text.trigger_word, "strip_openers": cfg.encode_text.strip_openers},
        num_cpus=0.25,
    )
    ds = ds.map(_bucket_and_skip, fn_kwargs={"buckets": buckets, "target_fps": target_fps, "done": done}, num_cpus=0.25)
    ds = ds.map(
        _prepare,
        fn_kwargs={"target_fps": target_fps, "resize_filter": cfg.prepare.resize_filter, "storage_options": so},
        num_cpus=frames_op.RESOURCES.num_cpus,
    )
    ds = ds.map_batches(
        vae_op.VideoEncodeStage,
        fn_constructor_kwargs={
            "model": cfg.model,
            "model_path": cfg.model_path,
            "dtype": video_pool.dtype,
            "store_logvar": video_pool.store_logvar,
            "micro_batch": video_pool.batch_size,
            **actor_kwargs,
        },
        batch_size=video_pool.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=video_pool.min_actors, max_size=video_pool.max_actors),
        **resources,
    )
    return ds


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the precompute pipeline; returns the run summary also written to run.json."""
    started = time.time()
    started_at = datetime.now(timezone.utc).isoformat()
    connect(cfg.ray.address, cfg.ray.num_cpus)
    configure_data_context(cfg)
    use_gpus = cluster_has_gpus() if cfg.ray.use_gpus is None else cfg.ray.use_gpus
    plan(cfg, use_gpus)  # validates the pipeline choice before any work
    preset = get_preset(cfg.model, cfg.model_path)
    so = cfg.storage_options

    rows = read_manifest(cfg.input, cfg.input_format, so)
    for name in CLIP_STAGES:  # e.g. split: clip file names must not collide
        if stage_enabled(cfg, name) and hasattr(_clip_stage_module(name), "check_input"):
            _clip_stage_module(name).check_input(rows, cfg)
    done = frozenset(existing_values(cfg.output, LATENTS, "sample_id", so))
    _clear_errors(cfg)
    log.info("latentforge: %d input rows, %d finished samples already in %s", len(rows), len(done), cfg.output)

    latent_metadata = {
        "model": preset.name,
        "vae_class": preset.vae_class,
        "vae_id": preset.repo,
        "latentforge": __version__,
        "layout": "latent mean [C, F, H, W] of the VAE, not normalised",
    }
    latent_metadata["vae_normalization"] = vae_normalization(preset)

    t_video = time.perf_counter()
    ds = video_dataset(cfg, rows, done, use_gpus)
    latent_sink = ShardDatasink(cfg.output, LATENTS, key="sample_id", partition="bucket", storage_options=so, metadata=latent_metadata)
    ds.write_datasink(latent_sink)
    video_wall = time.perf_counter() - t_video

    counts: dict[str, Any] = {
        "input_rows": len(rows),
        "latents_written": latent_sink.result.get("counts", {}).get("written", 0),
        "latents_skipped_existing": latent_sink.result.get("counts", {}).get("skipped_existing", 0),
        "errors": sum(latent_sink.result.get("errors", {}).values()),
        "errors_by_reason": dict(latent_sink.result.get("errors", {})),
    }
    for name in CLIP_STAGES:  # e.g. caption: "captioned" (clips the model captioned in this run)
        if stage_enabled(cfg, name) and hasattr(_clip_stage_module(name), "stage_counts"):
            counts.update(_clip_stage_module(name).stage_counts(cfg))
    stage_seconds = dict(latent_sink.result.get("seconds", {}))
    decoded_frames = dict(latent_sink.result.get("decoded_frames", {}))
    # frames of the videos split in this job: with decoded_frames, how often each was decoded
    source_frames = latent_sink.result.get("counts", {}).get("source_frames", 0)
    text_wall = 0.0
    if cfg.encode_text.enabled:
        t_text = time.perf_counter()
        text_counts, text_seconds = _encode_text(cfg, preset, use_gpus)
        for reason, n in text_counts.pop("text_errors_by_reason", {}).items():
            counts["errors_by_reason"][reason] = counts["errors_by_reason"].get(reason, 0) + n
            counts["errors"] += n
        counts.update(text_counts)
        stage_seconds.update(text_seconds)
        text_wall = time.perf_counter() - t_text

    summary = {
        "latentforge": __version__,
        "started_at": started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "wall_seconds": round(time.time() - started, 3),
        "phase_wall_seconds": {"video": round(video_wall, 3), "text": round(text_wall, 3)},
        "stage_seconds": {k: round(v, 3) for k, v in sorted(stage_seconds.items())},
        "decoded_frames": decoded_frames,
        **(
            {"source_frames": source_frames, "decoded_per_source_frame": round(sum(decoded_frames.values()) / source_frames, 4)}
            if source_frames
            else {}
        ),
        "counts": counts,
        "model": {
            "preset": preset.name,
            "repo": preset.repo,
            "vae_class": preset.vae_class,
            "text_pipeline": preset.pipeline_class,
            "text_encoder": preset.text_encoder_name,
        },
        "used_gpus": use_gpus,
        **provenance(cfg, _versions()),
    }
    write_run_summary(cfg.output, summary, so)
    return summary


def _encode_text(cfg: PipelineConfig, preset: Any, use_gpus: bool) -> tuple[dict[str, Any], dict[str, float]]:
    """Embed every distinct caption of the latents in the output that is not embedded yet."""
    so = cfg.storage_options
    table = read_table(cfg.output, LATENTS, ["caption_id", "caption"], so)
    distinct: dict[str, str] = {}
    without_caption = 0
    if table.num_rows:
        for cid, text in zip(table.column("caption_id").to_pylist(), table.column("caption").to_pylist()):
            if cid:
                distinct.setdefault(cid, text)
            else:
                without_caption += 1
    encoder_table = f"{EMBEDDINGS}/encoder={preset.text_encoder_name}"
    done = existing_values(cfg.output, encoder_table, "caption_id", so)
    todo = [{"caption_id": cid, "caption": distinct[cid]} for cid in sorted(distinct) if cid not in done]
    counts = {
        "latent_rows_without_caption": without_caption,
        "captions_distinct": len(distinct),
        "embeddings_skipped_existing": len(distinct) - len(todo),
        "embeddings_written": 0,
    }
    if without_caption:
        log.warning("latentforge: %d latent rows have no caption; their text encoding is skipped", without_caption)
    if not todo:
        return counts, {}
    pool = cfg.encode_text
    resources, actor_kwargs = model_pool_args(pool, use_gpus, text_op.TextEncodeStage.resources.num_cpus)
    ds = ray.data.from_items(todo).map_batches(
        text_op.TextEncodeStage,
        fn_constructor_kwargs={
            "model": cfg.model,
            "model_path": cfg.model_path,
            "dtype": pool.dtype,
            "batch_size": pool.batch_size,
            **actor_kwargs,
        },
        batch_size=pool.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=pool.min_actors, max_size=pool.max_actors),
        **resources,
    )
    metadata = {
        "model": preset.name,
        "text_pipeline": preset.pipeline_class,
        "text_encoder": preset.text_encoder_name,
        "repo": preset.repo,
        "max_sequence_length": preset.max_sequence_length,
        "latentforge": __version__,
        "layout": "embedding [length, dim], trimmed to the caption's token length",
    }
    sink = ShardDatasink(cfg.output, encoder_table, key="caption_id", storage_options=so, metadata=metadata)
    ds.write_datasink(sink)
    counts["embeddings_written"] = sink.result.get("counts", {}).get("written", 0)
    counts["text_errors_by_reason"] = sink.result.get("errors", {})
    return counts, dict(sink.result.get("seconds", {}))
