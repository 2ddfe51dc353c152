"""What the driver needs to know about LTX-2's audio VAE (encode_video.with_audio): its sample
rate and normalisation stats for the latent shards' metadata, read from its config and weight
buffers without torch or diffusers (models/weights.py). The model itself loads in the VAE actor
(operators/audio_vae.py)."""

from __future__ import annotations

from typing import Any

from latentforge.models import model_root
from latentforge.models.weights import subfolder_config, subfolder_tensors

AUDIO_SUBFOLDER = "audio_vae"
VOCODER_SUBFOLDER = "vocoder"


def audio_vae_config(preset: Any) -> dict[str, Any]:
    """The audio VAE's config (sample_rate, mel_hop_length, mel_bins, ...), read without weights."""
    return subfolder_config(model_root(preset), AUDIO_SUBFOLDER)


def audio_sample_rate(preset: Any) -> int:
    return int(audio_vae_config(preset).get("sample_rate") or 16000)


def audio_vae_normalization(preset: Any) -> dict[str, Any]:
    """The audio VAE's per-channel `latents_mean` / `latents_std` (weight buffers, over the
    patchified [T, C * F] channels), read as byte ranges of its safetensors, for the metadata."""
    return subfolder_tensors(model_root(preset), AUDIO_SUBFOLDER, ["latents_mean", "latents_std"])


def audio_metadata(preset: Any) -> dict[str, Any]:
    """What the latent shards' metadata says about `audio_latent` (exporters read it)."""
    return {
        "audio_vae_class": "AutoencoderKLLTX2Audio",
        "audio_vae_normalization": audio_vae_normalization(preset),
        "audio_sample_rate": audio_sample_rate(preset),
        "audio_layout": "audio_latent = the audio VAE's latent mean [C, T, F] of the span's log-mel spectrogram, not normalised",
    }
