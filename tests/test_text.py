"""encode_text against its oracle: the diffusers pipeline's own encode_prompt, trimmed to the tokens.

LTX-2 runs here with `ltx2_stacked_hidden_states` (what encode_prompt returns, stored as is); its
default, the trainer's text features, is checked in test_ltx2_conditions.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from latentforge.formats.tensors import from_columns
from latentforge.models import get_preset, model_root, text_encoder_name
from latentforge.operators.text import TextEncodeStage, encode_captions

TINY_TEXT = ["tiny-wan2.1", "tiny-ltx-video", "tiny-cogvideox", "tiny-ltx2", "tiny-hunyuanvideo"]

CAPTIONS = [
    "A cat.",
    "A woman with long brown hair walks along the beach at sunset, the camera pans slowly to the right.",
    "  Un chat noir dort près de la fenêtre — 猫  ",  # unknown words, extra spaces (Wan cleans them)
    "A red car drives along a winding mountain road at sunset; the camera follows it from above.",
    "A cat.",  # a duplicate inside the batch
]
# LTX-2's stacked form is encode_prompt's output itself; other families ignore the option.
STACKED = {"ltx2_stacked_hidden_states": True}




def fresh_pipeline(name: str, dtype: torch.dtype = torch.float32):
    """The oracle: the family's diffusers pipeline loaded straight from the twin's folder with the
    standard DiffusionPipeline.from_pretrained (components recorded as null passed as None)."""
    import diffusers

    preset = get_preset(name)
    root = model_root(preset)
    index = json.loads((Path(root) / "model_index.json").read_text())
    nulls = {k: None for k, v in index.items() if not k.startswith("_") and v == [None, None]}
    cls = getattr(diffusers, preset.pipeline_class)
    return cls.from_pretrained(root, dtype=dtype, **nulls)


def oracle(pipe, preset, caption: str, dtype: torch.dtype):
    """(embedding [length, dim], length, pooled or None) for ONE caption, from encode_prompt alone:
    the length is counted by the tokenizer, and the padding side is the tokenizer's."""
    L = preset.max_sequence_length
    kwargs = dict(prompt=[caption], max_sequence_length=L, device=torch.device("cpu"), dtype=dtype)
    pooled = None
    with torch.no_grad():
        if preset.family == "hunyuanvideo":
            from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE as T

            embeds, pooled, mask = pipe.encode_prompt(**kwargs)
            n_tokens = len(pipe.tokenizer(T["template"].format(caption)).input_ids) - T["crop_start"]
            pooled = pooled[0]
        else:
            out = pipe.encode_prompt(do_classifier_free_guidance=False, **kwargs)
            embeds = out[0]
            if preset.family == "wan":
                from diffusers.pipelines.wan.pipeline_wan import prompt_clean

                n_tokens = len(pipe.tokenizer(prompt_clean(caption)).input_ids)
            elif preset.family == "ltx2":
                n_tokens = len(pipe.tokenizer(caption.strip()).input_ids)
            else:
                n_tokens = len(pipe.tokenizer(caption).input_ids)
    n_tokens = min(n_tokens, L)
    assert embeds.shape[:2] == (1, L)
    if preset.family == "cogvideox":  # unmasked T5: every position is conditioning, kept whole
        return embeds[0], L, pooled
    if preset.family == "ltx2":  # Gemma: left padding, the tokens are the last n positions
        assert pipe.tokenizer.padding_side == "left"
        emb, pad = embeds[0, L - n_tokens :], embeds[0, : L - n_tokens]
    else:
        emb, pad = embeds[0, :n_tokens], embeds[0, n_tokens:]
    if preset.family == "wan":  # WanPipeline zero-fills after the tokens itself
        assert torch.count_nonzero(pad) == 0
    return emb, n_tokens, pooled


def run_stage(stage: TextEncodeStage, captions: list[str]) -> dict[str, np.ndarray]:
    batch = {
        "caption_id": np.array([f"id{i}" for i in range(len(captions))]),
        "caption": np.array(captions, dtype=object),
    }
    return stage(batch)


def row(out: dict[str, np.ndarray], i: int) -> dict:
    return {k: v[i] for k, v in out.items()}


@pytest.mark.parametrize("name", TINY_TEXT)
def test_stage_matches_encode_prompt(tiny_home, name):
    preset = get_preset(name)
    stage = TextEncodeStage(name, device="cpu", batch_size=3, **STACKED)  # 5 rows -> more than one encoder call
    assert stage.dtype_name == "float32" and stage.encoder_name == text_encoder_name(preset, True)
    assert (stage.encoder_name == preset.text_encoder_name) == (preset.family != "ltx2")
    out = run_stage(stage, CAPTIONS)
    n = len(CAPTIONS)
    expected_cols = {"caption_id", "caption", "embedding_bytes", "embedding_shape", "embedding_dtype", "length"}
    if preset.family == "hunyuanvideo":
        expected_cols |= {"pooled_embedding_bytes", "pooled_embedding_shape", "pooled_embedding_dtype"}
    assert expected_cols <= set(out) and "error" not in out
    for col in expected_cols:
        assert len(out[col]) == n and all(v is not None for v in out[col]), col
    assert list(out["caption_id"]) == [f"id{i}" for i in range(n)]

    pipe = fresh_pipeline(name)
    lengths = []
    for i, caption in enumerate(CAPTIONS):
        r = row(out, i)
        stored = from_columns(r, "embedding")
        want, n_tokens, pooled = oracle(pipe, preset, caption, torch.float32)
        assert r["embedding_dtype"] == "float32"
        assert int(r["length"]) == n_tokens == stored.shape[0], caption
        if preset.family != "cogvideox":
            assert n_tokens < preset.max_sequence_length  # padding positions were dropped
        assert list(r["embedding_shape"]) == [n_tokens, want.shape[1]]
        torch.testing.assert_close(stored, want)
        if pooled is not None:
            torch.testing.assert_close(from_columns(r, "pooled_embedding"), pooled)
        assert torch.isfinite(stored).all()
        lengths.append(n_tokens)
    if preset.family != "cogvideox":
        assert len(set(lengths)) >= 3, lengths  # captions of different lengths
    torch.testing.assert_close(from_columns(row(out, 0), "embedding"), from_columns(row(out, 4), "embedding"))


def test_ltx2_embedding_is_all_gemma_layers_left_padded(tiny_home):
    """LTX-2 stores Gemma's hidden states of every layer, stacked per token, taken from the
    right end of the left-padded sequence."""
    preset = get_preset("tiny-ltx2")
    stage = TextEncodeStage("tiny-ltx2", device="cpu", **STACKED)
    assert stage.pipe.connectors is None  # not needed for the stacked form, so not loaded
    te = stage.pipe.text_encoder
    layers = te.config.text_config.num_hidden_layers
    (emb, length, extras), = encode_captions(stage.pipe, preset, ["A cat."], "cpu", torch.float32, stacked_hidden_states=True)
    assert emb.shape == (length, te.config.text_config.hidden_size * (layers + 1)) and extras == {}
    # the first stored position is <bos>, at index L - length of the padded input
    ids = stage.pipe.tokenizer(["A cat."], padding="max_length", max_length=preset.max_sequence_length).input_ids[0]
    assert ids[preset.max_sequence_length - length] == stage.pipe.tokenizer.bos_token_id
    assert set(ids[: preset.max_sequence_length - length]) == {stage.pipe.tokenizer.pad_token_id}


def test_truncated_caption_has_max_length(tiny_home):
    preset = get_preset("tiny-ltx-video")  # 128 tokens
    long_caption = " ".join(["a red car drives along the road"] * 40)
    out = run_stage(TextEncodeStage("tiny-ltx-video", device="cpu"), [long_caption])
    assert int(out["length"][0]) == preset.max_sequence_length
    want, n_tokens, _ = oracle(fresh_pipeline("tiny-ltx-video"), preset, long_caption, torch.float32)
    torch.testing.assert_close(from_columns(row(out, 0), "embedding"), want)


@pytest.mark.parametrize("name", ["tiny-wan2.1", "tiny-ltx2"])
def test_bfloat16_round_trip(tiny_home, name):
    preset = get_preset(name)
    stage = TextEncodeStage(name, device="cpu", dtype="bfloat16", **STACKED)
    assert stage.pipe.text_encoder.dtype == torch.bfloat16
    out = run_stage(stage, CAPTIONS[:3])
    pipe = fresh_pipeline(name, torch.bfloat16)
    for i, caption in enumerate(CAPTIONS[:3]):
        r = row(out, i)
        assert r["embedding_dtype"] == "bfloat16"
        stored = from_columns(r, "embedding")
        assert stored.dtype == torch.bfloat16
        want, n_tokens, _ = oracle(pipe, preset, caption, torch.bfloat16)
        assert want.dtype == torch.bfloat16 and int(r["length"]) == n_tokens
        torch.testing.assert_close(stored, want)


def test_unknown_dtype_is_refused(tiny_home):
    with pytest.raises(ValueError, match="bfloat16"):
        TextEncodeStage("tiny", device="cpu", dtype="int8")


def test_bad_rows_become_error_rows(tiny_home):
    stage = TextEncodeStage("tiny", device="cpu")
    batch = {
        "caption_id": np.array(["a", "b", "c"], dtype=object),
        "caption": np.array(["A cat.", None, "A dog."], dtype=object),
        "extra": np.array([1, 2, 3]),  # manifest columns pass through untouched
        "error": np.array([None, None, "decode failed"], dtype=object),
        "error_stage": np.array([None, None, "prepare"], dtype=object),
    }
    out = stage(batch)
    assert list(out["extra"]) == [1, 2, 3]
    assert out["error"][0] is None and out["embedding_bytes"][0] is not None and out["length"][0] == 4
    assert out["error"][1] == "missing caption" and out["error_stage"][1] == "encode_text"
    assert out["error"][2] == "decode failed" and out["error_stage"][2] == "prepare"
    for col in ("embedding_bytes", "embedding_shape", "embedding_dtype", "length"):
        assert len(out[col]) == 3 and out[col][1] is None and out[col][2] is None


def test_resources_and_defaults(tiny_home):
    assert TextEncodeStage.resources.num_gpus == 1 and TextEncodeStage.resources.num_cpus == 1
    stage = TextEncodeStage("tiny")
    assert stage.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert stage.dtype_name == ("bfloat16" if torch.cuda.is_available() else "float32")


def test_captions_longer_than_the_encoder_keeps_are_counted():
    """encode_prompt cuts a caption at max_sequence_length without a word; the stage marks each
    such caption so run.json can count them (`captions_truncated`, issue 11)."""
    preset = get_preset("tiny-ltx-video")  # keeps 128 tokens
    stage = TextEncodeStage("tiny-ltx-video", dtype="float32", device="cpu")
    long = " ".join(f"word{i}" for i in range(400))
    batch = {"caption_id": np.array(["a", "b", "c"], dtype=object), "caption": np.array(["A short caption.", long, long], dtype=object)}
    out = stage(batch)
    assert list(out["_count_captions_truncated"]) == [0, 1, 1]
    assert len(stage.pipe.tokenizer(long)["input_ids"]) > preset.max_sequence_length


def test_a_nan_embedding_becomes_an_error_row_not_a_stored_tensor(tiny_home, monkeypatch):
    stage = TextEncodeStage("tiny", device="cpu")
    real = stage._encode

    def overflowing(texts):
        out = real(texts)
        return [(emb.fill_(float("inf")) if t == "Overflows." else emb, n, extras) for t, (emb, n, extras) in zip(texts, out)]

    monkeypatch.setattr(stage, "_encode", overflowing)
    out = stage({"caption_id": np.array(["a", "b"], dtype=object), "caption": np.array(["Fine.", "Overflows."], dtype=object)})
    assert out["error"][0] is None and out["embedding_bytes"][0] is not None
    assert out["error_stage"][1] == "encode_text" and "NaN or inf" in out["error"][1] and out["embedding_bytes"][1] is None


@pytest.mark.parametrize("model", ["wan2.1", "ltx-video", "cogvideox", "ltx2", "tiny-wan2.1"])
def test_float16_is_refused_for_encoders_that_overflow_in_it(model):
    from latentforge.config import ConfigError, load_config

    settings = dict(input="in", output="out", model=model, buckets="512x512x9")
    with pytest.raises(ConfigError, match="float16 overflows"):
        load_config(None, ["encode_text.dtype=float16"], **settings)
    assert load_config(None, ["encode_text.dtype=float16", "encode_text.enabled=false"], **settings)
    assert load_config(None, ["encode_text.dtype=float16"], input="in", output="out", model="hunyuanvideo").encode_text.dtype == "float16"


def test_a_text_encoder_call_that_never_returns_fails_its_rows_then_restarts_the_actor(tiny_home, monkeypatch):
    import threading

    from latentforge.operators import time_limit

    stage = TextEncodeStage("tiny", device="cpu", batch_size=1, call_time_limit_s=0.5)
    real, release = stage._encode, threading.Event()
    monkeypatch.setattr(stage, "_encode", lambda texts: (release.wait(60) if "Hangs." in texts else None, real(texts))[1])
    out = stage({"caption_id": np.array(["a", "b", "c"], dtype=object), "caption": np.array(["Fine.", "Hangs.", "After."], dtype=object)})
    release.set()
    assert out["error"][0] is None and out["embedding_bytes"][0] is not None
    assert "did not return" in out["error"][1] and "did not return" in out["error"][2]  # nothing after the hung call
    exits = []
    monkeypatch.setattr(time_limit.os, "_exit", lambda code: exits.append(code) or (_ for _ in ()).throw(SystemExit(code)))
    with pytest.raises(SystemExit):
        stage({"caption_id": np.array(["d"], dtype=object), "caption": np.array(["Next."], dtype=object)})
    assert exits == [time_limit.STUCK_EXIT_CODE]
