"""musubi-tuner caches: files read back the way musubi-tuner's training reads its cache directory
(dataset/image_video_dataset.py VideoDataset.prepare_for_training: glob, split the name on "_",
find the _te file; dataset/bucket.py BucketBatchManager.__getitem__: load_file both, strip the
varlen_ prefix, the dtype suffix and a latent's FxHxW, stack what is not varlen), written here,
not imported from the trainer."""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from latentforge.buckets import parse_bucket
from latentforge.formats.export.base import ExportContext, ExportError, ExportSample
from latentforge.formats.export.base import item_name as item_key
from latentforge.formats.export.musubi import MusubiExporter
from latentforge.formats.tensors import to_columns

DIM, CLIP_DIM = 24, 12
DTYPE_SUFFIXES = ("bfloat16", "float16", "float32", "int64", "int32")
WAN_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
            0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
WAN_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
           3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]


def _ctx(family: str) -> ExportContext:
    norm = {"latents_mean": WAN_MEAN, "latents_std": WAN_STD} if family.startswith("wan") else {"scaling_factor": 0.476986}
    return ExportContext(model=f"tiny-{family}", family=family, text_encoder="enc", latent_metadata={"vae_normalization": norm})


def _sample(uri, caption, bucket, start, seed, length, pooled=False):
    b = parse_bucket(bucket)
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(16, (b.frames - 1) // 4 + 1, b.height // 8, b.width // 8, generator=g)
    embedding = torch.randn(length, DIM, generator=g)
    sid = hashlib.sha256(f"{uri}|{start}|{bucket}".encode()).hexdigest()[:16]
    row = {"sample_id": sid, "uri": uri, "caption": caption, "bucket": bucket, "start_frame": start,
           "end_frame": start + b.frames, "num_frames": b.frames, **to_columns("latent", latent)}
    emb = {"caption": caption, "length": length, **to_columns("embedding", embedding)}
    if pooled:
        emb.update(to_columns("pooled_embedding", torch.randn(CLIP_DIM, generator=g)))
    return ExportSample(latent=row, embedding=emb), latent, embedding, emb


def _write(root: Path, files) -> None:
    for rel, data in files:
        assert "/" not in rel  # one flat cache directory
        (root / rel).write_bytes(data)


def _strip_dtype(key: str) -> str:
    for d in DTYPE_SUFFIXES:
        if key.endswith("_" + d):
            return key[: -len(d) - 1]
    return key


def _musubi_reads(cache_directory: Path, arch: str):
    """prepare_for_training + BucketBatchManager.__getitem__ per bucket (width, height, frames),
    with bucket_no_upscale and a resolution above every bucket's area: the file's WxH is its bucket."""
    buckets: dict[tuple[int, int, int], list[tuple[str, str, int]]] = {}
    for cache_file in glob.glob(os.path.join(cache_directory, f"*_{arch}.safetensors")):
        tokens = os.path.basename(cache_file).split("_")
        width, height = map(int, tokens[-2].split("x"))
        frame_pos, frame_count = (int(t) for t in tokens[-3].split("-")[:2])
        key = "_".join(tokens[:-3])
        te_file = os.path.join(cache_directory, f"{key}_{arch}_te.safetensors")
        assert os.path.exists(te_file), te_file
        buckets.setdefault((width, height, frame_count), []).append((cache_file, te_file, frame_pos))
    batches = {}
    for reso, items in buckets.items():
        data: dict[str, list] = {}
        varlen = set()
        for latent_file, te_file, _ in sorted(items):
            sd = {**load_file(latent_file), **load_file(te_file)}
            for key, value in sd.items():
                content = key
                is_varlen = key.startswith("varlen_")
                if is_varlen:
                    content = content.replace("varlen_", "")
                if not content.endswith("_mask"):
                    content = _strip_dtype(content)
                    if content.startswith("latents_"):
                        content = content.rsplit("_", 1)[0]
                data.setdefault(content, []).append(value)
                if is_varlen:
                    varlen.add(content)
        batches[reso] = {k: v if k in varlen else torch.stack(v) for k, v in data.items()}
        batches[reso]["_files"] = sorted(items)
    return batches


def test_wan_round_trip(tmp_path):
    exporter, ctx = MusubiExporter(), _ctx("wan2.1")
    assert exporter.name == "musubi" and {"wan2.1", "hunyuanvideo"} <= exporter.families
    assert exporter.follows.startswith("kohya-ss/musubi-tuner@")
    made = [
        _sample("/data/a/my_clip.mp4", "a fox", "832x480x49", 0, 1, 7),
        _sample("/data/b/my_clip.mp4", "a fox", "832x480x49", 0, 2, 7),  # same stem elsewhere
        _sample("/data/a/my_clip.mp4", "a cat", "832x480x49", 49, 3, 11),  # next span, other caption
        _sample("/data/c/[odd] name*.mov", "sea", "480x832x17", 5, 4, 3),
    ]
    samples = [m[0] for m in made]
    files = exporter.files(samples, ctx)
    assert [p for s in samples for p in exporter.paths(s, ctx)] == [p for p, _ in files]
    assert len({item_key(s) for s in samples}) == len(samples)
    assert exporter.files(samples, ctx) == files  # deterministic bytes (resume skips by name)
    _write(tmp_path, files)

    batches = _musubi_reads(tmp_path, "wan")
    assert set(batches) == {(832, 480, 49), (480, 832, 17)}
    by_file = {os.path.basename(exporter.paths(s, ctx)[0]): m for s, m in zip(samples, made)}
    mean = torch.tensor(WAN_MEAN).view(-1, 1, 1, 1)
    std = torch.tensor(WAN_STD).view(-1, 1, 1, 1)
    for (w, h, f), batch in batches.items():
        n = len(batch["_files"])
        assert batch["latents"].shape == (n, 16, (f - 1) // 4 + 1, h // 8, w // 8)
        assert batch["latents"].dtype == torch.bfloat16
        assert isinstance(batch["t5"], list) and len(batch["t5"]) == n
        for k, (latent_file, te_file, _) in enumerate(batch["_files"]):
            sample, latent, embedding, emb = by_file[os.path.basename(latent_file)]
            # musubi caches (mu - mean) / std: undo it
            restored = batch["latents"][k].float() * std + mean
            torch.testing.assert_close(restored, latent, rtol=2e-2, atol=5e-2)
            assert torch.equal(batch["latents"][k], ((latent - mean) * (1.0 / std)).to(torch.bfloat16))
            t5 = batch["t5"][k]
            assert t5.dtype == torch.bfloat16 and t5.shape == (emb["length"], DIM)
            assert torch.equal(t5, embedding.to(torch.bfloat16))
            with safe_open(latent_file, framework="pt") as fh:
                meta = fh.metadata()
            assert meta == {"architecture": "wan", "width": str(w), "height": str(h),
                            "format_version": "1.0.1", "frame_count": str(f)}
            with safe_open(te_file, framework="pt") as fh:
                assert fh.metadata()["caption1"] == sample.latent["caption"]
                assert fh.metadata()["architecture"] == "wan"


def test_hunyuan_round_trip(tmp_path):
    exporter, ctx = MusubiExporter(), _ctx("hunyuanvideo")
    made = [
        _sample("/v/one.mp4", "a fox", "544x960x33", 0, 1, 9, pooled=True),
        _sample("/v/two.mp4", "a dog and a cat", "544x960x33", 12, 2, 20, pooled=True),
    ]
    samples = [m[0] for m in made]
    _write(tmp_path, exporter.files(samples, ctx))
    assert not glob.glob(str(tmp_path / "*_wan*"))
    batches = _musubi_reads(tmp_path, "hv")
    assert list(batches) == [(544, 960, 33)]
    batch = batches[(544, 960, 33)]
    assert batch["latents"].shape == (2, 16, 9, 120, 68) and batch["latents"].dtype == torch.float16
    assert batch["llm"].shape == (2, 256, DIM) and batch["llm"].dtype == torch.float16
    assert batch["llm_mask"].shape == (2, 256) and batch["llm_mask"].dtype == torch.int64
    assert batch["clipL"].shape == (2, CLIP_DIM) and batch["clipL"].dtype == torch.float16
    by_file = {os.path.basename(exporter.paths(s, ctx)[0]): m for s, m in zip(samples, made)}
    for k, (latent_file, _, frame_pos) in enumerate(batch["_files"]):
        sample, latent, embedding, emb = by_file[os.path.basename(latent_file)]
        assert frame_pos == sample.latent["start_frame"]
        # raw latents: musubi multiplies by 0.476986 in training, the cache holds the unscaled value
        torch.testing.assert_close(batch["latents"][k].float(), latent, rtol=1e-3, atol=1e-3)
        n = emb["length"]
        assert int(batch["llm_mask"][k].sum()) == n and bool(batch["llm_mask"][k][:n].all())
        assert torch.equal(batch["llm"][k][:n], embedding.to(torch.float16))
        assert not batch["llm"][k][n:].any()
        pooled = np.frombuffer(emb["pooled_embedding_bytes"], dtype="<f4").copy()
        assert torch.equal(batch["clipL"][k], torch.from_numpy(pooled).to(torch.float16))


def test_dtype_override_and_refusals(tmp_path):
    sample = _sample("/v/one.mp4", "a fox", "832x480x9", 0, 1, 5)[0]
    files = MusubiExporter(dtype="float32").files([sample], _ctx("wan2.1"))
    keys = sorted(load_file_bytes(files[0][1])) + sorted(load_file_bytes(files[1][1]))
    assert keys == ["latents_3x60x104_float32", "varlen_t5_float32"]

    exporter = MusubiExporter()
    with pytest.raises(ExportError, match="wan2.1"):
        exporter.files([sample], _ctx("wan2.2"))  # Wan 2.2 VAE (TI2V-5B): musubi has no such model
    with pytest.raises(ExportError, match="pooled"):
        exporter.files([sample], _ctx("hunyuanvideo"))
    with pytest.raises(ExportError, match="latents_mean"):
        exporter.files([sample], ExportContext(model="wan2.1", family="wan2.1", text_encoder="e"))
    assert exporter.bucket_problem(parse_bucket("832x480x49"), _ctx("wan2.1")) is None
    assert "4N+1" in exporter.bucket_problem(parse_bucket("832x480x48"), _ctx("wan2.1"))
    assert "16" in exporter.bucket_problem(parse_bucket("840x480x49"), _ctx("wan2.1"))
    long = _sample("/v/l.mp4", "long", "544x960x33", 0, 3, 300, pooled=True)[0]
    with pytest.raises(ExportError, match="256"):
        exporter.files([long], _ctx("hunyuanvideo"))


def load_file_bytes(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)
