"""Checks made before Ray starts (and before a cluster spins up GPU nodes): the input can be
read and the output written, with the config key and the reason in one line instead of a
traceback from inside a task minutes later."""

from __future__ import annotations

import os
import posixpath
import uuid
from latentforge.config import ConfigError, PipelineConfig
from latentforge.storage import get_fs, is_local, join


def reason(e: BaseException) -> str:
    """What went wrong, short: the exception's class and first line (never the credentials,
    which no storage error message carries)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def check_input(cfg: PipelineConfig) -> None:
    try:
        fs, path = get_fs(cfg.input, cfg.storage_options)
        found = fs.exists(path)
    except Exception as e:  # noqa: BLE001 - any storage fault is the user's to fix: say which
        raise ConfigError(f"input {cfg.input}: cannot be read ({reason(e)}); check the path and storage_options / credentials") from None
    if not found:
        raise ConfigError(f"input {cfg.input}: not found")


def check_output(cfg: PipelineConfig) -> None:
    """A probe write under the output, removed again."""
    probe = join(cfg.output, f".tmp-write-check-{uuid.uuid4().hex}")
    try:
        fs, path = get_fs(probe, cfg.storage_options)
        if is_local(fs):
            fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fs.pipe_file(path, b"")
        fs.rm(path)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"output {cfg.output}: cannot write there ({reason(e)}); check the path and storage_options / credentials") from None


def check_storage(cfg: PipelineConfig) -> None:
    check_input(cfg)
    check_output(cfg)


# ---------------------------------------------------------------------------------------------
# Models


HUB_TIMEOUT_S = 5.0  # how long the hub gets to answer before a model counts as unreachable


def model_source(key: str, repo: str, probe_file: str) -> str | None:
    """Where model `repo` would load from, or why it cannot: a local folder (it must hold
    `probe_file`), the Hugging Face cache, or the hub answering within HUB_TIMEOUT_S. Returns
    None when it can load, else the reason (naming the config key and how to fix it)."""
    if _is_folder(repo):
        folder = os.path.expanduser(repo)
        if os.path.isfile(os.path.join(folder, probe_file)):
            return None
        return f"{key} {repo}: no {probe_file} there (a local folder in the Hugging Face layout is expected)"
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, probe_file)
    if isinstance(cached, str):
        return None
    path_key = f"{key}_path" if key.endswith("model") else key
    fix = f"download it first (`huggingface-cli download {repo}`), set {path_key} to a local copy, or use a tiny-* twin to try the pipeline offline"
    if constants.HF_HUB_OFFLINE:
        return f"{key} {repo}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set; {fix}"
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(repo, timeout=HUB_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - unreachable, unknown or gated: each needs the user
        return f"{key} {repo}: not in the Hugging Face cache and the hub does not serve it ({reason(e)}); {fix}"
    return None


def _is_folder(repo: str) -> bool:
    return os.path.isabs(repo) or repo.startswith((".", "~")) or os.path.isdir(repo)


def check_models(cfg: PipelineConfig, captions: bool) -> None:
    """Every model the run needs can be loaded from somewhere, checked in seconds before Ray
    starts instead of after a retrying model actor gives up."""
    from latentforge.models import get_preset

    needed: list[tuple[str, str, str]] = []
    if cfg.pipeline not in ("split", "caption"):
        preset = get_preset(cfg.model, cfg.model_path)
        if not preset.tiny:
            key = "model_path" if cfg.model_path else "model"
            needed.append((key, preset.repo, "vae/config.json"))
            if cfg.encode_video.with_audio:
                needed.append((key, preset.repo, "audio_vae/config.json"))  # LTX-2's audio VAE
            if cfg.encode_text.enabled:
                needed.append((key, preset.repo, "text_encoder/config.json"))
        if cfg.encode_video.i2v and not get_preset(cfg.model).tiny or cfg.encode_video.image_encoder:
            from latentforge.models.image_encoder import image_encoder_location

            if where := image_encoder_location(cfg.model, cfg.model_path, cfg.encode_video.i2v, cfg.encode_video.image_encoder):
                needed.append(("encode_video.image_encoder", where, "image_encoder/config.json"))
    if captions and cfg.caption.backend == "transformers" and not cfg.caption.model.startswith("tiny-"):
        needed.append(("caption.model_path" if cfg.caption.model_path else "caption.model", cfg.caption.model_path or cfg.caption.model, "config.json"))
    joining = bool(cfg.ray.cluster_address())
    for key, repo, probe_file in needed:
        if joining and _is_folder(repo) and not os.path.isdir(os.path.expanduser(repo)):
            continue  # a folder on the workers' volume, not on this machine: the actors will tell
        problem = model_source(key, repo, probe_file)
        if problem:
            raise ConfigError(problem)
