"""Connecting to Ray: an embedded local instance by default, a cluster when an address is given."""

from __future__ import annotations

import gc
import logging
import os
import time

import psutil
import ray

log = logging.getLogger(__name__)


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Start or join Ray; returns True when this call started an embedded instance.

    `address` (or RAY_ADDRESS) joins that cluster; without one a local Ray starts in this
    process, so the same command runs on a laptop and on a cluster.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=True)
        return False
    local_worker_env(embedded_cpus(num_cpus))
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    return True


def embedded_cpus(num_cpus: int | None = None) -> int:
    """CPUs of the embedded Ray `connect` starts: `ray.num_cpus`, else Ray's default, this
    machine's."""
    return num_cpus or os.cpu_count() or 1


def local_worker_env(cpus: int) -> None:
    """What an embedded Ray's workers inherit from the environment (each below; a value the user
    set wins). Call before `ray.init`: the workers get the driver's environment when it starts them."""
    local_worker_priority()
    local_worker_malloc()
    local_worker_pool(cpus)


def local_worker_priority() -> None:
    """An embedded Ray's workers run at the driver's priority: Ray starts them at niceness 15
    (`RAY_worker_niceness`) so that its own daemons stay responsive on a crowded node, but on a
    machine where anything else runs that made scene detection in a task 1.5-3x slower than the
    same call in the driver (benchmarks/bench_split_folder.py). Call before `ray.init`; a value
    the user set in the environment wins. Clusters keep Ray's setting (docs/scale.md)."""
    os.environ.setdefault("RAY_worker_niceness", "0")


def local_worker_malloc() -> None:
    """An embedded Ray's workers use at most two glibc malloc arenas (`MALLOC_ARENA_MAX=2`).
    glibc gives each thread that allocates its own arena, up to 8 per core; a model actor's
    torch and FFmpeg threads leave freed memory spread over them that the process keeps: 150 MB
    of the VAE actor's heap in a tiny-model run (benchmarks/bench_memory.py). Workers inherit the
    variable from the driver when `ray.init` starts them; the driver's own malloc is already set
    up and keeps its arenas. A value the user set wins; clusters keep theirs (docs/scale.md)."""
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")


def local_worker_pool(cpus: int) -> None:
    """An embedded Ray keeps two idle workers more than it has CPUs (`RAY_num_workers_soft_limit`,
    Ray's default: as many as CPUs). A run's tasks that hold less than a CPU (the read, light stages) run beside
    one decoding task per CPU; with the default, Ray killed the worker that went idle and started
    a new one (a process start and its imports, 1-2 CPU-s here) for the next task, over and over:
    12% of `prepare`'s throughput on 2 CPUs (docs/scale.md, "Worker pool"). A value the user set
    wins; clusters keep theirs."""
    os.environ.setdefault("RAY_num_workers_soft_limit", str(cpus + 2))


def wait_for_local_actors_to_exit(class_names: list[str], timeout_s: float = 30.0) -> float:
    """Wait until no process on this machine is an actor of `class_names` (Ray titles an actor's
    process `ray::<class>`; Ray Data's pools `ray::MapWorker(MapBatches(<class>))`); returns
    the seconds waited. Ray Data lets a finished pool's actors go by dropping their handles and
    the process exits on its own time (1-1.5 s for one holding torch and a model, before
    `operators.base.settle_after_load`): without this wait the next pass's model actor loaded
    while the last one still held its memory, the run's peak (docs/scale.md, "One model process
    at a time"). For an embedded Ray, where every such process
    is this run's; a cluster's nodes free GPUs through Ray's own resource accounting."""
    if not class_names:
        return 0.0
    gc.collect()  # handles caught in reference cycles would keep the actors alive
    marks = tuple(f"({name})" for name in class_names) + tuple(f"ray::{name}" for name in class_names)
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if not any(_is_actor_process(proc, marks) for proc in psutil.process_iter()):
            break
        time.sleep(0.1)
    else:
        log.warning("latentforge: %s actors still running %.0f s after their pass ended; going on", ", ".join(class_names), timeout_s)
    return time.monotonic() - started


def _is_actor_process(proc: psutil.Process, marks: tuple[str, ...]) -> bool:
    try:
        title = (proc.cmdline() or [""])[0]
    except psutil.Error:
        return False
    return title.startswith("ray::") and any(mark in title.split(" ")[0] for mark in marks)


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def on_driver_node() -> dict:
    """Ray options that keep a small bookkeeping actor (counts, progress) on the driver's node:
    a worker node that a spot market reclaims must not take the run's counts with it (a restarted
    actor starts empty). Only the driver's own node can lose it, and then the run is gone anyway."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)}
