"""encode_video's part for IC-LoRA references: `reference_frames` -> `reference_latent_*`.

The same VAE, in the same actor, as the target (LTX-2's process_dataset encodes references with
the video VAE into `reference_latents/`): the latent mean of the reference frames, stored in the
latents' dtype. Same-shape references share a call; a failing call is retried row by row so
one bad reference fails only its own row. Runs in the model actor (imports torch)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from latentforge.formats.tensors import to_columns
from latentforge.operators.time_limit import SampleTimeout, within

NAME = "reference_latent"
PARTS = ("bytes", "shape", "dtype")


def add_references(stage: Any, refs: Any, results: dict[str, list[Any]], failed: dict[int, str], skip: set[int]) -> None:
    """Add the `reference_latent_*` columns to encode_video's `results`; a row whose reference
    fails joins `failed` and loses its target latent too (an error row holds no latent)."""
    columns, ref_failed = encode_references(stage, refs, skip | set(failed))
    results.update(columns)
    for i, reason in ref_failed.items():
        failed[i] = reason
        for values in results.values():
            values[i] = None


def encode_references(stage: Any, refs: Any, skip: set[int]) -> tuple[dict[str, list[Any]], dict[int, str]]:
    """`stage` is the VideoEncodeStage (its VAE, dtypes, memory plans and time limit); `refs`
    the batch's `reference_frames` column. Returns the `reference_latent_*` columns (None where a
    row has no reference) and the rows whose reference failed, with the reason."""
    n = len(refs)
    columns: dict[str, list[Any]] = {f"{NAME}_{part}": [None] * n for part in PARTS}
    failed: dict[int, str] = {}
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i in range(n):
        if i not in skip and refs[i] is not None and np.size(refs[i]) > 0:
            groups[tuple(np.shape(refs[i]))].append(i)
    for shape, rows in groups.items():
        plan = stage.memory_plan(shape)
        stage.use_plan(plan)
        for k in range(0, len(rows), plan.micro_batch):
            chunk = rows[k : k + plan.micro_batch]
            for i, result in _encode(stage, refs, chunk).items():
                if isinstance(result, BaseException):
                    failed[i] = f"reference vae encode failed ({type(result).__name__}: {str(result).strip()[:300]})"
                    continue
                for key, value in to_columns(NAME, result, stage.dtype_name).items():
                    columns[key][i] = value
    return columns, failed


def _encode(stage: Any, refs: Any, rows: list[int]) -> dict[int, Any]:
    try:
        mean, _ = within(stage.call_time_limit_s, stage.encode, np.stack([refs[i] for i in rows]))
    except SampleTimeout as e:  # a hung call: the actor's next batch restarts it (VideoEncodeStage)
        stage.stuck = True
        return dict.fromkeys(rows, TimeoutError(f"the VAE call did not return ({e}; encode_video.call_time_limit_s)"))
    except Exception as e:  # noqa: BLE001 - isolated row by row below
        if len(rows) > 1:
            return {i: r for j in rows for i, r in _encode(stage, refs, [j]).items()}
        return {rows[0]: e}
    out: dict[int, Any] = {}
    for j, i in enumerate(rows):
        finite = bool(torch.isfinite(mean[j]).all())
        out[i] = mean[j] if finite else FloatingPointError("the reference latent has NaN or inf values")
    return out
