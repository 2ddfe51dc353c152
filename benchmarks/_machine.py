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
