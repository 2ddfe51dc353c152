"""The fastvideo layout, read back the way FastVideo's parquet datasets read it.

`_fastvideo_files` / `_fastvideo_rows` / `_fastvideo_collate` below follow FastVideo's
`get_parquet_files_and_length` + `read_row_from_parquet_file` (map style),
`ParquetFile.iter_batches(...).to_pylist()` (iterable style) and
`collate_rows_from_parquet_schema` (np.frombuffer(bytes, np.float32).reshape(shape), zero-pad
the text embedding to text_len with a 0/1 mask, torch.stack per tensor, the rest into info_list),
at hao-ai-lab/FastVideo@2f3d4074.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from latentforge.buckets import parse_bucket
from latentforge.formats.export.base import ExportContext, ExportError, ExportSample
from latentforge.formats.export.fastvideo import FastVideoExporter
from latentforge.formats.tensors import to_columns
from latentforge.rows import stable_hash

TEXT_LEN = 512  # UMT5 text_len: the trainer pads every embedding to this
DIM = 32  # stands in for UMT5's 4096

# FastVideo's pyarrow_schema_t2v, written out here independently of the exporter.
T2V_FIELDS = [
    ("id", pa.string()),
    ("vae_latent_bytes", pa.binary()),
    ("vae_latent_shape", pa.list_(pa.int64())),
    ("vae_latent_dtype", pa.string()),
    ("text_embedding_bytes", pa.binary()),
    ("text_embedding_shape", pa.list_(pa.int64())),
    ("text_embedding_dtype", pa.string()),
    ("file_name", pa.string()),
    ("caption", pa.string()),
    ("media_type", pa.string()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("num_frames", pa.int64()),
    ("duration_sec", pa.float64()),
    ("fps", pa.float64()),
]
I2V_EXTRA = [
    f"{t}_{k}" for t in ("clip_feature", "first_frame_latent", "pil_image") for k in ("bytes", "shape", "dtype")
]

WAN = {"wan2.1": (16, 8, 4), "wan2.2": (48, 16, 4)}  # channels, spatial, temporal compression


def _ctx(family: str = "wan2.1", **kw) -> ExportContext:
    norm = {"latents_mean": [0.1 * i for i in range(WAN.get(family, (16,))[0])],
            "latents_std": [1.0 + 0.5 * i for i in range(WAN.get(family, (16,))[0])]}
    return ExportContext(
        model=kw.pop("model", family), family=family, text_encoder="umt5-xxl-512",
        latent_metadata={"vae_normalization": norm}, dataset_root="/data/in", **kw,
    )


def _latent_shape(family: str, bucket: str) -> list[int]:
    c, s, t = WAN[family]
    b = parse_bucket(bucket)
    return [c, (b.frames - 1) // t + 1, b.height // s, b.width // s]


def _sample(i: int, bucket: str = "64x32x9", family: str = "wan2.1", length: int | None = None, dtype="bfloat16",
            extra: dict | None = None) -> tuple[ExportSample, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    latent = torch.randn(_latent_shape(family, bucket), generator=g)
    length = length if length is not None else 3 + 5 * i
    emb = torch.randn(length, DIM, generator=g)
    caption = f"a clip number {i}"
    row = {
        "sample_id": stable_hash("clip", i, bucket), "uri": f"/data/in/videos/v{i}.mp4", "media_type": "video",
        "caption": caption, "caption_id": stable_hash(caption), "bucket": bucket, "fps": 16.0,
        "num_frames": parse_bucket(bucket).frames, "start_frame": 0, "end_frame": parse_bucket(bucket).frames,
        **to_columns("latent", latent, dtype),
        **(extra or {}),
    }
    erow = {"caption_id": row["caption_id"], "caption": caption, "length": length, **to_columns("embedding", emb, dtype)}
    canon_latent = latent.to(getattr(torch, dtype)).float()
    canon_emb = emb.to(getattr(torch, dtype)).float()
    return ExportSample(latent=row, embedding=erow), canon_latent, canon_emb


def _write(files: list[tuple[str, bytes]], root) -> None:
    for rel, data in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# ---- FastVideo's reading, written here ------------------------------------------------------


def _fastvideo_files(data_path) -> tuple[list[str], list[int]]:
    """get_parquet_files_and_length: os.walk for *.parquet, num_rows from metadata, sorted by path."""
    names = []
    for root, _, files in os.walk(data_path):
        for f in sorted(files):
            if f.endswith(".parquet"):
                names.append(os.path.realpath(os.path.join(root, f)))
    lengths = [pq.ParquetFile(n).metadata.num_rows for n in names]
    pairs = sorted(zip(names, lengths), key=lambda x: x[0])
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _fastvideo_row(files: list[str], lengths: list[int], global_idx: int) -> dict:
    """read_row_from_parquet_file: find the file, then the row group, read that group, take the row."""
    cum = 0
    for fi, n in enumerate(lengths):
        if cum + n > global_idx:
            local = global_idx - cum
            break
        cum += n
    else:
        raise IndexError(global_idx)
    pf = pq.ParquetFile(files[fi])
    cum = 0
    for gi in range(pf.num_row_groups):
        n = pf.metadata.row_group(gi).num_rows
        if cum + n > local:
            group = pf.read_row_group(gi).to_pydict()
            return {k: v[local - cum] for k, v in group.items()}
        cum += n
    raise IndexError(local)


def _fastvideo_collate(rows: list[dict], schema_names: list[str], text_len: int = TEXT_LEN) -> dict:
    """collate_rows_from_parquet_schema with cfg_rate 0."""
    out: dict = {}
    tensors = [f[: -len("_bytes")] for f in schema_names if f.endswith("_bytes")]
    meta = [f for f in schema_names if not f.endswith(("_bytes", "_shape", "_dtype"))]
    for name in tensors:
        items = []
        for row in rows:
            raw = row[f"{name}_bytes"]
            if len(raw) == 0:
                items.append(torch.zeros(0, dtype=torch.bfloat16))
            else:
                items.append(torch.from_numpy(np.frombuffer(raw, dtype=np.float32).reshape(row[f"{name}_shape"]).copy()))
        if name == "text_embedding":
            padded, masks = [], []
            for t in items:
                # pad(): zeros after the L tokens, mask ones(L) then zeros; crop beyond text_len
                L, D = t.shape
                if text_len > L:
                    padded.append(torch.cat([t, torch.zeros(text_len - L, D, dtype=t.dtype)], 0))
                    masks.append(torch.cat([torch.ones(L), torch.zeros(text_len - L)], 0))
                else:
                    padded.append(t[:text_len])
                    masks.append(torch.ones(text_len))
            out[name] = torch.stack(padded)
            out["text_attention_mask"] = torch.stack(masks)
        else:
            out[name] = torch.stack(items)
    out["info_list"] = [{**{f: row.get(f, "") for f in meta}, "prompt": row.get("caption", "")} for row in rows]
    return out


def _wan_normalize(latents: torch.Tensor, norm: dict) -> torch.Tensor:
    """normalize_dit_input('wan', ...): (x - latents_mean) * (1 / latents_std) per channel."""
    mean = torch.tensor(norm["latents_mean"]).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(norm["latents_std"]).view(1, -1, 1, 1, 1)
    return (latents.float() - mean) * inv_std


# ---- tests ----------------------------------------------------------------------------------


def test_wan21_roundtrip_through_fastvideo_map_style_reader(tmp_path):
    exp = FastVideoExporter()
    assert exp.name == "fastvideo" and {"wan2.1", "wan2.2"} <= exp.families
    assert exp.follows.startswith("hao-ai-lab/FastVideo@") and len(exp.follows.split("@")[1]) == 40
    assert exp.paths(_sample(0)[0], _ctx()) is None
    built = [_sample(i, "64x32x9") for i in range(3)]
    samples = [b[0] for b in built]
    ctx = _ctx()
    files = exp.files(samples, ctx)
    assert len(files) == 1
    rel = files[0][0]
    assert rel.startswith("combined_parquet_dataset/bucket=64x32x9/") and rel.endswith(".parquet")
    _write(files, tmp_path)

    names, lengths = _fastvideo_files(tmp_path / "combined_parquet_dataset")
    assert len(names) == 1 and lengths == [3]
    pf = pq.ParquetFile(names[0])
    assert [(f.name, f.type) for f in pf.schema_arrow] == T2V_FIELDS
    assert json.loads(pf.schema_arrow.metadata[b"latentforge"])["follows"] == exp.follows

    rows = [_fastvideo_row(names, lengths, i) for i in range(3)]
    batch = _fastvideo_collate(rows, [f for f, _ in T2V_FIELDS])
    # latents [B, C, F', H', W'] = [3, 16, 3, 4, 8] for 64x32x9 (8x spatial, 4x temporal)
    assert tuple(batch["vae_latent"].shape) == (3, 16, 3, 4, 8)
    assert batch["vae_latent"].dtype == torch.float32
    assert tuple(batch["text_embedding"].shape) == (3, TEXT_LEN, DIM)
    by_id = {s.sample_id: (lat, emb, s) for s, lat, emb in built}
    for k, info in enumerate(batch["info_list"]):
        lat, emb, s = by_id[info["id"]]
        assert torch.equal(batch["vae_latent"][k], lat)  # raw VAE mean, bf16 -> f32 exactly
        L = emb.shape[0]
        assert torch.equal(batch["text_embedding"][k, :L], emb)
        assert torch.count_nonzero(batch["text_embedding"][k, L:]) == 0
        assert batch["text_attention_mask"][k].sum().item() == L
        assert rows[k]["vae_latent_dtype"] == "float32" and rows[k]["text_embedding_dtype"] == "float32"
        assert rows[k]["text_embedding_shape"] == [L, DIM]
        assert info["caption"] == info["prompt"] == s.latent["caption"]
        assert info["file_name"] == s.latent["uri"].removeprefix("/data/in/")  # relative to dataset_root
        assert info["media_type"] == "video" and (info["width"], info["height"]) == (64, 32)
        assert info["num_frames"] == 3  # FastVideo writes latents.shape[1]
        assert info["fps"] == 16.0 and info["duration_sec"] == pytest.approx(9 / 16)
    # rows are in sample-id order, one per row group (the map-style reader reads one group per row)
    assert [i["id"] for i in batch["info_list"]] == sorted(by_id)
    assert pf.num_row_groups == 3
    # the trainer then normalises: check the Wan normalisation of what it read
    norm = ctx.latent_metadata["vae_normalization"]
    lat0 = by_id[batch["info_list"][0]["id"]][0]
    expect = (lat0 - torch.tensor(norm["latents_mean"]).view(-1, 1, 1, 1)) / torch.tensor(norm["latents_std"]).view(-1, 1, 1, 1)
    assert torch.allclose(_wan_normalize(batch["vae_latent"][:1], norm)[0], expect, atol=1e-6)


def test_iterable_style_reader_and_wan22_geometry(tmp_path):
    exp = FastVideoExporter()
    built = [_sample(i, "64x64x5", family="wan2.2", dtype="float32") for i in range(2)]
    _write(exp.files([b[0] for b in built], _ctx("wan2.2")), tmp_path)
    names, _ = _fastvideo_files(tmp_path)
    rows = []
    for name in names:  # LatentsParquetIterStyleDataset's BatchIterator
        for rb in pq.ParquetFile(name).iter_batches(batch_size=32):
            rows.extend(rb.to_pylist())
    batch = _fastvideo_collate(rows, [f for f, _ in T2V_FIELDS])
    # Wan 2.2 TI2V-5B: 48 channels, 16x spatial, 4x temporal -> [48, 2, 4, 4]
    assert tuple(batch["vae_latent"].shape) == (2, 48, 2, 4, 4)
    by_id = {s.sample_id: (lat, emb) for s, lat, emb in built}
    for k, info in enumerate(batch["info_list"]):
        lat, emb = by_id[info["id"]]
        assert torch.equal(batch["vae_latent"][k], lat)
        assert torch.equal(batch["text_embedding"][k, : emb.shape[0]], emb)


def test_same_batch_same_name_and_bytes_new_batch_new_name():
    exp, ctx = FastVideoExporter(), _ctx()
    samples = [_sample(i)[0] for i in range(4)]
    a = exp.files(samples, ctx)
    shuffled = list(samples)
    random.Random(3).shuffle(shuffled)
    b = exp.files(shuffled, ctx)
    assert a == b
    c = exp.files(samples[:3], ctx)
    assert c[0][0] != a[0][0]


def test_one_file_per_bucket_and_at_most_samples_per_file(tmp_path):
    exp = FastVideoExporter()
    assert exp.samples_per_file == 8
    samples = [_sample(i, "64x32x9")[0] for i in range(10)] + [_sample(20 + i, "32x64x5")[0] for i in range(2)]
    files = exp.files(samples, _ctx())
    folders = sorted({rel.rsplit("/", 1)[0] for rel, _ in files})
    assert folders == ["combined_parquet_dataset/bucket=32x64x5", "combined_parquet_dataset/bucket=64x32x9"]
    _write(files, tmp_path)
    counts = {}
    for rel, _ in files:
        counts.setdefault(rel.rsplit("/", 1)[0], []).append(pq.ParquetFile(tmp_path / rel).metadata.num_rows)
    assert sorted(counts["combined_parquet_dataset/bucket=64x32x9"]) == [2, 8]
    assert counts["combined_parquet_dataset/bucket=32x64x5"] == [2]
    # a bucket folder is a data_path FastVideo can batch: one latent shape in it
    names, lengths = _fastvideo_files(tmp_path / "combined_parquet_dataset" / "bucket=64x32x9")
    rows = [_fastvideo_row(names, lengths, i) for i in range(sum(lengths))]
    assert tuple(_fastvideo_collate(rows, [f for f, _ in T2V_FIELDS])["vae_latent"].shape) == (10, 16, 3, 4, 8)


def test_long_embedding_is_cropped_by_the_reader_and_trimmed_rows_stay_trimmed(tmp_path):
    exp = FastVideoExporter()
    s, lat, emb = _sample(1, length=TEXT_LEN, dtype="float32")
    _write(exp.files([s], _ctx()), tmp_path)
    names, lengths = _fastvideo_files(tmp_path)
    row = _fastvideo_row(names, lengths, 0)
    assert row["text_embedding_shape"] == [TEXT_LEN, DIM]
    batch = _fastvideo_collate([row], [f for f, _ in T2V_FIELDS])
    assert torch.equal(batch["text_embedding"][0], emb) and batch["text_attention_mask"].sum() == TEXT_LEN


def test_bucket_problem():
    exp = FastVideoExporter()
    assert exp.bucket_problem(parse_bucket("832x480x81"), _ctx("wan2.1")) is None
    assert "multiples of 16" in exp.bucket_problem(parse_bucket("840x480x81"), _ctx("wan2.1"))
    assert "4k+1" in exp.bucket_problem(parse_bucket("832x480x80"), _ctx("wan2.1"))
    assert exp.bucket_problem(parse_bucket("832x480x81"), _ctx("wan2.2")) is None
    assert "multiples of 32" in exp.bucket_problem(parse_bucket("848x480x81"), _ctx("wan2.2"))
    assert exp.bucket_problem(parse_bucket("832x480x81"), _ctx("ltx2")) is not None
    # a context naming the family 'wan' resolves the generation from the (tiny) preset name
    assert exp.bucket_problem(parse_bucket("848x480x81"), _ctx("wan", model="tiny-wan2.2")) is not None
    assert exp.bucket_problem(parse_bucket("832x480x81"), _ctx("wan", model="tiny-wan2.2")) is None


def test_refusals():
    exp = FastVideoExporter()
    s = _sample(0)[0]
    with pytest.raises(ExportError):
        exp.files([s], _ctx("ltx2"))
    with pytest.raises(ExportError):
        exp.files([ExportSample(latent=s.latent, embedding=None)], _ctx())
    wrong = dict(s.latent, bucket="64x64x9")  # latent is 64x32 but the row claims 64x64
    with pytest.raises(ExportError):
        exp.files([ExportSample(latent=wrong, embedding=s.embedding)], _ctx())
    bad = dict(s.latent, bucket="72x32x9")  # not a multiple of 16
    with pytest.raises(ExportError):
        exp.files([ExportSample(latent=bad, embedding=s.embedding)], _ctx())


def test_i2v_columns_when_rows_have_them(tmp_path):
    exp, ctx = FastVideoExporter(), _ctx()
    g = torch.Generator().manual_seed(7)
    shape = _latent_shape("wan2.1", "64x32x9")
    ffl = torch.randn(shape, generator=g)
    clip = torch.randn(257, 24, generator=g)
    extra = {**to_columns("first_frame_latent", ffl, "float32"), **to_columns("clip_feature", clip, "float32")}
    s_i2v, lat, emb = _sample(0, extra=extra, dtype="float32")
    s_t2v = _sample(1)[0]  # same file, no I2V tensors: written empty as FastVideo does
    files = exp.files([s_i2v, s_t2v], ctx)
    _write(files, tmp_path)
    names, lengths = _fastvideo_files(tmp_path)
    pf = pq.ParquetFile(names[0])
    schema_names = pf.schema_arrow.names
    assert schema_names == [f for f, _ in T2V_FIELDS[:7]] + I2V_EXTRA + [f for f, _ in T2V_FIELDS[7:]]
    rows = {r["id"]: r for r in (_fastvideo_row(names, lengths, i) for i in range(2))}
    r = rows[s_i2v.sample_id]
    got_clip = torch.from_numpy(np.frombuffer(r["clip_feature_bytes"], np.float32).reshape(r["clip_feature_shape"]).copy())
    assert torch.equal(got_clip, clip)
    got_ffl = torch.from_numpy(np.frombuffer(r["first_frame_latent_bytes"], np.float32).reshape(r["first_frame_latent_shape"]).copy())
    norm = ctx.latent_metadata["vae_normalization"]
    want = (ffl - torch.tensor(norm["latents_mean"]).view(-1, 1, 1, 1)) / torch.tensor(norm["latents_std"]).view(-1, 1, 1, 1)
    assert torch.allclose(got_ffl, want, atol=1e-6)
    assert r["pil_image_bytes"] == b"" and r["pil_image_shape"] == [] and r["pil_image_dtype"] == ""
    e = rows[s_t2v.sample_id]
    assert e["first_frame_latent_bytes"] == b"" and e["clip_feature_shape"] == [] and e["clip_feature_dtype"] == ""
