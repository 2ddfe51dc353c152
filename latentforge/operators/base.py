"""What every operator declares beside its code: the resources one instance of it needs, and
what a model actor does once its model is loaded."""

from __future__ import annotations

import gc
from dataclasses import dataclass


@dataclass(frozen=True)
class Resources:
    """What one task or actor of a stage needs. The pipeline's stage description passes these to
    Ray Data (and nothing else does), with the config's overrides applied on top.

    `num_gpus` is what the stage asks for when the run uses GPUs; on a machine without CUDA the
    pipeline runs the same actors on CPU. `memory` is bytes of RAM per task or actor, for Ray's
    scheduler (None: Ray's default, no reservation). `num_cpus_without_gpus` is what an actor
    reserves on a run without GPUs when that differs (None: `num_cpus`).
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None
    num_cpus_without_gpus: float | None = None


# One GPU per model actor (VAE, text encoder), or one CPU on runs without GPUs.
MODEL_RESOURCES = Resources(num_cpus=1, num_gpus=1)


def settle_after_load() -> None:
    """Call once a model actor has loaded its model. What torch, diffusers and transformers made
    at import and load lives as long as the actor, so it leaves the garbage collector's
    generations (`gc.freeze`): each collection then skips millions of objects, and the actor's
    exit no longer spends 1-1.5 s of CPU in a last collection over them, which kept the process,
    and its memory, alive after its pass (docs/scale.md, "One model process at a time")."""
    gc.collect()
    gc.freeze()
