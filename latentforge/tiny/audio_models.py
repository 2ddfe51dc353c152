"""The tiny LTX-2 twin's audio parts: `audio_vae/` (diffusers AutoencoderKLLTX2Audio) and
`vocoder/` (diffusers LTX2Vocoder), with LTX-2's signal settings (16 kHz, hop 160, 64 mel bins,
8 latent channels, 4x compression in time and frequency, a 24 kHz vocoder that upsamples 240x)
and narrow layers. `base_channels` stays 128: the class sizes its latents_mean / latents_std
buffers by it, and the pipelines apply them to the patchified latent's C * F = 8 * 16 = 128
channels, as with the real checkpoint. Own seeds, so the other parts' weights are unchanged.
"""

from __future__ import annotations

from typing import Any

from latentforge.tiny.once import seeded

SEED_AUDIO_VAE, SEED_VOCODER = 4711, 2468

AUDIO_VAE_CONFIG: dict[str, Any] = dict(
    base_channels=128, ch_mult=(1, 1, 1), num_res_blocks=1, latent_channels=8, output_channels=2, in_channels=2,
    sample_rate=16000, mel_hop_length=160, mel_bins=64,
)
VOCODER_CONFIG: dict[str, Any] = dict(
    in_channels=128, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[12, 10, 4, 4, 4],
    upsample_factors=[6, 5, 2, 2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1]], output_sampling_rate=24000,
)


def _audio_vae() -> Any:
    import torch
    from diffusers import AutoencoderKLLTX2Audio

    vae = AutoencoderKLLTX2Audio(**AUDIO_VAE_CONFIG)
    # Non-trivial normalisation stats, so an export that forgot them would show.
    vae.latents_mean.copy_(torch.linspace(-0.5, 0.5, vae.latents_mean.numel()))
    vae.latents_std.copy_(torch.linspace(0.5, 2.0, vae.latents_std.numel()))
    return vae


def _vocoder() -> Any:
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    return LTX2Vocoder(**VOCODER_CONFIG)


def ltx2_audio_parts() -> dict[str, Any]:
    return {"audio_vae": seeded(SEED_AUDIO_VAE, _audio_vae), "vocoder": seeded(SEED_VOCODER, _vocoder)}
