"""LTX-2 trainer layout: the `.precomputed/` tree its `PrecomputedDataset` reads.

Follows Lightricks/LTX-2, packages/ltx-trainer (`ltx_trainer/datasets.py`, `scripts/process_videos.py`,
`scripts/process_captions.py`) and packages/ltx-core (`VideoEncoder.forward`, `TOKENIZER_MAX_LENGTH`,
`Embeddings1DConnector`). One sample is two files, matched by their path relative to each folder:

    .precomputed/latents/<name>.pt      {"latents": [128, F', H', W'] bfloat16, normalised per channel,
                                         "num_frames": F', "height": H', "width": W', "fps": float}
    .precomputed/conditions/<name>.pt   {"video_prompt_embeds": [1024, D] bfloat16,
                                         "audio_prompt_embeds": [1024, D_audio] bfloat16,
                                         "prompt_attention_mask": [1024] int64, left padded}

`<name>` is the media path relative to the dataset root with its suffix replaced by `.pt` (LTX-2's
own rule); a span of a file (a clip that is not the whole file) adds `.span-<start>-<end>` before
`.pt`. The trainer is given the export root (it descends into `.precomputed/` itself).

Text conditions are what LTX-2 stores: the text feature extractor's output (normalised, projected
Gemma hidden states), before the connectors. That is what the `ltx2` preset stores by default
(`embedding_*` = video_prompt_embeds, `audio_embedding_*` = audio_prompt_embeds where the model
has its own, trimmed; metadata `ltx2_text_features`), written here padded. Outputs made with
`encode_text.ltx2_stacked_hidden_states` hold raw stacked Gemma hidden states, which the trainer
cannot read: those need a `feature_extractor` (see LTX2Exporter), or a re-encode.
"""

from __future__ import annotations

import io
from pathlib import PurePosixPath
from typing import Any, Callable, Mapping

import torch

from latentforge.buckets import Bucket
from latentforge.formats.export.base import ExportContext, Exporter, ExportError, ExportSample
from latentforge.formats.export.ltx2_reference import REFERENCE_LATENTS_DIR, has_reference, reference_file
from latentforge.formats.export.ltx2_audio import AUDIO_LATENTS_DIR, audio_latent_file, has_audio_latent
from latentforge.formats.tensors import from_columns

ROOT = ".precomputed"
LATENTS_DIR = "latents"
CONDITIONS_DIR = "conditions"
LATENT_CHANNELS = 128  # ltx-core VideoEncoder: (B, 128, F', H', W')
SPATIAL = 32
TEMPORAL = 8
MAX_TOKENS = 1024  # ltx-core TOKENIZER_MAX_LENGTH: every prompt is padded to it (connectors need a multiple of 128)
STORE_DTYPE = torch.bfloat16  # process_videos / process_captions run the VAE and Gemma in bfloat16

# hidden states [length, hidden * layers] (one caption's valid tokens) -> (video features [length, D],
# audio features [length, D_audio] or None): LTX-2's text feature extractor on those tokens.
FeatureExtractor = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None]"]


def media_name(uri: str, dataset_root: str | None) -> PurePosixPath:
    """The media's path relative to the dataset root, as process_videos' `_output_relative` names it:
    relative to the root when under it, else its own path without the anchor (for URIs, without
    the scheme: `s3://bucket/a/b.mp4` -> `bucket/a/b.mp4`)."""
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    if dataset_root:
        root = dataset_root[len("file://"):] if dataset_root.startswith("file://") else dataset_root
        root = root.rstrip("/")
        if root and path.startswith(root + "/"):
            return PurePosixPath(path[len(root) + 1:])
    if "://" in path:
        path = path.split("://", 1)[1]
    parts = [p for p in PurePosixPath(path).parts if p not in ("/", "", ".")]
    if not parts:
        raise ExportError(f"{uri}: no file name to name the sample after")
    return PurePosixPath(*parts)


def _is_whole_file(latent: Mapping[str, Any]) -> bool:
    start = latent.get("start_frame")
    end = latent.get("end_frame")
    total = latent.get("source_frames")
    if latent.get("media_type") == "image" or start is None:
        return True
    if int(start) != 0:
        return False
    return end is None or total is None or int(end) >= int(total)


def sample_name(latent: Mapping[str, Any], dataset_root: str | None) -> str:
    """`<media path relative to the root, suffix -> .pt>`; a span adds `.span-<start>-<end>`."""
    rel = media_name(str(latent["uri"]), dataset_root)
    if _is_whole_file(latent):
        return str(rel.with_suffix(".pt"))
    stem = rel.with_suffix("")
    return str(stem.with_name(f"{stem.name}.span-{int(latent['start_frame'])}-{int(latent['end_frame'])}.pt"))


def _pt_bytes(data: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(data, buf)
    return buf.getvalue()


def _left_pad(features: torch.Tensor, max_tokens: int) -> torch.Tensor:
    length = features.shape[0]
    out = torch.zeros((max_tokens, features.shape[1]), dtype=STORE_DTYPE)
    out[max_tokens - length:] = features.to(STORE_DTYPE)
    return out


def _bucket_problem(bucket: Bucket) -> str | None:
    """process_videos.parse_resolution_buckets: W, H multiples of 32 and F % 8 == 1."""
    problems = []
    if bucket.width % SPATIAL or bucket.height % SPATIAL:
        problems.append(f"width and height must be multiples of {SPATIAL}")
    if bucket.frames % TEMPORAL != 1:
        problems.append(f"frames must be a multiple of {TEMPORAL} plus 1")
    return f"{bucket}: " + "; ".join(problems) if problems else None


class LTX2Exporter(Exporter):
    """LTX-2 trainer `.precomputed/` layout (text_to_video and the other strategies' `latents/` +
    `conditions/` sources).

    `feature_extractor`, when given, turns a raw canonical embedding (the stacked Gemma hidden
    states of one caption's tokens) into the trainer's text features; without it, only embedding
    rows that already hold `video_prompt_embeds_*` columns can be exported.
    """

    name = "ltx2"
    families = frozenset({"ltx2"})
    needs_embeddings = True
    follows = "Lightricks/LTX-2@400fd31054597515f47125691032c04b1c3ee24e"

    def __init__(self, feature_extractor: FeatureExtractor | None = None) -> None:
        self.feature_extractor = feature_extractor

    def bucket_problem(self, bucket: Bucket, ctx: ExportContext) -> str | None:
        return _bucket_problem(bucket)

    def paths(self, sample: ExportSample, ctx: ExportContext) -> list[str]:
        name = sample_name(sample.latent, ctx.dataset_root)
        return [f"{ROOT}/{folder}/{name}" for folder in self._folders(sample)]

    @staticmethod
    def _folders(sample: ExportSample) -> list[str]:
        """The folders a sample has a file in, each under the same `<name>` (IC-LoRA references
        under the target's name too)."""
        folders = [LATENTS_DIR]
        if sample.embedding is not None:
            folders.append(CONDITIONS_DIR)
        if has_reference(sample.latent):
            folders.append(REFERENCE_LATENTS_DIR)
        if has_audio_latent(sample.latent):
            folders.append(AUDIO_LATENTS_DIR)
        return folders

    def files(self, samples: list[ExportSample], ctx: ExportContext) -> list[tuple[str, bytes]]:
        mean, std = self._normalization(ctx)
        out: list[tuple[str, bytes]] = []
        owners: dict[str, str] = {}
        for sample in samples:
            paths = self.paths(sample, ctx)
            other = owners.get(paths[0])
            if other is not None and other != sample.sample_id:
                raise ExportError(f"{paths[0]}: samples {other} and {sample.sample_id} have the same LTX-2 name")
            owners[paths[0]] = sample.sample_id
            make = {
                LATENTS_DIR: lambda: self._latent_file(sample, mean, std),
                CONDITIONS_DIR: lambda: self._conditions_file(sample, ctx),
                REFERENCE_LATENTS_DIR: lambda: reference_file(sample.latent, mean, std, STORE_DTYPE),
                AUDIO_LATENTS_DIR: lambda: audio_latent_file(sample.latent, ctx.latent_metadata, sample.sample_id, STORE_DTYPE),
            }
            out.extend((path, _pt_bytes(make[folder]())) for folder, path in zip(self._folders(sample), paths))
        return out

    @staticmethod
    def _normalization(ctx: ExportContext) -> tuple[torch.Tensor, torch.Tensor]:
        """ltx-core's VideoEncoder returns (mean - mean-of-means) / std-of-means per channel; our
        latents are the raw mean, so the VAE's `latents_mean` / `latents_std` are applied here."""
        stats = ctx.latent_metadata.get("vae_normalization") or {}
        if "latents_mean" not in stats or "latents_std" not in stats:
            raise ExportError("ltx2 export needs vae_normalization latents_mean/latents_std in the latents metadata")
        scaling = stats.get("scaling_factor")
        if scaling is not None and float(scaling) != 1.0:
            raise ExportError(f"ltx2 export: VAE scaling_factor {scaling} is not LTX-2's (1.0)")
        mean = torch.tensor(stats["latents_mean"], dtype=torch.float32).view(-1, 1, 1, 1)
        std = torch.tensor(stats["latents_std"], dtype=torch.float32).view(-1, 1, 1, 1)
        return mean, std

    def _latent_file(self, sample: ExportSample, mean: torch.Tensor, std: torch.Tensor) -> dict[str, Any]:
        bucket = sample.bucket
        problem = _bucket_problem(bucket)
        if problem:
            raise ExportError(problem)
        latent = from_columns(sample.latent, "latent")
        expected = (LATENT_CHANNELS, (bucket.frames - 1) // TEMPORAL + 1, bucket.height // SPATIAL, bucket.width // SPATIAL)
        if tuple(latent.shape) != expected:
            raise ExportError(f"{sample.sample_id}: latent {tuple(latent.shape)} is not LTX-2's {expected} for bucket {bucket}")
        if mean.shape[0] != LATENT_CHANNELS or std.shape[0] != LATENT_CHANNELS:
            raise ExportError(f"ltx2 export: VAE stats have {mean.shape[0]} channels, not {LATENT_CHANNELS}")
        normalised = ((latent.float() - mean) / std).to(STORE_DTYPE).contiguous()
        fps = float(sample.latent.get("fps") or 0.0)
        if fps <= 0:
            fps = 1.0  # process_videos gives images fps 1.0; the trainer divides positions by fps
        _, f, h, w = normalised.shape
        return {"latents": normalised, "num_frames": f, "height": h, "width": w, "fps": fps}

    def _conditions_file(self, sample: ExportSample, ctx: ExportContext) -> dict[str, Any]:
        emb = sample.embedding
        assert emb is not None
        if ctx.embedding_metadata.get("ltx2_text_features"):  # what the ltx2 preset stores by default
            video = from_columns(emb, "embedding")
            audio = from_columns(emb, "audio_embedding") if emb.get("audio_embedding_bytes") is not None else None
        elif "video_prompt_embeds_bytes" in emb:
            video = from_columns(emb, "video_prompt_embeds")
            audio = from_columns(emb, "audio_prompt_embeds") if "audio_prompt_embeds_bytes" in emb else None
        elif self.feature_extractor is not None:
            video, audio = self.feature_extractor(from_columns(emb, "embedding"))
        else:
            raise ExportError(
                f"{sample.sample_id}: the embedding is raw stacked Gemma hidden states; the LTX-2 trainer "
                "reads its text feature extractor's output (video_prompt_embeds / audio_prompt_embeds), "
                "which this export cannot compute without the checkpoint's projection weights"
            )
        length = int(emb.get("length") or video.shape[0])
        if video.ndim != 2 or video.shape[0] != length or (audio is not None and tuple(audio.shape[:1]) != (length,)):
            raise ExportError(f"{sample.sample_id}: text features {tuple(video.shape)} do not match length {length}")
        if length > MAX_TOKENS:
            raise ExportError(f"{sample.sample_id}: {length} tokens is more than LTX-2's {MAX_TOKENS}")
        mask = torch.zeros(MAX_TOKENS, dtype=torch.int64)
        mask[MAX_TOKENS - length:] = 1
        # LTX-2.0's feature extractor returns one tensor for both modalities (FeatureExtractorV1,
        # is_av=True) and process_captions stores it under both keys; LTX-2.3's has its own audio one.
        audio = video if audio is None else audio
        return {
            "video_prompt_embeds": _left_pad(video, MAX_TOKENS),
            "audio_prompt_embeds": _left_pad(audio, MAX_TOKENS),
            "prompt_attention_mask": mask,
        }
