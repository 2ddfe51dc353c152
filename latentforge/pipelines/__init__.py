"""Named pipelines, each a plain list of stages (docs/architecture.md). `run` executes the list
the config names and `plan` prints the same list, so they cannot drift apart.

split:      source -> probe -> split_scenes -> write_clips (clips.jsonl)
caption:    source -> probe -> [split_scenes] -> caption stages -> write_captions (captions.jsonl)
precompute: source -> probe -> [split_scenes] -> bucket -> [caption stages] -> finalize_caption
            -> prepare -> encode_video -> write_latents; source (distinct captions) ->
            encode_text -> write_embeddings
all:        precompute with split_scenes and the caption stages switched on: the split, caption
            and precompute lists in one job.
export:     (after precompute when `export:` lists layouts, or alone as `latentforge export`)
            latent shards joined with embeddings -> export -> trainer layout files

Importing this package is light: the entry points below come from `api.py` on first use, so a
Ray worker that runs only CPU stages (reading, probing, decoding, writing) never imports torch,
diffusers or transformers (docs/benchmarks.md, "Memory").
"""

from __future__ import annotations

from typing import Any

from latentforge.formats.manifest_files import ManifestError

API = ("PIPELINES", "Pipeline", "export_output", "fit_problems", "inspect_output", "plan", "preflight", "report_output", "run", "verify_output")
__all__ = ["ManifestError", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from latentforge.pipelines import api

        return getattr(api, name)
    raise AttributeError(f"module 'latentforge.pipelines' has no attribute {name!r}")
