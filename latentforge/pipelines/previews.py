"""Previews at the end of a run (`decode.samples_per_bucket`): `latentforge decode`'s work
(pipelines/decode.py) on a few latents per bucket, so a person can look at what will be trained
on without a second command. Written where `latentforge decode` writes them,
`<output>/previews/<bucket>/<sample_id>.mp4` (`.png` for images).

The decode runs in one Ray task, with a GPU when the run's model actors had GPUs: the driver of
a cluster run has none, and it receives only the previews' names, never latent rows. Like the
report, previews never fail a run: run.json's `previews` says what was written or why not.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from latentforge.storage import join

log = logging.getLogger("latentforge")
PREVIEWS = "previews"  # as pipelines/decode.py names the folder (that module loads torch; this one does not)


def _decode(output: str, samples: int, storage_options: dict) -> list[str]:
    from latentforge.pipelines.decode import decode_output

    return decode_output(output, samples=samples, storage_options=storage_options)


def previews_after_run(cfg: Any, summary: dict[str, Any]) -> dict[str, Any] | None:
    """Decode `cfg.decode.samples_per_bucket` latents of each bucket of the output; None when off
    (or for a pipeline that writes no latents). Returns run.json's `previews` field: the folder and
    how many files were written, or {"error"}."""
    samples = cfg.decode.samples_per_bucket
    if not samples or cfg.pipeline in ("split", "caption"):
        return None
    if not summary.get("counts", {}).get("latents_written") and not summary.get("counts", {}).get("latents_skipped_existing"):
        return {"samples_per_bucket": samples, "written": 0, "skipped": "no latents in the output"}
    gpus = 1 if summary.get("used_gpus") else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=1)(_decode)
    ref = task.remote(cfg.output, samples, cfg.storage_options)
    try:
        written = ray.get(ref, timeout=cfg.ray.no_progress_timeout_s)
    except Exception as e:  # noqa: BLE001 - previews are a convenience; the run's shards are what count
        from latentforge.rows import redact_credentials

        ray.cancel(ref, force=True)
        message = redact_credentials(f"{type(e).__name__}: {e}")[:500]
        log.warning("latentforge: previews could not be decoded (%s); the output itself is complete", message)
        return {"samples_per_bucket": samples, "error": message}
    log.info("previews: %d files under %s", len(written), join(cfg.output, PREVIEWS))
    return {"samples_per_bucket": samples, "folder": PREVIEWS, "written": len(written)}
