"""precompute: manifest -> probe -> [split_scenes] -> bucket -> [caption] -> finalize_caption ->
prepare -> encode_video -> latent shards; then the distinct captions of those latents ->
encode_text -> embedding shards; run.json at the end. `pipeline: all` is the same list with
split and caption always on.

Video and text run as two Ray Data passes: text reads its captions back from the latent shards,
so the VAE and a large text encoder (Gemma 3 12B for LTX-2) never need GPU memory at the same
time, each caption is encoded once across the whole dataset, and a run killed between the two
passes resumes with the text pass alone.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from latentforge import __version__
from latentforge.config import ConfigError
from latentforge.formats.shards import EMBEDDINGS, ERRORS, LATENTS, read_run_summary
from latentforge.models import get_preset, text_encoder_name, vae_normalization, video_dtypes
from latentforge.models.audio import audio_metadata, audio_sample_rate
from latentforge.models.image_encoder import describe_i2v, image_encoder_location
from latentforge.operators import captions as captions_op
from latentforge.operators import frames as frames_op
from latentforge.operators import model_actors
from latentforge.operators.vae_memory import describe_thresholds
from latentforge.pipelines.caption import STAGES as CAPTION_STAGES
from latentforge.pipelines.caption import captioned_in_run, in_run
from latentforge.pipelines.export import counts as export_counts
from latentforge.pipelines.input import PROBE, first_task_seconds, input_counts, source
from latentforge.pipelines.outputs import dedupe, existing_ids
from latentforge.pipelines.precompute_tasks import _distinct_captions, bucket_and_skip, prepare
from latentforge.pipelines.reference import STAGE as REFERENCE_STAGE
from latentforge.pipelines.run_summary import decode_figures, seconds_of
from latentforge.pipelines.sinks import ShardSink
from latentforge.pipelines.split import STAGES as SPLIT_STAGES
from latentforge.pipelines.stages import LIGHT, Job, Stage
from latentforge.storage import join

log = logging.getLogger("latentforge")
TEXT_BLOCK_ROWS = 256  # captions per block of the text pass: enough blocks for every text actor


def _finished_samples(job: Job) -> None:
    """The sample ids already in the output, as an IdSet in the object store (never on the
    driver); and the dtypes this run computes and stores in (`_resolve_dtypes`)."""
    cfg = job.cfg
    _resolve_dtypes(job)
    job.state["done_latents"] = done = existing_ids(cfg.output, LATENTS, "sample_id", cfg.storage_options)
    log.info("latentforge: %d finished samples already in %s", done.size, cfg.output)


def _resolve_dtypes(job: Job) -> None:
    """What the configured dtypes leave open is taken from the output's run.json (a resume on
    other hardware keeps the output's dtypes), else from the device (models.video_dtypes).
    Quantised text encoders need CUDA: a run without GPUs stops here, before any actor starts."""
    cfg = job.cfg
    if cfg.encode_text.enabled and cfg.encode_text.quantization != "none" and not job.use_gpus:
        raise ConfigError(
            f"encode_text.quantization: {cfg.encode_text.quantization} weights need CUDA GPUs (bitsandbytes) and this run "
            "uses none; set it to none, or run on a cluster with GPUs"
        )
    recorded = (read_run_summary(cfg.output, cfg.storage_options) or {}).get("dtypes") or {}
    family = get_preset(cfg.model, cfg.model_path).family
    compute, storage = video_dtypes(family, cfg.encode_video.compute_dtype, cfg.encode_video.dtype, job.use_gpus, recorded.get("encode_video"))
    text = cfg.encode_text.dtype or (recorded.get("encode_text") or {}).get("storage") or ("bfloat16" if job.use_gpus else "float32")
    job.state["dtypes"] = {"encode_video": {"compute": compute, "storage": storage}, "encode_text": {"compute": text, "storage": text}}


def _vae_args(job: Job) -> dict[str, Any]:
    cfg = job.cfg.encode_video
    dtypes = job.state.get("dtypes", {}).get("encode_video", {})
    return {
        "model": job.cfg.model,
        "model_path": job.cfg.model_path,
        "dtype": dtypes.get("storage", cfg.dtype),
        "compute_dtype": dtypes.get("compute", cfg.compute_dtype),
        "tiling": cfg.tiling,
        "framewise": cfg.framewise,
        "store_logvar": cfg.store_logvar,
        "micro_batch": cfg.batch_size,
        "call_time_limit_s": cfg.call_time_limit_s,
        "first_frame_latent": cfg.first_frame_latent or cfg.i2v,
        "image_encoder": image_encoder_location(job.cfg.model, job.cfg.model_path, cfg.i2v, cfg.image_encoder),
        "with_audio": cfg.with_audio,
    }


def _prepare_args(job: Job) -> dict[str, Any]:
    p = job.cfg.prepare
    limit = (p.time_limit_s, p.time_limit_per_frame_s)
    audio_rate = audio_sample_rate(get_preset(job.cfg.model, job.cfg.model_path)) if job.cfg.encode_video.with_audio else None
    return {"target_fps": p.target_fps, "resize_filter": p.resize_filter, "storage_options": job.cfg.storage_options, "time_limit": limit, "audio_rate": audio_rate}


def _describe_prepare(job: Job) -> str:
    cfg = job.cfg
    return (
        f"buckets {', '.join(str(b) for b in cfg.bucket_list())}; "
        f"fps {cfg.prepare.target_fps or 'source'}; resize {cfg.prepare.resize_filter} (cover + center crop)"
    )


def _describe_vae(job: Job) -> str:
    cfg = job.cfg
    preset = get_preset(cfg.model, cfg.model_path)
    compute, storage = video_dtypes(preset.family, cfg.encode_video.compute_dtype, cfg.encode_video.dtype, job.use_gpus)
    logvar = " + logvar" if cfg.encode_video.store_logvar else ""
    memory = "" if not job.use_gpus else "; " + describe_thresholds(preset.family, cfg.bucket_list(), compute)
    i2v = describe_i2v(cfg.model, cfg.model_path, cfg.encode_video.first_frame_latent or cfg.encode_video.i2v, cfg.encode_video.i2v, cfg.encode_video.image_encoder)
    return f"{preset.vae_class} from {preset.repo}; latent mean{logvar}{i2v}; compute {compute}, stored {storage}{memory}"


def _latent_sink_args(job: Job) -> dict[str, Any]:
    cfg = job.cfg
    preset = get_preset(cfg.model, cfg.model_path)
    metadata = {
        "model": preset.name,
        "vae_class": preset.vae_class,
        "vae_id": preset.repo,
        "latentforge": __version__,
        "layout": "latent mean [C, F, H, W] of the VAE, not normalised",
        "vae_normalization": vae_normalization(preset),
        **(audio_metadata(preset) if cfg.encode_video.with_audio else {}),
    }
    return {"output": cfg.output, "table": LATENTS, "key": "sample_id", "partition": "bucket", "storage_options": cfg.storage_options, "metadata": metadata}


def _one_row_per_sample(job: Job) -> None:
    """Manifest rows naming one clip twice were both encoded; one row stays (docs/outputs.md).
    The latents this run added are counted here, from the table itself: two tasks that wrote
    the same sample alone wrote one shard name, so the sinks' count is not the table's."""
    cfg = job.cfg
    removed, rows = dedupe(cfg.output, LATENTS, "sample_id", cfg.storage_options)
    done = job.state.get("done_latents")
    job.state["latents_added"] = added = rows - (done.size if done is not None else 0)
    written = job.results.get("write_latents", {}).get("counts", {}).get("written", 0)
    job.state["duplicate_rows_skipped"] = duplicates = written - added
    if duplicates:
        log.warning("latentforge: %d manifest rows named a clip already in the run (%d shard rows rewritten); one row per sample_id kept", duplicates, removed)


VIDEO = [
    Stage(
        "bucket",
        "map",
        bucket_and_skip,
        lambda job: "bucket and sample_id from probe metadata; samples already in the output are skipped from here on",
        resources=LIGHT,
        setup=_finished_samples,
        args=lambda job: {"buckets": job.cfg.bucket_list(), "target_fps": job.cfg.prepare.target_fps, "done": job.state.get("done_latents", frozenset())},
    ),
    *CAPTION_STAGES,
    Stage(
        "finalize_caption",
        "map",
        captions_op.finalize_caption,
        lambda job: "caption text as encoded"
        + (f"; trigger word {job.cfg.encode_text.trigger_word!r}" if job.cfg.encode_text.trigger_word else "")
        + ("; openers stripped" if job.cfg.encode_text.strip_openers else "")
        + "; caption_id = its hash",
        resources=captions_op.RESOURCES,
        args=lambda job: {"trigger_word": job.cfg.encode_text.trigger_word, "strip_openers": job.cfg.encode_text.strip_openers},
    ),
    Stage(
        "prepare",
        "map",
        prepare,
        _describe_prepare,
        resources=frames_op.RESOURCES,
        args=_prepare_args,
    ),
    REFERENCE_STAGE,
    Stage(
        "encode_video",
        "actors",
        model_actors.VideoEncodeStage,
        _describe_vae,
        resources=model_actors.VideoEncodeStage.resources,
        config="encode_video",
        node_threads=True,
        args=_vae_args,
    ),
    Stage(
        "write_latents",
        "write",
        ShardSink,
        lambda job: f"{join(job.cfg.output, LATENTS)}/bucket=*/ and {join(job.cfg.output, ERRORS)}/; then one row per sample_id",
        args=_latent_sink_args,
        after=_one_row_per_sample,
    ),
]



# ---------------------------------------------------------------------------------------------
# The text pass


def distinct_captions(job: Job) -> Any:
    """The text pass's rows: every distinct caption of the latents in the output that has no
    embedding yet, found by one Ray task (`_distinct_captions`) and handed over as blocks in the
    object store; the driver gets their references and the counts (`job.state["text_counts"]`).
    When nothing is left to encode the pass is skipped and no text encoder is loaded."""
    cfg = job.cfg
    stream = _distinct_captions.remote(cfg.output, _encoder_table(cfg), cfg.storage_options, TEXT_BLOCK_ROWS)
    refs = list(stream)
    job.state["text_counts"] = counts = ray.get(refs[0])
    if counts["latent_rows_without_caption"]:
        log.warning("latentforge: %d latent rows have no caption; their text encoding is skipped", counts["latent_rows_without_caption"])
    blocks = refs[1:]
    return ray.data.from_arrow_refs(blocks) if blocks else []


def _encoder_name(cfg: Any) -> str:
    """The embeddings' encoder name: the preset's, LTX-2's stacked form apart (models.text_encoder_name)."""
    return text_encoder_name(get_preset(cfg.model, cfg.model_path), cfg.encode_text.ltx2_stacked_hidden_states)


def _encoder_table(cfg: Any) -> str:
    return f"{EMBEDDINGS}/encoder={_encoder_name(cfg)}"


def _ltx2_features(cfg: Any) -> bool:
    return get_preset(cfg.model, cfg.model_path).family == "ltx2" and not cfg.encode_text.ltx2_stacked_hidden_states


def _describe_text(job: Job) -> str:
    preset = get_preset(job.cfg.model, job.cfg.model_path)
    features = " -> connectors' text feature extractor (LTX-2 trainer conditions)" if _ltx2_features(job.cfg) else ""
    return f"{preset.pipeline_class}.encode_prompt{features}, max {preset.max_sequence_length} tokens, once per distinct caption"


def _embedding_sink_args(job: Job) -> dict[str, Any]:
    cfg = job.cfg
    preset = get_preset(cfg.model, cfg.model_path)
    metadata = {
        "model": preset.name,
        "text_pipeline": preset.pipeline_class,
        "text_encoder": _encoder_name(cfg),
        "repo": preset.repo,
        "max_sequence_length": preset.max_sequence_length,
        "latentforge": __version__,
        "layout": "embedding [length, dim], trimmed to the caption's token length",
    }
    if _ltx2_features(cfg):
        metadata["ltx2_text_features"] = True  # what exporters check: the trainer's conditions form
        metadata["layout"] = (
            "embedding = LTX-2 video_prompt_embeds [length, D] (the connectors' text feature extractor on "
            "the stacked Gemma hidden states, before the connector transformers), trimmed to the caption's "
            "tokens (left padded: the last `length` of the trainer's prompt_attention_mask); "
            "audio_embedding = audio_prompt_embeds [length, D_audio] where the model projects audio apart "
            "(LTX-2.3), else the video features serve both"
        )
    elif preset.family == "ltx2":
        metadata["layout"] = (
            "embedding = Gemma hidden states of every layer stacked per token [length, hidden * (layers + 1)] "
            "(LTX2Pipeline.encode_prompt), trimmed to the caption's tokens; not the trainer's text features"
        )
    return {"output": cfg.output, "table": _encoder_table(cfg), "key": "caption_id", "storage_options": cfg.storage_options, "metadata": metadata}


def text_enabled(cfg: Any) -> bool:
    return cfg.encode_text.enabled


TEXT = [
    Stage(
        "source",
        "source",
        None,
        lambda job: f"distinct captions of {join(job.cfg.output, LATENTS)}/ without an embedding "
        "(found by one Ray task that reads the caption columns; blocks in the object store)",
        read=distinct_captions,
        phase="text",
        enabled=text_enabled,
        operators=("FromArrow",),  # the task's blocks, as Ray Data names them
    ),
    Stage(
        "encode_text",
        "actors",
        model_actors.TextEncodeStage,
        _describe_text,
        resources=model_actors.TextEncodeStage.resources,
        enabled=text_enabled,
        config="encode_text",
        node_threads=True,
        args=lambda job: {
            "model": job.cfg.model,
            "model_path": job.cfg.model_path,
            "dtype": job.state.get("dtypes", {}).get("encode_text", {}).get("storage", job.cfg.encode_text.dtype),
            "batch_size": job.cfg.encode_text.batch_size,
            "ltx2_stacked_hidden_states": job.cfg.encode_text.ltx2_stacked_hidden_states,
            "quantization": job.cfg.encode_text.quantization,
            "call_time_limit_s": job.cfg.encode_text.call_time_limit_s,
        },
    ),
    Stage(
        "write_embeddings",
        "write",
        ShardSink,
        lambda job: f"{join(job.cfg.output, _encoder_table(job.cfg))}/",
        enabled=text_enabled,
        args=_embedding_sink_args,
    ),
]

STAGES = [source(), PROBE, *SPLIT_STAGES, *VIDEO, *TEXT]


# ---------------------------------------------------------------------------------------------
# run.json


def summarize(job: Job) -> tuple[dict[str, Any], tuple[str, ...]]:
    cfg = job.cfg
    preset = get_preset(cfg.model, cfg.model_path)
    video = job.results.get("write_latents", {})
    text = job.results.get("write_embeddings", {})
    errors = dict(video.get("errors", {}))
    for reason, n in text.get("errors", {}).items():
        errors[reason] = errors.get(reason, 0) + n
    counts: dict[str, Any] = {
        "input_rows": input_counts(job).get("input_rows", 0),
        "latents_written": job.state.get("latents_added", video.get("counts", {}).get("written", 0)),
        "duplicate_rows_skipped": job.state.get("duplicate_rows_skipped", 0),
        "latents_skipped_existing": video.get("counts", {}).get("skipped_existing", 0),
        "errors": sum(errors.values()),
        "errors_by_reason": errors,
    }
    if in_run(cfg):
        counts.update(captioned_in_run(job))
    if cfg.encode_text.enabled:
        counts.update(job.state.get("text_counts", {}))
        counts["embeddings_written"] = text.get("counts", {}).get("written", 0)
        counts["captions_truncated"] = text.get("counts", {}).get("captions_truncated", 0)
    if cfg.encode_video.with_audio:
        counts["clips_without_audio"] = video.get("counts", {}).get("clips_without_audio", 0)
    if cfg.export:
        counts.update(export_counts(job))
    decoded = dict(video.get("decoded_frames", {}))
    source_frames = video.get("counts", {}).get("source_frames", 0)
    fields = {
        "phase_wall_seconds": {k: round(job.phase_seconds.get(k, 0.0), 3) for k in ("video", "text", *job.phase_seconds)},
        "first_task_seconds": first_task_seconds(job),
        "stage_seconds": seconds_of(video, text),
        "decoded_frames": decoded,
        **(decode_figures(decoded, source_frames) if source_frames else {}),
        "counts": counts,
        "model": {
            "preset": preset.name,
            "repo": preset.repo,
            "vae_class": preset.vae_class,
            "text_pipeline": preset.pipeline_class,
            "text_encoder": _encoder_name(cfg),
        },
        "used_gpus": job.use_gpus,
        "dtypes": job.state.get("dtypes", {}),
    }
    return fields, ("torch", "diffusers", "transformers", "av")
