"""CogVideoX finetune cache: files read back the way THUDM/CogVideo's finetune dataset reads them
(finetune/datasets/t2v_dataset.py BaseT2VDataset.__getitem__, utils.load_prompts/load_videos,
the lora trainer's collate_fn), written here, not imported from the trainer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from latentforge.buckets import parse_bucket
from latentforge.formats.export.base import ExportContext, ExportError, ExportSample
from latentforge.formats.export.cogvideox import CogVideoXExporter, index_files, item_name
from latentforge.formats.tensors import from_columns, to_columns

SCALING = 1.15258426  # CogVideoX-2b VAE scaling_factor
DIM = 32  # small T5 width


def _ctx(family: str = "cogvideox") -> ExportContext:
    return ExportContext(
        model="tiny-cogvideox",
        family=family,
        text_encoder="t5-v1_1-xxl-226",
        latent_metadata={"vae_normalization": {"scaling_factor": SCALING}},
    )


def _sample(uri: str, caption: str, bucket: str, start: int, seed: int, emb_len: int = 226, latent_dtype: str = "float32"):
    b = parse_bucket(bucket)
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(16, (b.frames - 1) // 4 + 1, b.height // 8, b.width // 8, generator=g)
    # one embedding row per distinct caption, as in embeddings/
    seed_text = int(hashlib.sha256(caption.encode()).hexdigest()[:8], 16)
    embedding = torch.randn(emb_len, DIM, generator=torch.Generator().manual_seed(seed_text))
    sid = hashlib.sha256(f"{uri}|{start}|{bucket}".encode()).hexdigest()[:16]
    row = {"sample_id": sid, "uri": uri, "caption": caption, "bucket": bucket, "start_frame": start,
           "end_frame": start + b.frames, "num_frames": b.frames, **to_columns("latent", latent, latent_dtype)}
    emb = {"caption": caption, "length": emb_len, **to_columns("embedding", embedding)}
    return ExportSample(latent=row, embedding=emb)


def _write(root: Path, files: list[tuple[str, bytes]]) -> None:
    for rel, data in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():  # shared prompt file: same name must mean same bytes
            assert path.read_bytes() == data, rel
        path.write_bytes(data)


def _trainer_reads(data_root: Path, model_name: str, train_resolution: tuple[int, int, int]):
    """BaseT2VDataset.__getitem__ with both cache files present, for every line of the index,
    then the t2v collate_fn (torch.stack)."""
    with open(data_root / "prompt.txt", encoding="utf-8") as f:
        prompts = [line.strip() for line in f.readlines() if len(line.strip()) > 0]
    with open(data_root / "videos.txt", encoding="utf-8") as f:
        videos = [data_root / line.strip() for line in f.readlines() if len(line.strip()) > 0]
    assert len(prompts) == len(videos)
    res = "x".join(str(x) for x in train_resolution)
    cache = data_root / "cache"
    items = []
    for prompt, video in zip(prompts, videos):
        prompt_file = cache / "prompt_embeddings" / (str(hashlib.sha256(prompt.encode()).hexdigest()) + ".safetensors")
        video_file = cache / "video_latent" / model_name / res / (video.stem + ".safetensors")
        items.append({
            "prompt_embedding": load_file(prompt_file)["prompt_embedding"],
            "encoded_video": load_file(video_file)["encoded_video"],
        })
    return {
        "encoded_videos": torch.stack([i["encoded_video"] for i in items]),
        "prompt_embedding": torch.stack([i["prompt_embedding"] for i in items]),
    }


def test_cache_round_trip(tmp_path):
    exporter = CogVideoXExporter()
    assert exporter.name == "cogvideox" and exporter.families == {"cogvideox"}
    assert exporter.follows.startswith("THUDM/CogVideo@")
    ctx = _ctx()
    samples = [
        _sample("/data/a/clip.mp4", "a red fox runs", "720x480x49", 0, 1),
        _sample("/data/b/clip.mp4", "a red fox runs", "720x480x49", 0, 2),  # same stem, same caption
        _sample("/data/a/clip.mp4", "a cat sleeps", "720x480x49", 49, 3),  # same file, next span
        _sample("/data/c/other video.mov", "waves — café ☕", "480x720x17", 0, 4),
    ]
    files = exporter.files(samples, ctx)
    paths = [p for s in samples for p in exporter.paths(s, ctx)]
    assert sorted(set(paths)) == sorted({p for p, _ in files})
    assert len({item_name(s) for s in samples}) == len(samples)
    _write(tmp_path, files + index_files(samples))
    # the prompt file is keyed by caption: two samples share one
    assert len(list((tmp_path / "cache" / "prompt_embeddings").iterdir())) == 3

    for resolution, chosen in (((49, 480, 720), samples[:3]), ((17, 720, 480), samples[3:])):
        # one trainer run trains one train_resolution: keep that bucket's lines of the index
        lines = [i for i, s in enumerate(samples) if s in chosen]
        root = tmp_path / f"run{resolution[0]}"
        root.mkdir()
        (root / "cache").symlink_to(tmp_path / "cache")
        for name in ("prompt.txt", "videos.txt"):
            text = (tmp_path / name).read_text(encoding="utf-8").splitlines()
            (root / name).write_text("\n".join(text[i] for i in lines) + "\n", encoding="utf-8")
        batch = _trainer_reads(root, "cogvideox-t2v", resolution)
        f, h, w = resolution
        assert batch["encoded_videos"].shape == (len(chosen), 16, (f - 1) // 4 + 1, h // 8, w // 8)
        assert batch["encoded_videos"].dtype == torch.bfloat16
        assert batch["prompt_embedding"].shape == (len(chosen), 226, DIM)
        assert batch["prompt_embedding"].dtype == torch.bfloat16
        for k, s in enumerate(chosen):
            raw = np.frombuffer(s.latent["latent_bytes"], dtype="<f4").reshape(s.latent["latent_shape"])
            canonical = torch.from_numpy(raw.copy())
            # the cache holds latent * scaling_factor: undo it
            restored = batch["encoded_videos"][k].float() / SCALING
            torch.testing.assert_close(restored, canonical, rtol=1e-2, atol=1e-2)
            assert torch.equal(batch["encoded_videos"][k], (canonical * SCALING).to(torch.bfloat16))
            emb = np.frombuffer(s.embedding["embedding_bytes"], dtype="<f4").reshape(226, DIM)
            assert torch.equal(batch["prompt_embedding"][k], torch.from_numpy(emb.copy()).to(torch.bfloat16))


def test_bfloat16_source_and_float32_output(tmp_path):
    exporter = CogVideoXExporter(model_name="cogvideox1.5-t2v", dtype="float32")
    s = _sample("s3://bucket/x.mp4", "a boat", "768x432x81", 10, 5, latent_dtype="bfloat16")
    files = dict(exporter.files([s], _ctx()))
    path = f"cache/video_latent/cogvideox1.5-t2v/81x432x768/{item_name(s)}.safetensors"
    _write(tmp_path, list(files.items()))
    video = load_file(tmp_path / path)["encoded_video"]
    assert video.dtype == torch.float32 and video.shape == (16, 21, 54, 96)
    assert torch.equal(video, from_columns(s.latent, "latent").float() * SCALING)


def test_bucket_problem_frame_rule():
    exporter, ctx = CogVideoXExporter(), _ctx()
    assert exporter.bucket_problem(parse_bucket("720x480x49"), ctx) is None
    assert exporter.bucket_problem(parse_bucket("1360x768x81"), ctx) is None
    assert exporter.bucket_problem(parse_bucket("720x480x9"), ctx) is None
    for bad in ("720x480x45", "720x480x13", "720x480x5"):  # valid VAE buckets (F % 4 == 1), not 8N+1
        assert "(frames - 1) % 8" in exporter.bucket_problem(parse_bucket(bad), ctx)
    five_b = CogVideoXExporter(model_name="cogvideox-5b-t2v")
    assert five_b.bucket_problem(parse_bucket("720x480x49"), ctx) is None
    assert "720x480" in five_b.bucket_problem(parse_bucket("832x480x49"), ctx)
    with pytest.raises(ExportError, match="8"):
        exporter.files([_sample("/v.mp4", "x", "720x480x45", 0, 6)], ctx)


def test_refusals():
    exporter, ctx = CogVideoXExporter(), _ctx()
    with pytest.raises(ExportError, match="226"):
        exporter.files([_sample("/v.mp4", "a dog", "720x480x49", 0, 7, emb_len=12)], ctx)
    with pytest.raises(ExportError, match="cogvideox model"):
        exporter.files([_sample("/v.mp4", "a dog", "720x480x49", 0, 7)], _ctx("wan2.1"))
    for caption in ("two\nlines", " padded", "", "cr\rline"):
        bad = _sample("/v.mp4", caption, "720x480x49", 0, 7)
        assert exporter.files([bad], ctx)  # the cache files are keyed right ...
        with pytest.raises(ExportError, match="caption"):  # ... but prompt.txt cannot hold the caption
            index_files([_sample("/w.mp4", "fine", "720x480x49", 0, 8), bad])
    no_scale = ExportContext(model="cogvideox", family="cogvideox", text_encoder="t5", latent_metadata={})
    with pytest.raises(ExportError, match="scaling_factor"):
        exporter.files([_sample("/v.mp4", "a dog", "720x480x49", 0, 7)], no_scale)
    no_emb = ExportSample(latent=_sample("/v.mp4", "a dog", "720x480x49", 0, 7).latent, embedding=None)
    with pytest.raises(ExportError, match="embedding"):
        exporter.files([no_emb], ctx)


def test_finish_lists_the_whole_cache_as_the_trainer_reads_it(tmp_path):
    """`finish` (run once after every batch is written) rebuilds prompt.txt / videos.txt from
    the cache alone, so batches written by different tasks or runs end in one index; the
    placeholders it lists exist, and a caption prompt.txt cannot hold is left out."""
    import fsspec

    exporter = CogVideoXExporter()
    ctx = _ctx()
    first = [_sample("/data/a.mp4", "a red fox runs", "720x480x49", 0, 1)]
    second = [_sample("/data/b.mp4", "a cat sleeps", "720x480x49", 0, 2), _sample("/data/c.mp4", "two\nlines", "720x480x49", 0, 3)]
    for batch in (first, second):  # two tasks
        _write(tmp_path, exporter.files(batch, ctx))
    counts = exporter.finish(fsspec.filesystem("file"), str(tmp_path))
    assert counts == {"indexed": 2, "left_out_of_index": 1}
    expected = dict(index_files(sorted(first + second[:1], key=item_name)))
    assert (tmp_path / "prompt.txt").read_bytes() == expected["prompt.txt"]
    assert (tmp_path / "videos.txt").read_bytes() == expected["videos.txt"]
    batch = _trainer_reads(tmp_path, "cogvideox-t2v", (49, 480, 720))
    assert batch["encoded_videos"].shape[0] == 2
    assert all((tmp_path / line).exists() for line in (tmp_path / "videos.txt").read_text().split())
