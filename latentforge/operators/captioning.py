"""caption: frames for the captioner (CPU) and prompts; the actors are in captioner.py.

The stage runs in two steps so the GPU never waits on decoding:

1. `prepare_caption_input` (a CPU map over rows) decides whether a row needs a caption (it has
   none, or `override`), and if so decodes the frames the model will see: sampled at `fps`
   (default 2) over the clip's span, at most `max_frames` (spread evenly when the span has
   more), each resized by FFmpeg's scaler to fit a `max_pixels` budget with its aspect ratio
   kept. Images are one frame; `task: edit` (ChronoEdit) takes the span's first and last frame
   as the before/after pair. Audio-aware models (Qwen2.5-Omni) also get the span's audio,
   16 kHz mono, unless `no_audio`.
2. A captioner actor (`TransformersCaptioner` in captioner.py, `OpenAICaptioner` in caption_api.py)
   keeps its model resident and captions a batch: `__call__(batch) -> batch` with `caption`
   filled in. The output is cleaned by `captions.clean_caption` (openers such as "The video
   shows" stripped, whitespace normalised); an empty result or a failure becomes an error row
   with error_stage "caption", and the run goes on.

Working columns start with "_" (`_caption_frames`, `_caption_todo`, ...): sinks drop them, and
the actor removes the frames from its output so rows are small again after this stage.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from latentforge.buckets import Bucket
from latentforge.operators.base import Resources
from latentforge.rows import error_row, has_value, is_error, stable_hash
from latentforge.operators.captions import clean_caption
from latentforge.operators.probe import open_media

STAGE = "caption"
RESOURCES = Resources(num_cpus=1)  # the frame-sampling map
NO_FRAMES = np.zeros((0, 0, 0, 3), dtype=np.uint8)
NO_AUDIO = np.zeros((0,), dtype=np.float32)
AUDIO_RATE = 16000  # what Qwen2.5-Omni's (Whisper) feature extractor expects

# ---------------------------------------------------------------------------------------------
# Prompts

_AUDIO_CLAUSE = (
    " Also describe the audio: sounds, music and ambience, and any speech, quoted word for word with who says it."
)
DEFAULT_PROMPT = (
    "Describe this {media} in one paragraph, in chronological order, for training a video generation model. "
    "Cover: the shot type and the camera (framing, angle and any movement such as pans, zooms or tracking); "
    "the subjects, their appearance and what they do, in the order it happens; the setting; the lighting and colours; "
    "and any on-screen text, quoted exactly.{audio} "
    "Write plain, concrete present-tense prose about what is visible{heard}. "
    "Begin directly with the content: do not start with phrases such as \"The video shows\", \"This video\", "
    "\"In this clip\" or \"The image depicts\", and do not mention these instructions."
)
SHORT_PROMPT = (
    "Describe this {media} in one or two sentences: the main subject, what it does, and the setting. "
    "Begin directly with the content, not with \"The video shows\" or similar."
)
EDIT_PROMPT = (
    "The first image is the input and the second image is the same scene after an edit. "
    "Write the editing instruction that turns the first image into the second, as one imperative sentence "
    "(for example: \"Replace the red car with a blue bicycle.\"). Output only the instruction."
)
EDIT_COT_PROMPT = (
    "The first image is the input and the second image is the same scene after an edit. "
    "Write an expanded editing instruction of 80 to 100 words that reasons through the edit: start with the change "
    "as an imperative sentence, then describe exactly what changes (objects, colours, poses, text, style), what must "
    "stay the same (identities, background, lighting, camera viewpoint and composition), and how the change happens "
    "in a physically plausible way. Output only that paragraph."
)
PROMPTS = ("default", "short")


def caption_prompt(
    kind: str, prompt: str = "default", custom: str | None = None, task: str = "describe", cot: bool = False, audio: bool = False
) -> str:
    """The user prompt for one row: `kind` is "video", "image" or "edit"."""
    if task == "edit" or kind == "edit":
        return custom.strip() if custom else (EDIT_COT_PROMPT if cot else EDIT_PROMPT)
    media = "image" if kind == "image" else "video"
    if custom:
        return custom.strip().replace("{media}", media)
    if prompt == "short":
        return SHORT_PROMPT.format(media=media)
    if prompt != "default":
        raise ValueError(f"caption.prompt {prompt!r}: expected one of {', '.join(PROMPTS)}")
    return DEFAULT_PROMPT.format(
        media=media,
        audio=_AUDIO_CLAUSE if audio and kind == "video" else "",
        heard=" and audible" if audio and kind == "video" else "",
    )


_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]")


def clean_output(text: str | None) -> str:
    """Model output -> caption: reasoning blocks of thinking models and control characters
    dropped, openers stripped, whitespace normalised, wrapping quotes removed."""
    text = _CONTROL.sub("", _THINK.sub("", text or ""))
    text = text.strip().strip('"“”').strip()
    return clean_caption(text)


# ---------------------------------------------------------------------------------------------
# Options shared by the actors


@dataclass(frozen=True)
class CaptionOptions:
    """What a caption actor needs from `caption.*` in the config (no pydantic in the actor)."""

    task: str = "describe"
    cot: bool = False
    prompt: str = "default"
    custom_prompt: str | None = None  # the text of caption.prompt_file
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    model_path: str | None = None
    family: str = "auto"
    max_new_tokens: int = 512
    temperature: float = 0.0
    max_pixels: int = 640 * 360
    max_frames: int = 32
    dtype: str | None = None
    use_8bit: bool = False
    use_4bit: bool = False
    attn_implementation: str | None = None
    no_audio: bool = False
    micro_batch: int = 4


def caption_key(row: dict[str, Any]) -> str:
    """Identity of a clip for caption resume: the source and its span (no bucket, no model)."""
    start, end = row.get("start_frame"), row.get("end_frame")
    return stable_hash(row.get("uri"), int(start) if has_value(start) else None, int(end) if has_value(end) else None, length=20)


# ---------------------------------------------------------------------------------------------
# Step 1: frames for the captioner (CPU)


def fit_pixels(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest (w, h) with the same aspect ratio and w * h <= max_pixels; never upscales."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    w = max(1, int(math.floor(width * scale)))
    h = max(1, int(math.floor(height * scale)))
    while w * h > max_pixels:  # float rounding
        w, h = max(1, w - 1), max(1, h - 1)
    return w, h


def sample_frame_indices(start: int, end: int, source_fps: float, fps: float, max_frames: int) -> tuple[list[int], float]:
    """Source frame indices of [start, end) sampled at `fps`, at most `max_frames` (spread evenly
    over the span when more), and the effective rate of the sampled frames."""
    span = max(0, end - start)
    if span == 0:
        return [], 0.0
    source_fps = source_fps or fps
    duration = span / source_fps
    count = int(math.floor(duration * fps + 1e-9)) or 1
    count = max(1, min(count, max_frames, span))
    indices = [start + int(i * span / count) for i in range(count)]
    return indices, count / duration


def _decode_frames(source: Any, row: dict[str, Any], indices: Sequence[int], max_pixels: int) -> np.ndarray:
    from latentforge.operators.frames import decode_video_frames

    w, h = fit_pixels(int(row["width"]), int(row["height"]), max_pixels)
    # A "bucket" of exactly the fitted size: cover-resize + center crop removes at most a pixel.
    bucket = Bucket(w, h, len(indices))
    return decode_video_frames(source, int(indices[0]), list(indices), bucket, int(row.get("rotation") or 0), "area")


def _load_image(source: Any, row: dict[str, Any], max_pixels: int) -> np.ndarray:
    from latentforge.operators.frames import load_image

    w, h = fit_pixels(int(row["width"]), int(row["height"]), max_pixels)
    return load_image(source, Bucket(w, h, 1), "area")


def load_audio_span(source: Any, start_s: float, end_s: float, rate: int = AUDIO_RATE) -> np.ndarray:
    """Mono float32 audio of [start_s, end_s) at `rate` Hz (empty when the file has no audio)."""
    import av

    chunks: list[np.ndarray] = []
    with av.open(source) as container:
        if not container.streams.audio:
            return NO_AUDIO
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        if start_s > 0:
            container.seek(int(start_s / float(stream.time_base)), stream=stream, backward=True)
        first_time = None
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= end_s:
                break
            for out in resampler.resample(frame):
                if first_time is None:
                    first_time = frame.time or 0.0
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        return NO_AUDIO
    audio = np.concatenate(chunks).astype(np.float32)
    skip = max(0, int(round((start_s - (first_time or 0.0)) * rate)))
    return np.ascontiguousarray(audio[skip : skip + int(round((end_s - start_s) * rate))])


def prepare_caption_input(
    row: dict[str, Any],
    fps: float = 2.0,
    max_frames: int = 32,
    max_pixels: int = 640 * 360,
    override: bool = False,
    task: str = "describe",
    with_audio: bool = False,
    cached: dict[str, str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Row -> row with `_caption_todo` and, when true, `_caption_frames` (uint8 [T, H, W, 3]),
    `_caption_fps`, `_caption_kind` and (with_audio) `_caption_audio`.

    A row keeps its caption unless `override`; a row captioned by an earlier run (its key in
    `cached`) gets that caption back without the model; a row marked `_done` (its
    latent is already in the output) is left alone.
    """
    out = {
        **row,
        "_caption_key": None,
        "_caption_todo": False,
        "_caption_cached": False,
        "_caption_in_parts": False,
        "_caption_kind": None,
        "_caption_fps": 0.0,
        "_caption_frames": NO_FRAMES,
        "_seconds_caption_frames": 0.0,
    }
    if with_audio:
        out["_caption_audio"] = NO_AUDIO
    if is_error(row):
        return out
    key = caption_key(row)
    out["_caption_key"] = key
    out["_caption_in_parts"] = bool(cached) and key in cached
    if has_value(row.get("caption")) and not override:
        return out
    if cached and key in cached:
        out["caption"] = cached[key]
        out["_caption_cached"] = True
        return out
    if row.get("_done"):
        return out
    t0 = time.perf_counter()
    uri = row["uri"]
    try:
        with open_media(uri, storage_options) as source:
            if row.get("media_type") == "image":
                if task == "edit":
                    raise ValueError("the edit task needs a before/after pair: a 2-frame video, not an image")
                frames, kind, rate = _load_image(source, row, max_pixels), "image", 0.0
            else:
                start, end = int(row["start_frame"]), int(row["end_frame"])
                source_fps = float(row.get("source_fps") or row.get("fps") or 0.0)  # fps is the encoded rate once bucketed
                if task == "edit":
                    if end - start < 2:
                        raise ValueError(f"the edit task needs 2 frames (before, after), the span has {end - start}")
                    indices, kind, rate = [start, end - 1], "edit", 0.0
                else:
                    indices, rate = sample_frame_indices(start, end, source_fps, fps, max_frames)
                    kind = "video"
                frames = _decode_frames(source, row, indices, max_pixels)
        if with_audio and kind == "video" and row.get("has_audio"):
            source_fps = float(row.get("source_fps") or row.get("fps") or 1.0)
            with open_media(uri, storage_options) as source:
                out["_caption_audio"] = load_audio_span(source, int(row["start_frame"]) / source_fps, int(row["end_frame"]) / source_fps)
    except Exception as e:  # noqa: BLE001 - a bad file fails its row, not the job
        reason = str(e).strip() or type(e).__name__
        return error_row(out, STAGE, f"{uri}: caption frames failed ({reason})")
    out["_caption_frames"] = frames
    out["_caption_fps"] = float(rate)
    out["_caption_kind"] = kind
    out["_caption_todo"] = True
    out["_seconds_caption_frames"] = time.perf_counter() - t0
    return out
