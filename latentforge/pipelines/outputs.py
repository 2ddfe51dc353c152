"""An output read back on the cluster: its shard tables as Ray Datasets, and sets of the ids
already in it (for resume) as sorted arrays in Ray's object store.

An `IdSet` is built by a Ray task and shared by reference: the driver holds an ObjectRef and a
count, never the ids, and each worker maps the array from the object store once (zero-copy) to
answer `in` with a binary search. This is how a rerun over ten million samples skips the
finished ones without a ten-million-entry Python set on the driver or in every task's arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import ray

from latentforge.formats.shards import existing_values, shard_paths
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


def id_set(read: Callable[..., Iterable[str]], *args: Any) -> IdSet:
    """The ids that `read(*args)` yields, collected by a Ray task into the object store."""
    ref, size = _collect.remote(read, *args)
    return IdSet(ref, int(ray.get(size)))


def existing_ids(output: str, table: str, column: str, storage_options: dict[str, Any] | None = None) -> IdSet:
    """The `column` values already written under output/table, as an IdSet."""
    return id_set(existing_values, output, table, column, storage_options)


def arrow_fs(fs: Any) -> Any:
    import pyarrow.fs as pafs

    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def read_shards(output: str, table: str, columns: list[str] | None = None, storage_options: dict[str, Any] | None = None) -> Any:
    """A shard table of the output as a Ray Dataset (hive partitions such as bucket=... become
    columns), read by Ray tasks; None when the table has no finished shard yet."""
    fs, root = get_fs(join(output, table), storage_options)
    paths = shard_paths(fs, root)  # finished shards only: an interrupted write's temp file is not one
    if not paths:
        return None
    partitioning = ray.data.datasource.partitioning.Partitioning("hive", base_dir=root)
    ds = ray.data.read_parquet(paths, filesystem=arrow_fs(fs), partitioning=partitioning)
    return ds.select_columns(columns) if columns else ds
