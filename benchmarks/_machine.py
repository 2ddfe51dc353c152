"""What the benchmark scripts measure about the machine itself, so each ratio can say how busy
the machine was meanwhile (DESIGN.md, Testing: figures from a busy machine are noise).
Imported as `_machine` by the scripts, which run as `python benchmarks/<script>.py`."""

from __future__ import annotations

import os
import resource
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# ../shared/media (real clips with known cuts), or where LATENTFORGE_SHARED_MEDIA points
SHARED_MEDIA = os.environ.get("LATENTFORGE_SHARED_MEDIA", str(REPO.parent / "shared" / "media"))


def _cpu_line() -> list[str]:
    with open("/proc/stat") as f:
        return f.readline().split()


def machine_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used since boot (Linux; 0 elsewhere)."""
    try:
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in _cpu_line()[1:8])
    except OSError:
        return 0.0
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave to other guests since boot (Linux VMs; 0 elsewhere): on a
    shared VM a run can be slow while no process on the machine is busy."""
    try:
        fields = _cpu_line()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0
    except (OSError, ValueError):
        return 0.0


def own_cpu_seconds(children: bool = False) -> float:
    """CPU seconds of this process (all threads), plus its waited-for children if asked."""
    who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) if children else (resource.RUSAGE_SELF,)
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, who))


class OtherLoad:
    """CPU seconds that processes other than this one and its waited-for children used since it
    was made, and the CPU seconds the machine had meanwhile: what a figure's noise comes from."""

    def __init__(self) -> None:
        import time

        self._clock = time.perf_counter
        self.t0, self.busy0, self.own0 = self._clock(), machine_busy_seconds(), own_cpu_seconds(children=True)

    def others(self) -> float:
        return max(0.0, machine_busy_seconds() - self.busy0 - (own_cpu_seconds(children=True) - self.own0))

    def available(self) -> float:
        return (os.cpu_count() or 1) * (self._clock() - self.t0)


class CpuByProcess:
    """CPU seconds the processes on the machine used while it ran, by process title, sampled
    every `period` s in a thread (psutil): where a run's CPU went, Ray's own processes included,
    which the run's figures cannot say alone. Each sample's CPU since the last one goes to the
    title the process has then (Ray retitles a worker for each task it runs), so a period that
    spans two tasks counts for the second. A process that exits loses at most its last period."""

    def __init__(self, period: float = 0.25) -> None:
        import threading

        self.period = period
        self.last: dict[int, float] = {}  # pid -> CPU seconds at the last sample
        self.by_title: dict[str, float] = {}
        self.by_pid: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "CpuByProcess":
        import time

        self.t0 = time.time()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def _sample(self) -> None:
        import psutil

        for p in psutil.process_iter(["pid", "cmdline", "name", "cpu_times", "create_time"]):
            times, pid = p.info["cpu_times"], p.info["pid"]
            if times is None:
                continue
            cpu = times.user + times.system
            # first sight: all of its CPU if it started since, else none (that was before the run)
            before = self.last.get(pid, 0.0 if (p.info["create_time"] or 0) >= self.t0 else cpu)
            self.last[pid] = cpu
            if cpu <= before:
                continue
            title = " ".join(p.info["cmdline"] or []) or p.info["name"] or "?"
            self.by_title[title] = self.by_title.get(title, 0.0) + cpu - before
            self.by_pid[pid] = self.by_pid.get(pid, 0.0) + cpu - before

    def by_group(self, group) -> dict[str, float]:
        """CPU seconds summed by `group(title)` (None: left out)."""
        sums: dict[str, float] = {}
        for title, seconds in self.by_title.items():
            name = group(title)
            if name is not None:
                sums[name] = sums.get(name, 0.0) + seconds
        return sums


def ray_process_group(title: str) -> str | None:
    """A process's part in a Ray run, from its title (`ray::<task or actor>` for workers)."""
    if title.startswith("ray::"):
        what = title.split()[0][len("ray::"):]
        if what.startswith("MapWorker("):  # a Ray Data actor pool's actor; the title adds the method
            return f"actor {what[len('MapWorker('):what.rindex(')')]}"
        if what == "IDLE":
            return "task workers between tasks (start, imports, results)"
        if what.startswith(("Map", "FlatMap", "Write", "Read", "StreamingRepartition")):
            return f"task {what}"
        name = what.split(".")[0]  # an actor's title adds the method it runs
        if name in ("_StatsActor", "_AutoscalingCoordinatorActor", "ActorLocationTracker"):
            return "Ray Data's bookkeeping actors"
        if name in ("DashboardAgent", "RuntimeEnvAgent"):
            return "Ray's services (raylet, GCS, agents)"
        return f"ray::{name}"
    for service in ("raylet", "gcs_server", "dashboard", "runtime_env", "log_monitor", "monitor.py"):
        if service in title:
            return "Ray's services (raylet, GCS, agents)"
    return None
