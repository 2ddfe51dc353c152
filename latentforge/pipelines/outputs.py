"""An output read back on the cluster: its shard tables as Ray Datasets, and sets of the ids
already in it (for resume) as sorted arrays in Ray's object store.

An `IdSet` is built by a Ray task and shared by reference: the driver holds an ObjectRef and a
count, never the ids, and each worker maps the array from the object store once (zero-copy) to
answer `in` with a binary search. This is how a rerun over ten million samples skips the
finished ones without a ten-million-entry Python set on the driver or in every task's arguments.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import ray

from latentforge.formats.shards import EMBEDDINGS, ERRORS, LATENTS, existing_values, shard_paths
from latentforge.storage import get_fs, join

_CACHE: dict[str, np.ndarray] = {}  # ObjectRef hex -> the array, per worker process


@dataclass(frozen=True)
class IdSet:
    ref: Any  # ObjectRef of a sorted numpy bytes array
    size: int

    def __contains__(self, key: Any) -> bool:
        if not self.size or not key:
            return False
        ids = _resolve(self.ref)
        needle = str(key).encode("utf-8")
        i = int(np.searchsorted(ids, needle))
        return i < len(ids) and ids[i] == needle


EMPTY = IdSet(None, 0)


def _resolve(ref: Any) -> np.ndarray:
    key = ref.hex()
    if key not in _CACHE:
        if len(_CACHE) >= 4:  # one run uses one or two sets; keep a worker's memory bounded
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = ray.get(ref)
    return _CACHE[key]


@ray.remote(num_cpus=0.25, num_returns=2)
def _collect(read: Callable[..., Iterable[str]], *args: Any) -> tuple[np.ndarray, int]:
    values = [v.encode("utf-8") for v in read(*args) if v]
    ids = np.unique(np.array(values, dtype=bytes)) if values else np.array([], dtype="S1")
    return ids, len(ids)


def id_set(read: Callable[..., Iterable[str]], *args: Any, unless_missing: str | None = None, storage_options: dict[str, Any] | None = None) -> IdSet:
    """The ids that `read(*args)` yields, collected by a Ray task into the object store; EMPTY
    right away when `unless_missing` (a folder the ids live under) does not exist."""
    if unless_missing is not None:
        fs, path = get_fs(unless_missing, storage_options)
        if not fs.exists(path):
            return EMPTY
    ref, size = _collect.remote(read, *args)
    return IdSet(ref, int(ray.get(size)))


def existing_ids(output: str, table: str, column: str, storage_options: dict[str, Any] | None = None) -> IdSet:
    """The `column` values already written under output/table, as an IdSet (a fresh output's is
    EMPTY, without starting a task)."""
    return id_set(existing_values, output, table, column, storage_options, unless_missing=join(output, table), storage_options=storage_options)


def arrow_fs(fs: Any) -> Any:
    import pyarrow.fs as pafs

    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


@ray.remote(num_cpus=0.25)
def _remove_duplicates(output: str, table: str, key: str, storage_options: dict[str, Any] | None) -> tuple[int, int]:
    return remove_duplicates(output, table, key, storage_options)


def remove_duplicates(output: str, table: str, key: str, storage_options: dict[str, Any] | None = None) -> tuple[int, int]:
    """Keep one row per `key` in an output table; returns (rows removed, rows left).

    Two manifest rows for one clip (the same line twice, or the same clip with two captions)
    give one sample_id: both are encoded in the same pass, in different tasks, so only the
    finished table shows them. Of the rows sharing an id the one whose caption_id sorts first
    stays (a rule that does not depend on how Ray batched the rows); a shard that held a removed
    row is rewritten under the name of the ids it keeps, then the old one is deleted, so a crash
    between the two leaves a duplicate that the next run removes, never a lost row."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from latentforge.formats.shards import shard_name
    from latentforge.storage import write_bytes_atomic

    fs, root = get_fs(join(output, table), storage_options)
    paths = shard_paths(fs, root)
    ids: list[str] = []
    order: list[str] = []
    sizes: list[int] = []
    for path in paths:
        with fs.open(path, "rb") as f:
            names = pq.read_schema(f).names
            cols = pq.read_table(f, columns=[key] + (["caption_id"] if "caption_id" in names else []))
        ids.extend(cols.column(key).to_pylist())
        order.extend(cols.column("caption_id").to_pylist() if "caption_id" in cols.column_names else [None] * cols.num_rows)
        sizes.append(cols.num_rows)
    distinct = len(set(ids))
    if distinct == len(ids):
        return 0, distinct
    keep: dict[str, tuple[str, int]] = {}  # id -> (caption_id, row) of the row that stays
    for row, (sid, cid) in enumerate(zip(ids, order)):
        if sid not in keep or (cid or "", row) < keep[sid]:
            keep[sid] = (cid or "", row)
    kept_rows = {row for _, row in keep.values()}
    removed = start = 0
    for path, size in zip(paths, sizes):
        drop = {r - start for r in range(start, start + size) if r not in kept_rows}
        start += size
        if not drop:
            continue
        removed += len(drop)
        with fs.open(path, "rb") as f:
            whole = pq.read_table(f)
        rest = whole.filter(pa.array([i not in drop for i in range(whole.num_rows)]))
        new = posixpath.join(posixpath.dirname(path), shard_name(pc.cast(rest.column(key), pa.string()).to_pylist()))
        if rest.num_rows:
            sink = pa.BufferOutputStream()
            pq.write_table(rest, sink, compression="zstd")
            write_bytes_atomic(fs, new, sink.getvalue().to_pybytes())
        if new != path or not rest.num_rows:
            fs.rm(path)
    return removed, distinct


def dedupe(output: str, table: str, key: str, storage_options: dict[str, Any] | None = None) -> tuple[int, int]:
    """`remove_duplicates` in a Ray task (it reads every id of the table: not on the driver)."""
    fs, root = get_fs(join(output, table), storage_options)
    if not fs.exists(root):
        return 0, 0
    removed, rows = ray.get(_remove_duplicates.remote(output, table, key, storage_options))
    return int(removed), int(rows)


SWEPT = (LATENTS, EMBEDDINGS, ERRORS, "clips", "captions", "export")


def remove_temporaries(output: str, storage_options: dict[str, Any] | None = None) -> int:
    """Delete the `.tmp-*` files of writes that never finished (a run killed mid-write) under
    what latentforge writes; returns how many. Called when a run has finished its own writes."""
    fs, root = get_fs(output, storage_options)
    if not fs.exists(root):
        return 0
    found = [p for p in fs.ls(root, detail=False) if posixpath.basename(p.rstrip("/")).startswith(".tmp-")]
    for table in SWEPT:
        tfs, troot = get_fs(join(output, table), storage_options)
        if tfs.exists(troot):
            found.extend(p for p in tfs.find(troot) if posixpath.basename(p).startswith(".tmp-"))
    for path in found:
        fs.rm(path)
    return len(found)


@ray.remote(num_cpus=0.25)
def _remove_temporaries(output: str, storage_options: dict[str, Any] | None) -> int:
    return remove_temporaries(output, storage_options)


def sweep(output: str, storage_options: dict[str, Any] | None = None) -> int:
    """`remove_temporaries` in a Ray task (it lists the output's tables: not on the driver)."""
    return int(ray.get(_remove_temporaries.remote(output, storage_options)))
