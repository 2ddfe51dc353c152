"""Export on Ray, end to end on tiny runs: `export:` in a config writes the trainer layouts in the
same job, `latentforge export` writes them from an existing output, reruns add nothing, a killed
export leaves no partial file, object storage on both sides, and a layout whose trainer cannot
read the output is refused. Each layout is read back as its trainer's loader reads it (the
readers are in tests/test_export_<format>.py) and compared with the canonical shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_export_cogvideox import _trainer_reads as cogvideox_reads
from test_export_fastvideo import _fastvideo_files, _fastvideo_row
from test_export_ltx2 import trainer_read as ltx2_reads
from test_export_musubi import _musubi_reads

from latentforge.config import ConfigError, load_config
from latentforge.formats.shards import read_table
from latentforge.formats.tensors import from_columns
from latentforge.sample_media import make_image, make_video

pytestmark = pytest.mark.ray


def _dataset(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    make_video(folder / "clips" / "wide.mp4", 128, 64, 12, 24)
    make_video(folder / "clips" / "square.mp4", 64, 64, 12, 24)
    make_image(folder / "still.png", 80, 80)
    rows = [
        {"media_path": "clips/wide.mp4", "caption": "A wide shot of a bouncing square."},
        {"media_path": "clips/square.mp4", "caption": "A square clip."},
        {"media_path": "still.png", "caption": "A still image."},
    ]
    (folder / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "dataset.jsonl"


def _run(root: Path, model: str, buckets: str, export: list[str]) -> tuple:
    from latentforge.pipelines import run

    cfg = load_config(
        None,
        ["encode_video.batch_size=1", f"export=[{','.join(export)}]"],
        input=str(_dataset(root / "data")),
        output=str(root / "out"),
        model=model,
        buckets=buckets,
    )
    return cfg, run(cfg)


@pytest.fixture(scope="module")
def wan_run(tmp_path_factory, ray_local):
    """A tiny Wan 2.1 precompute run that also writes the fastvideo and musubi layouts."""
    return _run(tmp_path_factory.mktemp("export-wan"), "tiny-wan2.1", "128x64x9;64x64x9;64x64x1", ["fastvideo", "musubi"])


@pytest.fixture(scope="module")
def ltx_run(tmp_path_factory, ray_local):
    """A tiny LTX-2 precompute run that also writes the LTX-2 trainer's layout."""
    return _run(tmp_path_factory.mktemp("export-ltx"), "tiny-ltx2", "128x64x9;64x64x9;64x64x1", ["ltx2"])


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _canonical(cfg) -> tuple[dict, dict]:
    latents = {r["sample_id"]: r for r in read_table(cfg.output, "latents").to_pylist()}
    embeddings = {r["caption_id"]: r for r in read_table(cfg.output, "embeddings").to_pylist()}
    return latents, embeddings


def test_a_run_with_export_writes_the_layouts_in_one_job(wan_run):
    cfg, summary = wan_run
    latents, embeddings = _canonical(cfg)
    assert summary["counts"]["latents_written"] == len(latents) == 3
    assert summary["counts"]["export"] == {"fastvideo_exported": 3, "musubi_exported": 3}
    assert summary["phase_wall_seconds"]["export"] > 0

    # FastVideo: every row, read as its parquet dataset does, equals the canonical tensors
    files, lengths = _fastvideo_files(Path(cfg.output, "export", "fastvideo"))
    rows = [_fastvideo_row(files, lengths, i) for i in range(sum(lengths))]
    assert sorted(r["id"] for r in rows) == sorted(latents)
    for r in rows:
        ours = latents[r["id"]]
        latent = torch.frombuffer(bytearray(r["vae_latent_bytes"]), dtype=torch.float32).reshape(r["vae_latent_shape"])
        assert torch.equal(latent, from_columns(ours, "latent").float())
        text = torch.frombuffer(bytearray(r["text_embedding_bytes"]), dtype=torch.float32).reshape(r["text_embedding_shape"])
        assert torch.equal(text, from_columns(embeddings[ours["caption_id"]], "embedding").float())

    # musubi-tuner: one batch per bucket; its text cache is the canonical embedding
    batches = _musubi_reads(Path(cfg.output, "export", "musubi"), "wan")
    assert sum(len(b["_files"]) for b in batches.values()) == 3
    for (width, height, frames), batch in batches.items():
        bucket = f"{width}x{height}x{frames}"
        ours = [r for r in latents.values() if r["bucket"] == bucket]
        assert batch["latents"].shape[0] == len(ours)
        assert list(batch["latents"].shape[1:]) == list(from_columns(ours[0], "latent").shape)
        expected = [from_columns(embeddings[r["caption_id"]], "embedding").to(torch.bfloat16) for r in ours]
        for stored in batch["t5"]:  # bfloat16 in the cache, trimmed to the caption's tokens
            assert any(stored.shape == e.shape and torch.equal(stored, e) for e in expected)


def test_a_rerun_writes_nothing_new(wan_run):
    from latentforge.pipelines import run

    cfg, _ = wan_run
    root = Path(cfg.output, "export")
    before = _files(root)
    again = run(cfg)
    assert again["counts"]["latents_written"] == 0
    assert again["counts"]["export"] == {"fastvideo_skipped_existing": 3, "musubi_skipped_existing": 3}
    assert _files(root) == before  # the same files, none rewritten


def test_ltx2_layout_in_the_same_job_is_what_its_trainer_reads(ltx_run):
    """PrecomputedDataset's reads: latents normalised per channel as LTX-2's encoder returns them,
    conditions = the stored text features left padded to 1024 with their mask."""
    cfg, summary = ltx_run
    latents, embeddings = _canonical(cfg)
    assert summary["counts"]["export"] == {"ltx2_exported": 3}
    meta = json.loads(read_table(cfg.output, "latents").schema.metadata[b"latentforge"])["vae_normalization"]
    mean = torch.tensor(meta["latents_mean"]).view(-1, 1, 1, 1)
    std = torch.tensor(meta["latents_std"]).view(-1, 1, 1, 1)
    items = ltx2_reads(Path(cfg.output, "export", "ltx2"))
    names = {"clips/wide.pt", "clips/square.pt", "still.pt"}  # media paths relative to the dataset
    assert {i["rel"] for i in items} == names
    by_uri = {Path(r["uri"]).with_suffix(".pt").name: r for r in latents.values()}
    for item in items:
        ours = by_uri[Path(item["rel"]).name]
        expected = ((from_columns(ours, "latent").float() - mean) / std).to(torch.bfloat16)
        assert torch.equal(item["latents"]["latents"], expected)
        emb = embeddings[ours["caption_id"]]
        length = emb["length"]
        cond = item["conditions"]
        assert cond["video_prompt_embeds"].shape[0] == 1024 and cond["prompt_attention_mask"].sum() == length
        assert torch.equal(cond["video_prompt_embeds"][-length:], from_columns(emb, "embedding").to(torch.bfloat16))
        assert not cond["video_prompt_embeds"][:-length].any()


def test_export_command_resumes_after_a_kill_and_leaves_no_partial_file(ltx_run, tmp_path):
    """`latentforge export` killed as soon as .pt files start to appear, then run again: every
    file that exists is whole, and the end result is the same set of files as a clean export."""
    cfg, _ = ltx_run
    clean = Path(cfg.output, "export", "ltx2")
    dest = tmp_path / "ltx2"
    env = {**os.environ, "RAY_ADDRESS": ""}
    cmd = [sys.executable, "-m", "latentforge.cli", "export", cfg.output, "--format", "ltx2", "--to", str(tmp_path), "--set", "ray.num_cpus=2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not any(dest.rglob("*.pt")):
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    for p in dest.rglob("*.pt"):
        torch.load(p, map_location="cpu", weights_only=True)  # whole: a torn file does not load
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(_files(dest)) == sorted(_files(clean))
    for p in dest.rglob("*.pt"):
        theirs = torch.load(p, map_location="cpu", weights_only=True)
        ours = torch.load(clean / p.relative_to(dest), map_location="cpu", weights_only=True)
        assert all(torch.equal(theirs[k], v) if isinstance(v, torch.Tensor) else theirs[k] == v for k, v in ours.items())


def test_a_layout_for_another_family_is_refused(wan_run, capsys):
    from latentforge.cli import main
    from latentforge.pipelines import export_output

    cfg, _ = wan_run
    with pytest.raises(ConfigError) as err:
        export_output(cfg.output, ["ltx2"])
    assert "this output holds wan2.1 latents (model tiny-wan2.1)" in str(err.value)
    assert main(["export", cfg.output, "--format", "cogvideox"]) == 2
    message = capsys.readouterr().err
    assert message.startswith("latentforge: export: format 'cogvideox' reads cogvideox latents") and "Traceback" not in message
    assert not Path(cfg.output, "export", "ltx2").exists()


def test_export_from_and_to_a_bucket(wan_run, s3_endpoint):
    """Shards in a bucket on moto's S3 server, the layout written to another prefix of it."""
    import fsspec

    from latentforge.pipelines import export_output

    cfg, _ = wan_run
    so = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    fs = fsspec.filesystem("s3", **so)
    fs.mkdir("exports")
    for name in ("latents", "embeddings"):
        fs.put(str(Path(cfg.output, name)), f"exports/out/{name}", recursive=True)
    fs.put(str(Path(cfg.output, "run.json")), "exports/out/run.json")
    sets = [f"storage_options.{k}={v}" for k, v in so.items()]
    summary = export_output("s3://exports/out", ["musubi"], "s3://exports/trainer", sets)
    assert summary["export"] == {"musubi_exported": 3}
    local = Path(cfg.output, "export", "musubi")
    remote = sorted(p.rsplit("/", 1)[1] for p in fs.find("exports/trainer/musubi"))
    assert remote == sorted(_files(local))
    for name in remote:
        assert fs.cat_file(f"exports/trainer/musubi/{name}") == (local / name).read_bytes()
    again = export_output("s3://exports/out", ["musubi"], "s3://exports/trainer", sets)
    assert again["export"] == {"musubi_skipped_existing": 3}


def test_cogvideox_export_is_what_its_finetune_reads(tmp_path_factory, ray_local):
    """A tiny CogVideoX run exported with `latentforge export`: the finetune's dataset finds
    every sample through prompt.txt / videos.txt, with the latent times the VAE's scaling."""
    from latentforge.pipelines import export_output

    cfg, _ = _run(tmp_path_factory.mktemp("export-cog"), "tiny-cogvideox", "128x64x9;64x64x9;64x64x1", [])
    summary = export_output(cfg.output, ["cogvideox"])
    assert summary["export"] == {"cogvideox_exported": 3, "cogvideox_indexed": 3, "cogvideox_left_out_of_index": 0}
    latents, embeddings = _canonical(cfg)
    root = Path(cfg.output, "export", "cogvideox")
    meta = json.loads(read_table(cfg.output, "latents").schema.metadata[b"latentforge"])
    scaling = meta["vae_normalization"]["scaling_factor"]
    by_caption = {r["caption"]: r for r in latents.values()}
    prompts = (root / "prompt.txt").read_text().splitlines()
    videos = (root / "videos.txt").read_text().splitlines()
    assert sorted(prompts) == sorted(by_caption) and len(videos) == 3
    for bucket in {r["bucket"] for r in latents.values()}:
        # one training run reads one train_resolution: this bucket's lines of the index
        w, h, f = (int(v) for v in bucket.split("x"))
        keep = [(p, v) for p, v in zip(prompts, videos) if by_caption[p]["bucket"] == bucket]
        one = tmp_path_factory.mktemp(f"cog-{bucket}")
        (one / "prompt.txt").write_text("".join(p + "\n" for p, _ in keep))
        (one / "videos.txt").write_text("".join(v + "\n" for _, v in keep))
        (one / "cache").symlink_to(root / "cache")
        for _, v in keep:
            (one / v).parent.mkdir(exist_ok=True)
            (one / v).write_bytes((root / v).read_bytes())  # the placeholder the trainer checks
        batch = cogvideox_reads(one, "cogvideox-t2v", (f, h, w))
        for got, (p, _) in zip(batch["encoded_videos"], keep):
            assert torch.equal(got, (from_columns(by_caption[p], "latent").float() * scaling).to(torch.bfloat16))
        for got, (p, _) in zip(batch["prompt_embedding"], keep):
            assert torch.equal(got, from_columns(embeddings[by_caption[p]["caption_id"]], "embedding").to(torch.bfloat16))
