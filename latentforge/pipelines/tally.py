"""Counts that tasks report to the run, added up by a small Ray actor instead of on rows.

Read tasks say how many input rows they produced (and when they started); each reports under
its own key, so a task that Ray retries after a lost node replaces its report instead of adding
it twice. The driver asks for the totals once, at the end: it never sees the rows.

`ReadCounts` is the state and its methods; a run's `Progress` actor (progress.py) carries them,
so one bookkeeping process serves the run (each actor is a Python process with Ray imported,
about 125 MiB RSS). `Tally` is the same state alone, for a read outside `runtime.run`.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import ray

from latentforge.cluster import on_driver_node


class ReadCounts:
    def __init__(self) -> None:
        self.reports: dict[Any, dict[str, int]] = {}
        self.first_started: float | None = None

    def report(self, key: Any, counts: dict[str, int], started: float) -> None:
        self.reports[key] = counts
        self.first_started = started if self.first_started is None else min(self.first_started, started)

    def totals(self) -> dict[str, Any]:
        total: Counter = Counter()
        for counts in self.reports.values():
            total.update(counts)
        return {"counts": dict(total), "first_started": self.first_started, "reports": len(self.reports)}


Tally = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(ReadCounts)


def start_tally() -> Any:
    return Tally.options(**on_driver_node()).remote()


def report(tally: Any, key: Any, counts: dict[str, int], started: float | None = None) -> None:
    """Report from inside a task; waits for the actor so the report is in before the task ends."""
    ray.get(tally.report.remote(key, counts, started if started is not None else time.time()))


def totals(tally: Any | None) -> dict[str, Any]:
    """{"counts": {...}, "first_started": epoch seconds or None, "reports": read tasks that
    reported}; empty when nothing was read."""
    if tally is None:
        return {"counts": {}, "first_started": None, "reports": 0}
    return ray.get(tally.totals.remote())


def end_actors(*actors: Any) -> None:
    """Stop a run's bookkeeping actors once it is over: in a long-lived Ray (a notebook, a test
    session, a cluster running job after job) each run would otherwise leave them behind."""
    for actor in {id(a): a for a in actors if a is not None}.values():  # one actor may serve two roles
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - already gone
            pass
