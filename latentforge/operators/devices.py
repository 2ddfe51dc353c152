"""Where model stages run: CUDA when an actor was given a GPU, the CPU otherwise; and how many
CPU threads a model stage uses when it runs on the CPU."""

from __future__ import annotations

import os
import sys
from typing import Any

# torch is imported inside the functions: the captioner actors' module imports this one, and a
# CPU worker that only writes caption parts must not pay torch's import (docs/benchmarks.md).


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: Any) -> str:
    """bf16 on GPU as the trainers use; float32 on CPU, where bf16 kernels are slow."""
    return "bfloat16" if str(device).startswith("cuda") else "float32"


def node_cpus() -> int:
    """CPUs of the machine this process runs on.

    Inside a Ray worker this is Ray's CPU count for the worker's node (which honours container
    CPU limits and `ray.init(num_cpus=...)`), capped by the CPUs this process may run on; outside
    Ray, the CPUs this process may run on. Ray is not imported here: it is only asked when the
    process already runs it.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        usable = os.cpu_count() or 1
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        try:
            node_id = ray.get_runtime_context().get_node_id()
            for node in ray.nodes():
                if node.get("NodeID") == node_id and node.get("Resources", {}).get("CPU"):
                    return max(1, min(usable, int(node["Resources"]["CPU"])))
        except Exception:  # noqa: BLE001 - fall back to the process's own view
            pass
    return max(1, usable)


def set_cpu_threads(device: Any, actors_per_node: int | None) -> int:
    """On the CPU, give torch the node's CPUs divided among `actors_per_node` model actors as
    intra-op threads (at least one); returns the thread count torch uses now. On a GPU, or with
    `actors_per_node` None, nothing changes.

    Ray starts a worker with OMP_NUM_THREADS set to the whole CPUs the task or actor reserved
    (1 for a 1-CPU or a 0-CPU actor), so without this a CPU model actor computes on one core
    whatever the machine has. The rule and why: docs/benchmarks.md ("CPU-only runs").
    """
    import torch

    if actors_per_node is not None and torch.device(device).type == "cpu":
        torch.set_num_threads(max(1, node_cpus() // max(1, int(actors_per_node))))
    return torch.get_num_threads()
