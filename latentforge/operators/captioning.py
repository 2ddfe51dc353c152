"""caption: frames for the captioner (CPU), prompts, and the transformers VLM actor (GPU).

The stage runs in two steps so the GPU never waits on decoding:

1. `prepare_caption_input` (a CPU map over rows) decides whether a row needs a caption (it has
   none, or `override`), and if so decodes the frames the model will see: sampled at `fps`
   (default 2) over the clip's span, at most `max_frames` (spread evenly when the span has
   more), each resized by FFmpeg's scaler to fit a `max_pixels` budget with its aspect ratio
   kept. Images are one frame; `task: edit` (ChronoEdit) takes the span's first and last frame
   as the before/after pair. Audio-aware models (Qwen2.5-Omni) also get the span's audio,
   16 kHz mono, unless `no_audio`.
2. A captioner actor (`TransformersCaptioner` here, `OpenAICaptioner` in caption_api.py)
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
from latentforge.operators.base import Resources, error_row, has_value, is_error, object_column, stable_hash
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
    `cached`) gets that caption back without the model; a row marked `_caption_not_needed` (its
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
    if row.get("_caption_not_needed"):
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
                source_fps = float(row.get("fps") or 0.0)
                if task == "edit":
                    if end - start < 2:
                        raise ValueError(f"the edit task needs 2 frames (before, after), the span has {end - start}")
                    indices, kind, rate = [start, end - 1], "edit", 0.0
                else:
                    indices, rate = sample_frame_indices(start, end, source_fps, fps, max_frames)
                    kind = "video"
                frames = _decode_frames(source, row, indices, max_pixels)
        if with_audio and kind == "video" and row.get("has_audio"):
            source_fps = float(row.get("fps") or 1.0)
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


# ---------------------------------------------------------------------------------------------
# Step 2: the actors


class CaptionError(RuntimeError):
    """A row's caption could not be made; its message becomes the row's `error`."""


class CaptionActorBase:
    """Batch plumbing shared by the captioners: pick the rows to caption, call
    `caption_rows(items)` (one result per item: text or an exception), clean, and write the
    results back; working columns with frames or audio are dropped from the output."""

    resources = Resources(num_cpus=1, num_gpus=1)
    name = "caption"

    def caption_rows(self, items: list[dict[str, Any]]) -> list[str | BaseException]:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        n = len(next(iter(batch.values()))) if batch else 0
        todo_col = batch.get("_caption_todo")
        prev_err = batch.get("error")
        todo = [
            i
            for i in range(n)
            if todo_col is not None and bool(todo_col[i]) and not (prev_err is not None and has_value(prev_err[i]))
        ]
        items = []
        for i in todo:
            item = {
                "kind": str(batch["_caption_kind"][i]),
                "frames": np.asarray(batch["_caption_frames"][i], dtype=np.uint8),
                "fps": float(batch["_caption_fps"][i] or 0.0),
                "uri": str(batch["uri"][i]),
            }
            if "_caption_audio" in batch:
                item["audio"] = np.asarray(batch["_caption_audio"][i], dtype=np.float32)
            items.append(item)
        results = self.caption_rows(items) if items else []
        load_seconds = getattr(self, "_unreported_load_seconds", 0.0)
        self._unreported_load_seconds = 0.0

        captions = [batch["caption"][i] if "caption" in batch else None for i in range(n)]
        captions = [c if isinstance(c, str) and has_value(c) else None for c in captions]
        errors = [prev_err[i] if prev_err is not None and has_value(prev_err[i]) else None for i in range(n)]
        prev_stage = batch.get("error_stage")
        stages = [prev_stage[i] if prev_stage is not None and errors[i] else None for i in range(n)]
        generated = [False] * n
        for i, result in zip(todo, results):
            if isinstance(result, BaseException):
                errors[i] = f"{batch['uri'][i]}: captioning failed ({_reason(result)})"
                stages[i] = STAGE
                continue
            text = clean_output(result)
            if not text:
                errors[i] = f"{batch['uri'][i]}: empty caption from the model"
                stages[i] = STAGE
                continue
            captions[i] = text
            generated[i] = True

        out = {k: v for k, v in batch.items() if k not in ("_caption_frames", "_caption_audio")}
        out["caption"] = object_column(captions)
        out["error"] = object_column(errors)
        out["error_stage"] = object_column(stages)
        out["_caption_generated"] = np.array(generated, dtype=bool)
        out["_caption_todo"] = np.zeros(n, dtype=bool)  # done: frames are gone
        # model load time (lazy, first batch) is reported apart, so `caption` is captioning only
        out["_seconds_caption"] = np.full(n, (time.perf_counter() - t0 - load_seconds) / max(n, 1))
        out["_seconds_caption_model_load"] = np.full(n, load_seconds / max(n, 1))
        return out


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text and not isinstance(e, CaptionError) else (text or type(e).__name__)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TransformersCaptioner(CaptionActorBase):
    """Ray Data map_batches actor holding a transformers VLM (Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
    Qwen2.5-Omni, or another image-text-to-text model with a chat template).

    The real inference path: `processor.apply_chat_template` renders each conversation (a video,
    an image, or an image pair, then the prompt), the processor turns text + pixels into model
    inputs (left padded, batched by kind), `generate` runs greedy (or sampled, temperature > 0),
    and only the new tokens are decoded with `batch_decode`. Frames arrive already sampled and
    sized, so the processor's own frame sampling is off and the frame rate is passed as metadata
    (Qwen's temporal position ids use it). bf16 on GPU, float32 on CPU, unless `dtype` says.

    With `lazy=True` (what the pipeline uses) the model loads on the first batch that has a row
    to caption, so a rerun or a precompute over captioned data never loads a VLM it does not
    need; a model that cannot load then fails that batch, and the run, with the loader's error.
    """

    resources = Resources(num_cpus=1, num_gpus=1)

    def __init__(self, options: CaptionOptions, device: str | None = None, lazy: bool = False):
        self.options = options
        self.device = device
        self.model = None
        if not lazy:
            self._load()

    def _load(self) -> None:
        import torch

        from latentforge.captioner_models import captioner_root, detect_family, generation_model, load_captioner
        from latentforge.formats.tensors import DTYPES

        options = self.options
        self.device = self.device or default_device()
        dtype_name = options.dtype or ("bfloat16" if torch.device(self.device).type == "cuda" else "float32")
        if dtype_name not in DTYPES:
            raise ValueError(f"caption.dtype {dtype_name!r}: expected one of {', '.join(DTYPES)}")
        self.dtype = DTYPES[dtype_name]
        root = captioner_root(options.model, options.model_path)
        self.family = detect_family(root, options.family)
        self.processor, self.model = load_captioner(
            root,
            self.family,
            self.device,
            self.dtype,
            use_8bit=options.use_8bit,
            use_4bit=options.use_4bit,
            attn_implementation=options.attn_implementation,
        )
        self.generator = generation_model(self.model, self.family)
        self.hears_audio = self.family == "qwen2.5-omni" and not options.no_audio

    # -- inputs ----------------------------------------------------------------------------

    def _messages(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        from PIL import Image

        kind = item["kind"]
        audio = self.hears_audio and item.get("audio") is not None and len(item["audio"]) > 0
        prompt = caption_prompt(kind, self.options.prompt, self.options.custom_prompt, self.options.task, self.options.cot, audio)
        frames = item["frames"]
        if kind == "video":
            visual = [{"type": "video", "video": frames}]
        else:  # image: one frame; edit: before, after
            visual = [{"type": "image", "image": Image.fromarray(f)} for f in frames]
        return [{"role": "user", "content": [*visual, {"type": "text", "text": prompt}]}]

    def _size_kwargs(self, frames_per_video: int) -> dict[str, Any]:
        """The processor's resize bounds for known families, so it keeps our pixel budget (its
        own minimum is kept unless it is above the budget)."""
        budget = int(self.options.max_pixels)
        out: dict[str, Any] = {}
        for attr, key in (("image_processor", "images_kwargs"), ("video_processor", "videos_kwargs")):
            proc = getattr(self.processor, attr, None)
            size = getattr(proc, "size", None)
            if proc is None or not size or "shortest_edge" not in size or "longest_edge" not in size:
                continue
            longest = budget
            if self.family == "qwen3-vl" and attr == "video_processor":
                longest = budget * max(1, frames_per_video)  # Qwen3-VL bounds the whole video (T*H*W)
            out[key] = {"size": {"shortest_edge": min(int(size["shortest_edge"]), longest), "longest_edge": longest}}
        return out

    def _inputs(self, items: list[dict[str, Any]]) -> Any:
        texts = [self.processor.apply_chat_template(self._messages(it), tokenize=False, add_generation_prompt=True) for it in items]
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        kind = items[0]["kind"]
        if kind == "video":
            videos = [it["frames"] for it in items]
            kwargs["videos"] = videos
            kwargs["video_metadata"] = [
                {"total_num_frames": len(v), "fps": it["fps"] or 1.0, "frames_indices": list(range(len(v)))}
                for v, it in zip(videos, items)
            ]
            kwargs["do_sample_frames"] = False
            if self.family in ("qwen2-vl", "qwen2.5-vl", "qwen3-vl", "qwen2.5-omni"):
                kwargs["cap_pixels_per_frame"] = False  # the budget is applied before: keep it as is
            if self.family == "qwen2.5-omni":
                kwargs["fps"] = items[0]["fps"] or 1.0  # Omni reads the rate from here, not the metadata
                if self.hears_audio and all(it.get("audio") is not None and len(it["audio"]) for it in items):
                    kwargs["audio"] = [it["audio"] for it in items]
                    kwargs["load_audio_from_video"] = True
                    kwargs["audio_from_video_indices"] = list(range(len(items)))
        else:
            from PIL import Image

            kwargs["images"] = [Image.fromarray(f) for it in items for f in it["frames"]]
        size_kwargs = self._size_kwargs(max(len(it["frames"]) for it in items))
        for key, value in size_kwargs.items():
            if (key == "videos_kwargs") == (kind == "video"):
                kwargs.update(value)
        return self.processor(**kwargs)

    # -- generation ------------------------------------------------------------------------

    def _generate(self, items: list[dict[str, Any]]) -> list[str]:
        import torch

        inputs = self._inputs(items).to(self.device)
        for k, v in list(inputs.items()):
            if torch.is_tensor(v) and v.is_floating_point():
                inputs[k] = v.to(self.dtype)
        gen: dict[str, Any] = {"max_new_tokens": self.options.max_new_tokens}
        if self.options.temperature > 0:
            gen.update(do_sample=True, temperature=self.options.temperature)
        else:
            gen.update(do_sample=False)
        if self.family == "qwen2.5-omni":
            gen["use_audio_in_video"] = bool(inputs.get("input_features") is not None)
        with torch.inference_mode():
            out = self.generator.generate(**inputs, **gen)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def caption_rows(self, items: list[dict[str, Any]]) -> list[str | BaseException]:
        if self.model is None:  # lazy: loaded by the first batch that has something to caption
            t0 = time.perf_counter()
            self._load()
            self._unreported_load_seconds = time.perf_counter() - t0
        results: list[Any] = [None] * len(items)
        # One generate call per kind (video, image, edit pair), sizes sorted so that prompts of
        # similar length share a call (less padding). Omni also groups by audio and frame rate.
        groups: dict[tuple, list[int]] = {}
        for i, it in enumerate(items):
            key: tuple = (it["kind"],)
            if self.family == "qwen2.5-omni":
                key += (bool(self.hears_audio and it.get("audio") is not None and len(it["audio"])), it["fps"])
            groups.setdefault(key, []).append(i)
        step = max(1, self.options.micro_batch)
        for idx in groups.values():
            idx = sorted(idx, key=lambda i: items[i]["frames"].size)
            for s in range(0, len(idx), step):
                chunk = idx[s : s + step]
                try:
                    for i, text in zip(chunk, self._generate([items[i] for i in chunk])):
                        results[i] = text
                except Exception:
                    for i in chunk:  # find the row at fault; the others still get their caption
                        try:
                            results[i] = self._generate([items[i]])[0]
                        except Exception as e:  # noqa: BLE001 - one bad row never kills the job
                            results[i] = e
        return results
