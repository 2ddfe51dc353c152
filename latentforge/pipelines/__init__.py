"""Named pipelines. `run` and `plan` pick the one a config names.

precompute: manifest -> probe -> prepare -> encode_video -> encode_text -> shards.
caption: manifest -> probe -> caption -> a reviewable caption manifest (pipelines/caption.py).
split: manifest -> probe -> split_scenes -> clips.jsonl (+ clip files) (pipelines/split.py).
"""

from __future__ import annotations

from typing import Any


def plan(cfg: Any, use_gpus: bool | None = None) -> list:
    if cfg.pipeline == "caption":
        from latentforge.pipelines import caption

        return caption.plan(cfg, use_gpus)
    if cfg.pipeline == "split":
        from latentforge.pipelines import split

        return split.plan(cfg, use_gpus)
    from latentforge.pipelines import precompute

    return precompute.plan(cfg, use_gpus)


def preflight(cfg: Any) -> None:
    """Checks that need neither Ray nor data, made before Ray starts, so that a config that
    cannot run fails in a second with a ConfigError instead of after the cluster spins up."""
    if cfg.pipeline in ("caption", "all") or cfg.caption.enabled:
        from latentforge.pipelines import caption

        caption.preflight(cfg)


def run(cfg: Any) -> dict[str, Any]:
    preflight(cfg)
    if cfg.pipeline == "caption":
        from latentforge.pipelines import caption

        return caption.run(cfg)
    if cfg.pipeline == "split":
        from latentforge.pipelines import split

        return split.run(cfg)
    from latentforge.pipelines import precompute

    return precompute.run(cfg)
