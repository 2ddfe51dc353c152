"""LTX-2 audio latents (encode_video.with_audio) in the model actor, and their decode for previews.

The span's stereo samples (prepared on the CPU side, audio.py) -> LTX-2's log-mel spectrogram
-> diffusers' `AutoencoderKLLTX2Audio` (the preset repo's `audio_vae/`) -> its latent mean
[C, T, F], stored raw like the video latent (exporters normalise). The spectrogram has ltx-core's
AudioProcessor settings: magnitude STFT (n_fft 1024, Hann window of 1024, the VAE's hop, centred
with reflect padding), a Slaney-scale, Slaney-normalised mel filter bank from 0 Hz to Nyquist
(transformers.audio_utils.mel_filter_bank: the same construction as torchaudio's
melscale_fbanks, which is not installed), then log(max(mel, 1e-5)), laid out [B, 2, T, mels].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from latentforge.models.audio import AUDIO_SUBFOLDER, VOCODER_SUBFOLDER

N_FFT = 1024  # ltx-core AudioEncoder default (diffusers' config does not record it)
LOG_FLOOR = 1e-5


def _root(preset: Any) -> str:
    from latentforge.models import model_root

    return model_root(preset)


def load_audio_vae(preset: Any, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    from diffusers import AutoencoderKLLTX2Audio

    vae = AutoencoderKLLTX2Audio.from_pretrained(_root(preset), subfolder=AUDIO_SUBFOLDER, torch_dtype=dtype)
    vae = vae.to(device).eval()
    vae.requires_grad_(False)
    return vae


def load_vocoder(preset: Any, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    vocoder = LTX2Vocoder.from_pretrained(_root(preset), subfolder=VOCODER_SUBFOLDER, torch_dtype=dtype)
    return vocoder.to(device).eval()


def mel_filters(sample_rate: int, mel_bins: int, n_fft: int = N_FFT) -> np.ndarray:
    """[n_fft // 2 + 1, mel_bins] Slaney mel filter bank from 0 Hz to Nyquist."""
    from transformers.audio_utils import mel_filter_bank

    return mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1, num_mel_filters=mel_bins, min_frequency=0.0, max_frequency=sample_rate / 2.0,
        sampling_rate=sample_rate, norm="slaney", mel_scale="slaney",
    )


def log_mel(waveform: torch.Tensor, filters: torch.Tensor, hop_length: int, n_fft: int = N_FFT) -> torch.Tensor:
    """Stereo waveforms [B, 2, n] (float32) -> log-mel [B, 2, T, mels], T = n // hop + 1."""
    b, c, n = waveform.shape
    spec = torch.stft(
        waveform.reshape(b * c, n), n_fft=n_fft, hop_length=hop_length, win_length=n_fft,
        window=torch.hann_window(n_fft, device=waveform.device, dtype=waveform.dtype),
        center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True,
    ).abs()  # [B * 2, freq, T], power 1
    mel = torch.matmul(spec.transpose(1, 2), filters)  # [B * 2, T, mels]
    return torch.log(torch.clamp(mel, min=LOG_FLOOR)).reshape(b, c, -1, filters.shape[1])


class AudioLatentEncoder:
    """Stereo samples -> `audio_latent` (the audio VAE's latent mean [C, T, F]), in the VAE actor."""

    def __init__(self, preset: Any, device: str | torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.vae = load_audio_vae(preset, device, dtype)
        cfg = self.vae.config
        self.sample_rate, self.hop = int(cfg.sample_rate), int(cfg.mel_hop_length)
        self.filters = torch.from_numpy(mel_filters(self.sample_rate, int(cfg.mel_bins)).astype(np.float32)).to(device)

    @torch.no_grad()
    def encode(self, samples: np.ndarray) -> torch.Tensor:
        """float32 [2, n] at the VAE's rate -> latent mean [C, T, F]."""
        wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None].to(self.device)
        mel = log_mel(wave, self.filters, self.hop)
        return self.vae.encode(mel.to(self.dtype)).latent_dist.mean[0]

    def encode_rows(self, audio_col: Any, rows: list[int]) -> dict[int, Any]:
        """Row -> latent, or the exception its encode raised, for the rows that have samples."""
        out: dict[int, Any] = {}
        for i in rows:
            samples = audio_col[i] if audio_col is not None else None
            if samples is None or np.size(samples) == 0:
                continue
            try:
                latent = self.encode(np.asarray(samples))
                out[i] = latent if bool(torch.isfinite(latent).all()) else FloatingPointError("the audio latent has NaN or inf values")
            except Exception as e:  # noqa: BLE001 - one row's failure is that row's error
                out[i] = e
        return out


def add_audio_latents(
    encoder: AudioLatentEncoder, audio_col: Any, rows: list[int], n: int, results: dict[str, list[Any]], failed: dict[int, str], dtype: str
) -> None:
    """VideoEncodeStage's hook: the `audio_latent_*` columns of `rows` (the rows whose video
    encoded) into `results`; a row whose audio encode fails becomes an error in `failed`."""
    from latentforge.formats.tensors import to_columns

    for part in ("bytes", "shape", "dtype"):
        results.setdefault(f"audio_latent_{part}", [None] * n)
    for i, result in encoder.encode_rows(audio_col, rows).items():
        if isinstance(result, BaseException):
            failed[i] = f"audio vae encode failed ({type(result).__name__}: {str(result).strip()[:300]})"
            continue
        for key, value in to_columns("audio_latent", result, dtype).items():
            results[key][i] = value


@torch.no_grad()
def decode_waveform(latent: torch.Tensor, audio_vae: Any, vocoder: Any) -> tuple[np.ndarray, int]:
    """A stored audio latent [C, T, F] -> (float32 waveform [channels, n], its sample rate):
    audio VAE decode to the mel spectrogram, then LTX-2's vocoder (as LTX2Pipeline does)."""
    mel = audio_vae.decode(latent[None].to(audio_vae.dtype)).sample
    wave = vocoder(mel.to(vocoder.dtype))[0]
    return wave.float().clamp(-1, 1).cpu().numpy(), int(vocoder.config.output_sampling_rate)
