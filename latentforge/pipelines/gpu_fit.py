"""Whether the GPU actor pools of one pass fit the cluster's GPU nodes at the same time.

The captioner and the VAE run in the same pass (`pipeline: all`, `caption.enabled`): each pool
starts its minimum of actors, each actor asking for its `num_gpus` on one node. On one-GPU
nodes two one-GPU pools need two nodes; with only one, one pool never starts and Ray Data waits
for the no-progress timeout without saying why. So before a pass starts, its pools' minimum
actors are placed on the GPU nodes (first fit, largest first) that are there now, plus those
the autoscaler may add (the node types Ray's autoscaler published, with their max counts; an
autoscaler that runs without publishing them counts as able to add any). A pass that fits
nowhere is refused with what to change; one that fits only with nodes the autoscaler has yet to
add goes on (spot GPU workers scale from zero). docs/cluster.md, "GPU pools
that fit".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import ray

EPSILON = 1e-6


@dataclass(frozen=True)
class PoolNeed:
    stage: str
    gpus_per_actor: float
    actors: int  # the pool's minimum: what must be placed at once for the pass to start


def unplaced(needs: Iterable[PoolNeed], nodes: Iterable[float]) -> dict[str, int]:
    """Actors of each pool that find no room when placed largest first into the nodes' GPUs."""
    free = sorted((float(g) for g in nodes), reverse=True)
    actors = sorted(((n.gpus_per_actor, n.stage) for n in needs for _ in range(n.actors) if n.gpus_per_actor > 0), reverse=True)
    left: dict[str, int] = {}
    for gpus, stage in actors:
        for i, room in enumerate(free):
            if room + EPSILON >= gpus:
                free[i] = room - gpus
                break
        else:
            left[stage] = left.get(stage, 0) + 1
    return left


def gpu_nodes() -> tuple[list[float], list[float] | None]:
    """(GPUs of each alive node now, GPUs of each node the autoscaler may add; None when its node
    types are unknown or unbounded)."""
    present = [float(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU", 0) > 0]
    try:  # the node types Ray's autoscaler published (ray status reads the same)
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - no autoscaler, or a Ray version without it
        config = None
    if config is None:  # no node types published: an autoscaler of the older kind may still run
        return present, (None if _autoscaler_reports() else [])
    possible: list[float] = []
    for group in config.node_group_configs:
        gpus = float(group.resources.get("GPU", 0))
        if gpus > 0:
            if group.max_count < 0:
                return present, None
            possible += [gpus] * group.max_count
    return present, possible


def _autoscaler_reports() -> bool:
    """Whether an autoscaler that can add nodes runs for this cluster. Ray's monitor writes its
    status (what `ray status` prints) into the GCS key-value store on every cluster; on one
    without an autoscaling config (a fixed cluster, `ray.cluster_utils.Cluster`) it runs the
    read-only provider, whose only node types are the nodes themselves ("node_<id>"). Anything
    else, or a status that cannot be read, counts as an autoscaler that may add any node."""
    try:
        import json

        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        mapping = ((json.loads(raw) if raw else {}).get("autoscaler_report") or {}).get("node_type_mapping") or {}
        return not mapping or any(kind != f"node_{node}" for node, kind in mapping.items())
    except Exception:  # noqa: BLE001 - a Ray version that reports otherwise: assume one may run
        return True


def problem(needs: list[PoolNeed], present: list[float], possible: list[float] | None) -> str | None:
    """A message saying what to change when the pools cannot all start; None when they can (now,
    or once the autoscaler adds nodes)."""
    needs = [n for n in needs if n.gpus_per_actor > 0 and n.actors > 0]
    if len(needs) < 1 or possible is None or not unplaced(needs, present + possible):
        return None
    wanted = " and ".join(f"{n.stage} ({n.actors} x {n.gpus_per_actor:g} GPU)" for n in needs)
    nodes = ", ".join(f"{g:g}" for g in present) or "none"
    fixes = []
    if len(needs) > 1:
        share = 1 / len(needs)
        fixes.append(" and ".join(f"{n.stage}.num_gpus={share:g}" for n in needs) + " so they share a GPU")
        fixes.append("run `pipeline: caption` first, then `pipeline: precompute` on its manifest")
    fixes.append("add GPU nodes (or lower min_actors)")
    return f"these GPU pools must run at once: {wanted}, and the cluster's GPU nodes ({nodes} GPU each) cannot hold them; " + "; or ".join(fixes)
