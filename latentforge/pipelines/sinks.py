"""Ray Data sinks: the `write` stages that end a pass.

Every sink shares `RowSink`: it turns blocks into plain rows, adds up what the stages reported
in their `_seconds_<stage>`, `_decoded_frames_<stage>`, `_source_frames_<stage>` and
`_count_<name>` columns (the last into `counts[name]`),
tells the run's `progress.Progress` actor (when the runtime set `progress`) how many rows it finished,
writes failed rows to `errors/` (one shard per task, named by its rows) and counts them by
kind; a subclass says what a good row becomes (`take`) and what a task writes at its end
(`flush`). `on_write_complete` runs on the driver and adds the tasks' returns up into `result`.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from typing import Any, Iterable

import pyarrow as pa
import ray
from ray.data import Datasink
from ray.data.datasource.datasink import WriteResult

from latentforge.formats.shards import shard_name, table_bytes, to_table, write_error_shard
from latentforge.rows import error_kind, is_error
from latentforge.storage import get_fs, join, write_bytes_atomic

# The per-task tallies every sink returns, added up across tasks.
TALLIES = ("counts", "errors", "seconds", "decoded_frames")


def block_rows(blocks: Iterable[Any]) -> Iterable[dict[str, Any]]:
    """Rows of Ray blocks (Arrow or pandas) with NaN-for-missing turned back into None."""
    for block in blocks:
        records = block.to_pylist() if isinstance(block, pa.Table) else block.to_dict("records")
        for row in records:
            yield {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def sum_write_returns(write_returns: list[dict[str, Any]], keys: tuple[str, ...] = TALLIES) -> dict[str, dict[str, Any]]:
    """Add up the per-task counters a sink's `write` returned."""
    totals: dict[str, Counter] = {key: Counter() for key in keys}
    for r in write_returns:
        for key, total in totals.items():
            total.update(r.get(key, {}))
    return {key: dict(total) for key, total in totals.items()}


class RowSink(Datasink):
    """The shared part of every sink (see the module docstring)."""

    name = "rows"
    progress: Any = None  # the run's Progress actor; runtime.apply sets it (docs/report.md)

    def __init__(self, output: str, storage_options: dict[str, Any] | None = None):
        self.output = output
        self.storage_options = storage_options or {}
        self.result: dict[str, Any] = {}

    def get_name(self) -> str:
        return f"latentforge[{self.name}]"

    def take(self, row: dict[str, Any], counts: Counter) -> None:
        """A good row: count it and keep what `flush` writes."""
        raise NotImplementedError

    def flush(self) -> dict[str, Any]:
        """Write what this task kept; returns extra fields for its write return."""
        return {}

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        counts: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        seconds: Counter[str] = Counter()
        decoded: Counter[str] = Counter()
        errors: list[dict[str, Any]] = []
        rows_seen = 0
        for row in block_rows(blocks):
            rows_seen += 1
            for k, v in row.items():
                if k.startswith("_seconds_") and v:
                    seconds[k[len("_seconds_") :]] += float(v)
                elif k.startswith("_decoded_frames_") and v:
                    decoded[k[len("_decoded_frames_") :]] += int(v)
                elif k.startswith("_source_frames_") and v:
                    counts["source_frames"] += int(v)
                elif k.startswith("_count_") and v:
                    counts[k[len("_count_") :]] += int(v)
            if is_error(row):
                errors.append(row)
                kinds[error_kind(row)] += 1
            else:
                self.take(row, counts)
        extra = self.flush()
        write_error_shard(self.output, errors, self.storage_options)
        seconds[f"write_{self.name}"] += time.perf_counter() - t0
        if self.progress is not None:  # progress lines and run.json's timeline; in before the task ends
            try:
                ray.get(self.progress.add.remote(self.name, rows_seen, len(errors), time.time()), timeout=30)
            except Exception:  # noqa: BLE001 - progress is best effort, the shards are written
                pass
        return {"counts": dict(counts), "errors": dict(kinds), "seconds": dict(seconds), "decoded_frames": dict(decoded), **extra}

    def on_write_complete(self, write_result: WriteResult) -> None:
        self.result = sum_write_returns(write_result.write_returns)


class ShardSink(RowSink):
    """Latent or embedding shards: each row goes to its table's partition (`bucket=...`), one
    shard per partition per task, named by the hash of its ids. Rows flagged `_done` were in
    the output already and are only counted."""

    def __init__(
        self,
        output: str,
        table: str,
        key: str,
        partition: str | None = None,
        storage_options: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__(output, storage_options)
        self.name = self.table = table
        self.key = key
        self.partition = partition
        self.metadata = metadata or {}
        self._groups: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def take(self, row: dict[str, Any], counts: Counter) -> None:
        if row.get("_done"):
            counts["skipped_existing"] += 1
            return
        part = f"{self.partition}={row[self.partition]}" if self.partition else ""
        self._groups[part].append(row)
        counts["written"] += 1

    def flush(self) -> dict[str, Any]:
        # the partition value lives in the path (hive style), as pandas/pyarrow/DuckDB expect
        drop = ("error", "error_stage") + ((self.partition,) if self.partition else ())
        for part, rows in self._groups.items():
            url = join(self.output, join(self.table, part) if part else self.table, shard_name(r[self.key] for r in rows))
            fs, path = get_fs(url, self.storage_options)
            write_bytes_atomic(fs, path, table_bytes(to_table(rows, drop), self.metadata))
        self._groups.clear()
        return {}
