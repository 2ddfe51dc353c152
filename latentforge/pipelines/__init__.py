"""Named pipelines. `run` and `plan` pick the one a config names.

precompute: manifest -> probe -> prepare -> encode_video -> encode_text -> shards.
"""

from __future__ import annotations

from typing import Any


def plan(cfg: Any, use_gpus: bool | None = None) -> list:
    from latentforge.pipelines import precompute

    return precompute.plan(cfg, use_gpus)


def run(cfg: Any) -> dict[str, Any]:
    from latentforge.pipelines import precompute

    return precompute.run(cfg)
