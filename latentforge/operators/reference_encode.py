"""encode_video's part for IC-LoRA references: `reference_frames` -> `reference_latent_*`.

The same VAE, in the same actor, as the target (LTX-2's process_dataset encodes references with
the video VAE into `reference_latents/`): the latent mean of the reference frames, stored in the
latents' dtype, through the stage's own `encode_column` (same-shape calls, memory plans, one bad
reference failing only its own row, the time limit). Runs in the model actor (imports torch)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from latentforge.operators.time_limit import within

NAME = "reference_latent"


def add_references(stage: Any, refs: Any, results: dict[str, list[Any]], failed: dict[int, str], skip: set[int]) -> None:
    """Add the `reference_latent_*` columns to encode_video's `results`; a row whose reference
    fails joins `failed` and loses its target latent too (an error row holds no latent).
    `stage` is the VideoEncodeStage; `refs` the batch's `reference_frames` column."""

    def reference_tensors(stack: np.ndarray) -> dict[str, torch.Tensor]:
        return {NAME: within(stage.call_time_limit_s, stage.encode, stack)[0]}

    skip = skip | set(failed)
    rows = [i for i in range(len(refs)) if i not in skip and refs[i] is not None and np.size(refs[i]) > 0]
    columns, ref_failed = stage.encode_column(refs, rows, [NAME], reference_tensors, "reference latent", "reference vae encode failed")
    results.update(columns)
    for i, reason in ref_failed.items():
        failed[i] = reason
        for values in results.values():
            values[i] = None
