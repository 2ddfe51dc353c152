"""What every operator declares beside its code: the resources one instance of it needs, and
what a model actor does once its model is loaded."""

from __future__ import annotations

import ctypes
import functools
import gc
from dataclasses import dataclass


@dataclass(frozen=True)
class Resources:
    """What one task or actor of a stage needs. The pipeline's stage description passes these to
    Ray Data (and nothing else does), with the config's overrides applied on top.

    `num_gpus` is what the stage asks for when the run uses GPUs; on a machine without CUDA the
    pipeline runs the same actors on CPU. `memory` is bytes of RAM per task or actor, for Ray's
    scheduler (None: Ray's default, no reservation). `num_cpus_without_gpus` is what an actor
    reserves on a run without GPUs when that differs (None: `num_cpus`).
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None
    num_cpus_without_gpus: float | None = None


# One GPU per model actor (VAE, text encoder), or one CPU on runs without GPUs.
MODEL_RESOURCES = Resources(num_cpus=1, num_gpus=1)


def settle_after_load() -> None:
    """Call once a model actor has loaded its model. What torch, diffusers and transformers made
    at import and load lives as long as the actor, so it leaves the garbage collector's
    generations (`gc.freeze`): each collection then skips millions of objects, and the actor's
    exit no longer spends 1-1.5 s of CPU in a last collection over them, which kept the process,
    and its memory, alive after its pass (docs/scale.md, "One model process at a time").
    Its large arrays and tensors reuse freed memory too (`reuse_freed_memory`): on a CPU-only run
    the VAE's activations are hundreds of MB a batch, mapped afresh each time before."""
    gc.collect()
    gc.freeze()
    reuse_freed_memory()


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# Freed heap a process keeps for its next block. A prepare task hands Ray Data a block once its
# rows pass 128 MB (`target_max_block_size`), so a block holds up to 128 MB plus one clip, and
# Ray Data copies the rows' frames into the block: about twice that is freed at once when the
# block is handed on. 1 GB covers it up to a 1280x720x121 bucket (334 MB a clip). glibc gives
# freed memory back to the kernel once more than this lies free at the top of the heap, and
# then keeps almost none: the next block came on fresh pages again (docs/scale.md).
KEPT_FREED_BYTES = 1 << 30


@functools.cache
def reuse_freed_memory(largest: int = 1 << 30, keep: int = KEPT_FREED_BYTES) -> bool:
    """Have this process's malloc (glibc) serve allocations up to `largest` bytes from its heap
    and keep up to `keep` bytes of freed heap, for the next clip and block. By default glibc maps
    every allocation over 32 MB afresh and unmaps it when freed, so each clip's frames array
    (58 MB for 832x480x49) came on pages the kernel had to fault in and zero: about 10,000 page
    faults and a fifth of prepare's time (docs/scale.md, "Frames on reused memory"). Once per
    process; False where the C library is not glibc (nothing changes there)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, largest)) and bool(libc.mallopt(M_TRIM_THRESHOLD, keep))
    except (OSError, AttributeError):
        return False


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2() -> _MallInfo2 | None:
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    return mallinfo2()


def malloc_mapped_bytes() -> int | None:
    """Bytes this process's malloc holds in mappings of their own, outside its heap (glibc's
    `mallinfo2().hblkhd`): what `reuse_freed_memory` keeps large arrays out of. None where the
    C library has no mallinfo2 (not glibc, or glibc before 2.33)."""
    info = _mallinfo2()
    return None if info is None else int(info.hblkhd)


def malloc_free_bytes() -> int | None:
    """Freed bytes this process's malloc keeps in its heap for later allocations (glibc's
    `mallinfo2().fordblks`): what `reuse_freed_memory` keeps from going back to the kernel.
    None where the C library has no mallinfo2."""
    info = _mallinfo2()
    return None if info is None else int(info.fordblks)
