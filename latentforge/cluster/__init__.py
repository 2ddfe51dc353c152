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
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    return True


def cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0


def on_driver_node() -> dict:
    """Ray options that keep a small bookkeeping actor (counts, progress) on the driver's node:
    a worker node that a spot market reclaims must not take the run's counts with it (a restarted
    actor starts empty). Only the driver's own node can lose it, and then the run is gone anyway."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)}
