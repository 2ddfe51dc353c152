"""The audio track of a decode preview (`latentforge decode`) when the sample has an LTX-2 audio
latent: the audio VAE decodes it to a mel spectrogram and the checkpoint's vocoder turns that into
a waveform (LTX2Pipeline's order), muxed into the mp4 as AAC at the vocoder's rate."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import av
import numpy as np

from latentforge.formats.tensors import from_columns

AUDIO_COLUMNS = ["audio_latent_bytes", "audio_latent_shape", "audio_latent_dtype"]
CHUNK = 1024


class PreviewAudio:
    """Waveforms of stored audio latents; the audio VAE and vocoder load on the first one."""

    def __init__(self, preset: Any, device: str):
        self.preset, self.device, self.models = preset, device, None

    def __call__(self, row: dict[str, Any]) -> tuple[np.ndarray, int] | None:
        if row.get("audio_latent_bytes") is None:
            return None
        import torch

        from latentforge.operators.audio_vae import decode_waveform, load_audio_vae, load_vocoder

        if self.models is None:
            self.models = (load_audio_vae(self.preset, self.device, torch.float32), load_vocoder(self.preset, self.device, torch.float32))
        latent = from_columns(row, "audio_latent").to(device=self.device, dtype=torch.float32)
        return decode_waveform(latent, *self.models)


def add_track(container: Any, audio: tuple[np.ndarray, int] | None) -> Any:
    """An AAC stream for `audio` (added before any packet is written), or None."""
    if audio is None:
        return None
    stream = container.add_stream("aac", rate=audio[1], layout="stereo" if audio[0].shape[0] >= 2 else "mono")
    return stream


def write_track(container: Any, stream: Any, audio: tuple[np.ndarray, int] | None) -> None:
    if stream is None or audio is None:
        return
    wave, rate = audio
    wave = np.ascontiguousarray(wave[:2].astype(np.float32))
    for start in range(0, wave.shape[1], CHUNK):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, start : start + CHUNK]), format="fltp", layout=stream.layout.name)
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
