"""musubi-tuner latent and text-encoder caches (kohya-ss/musubi-tuner, docs/exporters.md "musubi").

Training reads only the cache directory (`dataset/image_video_dataset.py`,
`VideoDataset.prepare_for_training`): it globs `*_<arch>.safetensors`, splits the file name
on "_" into `<item_key>_<pos>-<frames>_<W>x<H>_<arch>.safetensors`, opens
`<item_key>_<arch>_te.safetensors` beside it, and `dataset/bucket.py: BucketBatchManager`
merges both files' tensors under their key names with the dtype suffix (and a latent's
`_FxHxW`) removed:

    wan (Wan 2.1 VAE: Wan2.1 and Wan2.2 A14B)  latents_<F'>x<H'>x<W'>_<dtype>  (mu - mean) / std   [C, F', H', W']
                                               varlen_t5_<dtype>                UMT5, trimmed        [length, 4096]
    hv  (HunyuanVideo)                         latents_<F'>x<H'>x<W'>_<dtype>  raw (x 0.476986 in training)
                                               llm_<dtype>, llm_mask            [256, 4096], [256]
                                               clipL_<dtype>                    CLIP-L pooled        [768]
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors.torch import save

from latentforge.buckets import Bucket
from latentforge.formats.export.base import ExportContext, ExportError, Exporter, ExportSample, item_name
from latentforge.formats.tensors import DTYPES, TORCH_TO_NAME, from_columns
from latentforge.rows import has_value

REPO = "kohya-ss/musubi-tuner"
COMMIT = "30c658c4f4b0bf05038b3346eff9670259b10fc7"
FORMAT_VERSION = "1.0.1"  # dataset/cache_io.py: save_latent_cache_common / save_text_encoder_output_cache_common
LATENT_CHANNELS, SPATIAL, TEMPORAL = 16, 8, 4
HUNYUAN_TEXT_LEN = 256  # hunyuan_model/text_encoder.py: load_text_encoder_1 (text_len)

# family -> (architecture short name in file names, full name in metadata, default dtypes of
# musubi's own cache scripts: latents, text)
ARCHITECTURES = {
    "wan2.1": ("wan", "wan", "bfloat16", "bfloat16"),  # wan_cache_latents.py vae_dtype; T5 config t5_dtype
    "hunyuanvideo": ("hv", "hunyuan_video", "float16", "float16"),  # cache_latents.py / cache_text_encoder_outputs.py
}


def _start_frame(sample: ExportSample) -> int:
    value = sample.latent.get("start_frame")
    return int(value) if has_value(value) else 0


def _sorted_metadata(data: bytes) -> bytes:
    """safetensors writes `__metadata__` in hash-map order, which changes between processes;
    rewrite the header with sorted metadata so the same sample always gives the same bytes."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    metadata = header.pop("__metadata__", None)
    if metadata is not None:
        header = {"__metadata__": dict(sorted(metadata.items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


class MusubiExporter(Exporter):
    name = "musubi"
    families = frozenset(ARCHITECTURES)
    follows = f"{REPO}@{COMMIT}"

    def __init__(self, dtype: str | None = None):
        if dtype is not None and dtype not in DTYPES:
            raise ExportError(f"musubi export: dtype {dtype!r} is not one of {sorted(DTYPES)}")
        self.dtype = dtype  # None: what musubi's own cache scripts write by default

    def _arch(self, ctx: ExportContext) -> tuple[str, str, str, str]:
        if ctx.family not in ARCHITECTURES:
            raise ExportError(
                f"musubi export supports {sorted(ARCHITECTURES)}, not {ctx.model!r} ({ctx.family}); "
                "musubi's Wan 2.2 (A14B) uses the Wan 2.1 VAE: export a wan2.1 run"
            )
        return ARCHITECTURES[ctx.family]

    def bucket_problem(self, bucket: Bucket, ctx: ExportContext) -> str | None:
        if bucket.width % 16 or bucket.height % 16:
            return f"{bucket}: musubi buckets are multiples of 16 (BucketSelector reso_steps)"
        if bucket.frames % TEMPORAL != 1:
            return f"{bucket}: musubi needs frames = 4N+1"
        return None

    # ---- layout ------------------------------------------------------------------------------

    def latent_path(self, sample: ExportSample, arch: str) -> str:
        b = sample.bucket
        return f"{item_name(sample)}_{_start_frame(sample):05d}-{b.frames:03d}_{b.width:04d}x{b.height:04d}_{arch}.safetensors"

    @staticmethod
    def text_path(sample: ExportSample, arch: str) -> str:
        return f"{item_name(sample)}_{arch}_te.safetensors"

    def paths(self, sample: ExportSample, ctx: ExportContext) -> list[str] | None:
        arch = self._arch(ctx)[0]
        return [self.latent_path(sample, arch), self.text_path(sample, arch)]

    def files(self, samples: list[ExportSample], ctx: ExportContext) -> list[tuple[str, bytes]]:
        arch, arch_full, latent_dtype, text_dtype = self._arch(ctx)
        latent_dtype = DTYPES[self.dtype or latent_dtype]
        text_dtype = DTYPES[self.dtype or text_dtype]
        norm = ctx.latent_metadata.get("vae_normalization") or {}
        out: list[tuple[str, bytes]] = []
        for sample in samples:
            where = self.checked(sample, ctx)
            latent = self.latent(sample, where, LATENT_CHANNELS, SPATIAL, TEMPORAL).float()
            if arch == "wan":
                latent = self._wan_normalize(latent, norm)
            latent = latent.to(latent_dtype).contiguous()
            _, f, h, w = latent.shape
            b = sample.bucket
            latent_meta = {
                "architecture": arch_full,
                "width": str(b.width),
                "height": str(b.height),
                "format_version": FORMAT_VERSION,
                "frame_count": str(b.frames),
            }
            latent_sd = {f"latents_{f}x{h}x{w}_{TORCH_TO_NAME[latent_dtype]}": latent}
            out.append((self.latent_path(sample, arch), _sorted_metadata(save(latent_sd, metadata=latent_meta))))

            text_sd = self._text(sample, arch, text_dtype, where)
            caption = str(sample.latent.get("caption") or "")
            text_meta = {"architecture": arch_full, "caption1": caption, "format_version": FORMAT_VERSION}
            out.append((self.text_path(sample, arch), _sorted_metadata(save(text_sd, metadata=text_meta))))
        return out

    # ---- tensors -----------------------------------------------------------------------------

    @staticmethod
    def _wan_normalize(latent: torch.Tensor, norm: dict) -> torch.Tensor:
        """musubi's WanVAE caches `(mu - mean) * (1 / std)` per channel (wan/modules/vae.py)."""
        if "latents_mean" not in norm or "latents_std" not in norm:
            raise ExportError("musubi export: the latents' metadata has no Wan latents_mean / latents_std")
        mean = torch.tensor(norm["latents_mean"], dtype=torch.float32).view(-1, 1, 1, 1)
        std = torch.tensor(norm["latents_std"], dtype=torch.float32).view(-1, 1, 1, 1)
        if mean.shape[0] != latent.shape[0] or std.shape[0] != latent.shape[0]:
            raise ExportError(f"musubi export: {mean.shape[0]} normalisation channels for a {latent.shape[0]}-channel latent")
        return (latent - mean) * (1.0 / std)

    @staticmethod
    def _text(sample: ExportSample, arch: str, dtype: torch.dtype, where: str) -> dict[str, torch.Tensor]:
        emb = sample.embedding
        embedding = from_columns(emb, "embedding")
        length = int(emb.get("length", embedding.shape[0]))
        if embedding.dim() != 2 or length > embedding.shape[0]:
            raise ExportError(f"musubi export: {where}: embedding shape {list(embedding.shape)}, length {length}")
        embedding = embedding[:length].to(dtype).contiguous()
        name = TORCH_TO_NAME[dtype]
        if arch == "wan":
            return {f"varlen_t5_{name}": embedding}
        if length > HUNYUAN_TEXT_LEN:
            raise ExportError(f"musubi export: {where}: {length} LLM tokens, musubi's HunyuanVideo keeps {HUNYUAN_TEXT_LEN}")
        if not has_value(emb.get("pooled_embedding_bytes")):
            raise ExportError(f"musubi export: {where}: no CLIP pooled embedding (pooled_embedding_*)")
        llm = torch.zeros(HUNYUAN_TEXT_LEN, embedding.shape[1], dtype=dtype)
        llm[:length] = embedding
        mask = torch.zeros(HUNYUAN_TEXT_LEN, dtype=torch.int64)
        mask[:length] = 1
        pooled = from_columns(emb, "pooled_embedding").reshape(-1).to(dtype).contiguous()
        return {f"llm_{name}": llm, "llm_mask": mask, f"clipL_{name}": pooled}
