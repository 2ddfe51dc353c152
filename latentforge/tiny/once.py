"""Build-once folders and recipe markers, shared by every tiny twin (models and captioners).

One lock and one atomic-rename helper for all twins because torch's RNG is process-global:
two seeded builds running at once would interleave their random streams.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from typing import Any, Callable


# torch's RNG is process-global: two threads seeding and drawing at once would interleave
# their streams, so builds within a process are serialised (processes race via os.rename). One
# lock for every tiny twin, the captioners included.
BUILD_LOCK = threading.Lock()


def seeded(seed: int, fn, *args, **kwargs):
    """`fn(*args, **kwargs)` under `torch.manual_seed(seed)`, leaving the caller's RNG state alone."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(*args, **kwargs)


def recipe_marker_ok(folder: str, marker: str, version: int) -> bool:
    """Whether `folder` is a finished tiny twin of recipe `version` (its marker file, written last)."""
    try:
        with open(os.path.join(folder, marker)) as f:
            return json.load(f).get("recipe_version") == version
    except (OSError, ValueError):
        return False


def write_recipe_marker(folder: str, marker: str, version: int, **about: Any) -> None:
    """The marker `recipe_marker_ok` looks for, with what built the twin; written last."""
    import torch
    import transformers

    record = {"recipe_version": version, **about, "torch": torch.__version__, "transformers": transformers.__version__}
    with open(os.path.join(folder, marker), "w") as f:
        json.dump(record, f, indent=2)


def build_folder_once(final: str, build: Callable[[str], None], complete: Callable[[str], bool]) -> str:
    """Make the folder `final` once: `build(dest)` writes it (save_pretrained, a marker file
    last) into a temp folder beside `final`, which is then renamed into place, so the folder
    appears whole or not at all and parallel workers (same machine or not) can all call this;
    the loser of a race throws its copy away and uses the winner's, which is identical (same
    seeds). `complete(folder)` says whether a folder is finished and current (its marker); a
    folder that is not (another recipe version) is replaced. Builds in one process are
    serialised (`BUILD_LOCK`). Returns `final`."""
    if complete(final):
        return final
    with BUILD_LOCK:
        if complete(final):  # built by another thread while this one waited
            return final
        parent = os.path.dirname(final)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=parent)
        try:
            build(tmp)
            if os.path.isdir(final) and not complete(final):
                # A twin from another recipe version: move it aside first (another process may
                # do the same at the same moment, hence the tolerated errors).
                stale = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.stale-", dir=parent)
                try:
                    os.rename(final, os.path.join(stale, "old"))
                except OSError:
                    pass
                shutil.rmtree(stale, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not complete(final):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
