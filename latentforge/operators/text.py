"""encode_text: final caption text -> the model family's text embedding, one row per caption.

The embedding is exactly what the family's diffusers pipeline feeds its transformer: the stage
instantiates that pipeline with only its text components (models.load_text_pipeline) and calls
its own `encode_prompt` (never a reimplementation), then trims each embedding to the caption's
tokens, so a stored embedding is `[length, dim]` (DESIGN.md, Outputs):

- the token positions come from the attention mask `encode_prompt` returns where it returns
  one (LTX-Video, LTX-2, HunyuanVideo); otherwise (Wan, CogVideoX) the captions are tokenized
  again exactly as that `encode_prompt` does and the mask of that is used;
- LTX-2 pads on the LEFT (Gemma): its tokens are the last `length` positions; the others pad on
  the right: the first `length`. Selecting the masked positions handles both;
- HunyuanVideo's `encode_prompt` already crops its system-prompt template prefix (and the mask
  with it), so its length counts the caption's tokens (+ the closing <|eot_id|>); its CLIP
  pooled vector is stored as `pooled_embedding_*`;
- LTX-2's `encode_prompt` returns Gemma's hidden states of every layer stacked per token
  ([length, hidden * (layers + 1)], ~0.4 MB a token in bf16 for Gemma 3 12B). What is stored is
  what the LTX-2 trainer's process_captions stores: those states through the text feature
  extractor of the pipeline's `connectors` (diffusers LTX2TextConnectors; see ltx2_features),
  before the connector transformers: `embedding_*` = video_prompt_embeds [length, D] and, where
  the model projects audio apart (LTX-2.3), `audio_embedding_*` = audio_prompt_embeds. The
  stacked states themselves are stored only with `stacked_hidden_states` (config
  encode_text.ltx2_stacked_hidden_states), under another embeddings partition name.

A trainer re-pads to the model's max length: zeros for Wan (which zero-fills itself), masked
positions for LTX/LTX-2/Hunyuan. CogVideoX is the exception: its T5 runs without an attention
mask and its transformer sees all 226 positions, so the padding positions carry
caption-dependent values; its embeddings are stored whole (`length` = 226), since trimming
would change what the transformer is conditioned on.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any, Sequence

import numpy as np
import torch

from latentforge.formats.tensors import DTYPES, to_columns
from latentforge.operators.devices import default_device, default_dtype, set_cpu_threads
from latentforge.operators.time_limit import SampleTimeout, end_stuck_process, within
from latentforge.operators.base import MODEL_RESOURCES
from latentforge.rows import has_value, object_column

STAGE = "encode_text"


def _tokenizer_mask(pipe, preset, captions: Sequence[str]) -> torch.Tensor:
    """The attention mask of the captions tokenized as the family's encode_prompt does, for the
    families whose encode_prompt returns none and whose padding is not conditioning (Wan)."""
    if preset.family == "wan":
        # WanPipeline._get_t5_prompt_embeds: prompt_clean (ftfy + whitespace), then the tokenizer.
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        texts = [prompt_clean(c) for c in captions]
    else:  # pragma: no cover - the others return their mask
        raise ValueError(f"no tokenizer rule for family {preset.family!r}")
    inputs = pipe.tokenizer(
        texts,
        padding="max_length",
        max_length=preset.max_sequence_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    return inputs.attention_mask


def ltx2_features(connectors, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """LTX-2's text feature extractor on ONE caption's tokens: `hidden` [length, C * layers]
    (encode_prompt's stacked states, padding removed) -> (video features [length, D], audio
    features [length, D_audio] or None where one projection serves both: LTX-2.0).

    What LTX2TextConnectors.forward does before its video/audio connector transformers, with
    diffusers' own normalisation functions and the component's own projection layers:
    LTX-2.0 (`per_modality_projections` False): per_layer_masked_mean_norm (per layer, over the
    valid tokens: 8 * (x - mean) / (max - min + 1e-6)), flatten, text_proj_in; LTX-2.3:
    per_token_rms_norm, flatten, scaled by sqrt(video_hidden_dim / C) and sqrt(audio_hidden_dim /
    C) into video_text_proj_in / audio_text_proj_in. Both normalisations read only valid tokens
    (mean, min, max over the mask; RMS per token), so on the trimmed rows (mask all ones) they
    give the values they give those rows in the padded batch, which tests/test_ltx2_conditions.py
    checks against the whole forward on encode_prompt's padded output.
    """
    from diffusers.pipelines.ltx2.connectors import per_layer_masked_mean_norm, per_token_rms_norm

    cfg = connectors.config
    states = hidden.unsqueeze(0).unflatten(2, (cfg.caption_channels, -1))  # [1, length, C, layers]
    if cfg.per_modality_projections:
        norm = per_token_rms_norm(states).flatten(2, 3)
        video = connectors.video_text_proj_in(norm * math.sqrt(cfg.video_hidden_dim / cfg.caption_channels))
        audio = connectors.audio_text_proj_in(norm * math.sqrt(cfg.audio_hidden_dim / cfg.caption_channels))
        return video[0], audio[0]
    lengths = torch.tensor([states.shape[1]], device=states.device)
    norm = per_layer_masked_mean_norm(states, lengths, device=states.device, padding_side="left")
    return connectors.text_proj_in(norm)[0], None


def extra_columns(pipe, preset, stacked_hidden_states: bool = False) -> list[str]:
    """The embedding columns besides `embedding_*` that encode_captions returns for this pipeline:
    `pooled_embedding` (HunyuanVideo's CLIP), `audio_embedding` (LTX-2.3's audio features)."""
    if preset.family == "hunyuanvideo":
        return ["pooled_embedding"]
    if preset.family == "ltx2" and not stacked_hidden_states and pipe.connectors.config.per_modality_projections:
        return ["audio_embedding"]
    return []


def truncated(pipe, preset, captions: Sequence[str]) -> list[bool]:
    """Whether each caption has more tokens than the encoder keeps (max_sequence_length): those
    are cut by encode_prompt, silently; run.json counts them (`captions_truncated`). Counted with
    the pipeline's tokenizer and special tokens, before any prompt template (HunyuanVideo's
    template takes some of the budget too, so its count is a lower bound)."""
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None:
        return [False] * len(captions)
    lengths = [len(ids) for ids in tokenizer(list(captions), add_special_tokens=True, truncation=False)["input_ids"]]
    return [n > preset.max_sequence_length for n in lengths]


def encode_captions(
    pipe, preset, captions: list[str], device: str | torch.device, dtype: torch.dtype, stacked_hidden_states: bool = False
) -> list[tuple[torch.Tensor, int, dict[str, torch.Tensor]]]:
    """`(embedding [length, dim], length, extras)` per caption, from the pipeline's own
    encode_prompt with the preset's max_sequence_length; `extras` maps the columns of
    extra_columns to their tensor (HunyuanVideo's `pooled_embedding` [dim], LTX-2.3's
    `audio_embedding` [length, D_audio]). For LTX-2 the embedding is ltx2_features' video
    features, or with `stacked_hidden_states` encode_prompt's stacked Gemma states."""
    captions = list(captions)
    kwargs: dict[str, Any] = dict(
        prompt=captions,
        max_sequence_length=preset.max_sequence_length,
        device=torch.device(device),
        dtype=dtype,
    )
    if "do_classifier_free_guidance" in inspect.signature(pipe.encode_prompt).parameters:
        kwargs["do_classifier_free_guidance"] = False  # HunyuanVideoPipeline has no such argument
    with torch.inference_mode():
        out = pipe.encode_prompt(**kwargs)
    pooled = None
    family = preset.family
    if family == "wan":
        embeds = out[0]  # (prompt_embeds, negative_prompt_embeds)
        mask = _tokenizer_mask(pipe, preset, captions)
    elif family == "cogvideox":
        # CogVideoX's T5 runs without an attention mask and its transformer attends to all 226
        # positions, so the padding positions are conditioning too: nothing is trimmed.
        embeds = out[0]
        mask = torch.ones(embeds.shape[:2], dtype=torch.bool)
    elif family in ("ltx-video", "ltx2"):
        embeds, mask = out[0], out[1]  # (embeds, mask, negative embeds, negative mask)
    elif family == "hunyuanvideo":
        embeds, pooled, mask = out  # template prefix already cropped from embeds and mask
    else:  # pragma: no cover
        raise ValueError(f"unknown family {family!r}")
    if embeds.shape[:2] != mask.shape:
        raise RuntimeError(f"{preset.pipeline_class}: embeddings {tuple(embeds.shape)} vs mask {tuple(mask.shape)}")
    mask = mask.to(embeds.device).bool()
    features = family == "ltx2" and not stacked_hidden_states
    results = []
    for i in range(len(captions)):
        length = int(mask[i].sum())
        # Left padding (LTX-2) keeps the last `length` positions, right padding the first.
        emb = embeds[i][mask[i]]
        extras: dict[str, torch.Tensor] = {}
        if pooled is not None:
            extras["pooled_embedding"] = pooled[i].clone()
        if features:
            with torch.inference_mode():
                emb, audio = ltx2_features(pipe.connectors, emb)
            if audio is not None:
                extras["audio_embedding"] = audio
        results.append((emb.clone(), length, extras))
    return results


class TextEncodeStage:
    """Ray Data map_batches actor; one instance keeps the encoder resident.

    In: `caption_id`, `caption` (the final caption text: cleanup and trigger words are applied
    before this stage). Out: the input columns plus `embedding_bytes/_shape/_dtype` ([length,
    dim]), `length` (token count) and, for families with a pooled vector (HunyuanVideo's CLIP),
    `pooled_embedding_*`; for LTX-2.3 (separate audio projection) `audio_embedding_*`. Identical captions in a batch are encoded once. A caption that is
    missing or fails to encode becomes an error row (`error`, `error_stage`) instead of failing
    the batch; those two columns appear only in batches that have such a row.
    """

    resources = MODEL_RESOURCES

    def __init__(
        self,
        model: str,
        model_path: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        batch_size: int = 8,
        cpu_actors_per_node: int | None = None,
        ltx2_stacked_hidden_states: bool = False,
        quantization: str = "none",
        call_time_limit_s: float | None = None,
    ):
        """`cpu_actors_per_node`: on the CPU, torch gets the node's CPUs divided by this as
        threads (the pipeline passes it on CPU-only runs); None keeps torch's thread count.
        `ltx2_stacked_hidden_states`: LTX-2 stores encode_prompt's stacked Gemma states instead
        of the text features (and its connectors are not loaded)."""
        from latentforge.models import get_preset, load_text_pipeline, text_encoder_name

        self.preset = get_preset(model, model_path)
        self.device = device or default_device()
        self.dtype_name = dtype or default_dtype(self.device)
        if self.dtype_name not in DTYPES:
            raise ValueError(f"dtype {self.dtype_name!r}: expected one of {', '.join(DTYPES)}")
        self.dtype = DTYPES[self.dtype_name]
        self.batch_size = max(1, int(batch_size or 1))
        self.num_threads = set_cpu_threads(self.device, cpu_actors_per_node)
        self.stacked = bool(ltx2_stacked_hidden_states) and self.preset.family == "ltx2"
        bits = {"8bit": 8, "4bit": 4}.get(quantization)  # bitsandbytes weights (encode_text.quantization)
        self.pipe = load_text_pipeline(self.preset, device=self.device, dtype=self.dtype, connectors=not self.stacked, quantization_bits=bits)
        self.extra_columns = extra_columns(self.pipe, self.preset, self.stacked)
        self.encoder_name = text_encoder_name(self.preset, self.stacked)
        self.call_time_limit_s, self.stuck = call_time_limit_s, False

    def _encode(self, texts: list[str]) -> list[tuple[torch.Tensor, int, dict[str, torch.Tensor]]]:
        return encode_captions(self.pipe, self.preset, texts, self.device, self.dtype, self.stacked)

    def _encode_all(self, texts: list[str]) -> dict[str, Any]:
        """caption text -> (embedding, length, pooled) or the exception that encoding raised."""
        results: dict[str, Any] = {}
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            try:
                results.update(zip(chunk, within(self.call_time_limit_s, self._encode, chunk)))
            except SampleTimeout as e:  # the model is held by the hung call: nothing more here
                self.stuck = True
                hung = TimeoutError(f"the text encoder call did not return ({e}; encode_text.call_time_limit_s)")
                results.update(dict.fromkeys(texts[start:], hung))
                break
            except Exception:
                # Find the caption(s) at fault; the others still get their embedding.
                for text in chunk:
                    try:
                        results[text] = self._encode([text])[0]
                    except Exception as e:  # noqa: BLE001 - one bad row never kills the job
                        results[text] = e
        return results

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.stuck:
            end_stuck_process()  # a call hung in the model: a fresh actor takes this batch
        t0 = time.perf_counter()
        captions = batch["caption"]
        n = len(captions)
        prev_err = batch.get("error")
        failed_before = [prev_err is not None and has_value(prev_err[i]) for i in range(n)]
        texts: list[str | None] = [
            str(c) if isinstance(c, str) and not failed_before[i] else None for i, c in enumerate(captions)
        ]
        unique = list(dict.fromkeys(t for t in texts if t is not None))
        encoded = self._encode_all(unique)
        cut = dict(zip(unique, truncated(self.pipe, self.preset, unique))) if unique else {}

        names = ["embedding", *self.extra_columns]
        cols: dict[str, list[Any]] = {f"{nm}_{part}": [None] * n for nm in names for part in ("bytes", "shape", "dtype")}
        lengths: list[int | None] = [None] * n
        errors: list[str | None] = [None] * n
        for i, text in enumerate(texts):
            result = encoded.get(text) if text is not None else None
            if failed_before[i]:
                continue  # failed in an earlier stage: passes through with its error
            if text is None:
                errors[i] = "missing caption"
            elif isinstance(result, Exception):
                errors[i] = f"text encoding failed: {type(result).__name__}: {result}"
            elif not all(bool(torch.isfinite(t).all()) for t in (result[0], *result[2].values())):
                errors[i] = "text encoding failed: the embedding has NaN or inf values"  # never stored
            else:
                emb, length, extras = result
                lengths[i] = length
                for name, tensor in {"embedding": emb, **extras}.items():
                    for key, value in to_columns(name, tensor).items():
                        cols[key][i] = value

        out = dict(batch)
        for key, values in cols.items():
            out[key] = object_column(values)
        out["length"] = np.array(lengths, dtype=np.int64) if all(v is not None for v in lengths) else object_column(lengths)
        if any(errors) or prev_err is not None:
            prev_stage = batch.get("error_stage")
            err_col, stage_col = [], []
            for i in range(n):
                if prev_err is not None and has_value(prev_err[i]):
                    err_col.append(prev_err[i])
                    stage_col.append(prev_stage[i] if prev_stage is not None else None)
                elif errors[i]:
                    err_col.append(errors[i])
                    stage_col.append(STAGE)
                else:
                    err_col.append(None)
                    stage_col.append(None)
            out["error"] = object_column(err_col)
            out["error_stage"] = object_column(stage_col)
        out["_seconds_encode_text"] = np.full(n, (time.perf_counter() - t0) / max(n, 1))
        out["_count_captions_truncated"] = np.array([int(cut.get(t, False)) if t is not None else 0 for t in texts], dtype=np.int64)
        return out

