"""Blocks in flight are bounded in number (docs/scale.md): a cheap stage before a slow one does
not run to the end of the input while the slow one works through the start, so the blocks the
driver owns in between stay bounded however long the manifest is (issue 10)."""

from __future__ import annotations

import os
import time

import pytest

from latentforge.pipelines import backpressure

pytestmark = pytest.mark.ray


def test_block_limit_grows_with_the_cluster():
    assert backpressure.block_limit(0) == backpressure.MIN_BLOCKS
    assert backpressure.block_limit(2) == backpressure.MIN_BLOCKS
    assert backpressure.block_limit(1000) == 1000 * backpressure.BLOCKS_PER_CPU


def _max_lead(ray, tmp_path, bounded: bool) -> int:
    """How many blocks a fast stage finished ahead of a slow one, at most, over 120 blocks."""
    from ray.data._internal.execution.backpressure_policy import ENABLED_BACKPRESSURE_POLICIES, ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY

    ctx = ray.data.DataContext.get_current()
    before = ctx.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, ENABLED_BACKPRESSURE_POLICIES)
    ctx.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, list(ENABLED_BACKPRESSURE_POLICIES))
    if bounded:
        assert backpressure.install(ctx)
    marks = tmp_path / ("bounded" if bounded else "free")
    marks.mkdir()

    def mark(kind: str):
        def stage(batch):
            (marks / f"{time.time_ns()}-{kind}-{os.getpid()}").touch()
            if kind == "slow":
                time.sleep(0.02)
            return batch

        return stage

    try:  # different CPUs per task keep Ray Data from fusing the two stages into one task
        ds = ray.data.range(240, override_num_blocks=120)
        ds = ds.map_batches(mark("fast"), batch_size=None, num_cpus=0.5).map_batches(mark("slow"), batch_size=None, num_cpus=1)
        assert sum(1 for _ in ds.iter_batches(batch_size=None)) == 120
    finally:
        ctx.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, before)
    lead = fast = slow = 0
    for name in sorted(os.listdir(marks), key=lambda n: int(n.split("-")[0])):
        fast, slow = fast + (name.split("-")[1] == "fast"), slow + (name.split("-")[1] == "slow")
        lead = max(lead, fast - slow)
    assert fast == slow == 120
    return lead


def test_a_fast_stage_stays_within_the_block_limit_of_a_slow_one(ray_local, tmp_path):
    limit = backpressure.block_limit(ray_local.cluster_resources()["CPU"])
    bounded = _max_lead(ray_local, tmp_path, bounded=True)
    free = _max_lead(ray_local, tmp_path, bounded=False)
    assert bounded <= limit + 4, (bounded, limit)  # + the tasks already running when it binds
    assert free > 2 * limit, free  # without it the fast stage runs ahead by the whole input
