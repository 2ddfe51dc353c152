"""What every trainer layout implements (docs/exporters.md). No Ray here: pipelines/export.py
reads the canonical shards on Ray, joins each latent row with its caption's embedding row, and
hands batches of `ExportSample` to a layout, which turns them into files; the pipeline writes
each file atomically and skips files that exist (resume)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from latentforge.buckets import Bucket, parse_bucket


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
