"""Generated media with known properties, for tests, benchmarks and the offline demo.

Each shot has its own colour field and a moving square, so hard cuts sit at exactly known
frames and a scene detector has real content to look at. PyAV's bundled FFmpeg encodes it.
"""

from __future__ import annotations

import colorsys
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import av
import numpy as np
from PIL import Image


def synthetic_frame(index: int, width: int, height: int, shot: int = 0) -> np.ndarray:
    """One RGB frame: a per-shot gradient plus a square that moves with the frame index."""
    hue = (shot * 0.37) % 1.0
    base = np.array(colorsys.hsv_to_rgb(hue, 0.6, 0.8)) * 255
    ys = np.linspace(0.6, 1.0, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(0.8, 1.0, width, dtype=np.float32)[None, :, None]
    frame = (base[None, None, :] * ys * xs).astype(np.uint8)
    frame = np.broadcast_to(frame, (height, width, 3)).copy()
    side = max(4, min(width, height) // 5)
    x = (index * 7) % max(1, width - side)
    y = (index * 3) % max(1, height - side)
    frame[y : y + side, x : x + side] = 255 - base.astype(np.uint8)
    return frame


def make_video(
    path: str | Path,
    width: int = 160,
    height: int = 96,
    num_frames: int = 48,
    fps: float = 24,
    cuts: Sequence[int] = (),
    audio: bool = False,
    rotation: int | None = None,
    fades: Sequence[int] = (),
    fade_length: int = 8,
    frame_fn: Callable[[int, int, int, int], np.ndarray] | None = None,
) -> Path:
    """Encode an H.264 mp4; `cuts` are the first frames of new shots (0-based).

    `fades` are shot changes through black: the `fade_length` frames before such a frame fade
    the old shot out (the last one black), and it and the next `fade_length - 1` fade the new
    shot in from black, so a fade detector's cut lands on the listed frame. `frame_fn(index,
    width, height, shot)` draws a frame (default `synthetic_frame`; `scene_frame` gives shots
    that differ in brightness and texture as well as hue).
    """
    draw = frame_fn or synthetic_frame
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "ultrafast", "g": "12"}
        if rotation:
            stream.set_display_rotation(rotation)  # display-matrix side data, as phones write it
        audio_stream = container.add_stream("aac", rate=16000) if audio else None
        shot = 0
        for i in range(num_frames):
            if i in cuts or i in fades:
                shot += 1
            image = draw(i, width, height, shot)
            gain = _fade_gain(i, fades, fade_length)
            if gain < 1.0:
                image = (image.astype(np.float32) * gain).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio_stream is not None:
            samples = int(16000 * num_frames / float(rate))
            tone = (0.1 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 16000)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = tone[None, start : start + 1024]
                aframe = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                aframe.sample_rate = 16000
                for packet in audio_stream.encode(aframe):
                    container.mux(packet)
            for packet in audio_stream.encode():
                container.mux(packet)
    return path


def _fade_gain(index: int, fades: Sequence[int], length: int) -> float:
    """Brightness factor of frame `index` around fades through black (1.0 away from them)."""
    for b in fades:
        if b - length <= index < b:
            return (b - 1 - index) / length  # fading out; frame b - 1 is black
        if b <= index < b + length:
            return (index - b) / length  # fading in from black at frame b
    return 1.0


@lru_cache(maxsize=16)
def _scene_background(width: int, height: int, shot: int) -> np.ndarray:
    """A shot's still background: its own hue, a bright or dark level (alternating), a broad
    gradient in its own direction (what a perceptual hash sees) and a fine stripe texture."""
    rng = np.random.default_rng(shot)
    hue = (shot * 0.37) % 1.0
    sat = 0.3 + 0.4 * rng.random()
    val = (0.8 + 0.15 * rng.random()) if shot % 2 == 0 else (0.3 + 0.15 * rng.random())
    base = np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    xs, ys = xs / max(1, width), ys / max(1, height)
    fx, fy = rng.uniform(0.5, 2.5, 2) * rng.choice([-1, 1], 2)  # 0.5 to 2.5 waves across the frame
    broad = 0.5 + 0.5 * np.sin(2 * np.pi * (fx * xs + fy * ys) + rng.random() * 2 * np.pi)
    fine = np.sin(2 * np.pi * (xs * width) / (6 + 10 * rng.random()))
    level = 0.4 + 0.6 * broad + 0.05 * fine
    return np.clip(base[None, None, :] * level[..., None], 0, 255).astype(np.uint8)


def _bounce(position: int, span: int) -> int:
    if span <= 0:
        return 0
    position %= 2 * span
    return position if position < span else 2 * span - position


def scene_frame(index: int, width: int, height: int, shot: int = 0) -> np.ndarray:
    """Like `synthetic_frame`, but each shot also has its own brightness and broad pattern, so
    PySceneDetect's colour, luma-histogram and (at a lower threshold) hash detectors see its cuts;
    the square moves back and forth and never jumps, so nothing but a cut looks like one."""
    frame = _scene_background(width, height, shot).copy()
    side = max(4, min(width, height) // 5)
    x = _bounce(index * max(1, width // 64), width - side)  # moves back and forth, never jumps
    y = _bounce(index * max(1, height // 96), height - side)
    frame[y : y + side, x : x + side] = 255 - frame[y : y + side, x : x + side]
    return frame


def make_image(path: str | Path, width: int = 128, height: int = 96, seed: int = 0) -> Path:
    """A PNG/JPEG (by suffix) with a gradient and a square, like one video frame."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(synthetic_frame(seed, width, height, shot=seed)).save(path)
    return path


# The offline demo set: several aspect ratios and lengths, a still, a clip too short for any
# bucket, and two clips sharing a caption (encoded once). Captions carry VLM openers on purpose.
DEMO_CLIPS = [
    ("landscape.mp4", 320, 180, 60, 24, (30,), "The video shows a red square gliding over a warm gradient."),
    ("portrait.mp4", 180, 320, 40, 30, (), "A square drifts down a tall frame, lit from the side."),
    ("square.mp4", 200, 200, 30, 24, (), "A square drifts down a tall frame, lit from the side."),
    ("banner.mp4", 480, 160, 50, 25, (), "In this video, a wide banner of colour with a bright block moving right."),
    ("too_short.mp4", 160, 96, 6, 24, (), "Six frames are too few for any bucket."),
]
DEMO_IMAGES = [("still.png", 256, 192, "A single still frame with a bright square.")]


def make_demo_dataset(folder: str | Path) -> Path:
    """Write the demo media and an LTX-2 style dataset.jsonl that lists it; returns the manifest."""
    import json

    folder = Path(folder)
    lines = []
    for name, w, h, n, fps, cuts, caption in DEMO_CLIPS:
        make_video(folder / name, w, h, n, fps, cuts=cuts)
        lines.append({"media_path": name, "caption": caption})
    for name, w, h, caption in DEMO_IMAGES:
        make_image(folder / name, w, h, seed=3)
        lines.append({"media_path": name, "caption": caption})
    manifest = folder / "dataset.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


if __name__ == "__main__":
    import sys

    print(make_demo_dataset(sys.argv[1] if len(sys.argv) > 1 else "examples/media"))
