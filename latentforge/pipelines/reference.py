"""The `reference` stage of precompute (IC-LoRA references, operators/reference.py): where it
sits, what it gets and how `plan` says it. On only with `reference.kind` manifest or canny."""

from __future__ import annotations

from typing import Any

from latentforge.operators import reference as reference_op
from latentforge.pipelines.stages import Job, Stage


def enabled(cfg: Any) -> bool:
    return cfg.reference.kind != "none"


def _args(job: Job) -> dict[str, Any]:
    cfg, p = job.cfg, job.cfg.prepare
    return {
        **cfg.reference.model_dump(include={"kind", "canny_low", "canny_high", "downscale_factor", "temporal_scale_factor"}),
        "target_fps": p.target_fps,
        "resize_filter": p.resize_filter,
        "storage_options": cfg.storage_options,
        "time_limit": (p.time_limit_s, p.time_limit_per_frame_s),
    }


def _describe(job: Job) -> str:
    ref = job.cfg.reference
    made = "the manifest's reference column" if ref.kind == "manifest" else (
        f"the manifest's reference column, else Canny edges of the target's frames (cv2.Canny {ref.canny_low}, {ref.canny_high})"
    )
    scale = []
    if ref.downscale_factor > 1:
        scale.append(f"1/{ref.downscale_factor} size")
    if ref.temporal_scale_factor > 1:
        scale.append(f"frames 0, 1, 1+{ref.temporal_scale_factor}, ...: 1 in {ref.temporal_scale_factor}")
    return f"IC-LoRA reference from {made}; the target's bucket, crop and frames" + (f" ({', '.join(scale)})" if scale else "")


def result_options(cfg: Any) -> dict[str, Any]:
    """The reference options for the run's fingerprint (pipelines/fingerprint.py): the kind,
    and the rest when references are on. An output made before this section has no kind, which
    fingerprint.changed does not count as a change."""
    if not enabled(cfg):  # kind always: turning references on over an output without them is refused
        return {"reference.kind": cfg.reference.kind}
    return {f"reference.{k}": v for k, v in cfg.reference.model_dump().items()}


STAGE = Stage(
    "reference",
    "map",
    reference_op.make_reference,
    _describe,
    resources=reference_op.RESOURCES,
    enabled=enabled,
    args=_args,
)
