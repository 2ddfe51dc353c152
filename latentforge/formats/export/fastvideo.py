"""The `fastvideo` layout: FastVideo's preprocessed Parquet dataset (hao-ai-lab/FastVideo).

FastVideo trains from Parquet files that its preprocessing writes under
`<output>/combined_parquet_dataset/...`; its trainers (`LatentsParquetMapStyleDataset`,
`LatentsParquetIterStyleDataset`) walk the `--data_path` folder recursively for `*.parquet`,
read rows with pyarrow and rebuild each tensor with `np.frombuffer(bytes, np.float32)
.reshape(shape)`, whatever the `_dtype` column says. So every tensor here is float32.

What this layout writes, for a batch of samples:

    combined_parquet_dataset/bucket=<W>x<H>x<F>/part-<hash of the sample ids>.parquet

one folder per bucket, because FastVideo stacks the latents of a training batch (`torch.stack`)
and so a `--data_path` must hold one shape when `train_batch_size > 1`; point it at a bucket's
folder (or at `combined_parquet_dataset` with a single bucket or batch size 1).

Schema: FastVideo's `pyarrow_schema_t2v` (`fastvideo/dataset/dataloader/schema.py`), or
`pyarrow_schema_i2v` when the rows carry `first_frame_latent_*` / `clip_feature_*`. Values as
its T2V record creator (`fastvideo/dataset/dataloader/record_schema.py`) writes them:
the raw VAE mean `[C, F', H', W']` (FastVideo normalises in the trainer, `normalize_dit_input`),
the text embedding trimmed to the caption's tokens `[L, D]` (the trainer zero-pads it to
`text_len`, 512 for UMT5, and builds the attention mask), `num_frames` = the latent frame count
F' (FastVideo writes `latents.shape[1]`). See /tmp/exporters_fastvideo.md (docs/exporters.md).
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from latentforge.buckets import Bucket
from latentforge.formats.export.base import ExportContext, Exporter, ExportError, ExportSample
from latentforge.formats.shards import shard_name
from latentforge.formats.tensors import from_columns

FASTVIDEO_REPO = "hao-ai-lab/FastVideo"
FASTVIDEO_COMMIT = "2f3d4074064e4d86f99dc784ebbaa296e6f5925f"

# (spatial compression of the VAE, temporal compression, DiT patch (1, 2, 2) -> spatial multiple)
_GEOMETRY: dict[str, tuple[int, int, int]] = {
    "wan2.1": (8, 4, 16),  # Wan 2.1 VAE: 16 channels, 8x / 4x; WanTransformer3D patch (1, 2, 2)
    "wan2.2": (16, 4, 32),  # Wan 2.2 TI2V-5B VAE: 48 channels, 16x / 4x; same patch
}

_TENSOR = (pa.binary(), pa.list_(pa.int64()), pa.string())


def _tensor_fields(name: str) -> list[pa.Field]:
    b, s, d = _TENSOR
    return [pa.field(f"{name}_bytes", b), pa.field(f"{name}_shape", s), pa.field(f"{name}_dtype", d)]


_METADATA_FIELDS = [
    pa.field("file_name", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("media_type", pa.string()),
    pa.field("width", pa.int64()),
    pa.field("height", pa.int64()),
    pa.field("num_frames", pa.int64()),
    pa.field("duration_sec", pa.float64()),
    pa.field("fps", pa.float64()),
]

# FastVideo's pyarrow_schema_t2v and pyarrow_schema_i2v, field for field and in its order.
SCHEMA_T2V = pa.schema(
    [pa.field("id", pa.string())] + _tensor_fields("vae_latent") + _tensor_fields("text_embedding") + _METADATA_FIELDS
)
SCHEMA_I2V = pa.schema(
    [pa.field("id", pa.string())]
    + _tensor_fields("vae_latent")
    + _tensor_fields("text_embedding")
    + _tensor_fields("clip_feature")
    + _tensor_fields("first_frame_latent")
    + _tensor_fields("pil_image")
    + _METADATA_FIELDS
)

_I2V_TENSORS = ("clip_feature", "first_frame_latent")


def _float32_columns(name: str, tensor: torch.Tensor) -> dict[str, Any]:
    """A tensor as FastVideo stores it: float32 little-endian bytes, shape, 'float32'."""
    arr = tensor.detach().to(torch.float32).contiguous().cpu().numpy().astype("<f4", copy=False)
    return {f"{name}_bytes": arr.tobytes(), f"{name}_shape": [int(s) for s in arr.shape], f"{name}_dtype": "float32"}


def _empty_columns(name: str) -> dict[str, Any]:
    """What FastVideo's i2v record creator writes for a tensor it does not have."""
    return {f"{name}_bytes": b"", f"{name}_shape": [], f"{name}_dtype": ""}


def _has_tensor(row: Mapping[str, Any], name: str) -> bool:
    return row.get(f"{name}_bytes") not in (None, b"")


class FastVideoExporter(Exporter):
    name = "fastvideo"
    families = frozenset(_GEOMETRY)
    needs_embeddings = True
    follows = f"{FASTVIDEO_REPO}@{FASTVIDEO_COMMIT}"
    # FastVideo's examples all preprocess with --samples_per_file 8 (PreprocessConfig default 64);
    # the pipeline should pass batches of this many samples: each batch is one file per bucket.
    samples_per_file = 8
    root = "combined_parquet_dataset"

    # ---------------------------------------------------------------- checks

    @staticmethod
    def _family(ctx: ExportContext) -> str | None:
        """The Wan generation: ctx.family, or the preset name when the family is plain 'wan'."""
        if ctx.family in _GEOMETRY:
            return ctx.family
        model = (ctx.model or "").removeprefix("tiny-")
        if ctx.family == "wan" and model in _GEOMETRY:
            return model
        return None

    def bucket_problem(self, bucket: Bucket, ctx: ExportContext) -> str | None:
        family = self._family(ctx)
        if family is None:
            return f"FastVideo's parquet trainers do not train the {ctx.family} family from latentforge latents"
        spatial, temporal, multiple = _GEOMETRY[family]
        if bucket.width % multiple or bucket.height % multiple:
            return (
                f"{family}: width and height must be multiples of {multiple} "
                f"(VAE {spatial}x, transformer patch 2x2), got {bucket.width}x{bucket.height}"
            )
        if bucket.frames % temporal != 1:
            return f"{family}: frames must be {temporal}k+1, got {bucket.frames}"
        return None

    def _check_latent(self, sample: ExportSample, latent: torch.Tensor, family: str) -> None:
        spatial, temporal, _ = _GEOMETRY[family]
        b = sample.bucket
        want = ((b.frames - 1) // temporal + 1, b.height // spatial, b.width // spatial)
        if latent.ndim != 4 or tuple(latent.shape[1:]) != want:
            raise ExportError(
                f"sample {sample.sample_id}: latent shape {list(latent.shape)} is not [C, {want[0]}, {want[1]}, "
                f"{want[2]}] of a {family} latent of bucket {b}"
            )

    # ---------------------------------------------------------------- rows

    @staticmethod
    def _file_name(uri: str, root: str | None) -> str:
        if root:
            base = root.rstrip("/") + "/"
            if uri.startswith(base):
                return uri[len(base):]
        return uri

    def _record(self, sample: ExportSample, ctx: ExportContext, family: str, i2v: bool) -> dict[str, Any]:
        row = sample.latent
        if sample.embedding is None:
            raise ExportError(f"sample {sample.sample_id} has no text embedding; FastVideo needs one per sample")
        latent = from_columns(row, "latent")
        self._check_latent(sample, latent, family)
        embedding = from_columns(sample.embedding, "embedding")
        if embedding.ndim != 2 or embedding.shape[0] == 0:
            raise ExportError(
                f"sample {sample.sample_id}: embedding shape {list(embedding.shape)} is not [length >= 1, dim]"
            )
        length = sample.embedding.get("length")
        if length is not None and 0 < int(length) < embedding.shape[0]:
            # Canonical embeddings are trimmed to `length`; FastVideo stores them the same way
            # (its preprocessing slices prompt_embeds[i, :mask.sum()]).
            embedding = embedding[: int(length)]
        bucket = sample.bucket
        fps = float(row.get("fps") or 0.0)
        caption = row.get("caption")
        if caption is None:
            caption = sample.embedding.get("caption") or ""
        record: dict[str, Any] = {"id": sample.sample_id}
        record.update(_float32_columns("vae_latent", latent))  # raw VAE mean, as FastVideo stores it
        record.update(_float32_columns("text_embedding", embedding))
        if i2v:
            record.update(self._i2v_columns(row, ctx))
        record.update(
            {
                "file_name": self._file_name(str(row.get("uri") or ""), ctx.dataset_root),
                "caption": str(caption),
                "media_type": str(row.get("media_type") or "video"),
                "width": int(bucket.width),
                "height": int(bucket.height),
                # FastVideo's record creators write latents.shape[1]: the latent frame count.
                "num_frames": int(latent.shape[1]),
                "duration_sec": float(bucket.frames) / fps if fps > 0 else 0.0,
                "fps": fps,
            }
        )
        return record

    def _i2v_columns(self, row: Mapping[str, Any], ctx: ExportContext) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if _has_tensor(row, "clip_feature"):
            out.update(_float32_columns("clip_feature", from_columns(row, "clip_feature")))
        else:
            out.update(_empty_columns("clip_feature"))
        if _has_tensor(row, "first_frame_latent"):
            # FastVideo stores the first-frame condition latent already normalised:
            # (mean - shift_factor) * scaling_factor with Wan's shift = latents_mean and
            # scale = 1 / latents_std (preprocess_pipeline_i2v.py, configs/models/vaes/wanvae.py).
            out.update(_float32_columns("first_frame_latent", self._normalize(from_columns(row, "first_frame_latent"), ctx)))
        else:
            out.update(_empty_columns("first_frame_latent"))
        out.update(_empty_columns("pil_image"))  # FastVideo writes it empty when it has no image
        return out

    @staticmethod
    def _normalize(latent: torch.Tensor, ctx: ExportContext) -> torch.Tensor:
        norm = ctx.latent_metadata.get("vae_normalization") or {}
        if "latents_mean" not in norm or "latents_std" not in norm:
            raise ExportError("first_frame_latent needs latents_mean / latents_std in the latents' vae_normalization")
        c = latent.shape[0]
        mean = torch.tensor(norm["latents_mean"], dtype=torch.float32).view(c, *([1] * (latent.ndim - 1)))
        std = torch.tensor(norm["latents_std"], dtype=torch.float32).view(c, *([1] * (latent.ndim - 1)))
        return (latent.float() - mean) / std

    # ---------------------------------------------------------------- files

    def exported_ids(self, fs: Any, root: str) -> set[str]:
        """The `id` column of every finished Parquet file of the layout."""
        base = f"{root.rstrip('/')}/{self.root}"
        if not fs.exists(base):
            return set()
        ids: set[str] = set()
        for path in fs.find(base):
            if path.endswith(".parquet") and "/.tmp-" not in path:
                with fs.open(path, "rb") as f:
                    ids.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
        return ids

    def files(self, samples: list[ExportSample], ctx: ExportContext) -> list[tuple[str, bytes]]:
        family = self._family(ctx)
        if family is None:
            raise ExportError(
                f"the fastvideo layout exports {sorted(self.families)} latents, not {ctx.family} ({ctx.model})"
            )
        by_bucket: dict[str, list[ExportSample]] = defaultdict(list)
        for s in samples:
            problem = self.bucket_problem(s.bucket, ctx)
            if problem:
                raise ExportError(f"sample {s.sample_id}: {problem}")
            by_bucket[str(s.bucket)].append(s)

        out: list[tuple[str, bytes]] = []
        for bucket in sorted(by_bucket):
            group = sorted(by_bucket[bucket], key=lambda s: s.sample_id)
            for start in range(0, len(group), self.samples_per_file):
                chunk = group[start : start + self.samples_per_file]
                ids = [s.sample_id for s in chunk]
                path = f"{self.root}/bucket={bucket}/{shard_name(ids)}"
                out.append((path, self._table_bytes(chunk, ctx, family)))
        return out

    def _table_bytes(self, chunk: list[ExportSample], ctx: ExportContext, family: str) -> bytes:
        i2v = any(_has_tensor(s.latent, t) for s in chunk for t in _I2V_TENSORS)
        schema = SCHEMA_I2V if i2v else SCHEMA_T2V
        records = [self._record(s, ctx, family, i2v) for s in chunk]
        provenance = {
            "layout": self.name,
            "follows": self.follows,
            "model": ctx.model,
            "family": family,
            "text_encoder": ctx.text_encoder,
            "schema": "pyarrow_schema_i2v" if i2v else "pyarrow_schema_t2v",
        }
        table = pa.Table.from_pylist(records, schema=schema).replace_schema_metadata(
            {"latentforge": json.dumps(provenance, sort_keys=True)}
        )
        buf = io.BytesIO()
        # zstd as FastVideo's ParquetDatasetWriter; one row per row group, because the map-style
        # dataset reads a whole row group to get one row (read_row_from_parquet_file).
        pq.write_table(table, buf, compression="zstd", row_group_size=1)
        return buf.getvalue()


__all__ = ["FastVideoExporter", "SCHEMA_I2V", "SCHEMA_T2V", "FASTVIDEO_COMMIT", "FASTVIDEO_REPO"]
