"""A per-sample time limit for work that can hang inside native code.

FFmpeg deadlocks on some damaged HEVC streams, and a read from a network filesystem or a FIFO
can block for ever; Python cannot interrupt a thread stuck in C. So the work runs in a daemon
thread and the caller waits at most the limit: past it, the sample becomes an error row and the
task goes on with its other rows. The stuck thread is left behind (it holds only that sample's
file) and is counted, so a worker that collects many is visible in the logs.

The limit grows with what the sample asks of the decoder: `base_s` plus `per_frame_s` for every
source frame read (docs/outputs.md, "Time limits").
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
_abandoned = 0  # threads left running in this worker process


class SampleTimeout(TimeoutError):
    """A sample's work did not finish within its limit (the message says the limit and why)."""


def sample_limit(frames_read: int, base_s: float, per_frame_s: float) -> float:
    """Seconds one sample may take: a fixed part (open, seek, a slow read) plus a part per frame."""
    return float(base_s) + float(per_frame_s) * max(0, int(frames_read))


def abandoned_threads() -> int:
    return _abandoned


def within(seconds: float | None, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, or SampleTimeout when it has not returned after `seconds`
    (None or 0: no limit, called in this thread). Exceptions of `fn` are raised as themselves."""
    if not seconds:
        return fn(*args, **kwargs)
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def work() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            outcome["error"] = e
        finally:
            finished.set()

    threading.Thread(target=work, name="latentforge-sample", daemon=True).start()
    if not finished.wait(seconds):
        global _abandoned
        _abandoned += 1
        log.warning("latentforge: a sample passed its %.0f s limit; %d stuck thread(s) in this worker", seconds, _abandoned)
        raise SampleTimeout(f"did not finish within its time limit ({seconds:.0f} s)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


STUCK_EXIT_CODE = 75  # a model call hung: the actor's process ends so Ray starts a fresh one


def end_stuck_process() -> None:
    """For a model actor whose call never returned: that thread still holds the process's GPU
    and model and nothing can stop it inside CUDA, so the process ends; Ray restarts the actor
    and retries the batch it was given on the new one (its rows are not lost)."""
    log.error("latentforge: a model call of this actor never returned; ending the process so Ray restarts the actor")
    os._exit(STUCK_EXIT_CODE)
