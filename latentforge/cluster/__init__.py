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
