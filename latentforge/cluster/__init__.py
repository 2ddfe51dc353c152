"""Connecting to Ray: an embedded local instance by default, a cluster when an address is given."""

from __future__ import annotations

import logging
import os

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
    local_worker_priority()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    return True


def local_worker_priority() -> None:
    """An embedded Ray's workers run at the driver's priority: Ray starts them at niceness 15
    (`RAY_worker_niceness`) so that its own daemons stay responsive on a crowded node, but on a
    machine where anything else runs that made scene detection in a task 1.5-3x slower than the
    same call in the driver (benchmarks/bench_split_folder.py). Call before `ray.init`; a value
    the user set in the environment wins. Clusters keep Ray's setting (docs/scale.md)."""
    os.environ.setdefault("RAY_worker_niceness", "0")


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def on_driver_node() -> dict:
    """Ray options that keep a small bookkeeping actor (counts, progress) on the driver's node:
    a worker node that a spot market reclaims must not take the run's counts with it (a restarted
    actor starts empty). Only the driver's own node can lose it, and then the run is gone anyway."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)}
