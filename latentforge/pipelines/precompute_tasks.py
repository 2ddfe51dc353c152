"""The row functions and Ray tasks of `precompute` that run on CPU workers: bucketing, prepare's
decode, the text pass's distinct captions. They live apart from precompute.py, which imports
the model stack, because Ray imports a task's module in the worker that runs it: from here a
CPU worker never imports torch, diffusers or transformers (tests/test_architecture.py checks).
"""

from __future__ import annotations

from typing import Any

import ray

from latentforge.formats.shards import LATENTS, existing_values, read_table
from latentforge.operators import audio as audio_op
from latentforge.operators import frames as frames_op


def bucket_and_skip(row: dict[str, Any], buckets: list, target_fps: float | None, done: frozenset) -> dict[str, Any]:
    """The row's bucket and sample_id (from probe metadata, before any decode), and `_done` when
    that sample is in the output already: captioning, prepare and the VAE then pass it by."""
    out = frames_op.assign_bucket(row, buckets, target_fps)
    out["_done"] = bool(out.get("sample_id")) and out["sample_id"] in done
    return out


def prepare(
    row: dict[str, Any],
    target_fps: float | None,
    resize_filter: str,
    storage_options: dict,
    time_limit: tuple[float, float] | None = None,
    audio_rate: int | None = None,
) -> dict[str, Any]:
    """prepare's stage entry: decode the bucket frames (and with `audio_rate` the span's audio,
    encode_video.with_audio), unless the sample is done."""
    if row.get("_done"):
        out = {"_seconds_prepare": 0.0, "_decoded_frames_prepare": 0, **row, "frames": frames_op.NO_FRAMES}
    else:
        out = frames_op.load_frames(row, target_fps, resize_filter, storage_options, time_limit, audio_rate)
    return audio_op.prepare_audio(row, out, audio_rate, storage_options) if audio_rate else out


@ray.remote(num_cpus=0.25, num_returns="streaming")
def _distinct_captions(output: str, encoder_table: str, storage_options: dict, block_rows: int) -> Any:
    """Yields the counts, then blocks of (caption_id, caption) to encode. Runs on a worker: the
    caption columns of every latent shard and the embedded ids are read here, never on the
    driver, and the blocks' references belong to the driver (a streaming generator's do)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = read_table(output, LATENTS, ["caption_id", "caption"], storage_options)
    if table.num_rows == 0:
        table = pa.table({"caption_id": pa.array([], pa.string()), "caption": pa.array([], pa.string())})
    ids = table.column("caption_id")
    without_caption = table.num_rows - pc.count(ids).as_py()
    distinct = table.filter(pc.is_valid(ids)).group_by("caption_id", use_threads=False).aggregate([("caption", "first")])
    distinct = distinct.rename_columns(["caption_id", "caption"]).sort_by("caption_id")
    done = pa.array(sorted(existing_values(output, encoder_table, "caption_id", storage_options)), pa.string())
    todo = distinct.filter(pc.invert(pc.is_in(distinct.column("caption_id"), value_set=done)))
    yield {
        "latent_rows_without_caption": without_caption,
        "captions_distinct": distinct.num_rows,
        "embeddings_skipped_existing": distinct.num_rows - todo.num_rows,
        "embeddings_written": 0,
    }
    for start in range(0, todo.num_rows, block_rows):
        yield todo.slice(start, block_rows)
