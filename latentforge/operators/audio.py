"""The audio of a clip's span, as LTX-2's preprocessing prepares it (encode_video.with_audio).

Runs in `prepare` on CPU workers: numpy and PyAV only, never torch (tests/test_architecture.py).
The samples are read from the container that `prepare` opened for the clip's frames, resampled
to the audio VAE's rate by FFmpeg's resampler, down-mixed to stereo with the LTX-2 trainer's
weights (process_videos._encode_audio: mono is duplicated, 5.1 and 7.1 keep L/R at 1/sum and
add centre and surrounds at 0.707/sum, any other layout is averaged), then trimmed or padded
with zeros to the clip's duration. The mel spectrogram and the encode happen in the model actor
(audio_vae.py).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import av
import numpy as np

# audio_status values (docs/outputs.md)
OK, NO_AUDIO, IMAGE, UNREADABLE = "ok", "no_audio", "image", "unreadable"
# Rows without audio carry an empty array, so the column keeps one tensor type (as NO_FRAMES).
NO_SAMPLES = np.zeros((2, 0), dtype=np.float32)


def to_stereo(samples: np.ndarray) -> np.ndarray:
    """[channels, n] -> [2, n] by the LTX-2 trainer's rule (channel order L, R, C, LFE, Ls, Rs[, Lb, Rb],
    which is FFmpeg's order for 5.1 and 7.1)."""
    x = np.asarray(samples, dtype=np.float32)
    c = x.shape[0]
    if c == 2:
        return x
    if c == 1:
        return np.concatenate([x, x])
    if c == 6:
        main, other = 1.0 / 2.414, 0.707 / 2.414
        left = main * x[0] + other * x[2] + other * x[4]
        right = main * x[1] + other * x[2] + other * x[5]
        return np.stack([left, right]).astype(np.float32)
    if c == 8:
        main, other = 1.0 / 3.121, 0.707 / 3.121
        left = main * x[0] + other * (x[2] + x[4] + x[6])
        right = main * x[1] + other * (x[2] + x[5] + x[7])
        return np.stack([left, right]).astype(np.float32)
    mono = x.mean(axis=0, keepdims=True)
    return np.concatenate([mono, mono])


def target_samples(duration_s: float, native_rate: int, rate: int) -> int:
    """Samples of a clip of `duration_s` at `rate`: the trainer trims at the source's rate
    (int(duration * native rate)) and torchaudio's resample then gives ceil(rate * n / native)."""
    native = int(duration_s * native_rate + 1e-6)
    return math.ceil(Fraction(rate * native, native_rate))


def fit_length(samples: np.ndarray, n: int) -> np.ndarray:
    """Trim to `n` samples, or pad with zeros after the end (the trainer pads short audio)."""
    if samples.shape[1] >= n:
        return np.ascontiguousarray(samples[:, :n])
    return np.pad(samples, ((0, 0), (0, n - samples.shape[1])))


def read_span_audio(container: Any, start_s: float, duration_s: float, rate: int) -> tuple[np.ndarray | None, int]:
    """Stereo float32 [2, n] of [start_s, start_s + duration_s) at `rate` from an open container
    (times in the container's presentation clock), and the stream's own rate; (None, 0) when the
    container has no audio stream."""
    if not container.streams.audio:
        return None, 0
    stream = container.streams.audio[0]
    native = int(stream.rate or stream.codec_context.sample_rate or rate)
    origin = float((stream.start_time or 0) * stream.time_base) if stream.time_base else 0.0
    begin = max(start_s, origin)
    container.seek(int(max(begin - origin, 0.0) / stream.time_base) + int(stream.start_time or 0), stream=stream, backward=True, any_frame=False)
    resampler = av.AudioResampler(format="fltp", layout=stream.layout.name if stream.layout else None, rate=rate)
    end = start_s + duration_s
    chunks: list[np.ndarray] = []
    first: float | None = None
    for frame in container.decode(stream):
        if first is None:
            first = float(frame.pts * frame.time_base) if frame.pts is not None else origin
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray())
        if frame.pts is not None and float(frame.pts * frame.time_base) >= end:
            break
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray())
    if not chunks or first is None:
        samples = np.zeros((2, 0), dtype=np.float32)
        first = start_s
    else:
        samples = to_stereo(np.concatenate(chunks, axis=1))
    skip = int(round((start_s - first) * rate))
    if skip > 0:
        samples = samples[:, skip:]
    elif skip < 0:  # the audio starts after the span does: silence before it
        samples = np.pad(samples, ((0, 0), (-skip, 0)))
    return fit_length(samples, target_samples(duration_s, native, rate)), native


def span_audio_columns(container: Any, video_stream: Any, start_frame: int, num_frames: int, fps: float, rate: int) -> dict[str, Any]:
    """The row's audio columns for a clip of `num_frames` at `fps` (the encoded frames' rate)
    starting at source frame `start_frame`: `audio` (float32 [2, n] at `rate`), `audio_status`,
    `audio_duration` (seconds) and `_count_clips_without_audio`."""
    video_rate = Fraction(video_stream.average_rate or video_stream.guessed_rate or video_stream.base_rate)
    origin = float((video_stream.start_time or 0) * video_stream.time_base) if video_stream.time_base else 0.0
    start_s = origin + float(start_frame / video_rate)
    duration = num_frames / float(fps)
    try:
        samples, _ = read_span_audio(container, start_s, duration, rate)
    except Exception as e:  # noqa: BLE001 - unreadable audio is a status; the video latent stays
        reason = str(e).strip() or type(e).__name__
        return no_audio_columns(f"{UNREADABLE}: {reason[:200]}")
    if samples is None:
        return no_audio_columns(NO_AUDIO)
    return {"audio": samples, "audio_status": OK, "audio_duration": samples.shape[1] / rate, "_count_clips_without_audio": 0}


def no_audio_columns(status: str | None) -> dict[str, Any]:
    """Columns of a row whose audio is not encoded; images and failed rows are not counted."""
    counted = int(status is not None and status != IMAGE)
    return {"audio": NO_SAMPLES, "audio_status": status, "audio_duration": None, "_count_clips_without_audio": counted}


def prepare_audio(row: dict[str, Any], out: dict[str, Any], rate: int, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """`out` (prepare's row) with its audio columns: those the frame decode filled in, else read
    now (frames made by split_scenes during detection: the file is opened once more for its
    audio). Failed rows and rows already in the output get empty columns, images `image`."""
    filled = out.get("audio_status") is not None
    out = {**no_audio_columns(None), **out}
    if filled or out.get("error") or row.get("_done") or out.get("frames") is None or np.size(out["frames"]) == 0:
        return out
    if row.get("media_type") == "image":
        return {**out, **no_audio_columns(IMAGE)}
    from latentforge.operators.probe import open_media

    try:
        with open_media(row["uri"], storage_options) as source, av.open(source) as container:
            columns = span_audio_columns(container, container.streams.video[0], int(row["start_frame"]), int(out["num_frames"]), float(out["fps"]), rate)
    except (av.FFmpegError, OSError, IndexError) as e:
        columns = no_audio_columns(f"{UNREADABLE}: {str(e).strip()[:200] or type(e).__name__}")
    return {**out, **columns}
