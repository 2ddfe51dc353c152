"""The ltx2 layout, read back the way the LTX-2 trainer's PrecomputedDataset reads it.

The reader below is written here from the trainer's loader (Lightricks/LTX-2, packages/ltx-trainer
ltx_trainer/datasets.py): data root = <root>/.precomputed when that exists; samples are the
`latents/**/*.pt` files, each kept only when `conditions/<same relative path>` exists; every file is
read with `torch.load(path, map_location="cpu", weights_only=True)`; a 2-D latent would be the legacy
patchified [seq, C] form. The text strategy then reads `video_prompt_embeds`, `audio_prompt_embeds`,
`prompt_attention_mask` and the connectors need a sequence length that is a multiple of 128.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentforge.buckets import Bucket, parse_bucket
from latentforge.formats.export.base import ExportContext, ExportError, ExportSample
from latentforge.formats.export.ltx2 import LTX2Exporter
from latentforge.formats.tensors import to_columns

C = 128
ROOT = "/data/set"
MEAN = [0.01 * (i % 7) - 0.03 for i in range(C)]
STD = [0.5 + 0.01 * (i % 11) for i in range(C)]


def ctx(**kw) -> ExportContext:
    base = dict(
        model="ltx2",
        family="ltx2",
        text_encoder="ltx2-gemma3-12b-1024",
        latent_metadata={"vae_normalization": {"latents_mean": MEAN, "latents_std": STD, "scaling_factor": 1.0}},
        dataset_root=ROOT,
    )
    base.update(kw)
    return ExportContext(**base)


def latent_shape(bucket: str) -> tuple[int, int, int, int]:
    b = parse_bucket(bucket)
    return (C, (b.frames - 1) // 8 + 1, b.height // 32, b.width // 32)


def latent_row(sid: str, uri: str, bucket: str, *, fps=24.0, start=0, end=None, total=100, media="video", dtype="float32", seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(latent_shape(bucket), generator=g) * 3 + 1
    row = {
        "sample_id": sid, "uri": uri, "bucket": bucket, "fps": fps, "media_type": media,
        "start_frame": start, "end_frame": total if end is None else end, "source_frames": total,
        "num_frames": parse_bucket(bucket).frames, "caption": f"caption {sid}", "caption_id": f"c{sid}",
    }
    row.update(to_columns("latent", t, dtype))
    return row


def trainer_embedding(length: int, dim_v=64, dim_a=32, seed=1, audio=True):
    g = torch.Generator().manual_seed(seed)
    row = {"caption_id": "x", "length": length}
    row.update(to_columns("video_prompt_embeds", torch.randn(length, dim_v, generator=g), "bfloat16"))
    if audio:
        row.update(to_columns("audio_prompt_embeds", torch.randn(length, dim_a, generator=g), "bfloat16"))
    return row


def samples() -> list[ExportSample]:
    return [
        ExportSample(latent_row("a", f"{ROOT}/clips/a.mp4", "256x128x17", seed=1), trainer_embedding(5, seed=2)),
        ExportSample(latent_row("b", f"{ROOT}/clips/b.mp4", "128x256x9", start=10, end=40, seed=3, dtype="bfloat16"),
                     trainer_embedding(1024, seed=4, audio=False)),
        ExportSample(latent_row("c", f"{ROOT}/stills/c.png", "64x64x1", fps=0.0, total=1, media="image", seed=5), None),
    ]


def write(files, root: Path) -> None:
    for rel, data in files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def trainer_read(root: Path) -> list[dict]:
    """PrecomputedDataset(root, {"latents": "latents", "conditions": "conditions"}), item by item."""
    data_root = root / ".precomputed" if (root / ".precomputed").exists() else root
    latents_dir, conditions_dir = data_root / "latents", data_root / "conditions"
    items = []
    for f in sorted(latents_dir.glob("**/*.pt")):
        rel = f.relative_to(latents_dir)
        cond = conditions_dir / rel
        if not cond.is_file():
            continue  # the trainer skips a sample without its conditions file
        latents = torch.load(f, map_location="cpu", weights_only=True)
        conditions = torch.load(cond, map_location="cpu", weights_only=True)
        items.append({"rel": str(rel), "latents": latents, "conditions": conditions})
    return items


def test_trainer_reads_latents_and_conditions(tmp_path):
    ex = LTX2Exporter()
    ss = samples()
    files = ex.files(ss, ctx())
    write(files, tmp_path)
    items = {i["rel"]: i for i in trainer_read(tmp_path)}
    assert sorted(items) == ["clips/a.pt", "clips/b.span-10-40.pt"]  # the still has no conditions yet
    mean = torch.tensor(MEAN).view(-1, 1, 1, 1)
    std = torch.tensor(STD).view(-1, 1, 1, 1)
    for sample, rel in [(ss[0], "clips/a.pt"), (ss[1], "clips/b.span-10-40.pt")]:
        lat, cond = items[rel]["latents"], items[rel]["conditions"]
        assert lat["latents"].dim() == 4  # not the legacy patchified form
        assert tuple(lat["latents"].shape) == latent_shape(sample.latent["bucket"])
        assert lat["latents"].dtype == torch.bfloat16
        b = sample.bucket
        assert (lat["num_frames"], lat["height"], lat["width"]) == ((b.frames - 1) // 8 + 1, b.height // 32, b.width // 32)
        assert lat["fps"] == 24.0
        from latentforge.formats.tensors import from_columns

        raw = from_columns(sample.latent, "latent").float()
        assert torch.equal(lat["latents"], ((raw - mean) / std).to(torch.bfloat16))
        # undone: the trainer's latents are the VAE mean normalised per channel
        assert torch.allclose(lat["latents"].float() * std + mean, raw, rtol=1e-2, atol=3e-2)

        # conditions: left padded to 1024, int64 mask, as process_captions writes them
        emb = sample.embedding
        length = emb["length"]
        mask = cond["prompt_attention_mask"]
        assert mask.shape == (1024,) and mask.dtype == torch.int64 and mask.shape[0] % 128 == 0
        assert int(mask.sum()) == length and bool(mask[1024 - length:].all())
        video = cond["video_prompt_embeds"]
        assert video.shape == (1024, 64) and video.dtype == torch.bfloat16
        want_v = from_columns(emb, "video_prompt_embeds")
        assert torch.equal(video[1024 - length:], want_v)
        assert not video[: 1024 - length].any()
        audio = cond["audio_prompt_embeds"]
        if "audio_prompt_embeds_bytes" in emb:
            assert audio.shape == (1024, 32)
            assert torch.equal(audio[1024 - length:], from_columns(emb, "audio_prompt_embeds"))
        else:  # LTX-2.0: one feature tensor for both modalities
            assert torch.equal(audio, video)
        # what the trainer's connector does with the mask: valid tokens first, in order
        order = torch.argsort(mask, descending=True, stable=True)
        assert torch.equal(video[order][:length], want_v)


def test_image_latent_fps_and_paths_match_files(tmp_path):
    ex = LTX2Exporter()
    ss = samples()
    files = ex.files(ss, ctx())
    assert [p for s in ss for p in ex.paths(s, ctx())] == [p for p, _ in files]
    assert ex.paths(ss[2], ctx()) == [".precomputed/latents/stills/c.pt"]
    write(files, tmp_path)
    still = torch.load(tmp_path / ".precomputed/latents/stills/c.pt", map_location="cpu", weights_only=True)
    assert tuple(still["latents"].shape) == (C, 1, 2, 2)
    assert still["fps"] == 1.0  # process_videos gives images fps 1.0; 0 would divide positions by zero


def test_names_follow_media_paths():
    ex = LTX2Exporter()
    row = latent_row("z", "s3://bucket/raw/x.y.mov", "64x64x9")
    assert ex.paths(ExportSample(row, None), ctx(dataset_root="s3://bucket/raw")) == [".precomputed/latents/x.y.pt"]
    # outside the dataset root: its own path without the anchor, like LTX-2's _output_relative
    assert ex.paths(ExportSample(row, None), ctx(dataset_root="/elsewhere")) == [".precomputed/latents/bucket/raw/x.y.pt"]
    local = latent_row("z", "/other/dir/v.mp4", "64x64x9", start=0, end=50, total=100)
    assert ex.paths(ExportSample(local, None), ctx()) == [".precomputed/latents/other/dir/v.span-0-50.pt"]
    # two samples with one name in a call are refused
    dup = [ExportSample(latent_row("p", f"{ROOT}/a.mp4", "64x64x9"), None),
           ExportSample(latent_row("q", f"{ROOT}/a.mp4", "128x64x9"), None)]
    with pytest.raises(ExportError, match="same LTX-2 name"):
        ex.files(dup, ctx())


def test_bucket_problem():
    ex = LTX2Exporter()
    assert ex.bucket_problem(Bucket(768, 512, 49), ctx()) is None
    assert ex.bucket_problem(Bucket(64, 64, 1), ctx()) is None
    assert "multiples of 32" in ex.bucket_problem(Bucket(848, 480, 49), ctx())
    assert "multiple of 8 plus 1" in ex.bucket_problem(Bucket(768, 512, 48), ctx())
    bad = ExportSample(latent_row("w", f"{ROOT}/w.mp4", "64x64x9"), None)
    bad.latent["bucket"] = "64x64x12"
    with pytest.raises(ExportError):
        ex.files([bad], ctx())


def test_refusals():
    ex = LTX2Exporter()
    raw = {"caption_id": "r", "length": 3, **to_columns("embedding", torch.randn(3, 16 * 5))}
    sample = ExportSample(latent_row("r", f"{ROOT}/r.mp4", "64x64x9"), raw)
    with pytest.raises(ExportError, match="raw stacked Gemma"):
        ex.files([sample], ctx())
    with pytest.raises(ExportError, match="vae_normalization"):
        ex.files([sample], ctx(latent_metadata={}))
    wrong = ExportSample(latent_row("s", f"{ROOT}/s.mp4", "64x64x9"), None)
    wrong.latent.update(to_columns("latent", torch.zeros(48, 2, 2, 2)))
    with pytest.raises(ExportError, match="not LTX-2's"):
        ex.files([wrong], ctx())


def test_feature_extractor_hook(tmp_path):
    proj = torch.randn(16 * 5, 8, generator=torch.Generator().manual_seed(9))
    ex = LTX2Exporter(feature_extractor=lambda h: (h @ proj, None))
    hidden = torch.randn(3, 16 * 5)
    raw = {"caption_id": "r", "length": 3, **to_columns("embedding", hidden)}
    write(ex.files([ExportSample(latent_row("r", f"{ROOT}/r.mp4", "64x64x9"), raw)], ctx()), tmp_path)
    [item] = trainer_read(tmp_path)
    video = item["conditions"]["video_prompt_embeds"]
    assert video.shape == (1024, 8)
    assert torch.equal(video[-3:], (hidden @ proj).to(torch.bfloat16))
