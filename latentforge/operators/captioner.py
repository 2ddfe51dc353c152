"""caption, step 2: the captioner actors keep a model resident and caption a batch of rows whose
frames step 1 (captioning.py) sampled; `CaptionActorBase` is the batch plumbing every backend
shares (caption_api.py's `OpenAICaptioner` too), `TransformersCaptioner` the transformers VLM."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from latentforge.operators.base import Resources, settle_after_load
from latentforge.operators.captioning import STAGE, CaptionOptions, caption_prompt, clean_output
from latentforge.operators.devices import default_device
from latentforge.rows import has_value, object_column

class CaptionError(RuntimeError):
    """A row's caption could not be made; its message becomes the row's `error`."""


class CaptionActorBase:
    """Batch plumbing shared by the captioners: pick the rows to caption, call
    `caption_rows(items)` (one result per item: text or an exception), clean, and write the
    results back; working columns with frames or audio are dropped from the output."""

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

    On a run without GPUs it reserves no CPU (`caption.num_cpus` overrides): it then shares CPUs
    with the map tasks instead of holding one for its lifetime, so a small machine that runs the
    VAE actor too never ends up with no CPU left for probe and prepare.
    """

    resources = Resources(num_cpus=1, num_gpus=1, num_cpus_without_gpus=0)

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
        settle_after_load()

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
