"""Progress while a run works, and the timeline run.json keeps (docs/report.md).

On a terminal, Ray Data draws its own progress bars (rows per operator, rows/s). For job logs
(not a terminal) a driver thread prints one concise line per interval:

    progress 2m30s | read 5000 input rows | latents: 1234 rows (3 errors), 8.2 rows/s, ETA 7m34s

The numbers come from a small `Progress` actor that every sink's write task tells how many rows
it finished (a few numbers per write task; the driver never sees rows); it is also the run's read
tally (tally.py). The same actor keeps, per sink, rows
finished per time bin since the run started; bins double in width past MAX_BINS, so run.json's
`timeline` stays the same size however long the run or large the input.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import ray

from latentforge.cluster import on_driver_node
from latentforge.pipelines.tally import ReadCounts, totals

log = logging.getLogger("latentforge")

MAX_BINS = 120
FIRST_BIN_SECONDS = 1.0
INTERVAL_S = float(os.environ.get("LATENTFORGE_PROGRESS_INTERVAL_S", "30"))


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Progress(ReadCounts):
    """Rows each sink finished, as totals and in time bins since `start`; and the input rows the
    read tasks reported (`ReadCounts`)."""

    def __init__(self, start: float) -> None:
        super().__init__()
        self.start = start
        self.bin_seconds = FIRST_BIN_SECONDS
        self.bins: dict[str, list[int]] = {}
        self.done: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.first: dict[str, float] = {}  # per sink: seconds from the start to its first finished row

    def add(self, sink: str, rows: int, errors: int, at: float) -> None:
        if rows and sink not in self.first:
            self.first[sink] = round(max(0.0, at - self.start), 3)
        self.done[sink] = self.done.get(sink, 0) + rows
        self.errors[sink] = self.errors.get(sink, 0) + errors
        index = max(0, int((at - self.start) / self.bin_seconds))
        while index >= MAX_BINS:  # coarser bins, never more of them
            self.bin_seconds *= 2
            for name, counts in self.bins.items():
                self.bins[name] = [sum(counts[i : i + 2]) for i in range(0, len(counts), 2)]
            index = max(0, int((at - self.start) / self.bin_seconds))
        counts = self.bins.setdefault(sink, [])
        counts.extend([0] * (index + 1 - len(counts)))
        counts[index] += rows

    def snapshot(self) -> dict[str, Any]:
        return {"done": dict(self.done), "errors": dict(self.errors)}

    def timeline(self) -> dict[str, Any]:
        width = max((len(c) for c in self.bins.values()), default=0)
        rows = {k: c + [0] * (width - len(c)) for k, c in sorted(self.bins.items())}
        return {"bin_seconds": self.bin_seconds, "rows": rows, "first_row_seconds": dict(sorted(self.first.items()))}


def start_progress(started: float) -> Any:
    return Progress.options(**on_driver_node()).remote(started)


def timeline(actor: Any | None) -> dict[str, Any]:
    """run.json's `timeline`: {"bin_seconds", "rows": {sink: [rows finished per bin]},
    "first_row_seconds": {sink: seconds from the start to its first finished row}}."""
    if actor is None:
        return {}
    try:
        return ray.get(actor.timeline.remote(), timeout=30)
    except Exception:  # noqa: BLE001 - a timeline is nice to have, never worth failing a run
        return {}


def duration(seconds: float) -> str:
    """3s, 2m05s, 1h02m."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_line(elapsed: float, input_rows: int | None, input_complete: bool, done: dict[str, int], errors: dict[str, int],
                rates: dict[str, float], eta_sink: str | None = None) -> str:
    """One progress line (pure, for job logs). ETA only for `eta_sink` (the sink that gets one
    row per input row) once every read task has reported how many rows the input has."""
    parts = [f"progress {duration(elapsed)}"]
    if input_rows is not None:
        parts.append(f"read {input_rows} input rows" + ("" if input_complete else " so far"))
    for sink in sorted(done):
        text = f"{sink}: {done[sink]} rows"
        if errors.get(sink):
            text += f" ({errors[sink]} errors)"
        rate = rates.get(sink, 0.0)
        text += f", {rate:.1f} rows/s"
        if sink == eta_sink and input_complete and input_rows and rate > 0 and done[sink] <= input_rows:
            text += f", ETA {duration((input_rows - done[sink]) / rate)}"
        parts.append(text)
    if len(parts) == 1 + (input_rows is not None):
        parts.append("starting (no rows written yet)")
    return " | ".join(parts)


def dashboard_url() -> str | None:
    """The Ray dashboard's address when the connected Ray runs one (a cluster; the embedded
    local Ray starts without it)."""
    try:
        from ray._private.worker import get_dashboard_url

        url = get_dashboard_url()
    except Exception:  # noqa: BLE001 - a private helper that may move between Ray versions
        return None
    if not url:
        return None
    return url if url.startswith("http") else f"http://{url}"


def is_terminal() -> bool:
    return sys.stderr.isatty()


@contextmanager
def reporting(job: Any, interval: float = INTERVAL_S, force: bool = False) -> Iterator[None]:
    """While the body runs: a line per interval when not on a terminal (or `force`)."""
    url = dashboard_url()
    if url:
        log.info("Ray dashboard: %s", url)
    actor = job.state.get("progress")
    if actor is None or not (force or not is_terminal()) or interval <= 0:
        yield
        return
    stop = threading.Event()
    thread = threading.Thread(target=_loop, args=(job, actor, interval, stop), name="latentforge-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _loop(job: Any, actor: Any, interval: float, stop: threading.Event) -> None:
    last_done: dict[str, int] = {}
    last_time = time.time()
    eta_sink = None if getattr(job.cfg.split, "enabled", False) else "latents"
    while not stop.wait(interval):
        try:
            snap = ray.get(actor.snapshot.remote(), timeout=10)
            tally = totals(job.state.get("tally")) if job.state.get("tally") is not None else None
        except Exception:  # noqa: BLE001 - progress is best effort
            continue
        now = time.time()
        rates = {k: (v - last_done.get(k, 0)) / max(1e-6, now - last_time) for k, v in snap["done"].items()}
        last_done, last_time = dict(snap["done"]), now
        input_rows = tally["counts"].get("input_rows") if tally else None
        complete = bool(tally) and tally.get("reports", 0) >= int(job.state.get("read_parts") or 0) > 0
        log.info(format_line(now - job.started, input_rows, complete, snap["done"], snap["errors"], rates, eta_sink))
