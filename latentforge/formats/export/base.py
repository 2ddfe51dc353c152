"""What every trainer layout implements (docs/exporters.md). No Ray here: pipelines/export.py
reads the canonical shards on Ray, joins each latent row with its caption's embedding row, and
hands batches of `ExportSample` to a layout, which turns them into files; the pipeline writes
each file atomically and skips files that exist (resume)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Mapping

from latentforge.buckets import Bucket, parse_bucket
from latentforge.formats.tensors import from_columns


@dataclass(frozen=True)
class ExportContext:
    """What a layout may need beyond the rows: the run's preset and the shard metadata."""

    model: str  # preset name, e.g. "ltx2", "tiny-wan2.1"
    family: str  # the real preset the latents come from: ltx2, ltx-video, wan2.1, wan2.2, cogvideox, hunyuanvideo
    text_encoder: str | None  # the embeddings' encoder partition name, None without embeddings
    latent_metadata: Mapping[str, Any] = field(default_factory=dict)  # latents/ file metadata (vae_normalization, ...)
    embedding_metadata: Mapping[str, Any] = field(default_factory=dict)  # embeddings/ file metadata
    dataset_root: str | None = None  # media paths are named relative to this (the input's folder)


@dataclass(frozen=True)
class ExportSample:
    """One training sample: a canonical latent row (sample_id, uri, caption, caption_id, bucket,
    fps, num_frames, start_frame, end_frame, latent_bytes/_shape/_dtype, ...) and the embedding
    row of its caption (embedding_bytes/_shape/_dtype, length, pooled_embedding_*), or None
    when the sample has no caption or no embedding yet."""

    latent: Mapping[str, Any]
    embedding: Mapping[str, Any] | None

    @property
    def sample_id(self) -> str:
        return str(self.latent["sample_id"])

    @property
    def bucket(self) -> Bucket:
        return parse_bucket(str(self.latent["bucket"]))


def item_name(sample: "ExportSample") -> str:
    """`<media stem>-<sample_id>`: the stem (characters outside [A-Za-z0-9-] become '-', at most
    60) for readability, the sample_id (hash of uri + span + bucket [+ fps]) for uniqueness. No
    dots, '_' or glob characters, so trainers that glob, split names on '_' or take a stem with
    `splitext` read it back whole."""
    uri = str(sample.latent.get("uri") or "")
    stem = PurePosixPath(uri.split("?", 1)[0]).stem if uri else ""
    stem = re.sub(r"[^A-Za-z0-9-]+", "-", stem).strip("-")[:60] or "sample"
    return f"{stem}-{sample.sample_id}"


class Exporter:
    """A trainer layout. Subclasses set `name`, `families`, and implement `files`; per-sample
    layouts also implement `paths` so that a rerun skips a sample before building its files."""

    name: str = ""
    families: frozenset[str] = frozenset()
    needs_embeddings: bool = True
    follows: str = ""  # the trainer repository and commit or version the layout follows

    def bucket_problem(self, bucket: Bucket, ctx: ExportContext) -> str | None:
        """Why the trainer cannot read samples of this bucket, or None."""
        return None

    def paths(self, sample: ExportSample, ctx: ExportContext) -> list[str] | None:
        """The files (relative to the export root) this sample becomes, when that is known
        without building them; None for layouts that pack several samples per file."""
        return None

    def checked(self, sample: ExportSample, ctx: ExportContext) -> str:
        """Refuse a sample the trainer cannot read (its bucket, a missing embedding); returns how
        to name it in an error message."""
        where = f"sample {sample.sample_id} ({sample.latent.get('uri')})"
        problem = self.bucket_problem(sample.bucket, ctx)
        if problem:
            raise ExportError(f"{self.name} export: {where}: {problem}")
        if self.needs_embeddings and sample.embedding is None:
            raise ExportError(f"{self.name} export: {where}: no text embedding for its caption")
        return where

    def latent(self, sample: ExportSample, where: str, channels: int, spatial: int, temporal: int) -> Any:
        """The sample's latent tensor, refused unless it has the shape the trainer's VAE gives
        its bucket: [channels, (F - 1) / temporal + 1, H / spatial, W / spatial]."""
        latent = from_columns(sample.latent, "latent")
        b = sample.bucket
        expected = [channels, (b.frames - 1) // temporal + 1, b.height // spatial, b.width // spatial]
        if list(latent.shape) != expected:
            raise ExportError(f"{self.name} export: {where}: latent shape {list(latent.shape)}, expected {expected} for bucket {b}")
        return latent

    def exported_ids(self, fs: Any, root: str) -> set[str]:
        """Sample ids already in files under `root`, for layouts that pack several samples per
        file (a rerun batches differently, so file names alone cannot tell what is done)."""
        return set()

    def files(self, samples: list[ExportSample], ctx: ExportContext) -> list[tuple[str, bytes]]:
        """The files for these samples: (path relative to the export root, bytes)."""
        raise NotImplementedError

    def finish(self, fs: Any, root: str) -> dict[str, int]:
        """After every sample is written: files that list the whole export (an index), made
        from what is under `root` so a rerun or a resumed export gets the same; returns counts."""
        return {}


class ExportError(ValueError):
    """An export that cannot work (wrong model family, a bucket the trainer refuses)."""
