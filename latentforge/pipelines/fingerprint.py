"""The config fingerprint: the options that change what lands in an output, kept in run.json,
so a rerun into the same output with other such options is refused before any work and one
output never mixes two configs. Options that change speed only (actors, batch sizes, Ray,
segments) are not in it: they can change between runs freely."""

from __future__ import annotations

import json
from typing import Any

from latentforge.config import ConfigError, PipelineConfig
from latentforge.formats.shards import read_run_summary
from latentforge.operators.scenes.parts import SPEED_ONLY as SPLIT_SPEED_ONLY
from latentforge.pipelines.reference import result_options as reference_options
from latentforge.rows import stable_hash
from latentforge.storage import get_fs, join

CAPTION_RESULT_KEYS = (
    "backend", "task", "cot", "model", "model_path", "family", "override", "fps", "max_frames", "max_pixels",
    "prompt", "prompt_file", "max_new_tokens", "temperature", "dtype", "no_audio", "send_video",
)
# What --overwrite removes: every entry latentforge writes under an output, nothing else.
OUTPUT_ENTRIES = ("latents", "embeddings", "errors", "export", "clips", "captions", "clips.jsonl", "captions.jsonl", "run.json", "report.html", "report", "previews")


def result_options(cfg: PipelineConfig, splits: bool, captions: bool) -> dict[str, Any]:
    """Flat `section.key -> value` of every option that changes this run's results."""
    options: dict[str, Any] = {"pipeline_output": "clips" if cfg.pipeline == "split" else "captions" if cfg.pipeline == "caption" else "latents"}
    if cfg.pipeline not in ("split", "caption"):
        options.update({
            "model": cfg.model,
            "model_path": cfg.model_path,
            "buckets": sorted(str(b) for b in cfg.bucket_list()),
            "prepare.target_fps": cfg.prepare.target_fps,
            "prepare.resize_filter": cfg.prepare.resize_filter,
            "encode_video.dtype": cfg.encode_video.dtype,
            "encode_video.compute_dtype": cfg.encode_video.compute_dtype,
            "encode_video.tiling": cfg.encode_video.tiling,
            "encode_video.framewise": cfg.encode_video.framewise,
            "encode_video.store_logvar": cfg.encode_video.store_logvar,
            "encode_video.first_frame_latent": cfg.encode_video.first_frame_latent,
            "encode_video.i2v": cfg.encode_video.i2v,
            "encode_video.image_encoder": cfg.encode_video.image_encoder,
            "encode_video.with_audio": cfg.encode_video.with_audio,
        })
        options.update(reference_options(cfg))  # reference.kind, and its options when on
        if cfg.encode_text.enabled:
            options.update({
                f"encode_text.{k}": getattr(cfg.encode_text, k)
                for k in ("dtype", "trigger_word", "strip_openers", "ltx2_stacked_hidden_states", "quantization")
            })
    if splits:
        split = cfg.split.model_dump(mode="json")
        options.update({f"split.{k}": v for k, v in sorted(split.items()) if k not in SPLIT_SPEED_ONLY})
    if captions:
        options.update({f"caption.{k}": getattr(cfg.caption, k) for k in CAPTION_RESULT_KEYS})
    return json.loads(json.dumps(options, default=str))


def fingerprint(options: dict[str, Any]) -> dict[str, Any]:
    return {"hash": stable_hash(json.dumps(options, sort_keys=True), length=16), "options": options}


def recorded(output: str, storage_options: dict | None) -> dict[str, Any] | None:
    """The fingerprint in the output's run.json, None when there is no earlier run (or it
    predates fingerprints)."""
    try:
        return (read_run_summary(output, storage_options) or {}).get("fingerprint")
    except (ValueError, OSError):
        return None


def changed(before: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Options both runs set, with different values (an option one of them lacks, e.g. split
    settings of a run that did not split, is not a change)."""
    old, new = before.get("options", {}), now.get("options", {})
    if old.get("pipeline_output") != new.get("pipeline_output"):
        return {}  # a split or caption run beside latents: different tables, nothing mixed
    return {k: (old[k], new[k]) for k in sorted(old.keys() & new.keys()) if old[k] != new[k]}


def check(cfg: PipelineConfig, now: dict[str, Any]) -> None:
    """Refuse a run whose result options differ from those the output was made with."""
    before = recorded(cfg.output, cfg.storage_options)
    if not before:
        return
    diff = changed(before, now)
    if diff:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in diff.items())
        raise ConfigError(
            f"output {cfg.output} was made with other options ({listed}); its samples would mix two configs. "
            "Write to a new output, or pass --overwrite to delete its earlier results first"
        )


def clear_output(output: str, storage_options: dict | None) -> list[str]:
    """--overwrite: remove what latentforge wrote under the output (and only that)."""
    removed = []
    for name in OUTPUT_ENTRIES:
        fs, path = get_fs(join(output, name), storage_options)
        if fs.exists(path):
            fs.rm(path, recursive=True)
            removed.append(name)
    return removed
