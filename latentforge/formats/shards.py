"""Output shards (DESIGN.md, Outputs): latents by bucket, embeddings by encoder, error rows,
as plain Parquet files; the Ray sinks that write them are in pipelines/sinks.py.

A shard's name is a hash of the ids it holds and it is written whole or not at all, so a
retried Ray task rewrites the same file and a rerun that skips finished ids adds no duplicate.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from latentforge.rows import plain, redact_credentials, stable_hash
from latentforge.storage import get_fs, join, write_bytes_atomic

LATENTS = "latents"
EMBEDDINGS = "embeddings"
ERRORS = "errors"

# Types of the contract columns, so every shard of a table has the same schema even when a
# shard happens to hold only nulls in a column.
COLUMN_TYPES: dict[str, pa.DataType] = {
    "sample_id": pa.string(),
    "uri": pa.string(),
    "media_type": pa.string(),
    "caption": pa.string(),
    "caption_id": pa.string(),
    "bucket": pa.string(),
    "start_frame": pa.int64(),
    "end_frame": pa.int64(),
    "num_frames": pa.int64(),
    "source_frames": pa.int64(),
    "fps": pa.float64(),
    "source_fps": pa.float64(),
    "width": pa.int64(),
    "height": pa.int64(),
    "rotation": pa.int64(),
    "has_audio": pa.bool_(),
    "error": pa.string(),
    "error_stage": pa.string(),
    "length": pa.int64(),
    "scene_index": pa.int64(),
    "parent_start_frame": pa.int64(),
    "parent_end_frame": pa.int64(),
    "parent_uri": pa.string(),
    "start_time": pa.float64(),
    "end_time": pa.float64(),
}
for _name in ("latent", "logvar", "embedding", "pooled_embedding"):
    COLUMN_TYPES[f"{_name}_bytes"] = pa.binary()
    COLUMN_TYPES[f"{_name}_shape"] = pa.list_(pa.int64())
    COLUMN_TYPES[f"{_name}_dtype"] = pa.string()
# LTX-2 audio (encode_video.with_audio): typed, so a shard whose rows all lack audio still merges
COLUMN_TYPES.update({"audio_status": pa.string(), "audio_duration": pa.float64()})
COLUMN_TYPES.update({"audio_latent_bytes": pa.binary(), "audio_latent_shape": pa.list_(pa.int64()), "audio_latent_dtype": pa.string()})

# Columns that only exist while a row is in flight.
TRANSIENT = ("frames", "audio")


def to_table(rows: list[dict[str, Any]], drop: Iterable[str] = ()) -> pa.Table:
    drop = set(drop) | set(TRANSIENT)
    names = [k for k in rows[0] if k not in drop and not k.startswith("_")]
    arrays, fields = [], []
    for name in names:
        typ = COLUMN_TYPES.get(name)
        values = [plain(r.get(name), keep_nan=typ is not None and pa.types.is_floating(typ)) for r in rows]
        arr = pa.array(values, type=typ) if typ is not None else pa.array(values)
        if pa.types.is_null(arr.type):
            arr = arr.cast(pa.string())
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def table_bytes(table: pa.Table, metadata: dict[str, Any] | None = None) -> bytes:
    if metadata:
        meta = dict(table.schema.metadata or {})
        meta[b"latentforge"] = json.dumps(metadata, sort_keys=True).encode()
        table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def shard_name(ids: Iterable[str]) -> str:
    return f"part-{stable_hash(*sorted(ids), length=20)}.parquet"


def write_error_shard(output: str, errors: list[dict[str, Any]], storage_options: dict[str, Any] | None = None) -> None:
    """One shard of failed rows under output/errors/, named by the rows it holds; tensors dropped,
    credentials in URLs (a presigned media URL, `user:password@`) masked in every text column."""
    if not errors:
        return
    errors = [{k: redact_credentials(v) if isinstance(v, str) else v for k, v in r.items()} for r in errors]
    ids = [stable_hash(r.get("uri"), r.get("start_frame"), r.get("end_frame"), r.get("error")) for r in errors]
    drop = [k for k in errors[0] if k.endswith(("_bytes", "_shape", "_dtype"))]
    fs, path = get_fs(join(output, ERRORS, shard_name(ids)), storage_options)
    write_bytes_atomic(fs, path, table_bytes(to_table(errors, drop)))


def write_run_summary(output: str, summary: dict[str, Any], storage_options: dict[str, Any] | None = None) -> None:
    """run.json of the latest run, written whole."""
    fs, path = get_fs(join(output, "run.json"), storage_options)
    write_bytes_atomic(fs, path, json.dumps(summary, indent=2).encode())


def read_run_summary(output: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """run.json of the latest run into `output`, None when there is none."""
    fs, path = get_fs(join(output, "run.json"), storage_options)
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))


def existing_values(output: str, table: str, column: str, storage_options: dict[str, Any] | None = None) -> set[str]:
    """Ids already written under output/table (for resume); reads only that column."""
    fs, root = get_fs(join(output, table), storage_options)
    values: set[str] = set()
    for p in shard_paths(fs, root):
        with fs.open(p, "rb") as f:
            values.update(pq.read_table(f, columns=[column]).column(column).to_pylist())
    return values


def shard_bucket(path: str) -> str | None:
    """The bucket of a latent shard from its hive partition folder (`.../bucket=WxHxF/part-*.parquet`),
    None for a shard outside one."""
    folder = posixpath.basename(posixpath.dirname(path))
    return folder.split("=", 1)[1] if folder.startswith("bucket=") else None


def shard_paths(fs: Any, root: str) -> list[str]:
    """Finished shards under root; temp files of interrupted writes are not shards."""
    if not fs.exists(root):
        return []
    return sorted(p for p in fs.find(root) if p.endswith(".parquet") and "/.tmp-" not in p)


def read_table(output: str, table: str, columns: list[str] | None = None, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """All shards of one output table as one Arrow table, hive partitions (bucket=...) as columns."""
    fs, root = get_fs(join(output, table), storage_options)
    paths = shard_paths(fs, root)
    if not paths:
        return pa.table({})
    dataset = pads.dataset(paths, filesystem=fs, format="parquet", partitioning="hive", partition_base_dir=root)
    result = dataset.to_table(columns=columns)
    for i, field in enumerate(result.schema):  # partition values come back dictionary-encoded
        if pa.types.is_dictionary(field.type):
            result = result.set_column(i, field.name, result.column(i).cast(field.type.value_type))
    return result
