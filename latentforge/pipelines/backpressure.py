"""A bound on how far a cheap stage runs ahead of a slow one, counted in blocks.

Ray Data backpressures by object-store bytes. Rows before `prepare` are small (a path, a
caption, probe metadata), so reading and probing ten million of them never fills the store:
they run to the end while `prepare` and the VAE work through the first thousand, and every block
waiting in between is an object the driver owns, with its task's lineage, in the driver's memory.
This policy also counts blocks: a stage takes no new input while more than `limit` blocks wait
between it and the stages after it. The limit grows with the cluster (`BLOCKS_PER_CPU` per CPU),
so a big cluster still keeps every worker fed, and the driver holds at most that many (docs/scale.md,
"Blocks in flight").

It plugs into Ray Data's backpressure policies (`DataContext.set_config`), an interface under
`ray.data._internal`: where a Ray version lacks what it reads, it steps aside and says so once,
leaving Ray Data's own policies as they are.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

log = logging.getLogger("latentforge")

BLOCKS_PER_CPU = 8
MIN_BLOCKS = 32
_warned = False

try:  # Ray Data's policy interface; absent or moved in some Ray version: no block bound
    from ray.data._internal.execution.backpressure_policy import (
        ENABLED_BACKPRESSURE_POLICIES,
        ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
        BackpressurePolicy,
    )
except ImportError:  # pragma: no cover - depends on the Ray version
    BackpressurePolicy = object  # type: ignore[assignment,misc]
    ENABLED_BACKPRESSURE_POLICIES = None
    ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY = None
try:  # operators that take all their input before they give any (shuffles, joins, all-to-all)
    from ray.data._internal.execution.resource_manager import _BLOCKING_MATERIALIZING_OPERATORS as MATERIALIZING
except ImportError:  # pragma: no cover - depends on the Ray version
    MATERIALIZING = ()


def block_limit(cluster_cpus: float) -> int:
    """Blocks that may wait after a stage: enough to keep every CPU busy several times over."""
    return max(MIN_BLOCKS, int(BLOCKS_PER_CPU * max(cluster_cpus, 0)))


def waiting_after(topology: Any, op: Any) -> int:
    """Blocks `op` made that no later stage has started on: its output queue and the input
    queues of the operators it feeds."""
    state = topology[op]
    waiting = state.total_enqueued_output_blocks()
    for downstream in op.output_dependencies:
        if downstream in topology:
            waiting += topology[downstream].total_enqueued_input_blocks()
    return waiting


class QueuedBlocksBackpressure(BackpressurePolicy):  # type: ignore[misc,valid-type]
    """Ray Data backpressure policy: no new input for a stage with `block_limit(CPUs)` blocks
    waiting after it, the CPUs being those Ray Data may use now (they grow as a cluster scales)."""

    @property
    def name(self) -> str:
        return "QueuedBlocks"

    def can_add_input(self, op: Any) -> bool:
        global _warned
        if not op.output_dependencies:
            return True  # the last stage (the write) drains, it never waits on anything
        if any(isinstance(d, MATERIALIZING) for d in op.output_dependencies):
            return True  # it must see all its input before it gives any: bounding it would deadlock
        try:
            limit = block_limit(self._resource_manager.get_global_limits().cpu)
            return waiting_after(self._topology, op) < limit
        except (AttributeError, KeyError, TypeError) as e:  # an internal that moved
            if not _warned:
                _warned = True
                log.warning("latentforge: blocks-in-flight bound off on Ray %s (%s)", ray.__version__, e)
            return True


def install(context: Any) -> bool:
    """Add the policy to a DataContext beside Ray Data's own; False where this Ray version has
    no policy interface (nothing changed)."""
    if ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY is None:
        return False
    policies = list(context.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, ENABLED_BACKPRESSURE_POLICIES))
    if QueuedBlocksBackpressure not in policies:
        policies.append(QueuedBlocksBackpressure)
    context.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, policies)
    return True
