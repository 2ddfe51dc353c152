"""Captioning settings: the caption section as operator options, and the checks that refuse a
config that cannot caption (before Ray starts where possible, else before any work)."""

from __future__ import annotations

import os
import posixpath

import ray

from latentforge.cluster import cluster_has_gpus
from latentforge.config import ConfigError, PipelineConfig
from latentforge.formats.caption_manifest import DEFAULT_MANIFEST, MANIFEST_EXTENSIONS
from latentforge.operators import captioning as cap_op
from latentforge.operators.caption_api import Secret
from latentforge.storage import join


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


def family(cfg: PipelineConfig) -> str | None:
    c = cfg.caption
    if c.family != "auto":
        return c.family
    from latentforge.captioner_models import family_from_name  # torch: only where a family is resolved

    return family_from_name(c.model_path or c.model)


def hears_audio(cfg: PipelineConfig) -> bool:
    c = cfg.caption
    return c.backend == "transformers" and not c.no_audio and c.task == "describe" and family(cfg) == "qwen2.5-omni"


def quantization_key(cfg: PipelineConfig) -> str | None:
    """caption.use_8bit / caption.use_4bit when the captioner loads bitsandbytes weights."""
    c = cfg.caption
    if c.backend != "transformers":
        return None
    return "caption.use_8bit" if c.use_8bit else ("caption.use_4bit" if c.use_4bit else None)


def quantization_error(key: str, why: str) -> ConfigError:
    return ConfigError(
        f"{key}: bitsandbytes quantization needs CUDA GPUs and {why}; set {key}: false, or run where "
        "the captioner gets GPUs (ray.use_gpus: true where GPU workers scale from zero)"
    )


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def preflight(cfg: PipelineConfig) -> None:
    """What can be refused before Ray starts (`pipelines.run` calls it): bitsandbytes
    quantisation where the captioner cannot get a GPU (ray.use_gpus: false, or an embedded local
    Ray on a machine without CUDA), an unreadable prompt file. On a cluster the GPUs are known only
    once connected; `check` refuses quantisation there."""
    key = quantization_key(cfg)
    if key is not None:
        use_gpus = cfg.ray.use_gpus
        if use_gpus is None and ray.is_initialized():  # already connected (a notebook, tests): ask it
            use_gpus = cluster_has_gpus()
            if not use_gpus:
                raise quantization_error(key, "the Ray cluster this process is connected to has no GPUs")
        if use_gpus is None and not cfg.ray.cluster_address():
            use_gpus = cuda_available()  # the embedded local Ray has this machine's GPUs
            if not use_gpus:
                raise quantization_error(key, "this machine has no CUDA (the run would use an embedded local Ray)")
        if use_gpus is False:
            raise quantization_error(key, "ray.use_gpus is false")
    caption_options(cfg)  # reads the prompt file


def check(cfg: PipelineConfig, use_gpus: bool) -> None:
    """Refuse what cannot work before any work starts."""
    key = quantization_key(cfg)
    if key is not None and not use_gpus:
        raise quantization_error(key, "this run uses none")
    caption_options(cfg)  # reads the prompt file


def api_key(cfg: PipelineConfig):
    name = cfg.caption.api_key_env
    return Secret(os.environ.get(name) if name else None)


def manifest_url(cfg: PipelineConfig) -> str:
    url = cfg.caption.manifest or join(cfg.output, DEFAULT_MANIFEST)
    ext = posixpath.splitext(url.rstrip("/"))[1].lower()
    if ext not in MANIFEST_EXTENSIONS:
        raise ConfigError(f"caption.manifest: {url!r} must end with one of {', '.join(MANIFEST_EXTENSIONS)}")
    return url
