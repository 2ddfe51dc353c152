"""CogVideoX finetune cache (THUDM/CogVideo `finetune/`, docs/exporters.md "cogvideox").

The finetune's dataset (`finetune/datasets/t2v_dataset.py`, `BaseT2VDataset.__getitem__`) looks
for a cached latent and prompt embedding before it decodes or encodes anything:

    <data_root>/cache/video_latent/<model_name>/<F>x<H>x<W>/<video stem>.safetensors  {"encoded_video": [C, F', H', W']}
    <data_root>/cache/prompt_embeddings/<sha256(prompt).hexdigest()>.safetensors   {"prompt_embedding": [226, dim]}

`<F>x<H>x<W>` is `--train_resolution` (frames x height x width, our bucket reordered) and
`<model_name>` is `--model_name` (`cogvideox-t2v`, `cogvideox1.5-t2v`, ...). The trainer's
`encode_video` stores `latent_dist.sample() * vae.config.scaling_factor`; we store the raw mean
times the same factor. Its `encode_text` runs T5 over 226 padded tokens without a mask, which
is what latentforge keeps for CogVideoX (untrimmed, length 226), so the embedding goes as is.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from typing import Any

from safetensors.torch import save

from latentforge.buckets import Bucket
from latentforge.formats.export.base import ExportContext, ExportError, Exporter, ExportSample, item_name
from latentforge.formats.tensors import DTYPES, from_columns

REPO = "THUDM/CogVideo"
COMMIT = "e519eced782c08db81f45e5eb40baa45958087ae"
MAX_TEXT_SEQ_LENGTH = 226  # CogVideoXTransformer3DModel.config.max_text_seq_length (all CogVideoX models)
FIVE_B_MODEL_NAMES = ("cogvideox-5b-i2v", "cogvideox-5b-t2v")  # finetune/schemas/args.py validator
LATENT_CHANNELS, SPATIAL, TEMPORAL = 16, 8, 4


def prompt_hash(prompt: str) -> str:
    """The finetune's cache key for a prompt: `hashlib.sha256(prompt.encode()).hexdigest()`."""
    return hashlib.sha256(prompt.encode()).hexdigest()


def caption_problem(caption: object) -> str | None:
    """Why a caption cannot be a line of the trainer's prompt.txt (read line by line and
    stripped, empty lines dropped), which would break the prompt/video pairing or the hash."""
    if not isinstance(caption, str) or not caption.strip():
        return "empty caption (the trainer drops empty prompt.txt lines)"
    if "\n" in caption or "\r" in caption:
        return "caption has a line break (prompt.txt holds one caption per line)"
    if caption != caption.strip():
        return "caption has leading or trailing whitespace (the trainer hashes the stripped line)"
    return None


class CogVideoXExporter(Exporter):
    name = "cogvideox"
    families = frozenset({"cogvideox"})
    follows = f"{REPO}@{COMMIT}"

    def __init__(self, model_name: str = "cogvideox-t2v", dtype: str = "bfloat16"):
        if dtype not in DTYPES:
            raise ExportError(f"cogvideox export: dtype {dtype!r} is not one of {sorted(DTYPES)}")
        self.model_name = model_name  # the trainer's --model_name: a folder of the cache path
        self.dtype = dtype  # the trainer's weight dtype (--mixed_precision); bf16 for all but 2B

    # ---- rules -------------------------------------------------------------------------------

    def bucket_problem(self, bucket: Bucket, ctx: ExportContext) -> str | None:
        if (bucket.frames - 1) % 8:
            return f"{bucket}: the CogVideoX finetune needs (frames - 1) % 8 == 0 (train_resolution validator)"
        if bucket.width % 16 or bucket.height % 16:
            return f"{bucket}: width and height must be multiples of 16 (8x VAE, 2x2 patches)"
        if self.model_name in FIVE_B_MODEL_NAMES and (bucket.height, bucket.width) != (480, 720):
            return f"{bucket}: model_name {self.model_name!r} trains at 720x480 only"
        return None

    # ---- layout ------------------------------------------------------------------------------

    def latent_path(self, sample: ExportSample) -> str:
        b = sample.bucket
        return f"cache/video_latent/{self.model_name}/{b.frames}x{b.height}x{b.width}/{item_name(sample)}.safetensors"

    @staticmethod
    def prompt_path(caption: str) -> str:
        return f"cache/prompt_embeddings/{prompt_hash(caption)}.safetensors"

    def paths(self, sample: ExportSample, ctx: ExportContext) -> list[str] | None:
        return [self.latent_path(sample), self.prompt_path(str(sample.latent.get("caption") or "")), video_path(sample)]

    def files(self, samples: list[ExportSample], ctx: ExportContext) -> list[tuple[str, bytes]]:
        if ctx.family not in self.families:
            raise ExportError(f"cogvideox export needs a cogvideox model, not {ctx.model!r} ({ctx.family})")
        scaling = (ctx.latent_metadata.get("vae_normalization") or {}).get("scaling_factor")
        if scaling is None:
            raise ExportError("cogvideox export: the latents' metadata has no VAE scaling_factor")
        dtype = DTYPES[self.dtype]
        out: list[tuple[str, bytes]] = []
        written_prompts: set[str] = set()
        for sample in samples:
            caption = str(sample.latent.get("caption") or "")
            where = self.checked(sample, ctx)
            latent = self.latent(sample, where, LATENT_CHANNELS, SPATIAL, TEMPORAL)
            embedding = from_columns(sample.embedding, "embedding")
            if embedding.dim() != 2 or embedding.shape[0] != MAX_TEXT_SEQ_LENGTH:
                raise ExportError(
                    f"cogvideox export: {where}: embedding shape {list(embedding.shape)}, the trainer "
                    f"needs all {MAX_TEXT_SEQ_LENGTH} T5 positions (untrimmed)"
                )
            encoded = (latent.float() * float(scaling)).to(dtype).contiguous()
            # the caption rides in the header, so `finish` can list prompt.txt from the cache alone
            out.append((self.latent_path(sample), save({"encoded_video": encoded}, metadata={"caption": caption})))
            out.append((video_path(sample), b""))  # the trainer checks that listed videos exist
            prompt_file = self.prompt_path(caption)
            if prompt_file not in written_prompts:
                written_prompts.add(prompt_file)
                out.append((prompt_file, save({"prompt_embedding": embedding.to(dtype).contiguous()})))
        return out

    def finish(self, fs: Any, root: str) -> dict[str, int]:
        """prompt.txt and videos.txt over every cached latent under `root`, in path order, line
        by line (never the whole index in memory); a caption a line cannot hold is left out and
        counted. Each file is written under a temporary name and moved into place."""
        cache = posixpath.join(root, "cache", "video_latent", self.model_name)
        paths = sorted(p for p in (fs.find(cache) if fs.exists(cache) else []) if p.endswith(".safetensors") and "/.tmp-" not in p)
        listed = left_out = 0
        prompts_tmp, videos_tmp = posixpath.join(root, ".tmp-prompt.txt"), posixpath.join(root, ".tmp-videos.txt")
        with fs.open(prompts_tmp, "wb") as prompts, fs.open(videos_tmp, "wb") as videos:
            for path in paths:
                caption = read_caption(fs, path)
                if caption_problem(caption):
                    left_out += 1
                    continue
                prompts.write((str(caption) + "\n").encode("utf-8"))
                videos.write(f"videos/{posixpath.basename(path)[: -len('.safetensors')]}.mp4\n".encode("utf-8"))
                listed += 1
        fs.mv(prompts_tmp, posixpath.join(root, "prompt.txt"))
        fs.mv(videos_tmp, posixpath.join(root, "videos.txt"))
        return {"indexed": listed, "left_out_of_index": left_out}

def video_path(sample: ExportSample) -> str:
    """`videos/<item>.mp4`: an empty placeholder, listed in videos.txt. The trainer refuses to
    start unless each listed video exists; with the cache in place it never opens them."""
    return f"videos/{item_name(sample)}.mp4"


def read_caption(fs: Any, path: str) -> str | None:
    """The caption stored in a cached latent's safetensors header (its first 8 bytes give the
    header's length), without reading the tensor."""
    with fs.open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    return (header.get("__metadata__") or {}).get("caption")


def index_files(samples: list[ExportSample]) -> list[tuple[str, bytes]]:
    """`prompt.txt` and `videos.txt` for the samples, in order: the trainer's dataset reads
    these (`--caption_column prompt.txt --video_column videos.txt`) and finds each cached latent
    by the stem of its videos.txt line, `videos/<item_name>.mp4`. Not per sample, so the export
    pipeline writes them once at the end (docs/exporters.md). The trainer checks that every
    listed video file exists; with the cache in place it never decodes them.

    A caption that a prompt.txt line cannot hold as is (line break, surrounding whitespace,
    empty) is refused here, with every such sample named: its cache files are written (they are
    keyed correctly), but no index line could lead the trainer to them."""
    prompts, videos, refused = [], [], []
    for sample in samples:
        caption = sample.latent.get("caption")
        problem = caption_problem(caption)
        if problem:
            refused.append(f"{sample.sample_id} ({sample.latent.get('uri')}): {problem}")
            continue
        prompts.append(str(caption))
        videos.append(f"videos/{item_name(sample)}.mp4")
    if refused:
        raise ExportError("cogvideox index: captions prompt.txt cannot hold: " + "; ".join(refused))
    return [
        ("prompt.txt", ("\n".join(prompts) + "\n").encode("utf-8")),
        ("videos.txt", ("\n".join(videos) + "\n").encode("utf-8")),
    ]
