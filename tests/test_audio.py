"""LTX-2 audio latents (issue 14, encode_video.with_audio): the span's audio read in `prepare`,
down-mixed and trimmed as the LTX-2 trainer does, encoded by the audio VAE in the model actor,
exported as the trainer's `audio_latents/`, and heard again in decode previews.

Clips carry 16-bit PCM, so the test knows every sample the pipeline reads: the oracle is the
tiny audio VAE's encode of a log-mel spectrogram the test computes with transformers' numpy
`spectrogram` (not the stage's torch.stft) from samples the test generated itself. One tiny run
(module fixture) serves the pipeline assertions."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from latentforge.operators.audio import read_span_audio, to_stereo

FPS, RATE = 24, 16000


def pcm_clip(path: Path, samples: np.ndarray | None, layout: str = "stereo", rate: int = RATE, num_frames: int = 12) -> Path:
    """An mkv of H.264 frames and, unless `samples` is None, PCM audio (int16 [channels, n])."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=FPS)
        v.width = v.height = 64
        v.pix_fmt, v.options = "yuv420p", {"preset": "ultrafast"}
        a = c.add_stream("pcm_s16le", rate=rate, layout=layout) if samples is not None else None
        for i in range(num_frames):
            for p in v.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), (i * 20) % 256, np.uint8), format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            step = rate // 20
            for k in range(0, samples.shape[1], step):
                f = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, k : k + step].T.reshape(1, -1)), format="s16", layout=layout)
                f.sample_rate, f.pts, f.time_base = rate, k, Fraction(1, rate)
                for p in a.encode(f):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


def tones(freqs: list[float], seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate))
    return np.stack([(0.3 * np.sin(t * 2 * np.pi * f / rate) * 32767).astype(np.int16) for f in freqs])


def ltx2_downmix_51(x: np.ndarray) -> np.ndarray:
    """The LTX-2 trainer's 5.1 rule, written out: L = (L + .707 C + .707 Ls) / 2.414, R alike."""
    return np.stack([(x[0] + 0.707 * x[2] + 0.707 * x[4]) / 2.414, (x[1] + 0.707 * x[2] + 0.707 * x[5]) / 2.414])


def test_down_mix_rules():
    x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    assert np.array_equal(to_stereo(x[:1]), np.concatenate([x[:1], x[:1]]))
    assert np.allclose(to_stereo(x[:6]), ltx2_downmix_51(x[:6]), atol=1e-5)
    left = (x[0] + 0.707 * (x[2] + x[4] + x[6])) / 3.121
    assert np.allclose(to_stereo(x)[0], left, atol=1e-5)
    assert np.allclose(to_stereo(x[:3]), np.repeat(x[:3].mean(0, keepdims=True), 2, 0))


def test_with_audio_needs_an_ltx2_preset(tmp_path):
    from latentforge.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="encode_video.with_audio"):
        load_config(None, ["encode_video.with_audio=true"], input=str(tmp_path), output=str(tmp_path / "o"), model="tiny-wan2.1", buckets="64x64x9")
    assert load_config(None, ["encode_video.with_audio=true"], input=str(tmp_path), output=str(tmp_path / "o"), model="tiny-ltx2", buckets="64x64x9").encode_video.with_audio


def test_span_samples_are_the_sources_trimmed_and_resampled_to_length(tmp_path):
    s = tones([440, 660])
    with av.open(str(pcm_clip(tmp_path / "t.mkv", s, num_frames=20))) as c:
        x, native = read_span_audio(c, 4 / FPS, 9 / FPS, RATE)  # frames 4..12 of the clip
    assert native == RATE and x.shape == (2, 6000)
    assert np.array_equal(x, s[:, 2667 : 2667 + 6000] / 32768.0)
    # a 48 kHz source: resampled to the VAE's rate, length as the trainer's (int(d * 48k) -> 16k)
    with av.open(str(pcm_clip(tmp_path / "h.mkv", tones([440, 660], rate=48000), rate=48000))) as c:
        assert read_span_audio(c, 0.0, 9 / FPS, RATE)[0].shape == (2, 6000)
    # past the end of the audio: zero padded
    with av.open(str(pcm_clip(tmp_path / "s.mkv", s[:, :1000]))) as c:
        x, _ = read_span_audio(c, 0.0, 9 / FPS, RATE)
    assert x.shape == (2, 6000) and np.array_equal(x[:, :1000], s[:, :1000] / 32768.0) and not x[:, 1000:].any()


# ---------------------------------------------------------------------------------------------
# One tiny LTX-2 run with audio


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory, ray_local):
    from latentforge.config import load_config
    from latentforge.pipelines import run

    root = tmp_path_factory.mktemp("audio")
    data = root / "data"
    data.mkdir()
    six = np.stack([(0.05 * (k + 1) * np.sin(np.arange(RATE) * 2 * np.pi * (200 + 100 * k) / RATE) * 32767).astype(np.int16) for k in range(6)])
    sources = {
        "tone.mkv": (tones([440, 660], 20 / FPS), "stereo", 20),  # -> 64x64x17
        "silent.mkv": (np.zeros((2, RATE // 2), np.int16), "stereo", 12),
        "surround.mkv": (six[:, : RATE // 2], "5.1", 12),
        "mute.mkv": (None, "stereo", 12),
    }
    for name, (samples, layout, frames) in sources.items():
        pcm_clip(data / name, samples, layout, num_frames=frames)
    (data / "dataset.jsonl").write_text("".join(json.dumps({"media_path": n, "caption": f"clip {n}"}) + "\n" for n in sources))
    cfg = load_config(  # video only: the text pass and the Ray export add nothing audio-specific
        None, ["encode_video.with_audio=true", "encode_text.enabled=false"],
        input=str(data / "dataset.jsonl"), output=str(root / "out"), model="tiny-ltx2", buckets="64x64x9;64x64x17",
    )
    summary = run(cfg, make_report=False)
    from latentforge.formats.shards import read_table

    rows = {Path(r["uri"]).name: r for r in read_table(cfg.output, "latents").to_pylist()}
    return cfg, summary, rows, sources


def _oracle(stereo: np.ndarray) -> torch.Tensor:
    """The tiny audio VAE's latent mean of the log-mel the test computes (numpy STFT) from `stereo`."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    from latentforge.models import get_preset
    from latentforge.operators.audio_vae import load_audio_vae

    fb = mel_filter_bank(num_frequency_bins=513, num_mel_filters=64, min_frequency=0.0, max_frequency=RATE / 2, sampling_rate=RATE, norm="slaney", mel_scale="slaney")
    mel = np.stack([
        np.log(np.maximum(spectrogram(ch, window_function(1024, "hann"), frame_length=1024, hop_length=160, fft_length=1024, power=1.0,
                                      center=True, pad_mode="reflect", mel_filters=fb, mel_floor=1e-5, dtype=np.float64), 1e-5)).T
        for ch in stereo.astype(np.float64)
    ])
    vae = load_audio_vae(get_preset("tiny-ltx2"))
    with torch.no_grad():
        return vae.encode(torch.from_numpy(mel[None]).float()).latent_dist.mean[0]


def test_stored_audio_latent_is_the_audio_vaes_encode_of_the_spans_mel(audio_run):
    from latentforge.formats.tensors import from_columns

    _, summary, rows, sources = audio_run
    for name in ("tone.mkv", "silent.mkv", "surround.mkv"):
        row = rows[name]
        samples, _, _ = sources[name]
        frames = int(row["bucket"].split("x")[2])
        n = frames * RATE // FPS  # the span is the bucket's frames at the clip's 24 fps
        stereo = samples[:, :n] / 32768.0
        stereo = ltx2_downmix_51(stereo) if samples.shape[0] == 6 else stereo
        stored = from_columns(row, "audio_latent")
        assert row["audio_status"] == "ok" and row["audio_duration"] == pytest.approx(n / RATE)  # the samples encoded, as the trainer counts
        assert stored.shape == (8, (n // 160) // 4 + 1, 16)  # mel frames n / hop + 1, 4x causal compression
        assert torch.allclose(stored, _oracle(stereo), atol=2e-4, rtol=1e-3), name
    # the length follows the clip's duration: 17 frames of tone, 9 of the others
    assert rows["tone.mkv"]["bucket"] == "64x64x17" and from_columns(rows["tone.mkv"], "audio_latent").shape[1] == 18
    assert from_columns(rows["silent.mkv"], "audio_latent").shape[1] == 10


def test_a_clip_without_audio_keeps_its_video_latent_and_is_counted(audio_run):
    _, summary, rows, _ = audio_run
    mute = rows["mute.mkv"]
    assert mute["latent_bytes"] is not None and mute["audio_status"] == "no_audio" and mute["audio_latent_bytes"] is None
    assert summary["counts"]["latents_written"] == 4 and summary["counts"]["errors"] == 0, summary["counts"]
    assert summary["counts"]["clips_without_audio"] == 1


def test_ltx2_export_carries_audio_latents_as_the_trainer_reads_them(audio_run, tmp_path):
    import pyarrow.parquet as pq

    from latentforge.formats.export.base import ExportContext, ExportSample
    from latentforge.formats.export.ltx2 import LTX2Exporter
    from latentforge.formats.tensors import from_columns
    from latentforge.models import get_preset
    from latentforge.operators.audio_vae import load_audio_vae

    cfg, _, rows, _ = audio_run
    shard = next(Path(cfg.output, "latents").rglob("*.parquet"))
    metadata = json.loads(pq.read_schema(shard).metadata[b"latentforge"])
    ctx = ExportContext(model="tiny-ltx2", family="ltx2", text_encoder=None, latent_metadata=metadata, dataset_root=str(Path(cfg.input).parent))
    for path, data in LTX2Exporter().files([ExportSample(r, None) for r in rows.values()], ctx):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    folder = tmp_path / ".precomputed" / "audio_latents"
    assert sorted(p.name for p in folder.glob("*.pt")) == ["silent.pt", "surround.pt", "tone.pt"]  # none for the mute clip
    assert len(list((tmp_path / ".precomputed" / "latents").glob("*.pt"))) == 4
    vae = load_audio_vae(get_preset("tiny-ltx2"))
    mean, std = vae.latents_mean.view(8, 1, 16), vae.latents_std.view(8, 1, 16)  # over the patchified C * F channels
    data = torch.load(folder / "tone.pt", map_location="cpu", weights_only=True)  # as the trainer's dataset loads it
    raw = from_columns(rows["tone.mkv"], "audio_latent")
    assert data["latents"].dtype == torch.bfloat16 and data["latents"].shape == raw.shape
    assert torch.allclose(data["latents"].float(), (raw - mean) / std, atol=0.02, rtol=0.01)
    assert (data["num_time_steps"], data["frequency_bins"]) == (raw.shape[1], 16) and data["duration"] == pytest.approx(11333 / RATE)


def test_decode_preview_has_the_audio_track(audio_run, tmp_path):
    from latentforge.pipelines.decode import decode_output

    cfg, _, rows, _ = audio_run
    written = decode_output(cfg.output, samples=5, bucket="64x64x9", to=str(tmp_path))
    by_id = {Path(w).stem: w for w in written}
    with av.open(by_id[rows["surround.mkv"]["sample_id"]]) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        assert c.streams.audio[0].rate == 24000 and sum(f.samples for f in c.decode(audio=0)) > 0.3 * 24000
    with av.open(by_id[rows["mute.mkv"]["sample_id"]]) as c:
        assert len(c.streams.audio) == 0
