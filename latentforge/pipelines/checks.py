"""Checks made before Ray starts (and before a cluster spins up GPU nodes): the input can be
read and the output written, with the config key and the reason in one line instead of a
traceback from inside a task minutes later."""

from __future__ import annotations

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
