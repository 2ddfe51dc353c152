"""The embedded Ray's process settings: one model process at a time, bounded malloc arenas."""

from __future__ import annotations

import logging
import os
import uuid

import psutil
import pytest


def probe_actor(ray):
    """An actor of a class named like a model stage: the wait matches actors by class name. Made
    inside a function so Ray ships the class by value (the test module is not on the workers)."""

    class WaitProbeStage:
        def pid(self) -> int:
            return os.getpid()

    return ray.remote(num_cpus=0)(WaitProbeStage).remote()


def test_next_pass_waits_for_the_last_pass_model_actors_to_exit(ray_local):
    """Ray Data lets a finished pool's actors go by dropping their handles; the process (torch and
    a model) then exits on its own time. The wait returns once it is gone, so the next pass's
    model does not load beside it (the run's memory peak, docs/scale.md)."""
    from latentforge.cluster import wait_for_local_actors_to_exit

    actor = probe_actor(ray_local)
    pid = ray_local.get(actor.pid.remote())
    assert psutil.Process(pid).cmdline()[0].startswith("ray::WaitProbeStage")
    del actor
    wait_for_local_actors_to_exit(["WaitProbeStage"], timeout_s=30)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_the_wait_is_bounded_and_says_which_actors_stayed(ray_local, caplog):
    from latentforge.cluster import wait_for_local_actors_to_exit

    actor = probe_actor(ray_local)
    pid = ray_local.get(actor.pid.remote())
    with caplog.at_level(logging.WARNING):
        waited = wait_for_local_actors_to_exit(["WaitProbeStage"], timeout_s=0.5)
    assert waited >= 0.5 and psutil.pid_exists(pid)
    assert "WaitProbeStage actors still running" in caplog.text
    assert wait_for_local_actors_to_exit(["NoSuchStage"], timeout_s=5) < 1  # nothing to wait for
    ray_local.kill(actor)


def test_embedded_workers_get_two_malloc_arenas_unless_the_user_chose(monkeypatch):
    from latentforge.cluster import local_worker_malloc

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    local_worker_malloc()
    assert os.environ["MALLOC_ARENA_MAX"] == "2"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    local_worker_malloc()
    assert os.environ["MALLOC_ARENA_MAX"] == "8"


def test_embedded_ray_keeps_idle_workers_for_the_cpu_less_tasks(monkeypatch):
    """The read and the light stages hold less than a CPU; without room for their workers Ray killed and
    restarted a worker (its imports) for each."""
    from latentforge.cluster import local_worker_pool

    monkeypatch.delenv("RAY_num_workers_soft_limit", raising=False)
    local_worker_pool(2)
    assert os.environ["RAY_num_workers_soft_limit"] == "4"
    monkeypatch.setenv("RAY_num_workers_soft_limit", "1")
    local_worker_pool(16)
    assert os.environ["RAY_num_workers_soft_limit"] == "1"


def test_a_model_actor_keeps_what_it_loaded_out_of_the_garbage_collector(ray_local):
    """A model actor freezes what import and load made (gc.freeze): without it the actor's exit
    ran a last collection over millions of torch/diffusers objects, 1-1.5 s of CPU during which
    its process and memory outlived its pass, and each collection while it worked scanned them."""
    import gc

    from latentforge.operators import model_actors

    def frozen_after_load() -> tuple[int, int]:
        before = gc.get_freeze_count()
        model_actors.VideoEncodeStage(model="tiny-wan2.1", dtype="float32", device="cpu")
        after = gc.get_freeze_count()
        gc.unfreeze()
        return before, after

    before, after = ray_local.get(ray_local.remote(num_cpus=0)(frozen_after_load).remote())
    assert before == 0 and after > 100_000


def test_a_model_actor_reuses_freed_memory_for_large_tensors(ray_local):
    """After load, a model actor's large allocations (a CPU-only VAE's activations: hundreds of MB
    a batch) come from malloc's heap and reuse freed pages instead of a fresh mapping each
    (operators/base.reuse_freed_memory): encode_video's CPU time fell a quarter on tiny models."""
    from latentforge.operators.base import malloc_mapped_bytes

    if malloc_mapped_bytes() is None:
        pytest.skip("not glibc 2.33 or later: malloc keeps its own policy")

    def mapped_bytes_of_a_64_mb_tensor() -> tuple[int, int]:
        import torch

        from latentforge.operators import model_actors

        before = torch.empty(64 << 20, dtype=torch.uint8)
        mapped_before = malloc_mapped_bytes()
        del before
        model_actors.VideoEncodeStage(model="tiny-wan2.1", dtype="float32", device="cpu")
        tensor = torch.empty(64 << 20, dtype=torch.uint8)
        mapped_after = malloc_mapped_bytes()  # while the tensor lives
        del tensor
        return mapped_before, mapped_after

    fresh_worker = {"env_vars": {"LATENTFORGE_TEST_WORKER": uuid.uuid4().hex}}  # a process of its own: glibc's defaults
    task = ray_local.remote(num_cpus=0, runtime_env=fresh_worker)(mapped_bytes_of_a_64_mb_tensor)
    mapped_before, mapped_after = ray_local.get(task.remote())
    assert mapped_before >= 64 << 20 and mapped_after < 64 << 20, (mapped_before, mapped_after)
