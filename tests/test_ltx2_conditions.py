"""LTX-2 text conditions as the LTX-2 trainer stores them (issue 9).

The trainer's process_captions stores its text feature extractor's output, after the
normalisation and projection and before the connector transformers. In diffusers that extractor
is the first half of `LTX2TextConnectors.forward` (the pipeline's `connectors`): the oracle here
runs that whole forward on what `LTX2Pipeline.encode_prompt` returns (padded to 1024, the mask
with it) and takes what the forward hands to `video_connector` / `audio_connector`, i.e.
diffusers' own code end to end, on the padded batch; the stage computes it on each caption's
trimmed rows. The two agree only if the normalisation really looks at the valid tokens alone.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from latentforge.config import load_config
from latentforge.formats.tensors import from_columns
from latentforge.models import get_preset, model_root, text_encoder_name
from latentforge.operators.text import TextEncodeStage

CAPTIONS = [
    "A cat.",
    "A woman with long brown hair walks along the beach at sunset, the camera pans slowly to the right.",
    "A red car drives along a winding mountain road at sunset; the camera follows it from above.",
    "  A dog runs on the grass.  ",  # encode_prompt strips it
]


def _pipeline(root: str | Path, dtype: torch.dtype = torch.float32):
    """LTX2Pipeline.from_pretrained on a twin folder (null components passed as None): the
    connectors come from `connectors/` through diffusers' own loading."""
    import diffusers

    index = json.loads((Path(root) / "model_index.json").read_text())
    nulls = {k: None for k, v in index.items() if not k.startswith("_") and v == [None, None]}
    return diffusers.LTX2Pipeline.from_pretrained(str(root), dtype=dtype, **nulls)


def oracle(pipe, captions: list[str], dtype: torch.dtype = torch.float32):
    """Per caption: (video features [n, D], audio features [n, D_audio], encode_prompt's stacked
    states [n, C * layers]) on the caption's n tokens, from encode_prompt and the connectors'
    forward (the inputs of its two connector transformers, captured by pre-hooks)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(pipe.connectors, name).register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0]))
        for name in ("video_connector", "audio_connector")
    ]
    try:
        with torch.no_grad():
            embeds, mask, _, _ = pipe.encode_prompt(
                prompt=captions, do_classifier_free_guidance=False, max_sequence_length=1024, device=torch.device("cpu"), dtype=dtype
            )
            pipe.connectors(embeds, mask, padding_side=pipe.tokenizer.padding_side)
    finally:
        for h in hooks:
            h.remove()
    assert embeds.shape[1] == 1024 and pipe.tokenizer.padding_side == "left"
    out = []
    for i in range(len(captions)):
        keep = mask[i].bool()
        n = int(keep.sum())
        assert keep[-n:].all() and not keep[:-n].any()  # left padded: the tokens are the last n
        out.append((seen["video_connector"][i][keep], seen["audio_connector"][i][keep], embeds[i][keep]))
    return out


def _stage_rows(stage: TextEncodeStage, captions: list[str]) -> list[dict]:
    out = stage({"caption_id": np.array([f"id{i}" for i in range(len(captions))]), "caption": np.array(captions, dtype=object)})
    assert "error" not in out
    return [{k: v[i] for k, v in out.items()} for i in range(len(captions))]


def test_stored_embedding_is_the_connectors_projection_of_encode_prompt(tiny_home):
    """LTX-2.0 (the tiny twin): embedding_* = video_prompt_embeds = text_proj_in(per-layer norm)."""
    stage = TextEncodeStage("tiny-ltx2", device="cpu", batch_size=3)  # 4 captions -> two encoder calls
    connectors = stage.pipe.connectors
    assert type(connectors).__name__ == "LTX2TextConnectors" and not connectors.config.per_modality_projections
    assert stage.extra_columns == [] and stage.encoder_name == get_preset("tiny-ltx2").text_encoder_name
    rows = _stage_rows(stage, CAPTIONS)

    pipe = _pipeline(model_root("tiny-ltx2"))
    want = oracle(pipe, CAPTIONS)
    D = pipe.connectors.config.caption_channels  # LTX-2.0: text_proj_in projects to the caption width
    lengths = set()
    for r, (video, audio, stacked) in zip(rows, want):
        stored = from_columns(r, "embedding")
        assert "audio_embedding_bytes" not in r and torch.equal(audio, video)  # one projection serves both
        assert int(r["length"]) == stored.shape[0] == video.shape[0] and stored.shape[1] == D
        assert stacked.shape[1] == D * pipe.connectors.config.text_proj_in_factor  # what used to be stored
        torch.testing.assert_close(stored, video)
        # not the stacked states, nor their raw projection: the normalisation is applied
        raw = pipe.connectors.text_proj_in(stacked)
        assert (stored - raw).abs().max() > 1e-2
        lengths.add(stored.shape[0])
    assert len(lengths) >= 3  # captions of different lengths, padded together in the oracle


def test_bfloat16_features(tiny_home):
    stage = TextEncodeStage("tiny-ltx2", device="cpu", dtype="bfloat16")
    assert stage.pipe.connectors.dtype == torch.bfloat16
    rows = _stage_rows(stage, CAPTIONS[:2])
    want = oracle(_pipeline(model_root("tiny-ltx2"), torch.bfloat16), CAPTIONS[:2], torch.bfloat16)
    for r, (video, _, _) in zip(rows, want):
        assert r["embedding_dtype"] == "bfloat16"
        torch.testing.assert_close(from_columns(r, "embedding"), video)


def _ltx23_folder(tmp_path: Path) -> Path:
    """The tiny LTX-2 twin with LTX-2.3-style connectors: per-modality projections with bias into
    a video width and an audio width that differ from the caption width."""
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    root = tmp_path / "tiny-ltx2.3"
    shutil.copytree(model_root("tiny-ltx2"), root)
    shutil.rmtree(root / "connectors")
    gemma = json.loads((root / "text_encoder" / "config.json").read_text())["text_config"]
    torch.manual_seed(7)
    LTX2TextConnectors(
        caption_channels=gemma["hidden_size"],
        text_proj_in_factor=gemma["num_hidden_layers"] + 1,
        per_modality_projections=True,
        proj_bias=True,
        video_hidden_dim=64,
        video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=32,
        video_connector_num_layers=1,
        audio_hidden_dim=16,
        audio_connector_num_attention_heads=2,
        audio_connector_attention_head_dim=8,
        audio_connector_num_layers=1,
    ).save_pretrained(root / "connectors")
    return root


def test_ltx23_stores_video_and_audio_features(tiny_home, tmp_path):
    root = _ltx23_folder(tmp_path)
    stage = TextEncodeStage("tiny-ltx2", model_path=str(root), device="cpu")
    assert stage.pipe.connectors.config.per_modality_projections and stage.extra_columns == ["audio_embedding"]
    rows = _stage_rows(stage, CAPTIONS)
    want = oracle(_pipeline(root), CAPTIONS)
    for r, (video, audio, _) in zip(rows, want):
        n = int(r["length"])
        assert list(r["embedding_shape"]) == [n, 64] and list(r["audio_embedding_shape"]) == [n, 16]
        torch.testing.assert_close(from_columns(r, "embedding"), video)
        torch.testing.assert_close(from_columns(r, "audio_embedding"), audio)


def test_bytes_per_caption_drop_by_the_layer_factor(tiny_home):
    """Features [n, D] vs stacked states [n, hidden * (layers + 1)]: the same captions, the same
    dtype, so the bytes drop by hidden * (layers + 1) / D, read from the twin's configs."""
    features = TextEncodeStage("tiny-ltx2", device="cpu")
    stacked = TextEncodeStage("tiny-ltx2", device="cpu", ltx2_stacked_hidden_states=True)
    text_cfg = features.pipe.text_encoder.config.text_config
    D = features.pipe.connectors.config.caption_channels
    factor = text_cfg.hidden_size * (text_cfg.num_hidden_layers + 1) / D
    assert factor == 3  # tiny Gemma: 32 wide, 2 layers + embeddings -> 96 per token, projected to 32
    for f, s in zip(_stage_rows(features, CAPTIONS), _stage_rows(stacked, CAPTIONS)):
        assert f["length"] == s["length"]
        assert len(f["embedding_bytes"]) == int(f["length"]) * D * 4  # float32
        assert len(s["embedding_bytes"]) == len(f["embedding_bytes"]) * factor


def _real_sizes() -> dict[int, tuple[int, int]]:
    """bf16 bytes per caption of n tokens for the real LTX-2.0 (Gemma 3 12B): stacked hidden
    states vs the text features; widths from LTX2TextConnectors' defaults (Gemma 3 12B's)."""
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    params = inspect.signature(LTX2TextConnectors.__init__).parameters
    C, layers = params["caption_channels"].default, params["text_proj_in_factor"].default
    assert (C, layers) == (3840, 49)
    return {n: (n * C * layers * 2, n * C * 2) for n in (128, 256, 1024)}


def test_docs_state_the_computed_real_sizes():
    text = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    for n, (stacked, features) in _real_sizes().items():
        row = re.search(rf"^ *\| {n} \|[^\n]*$", text, re.M)
        assert row, f"docs/models.md: no size row for {n} tokens"
        assert f"{stacked:,}" in row.group(0) and f"{features:,}" in row.group(0), row.group(0)


def test_partition_name_and_stage_args_follow_the_option(tmp_path):
    from latentforge.pipelines import precompute

    preset = get_preset("ltx2")
    assert preset.text_encoder_name == "ltx2-gemma3-12b-1024-features"
    assert text_encoder_name(preset, True) == "ltx2-gemma3-12b-1024"  # the stacked form keeps the old name
    assert text_encoder_name(get_preset("wan2.1"), True) == "umt5-xxl-512"  # other families: no effect
    encode_text = next(s for s in precompute.TEXT if s.name == "encode_text")
    for stacked, name in ((False, "ltx2-gemma3-12b-1024-features"), (True, "ltx2-gemma3-12b-1024")):
        cfg = load_config(
            None, [f"encode_text.ltx2_stacked_hidden_states={str(stacked).lower()}"],
            input=str(tmp_path / "in.jsonl"), output=str(tmp_path / "out"), model="ltx2", buckets="64x64x9",
        )
        job = SimpleNamespace(cfg=cfg, state={})
        assert encode_text.args(job)["ltx2_stacked_hidden_states"] is stacked
        sink = precompute._embedding_sink_args(job)
        assert sink["table"] == f"embeddings/encoder={name}" and sink["metadata"]["text_encoder"] == name
        assert ("video_prompt_embeds" in sink["metadata"]["layout"]) is not stacked


def test_an_ltx2_twin_without_connectors_is_rebuilt_alone(tmp_path, monkeypatch):
    from latentforge import models

    monkeypatch.setenv("LATENTFORGE_HOME", str(tmp_path))
    ltx2, wan = Path(model_root("tiny-ltx2")), Path(model_root("tiny-wan2.1"))
    index = json.loads((ltx2 / "model_index.json").read_text())
    assert index["connectors"] == ["ltx2", "LTX2TextConnectors"]
    shutil.rmtree(ltx2 / "connectors")  # a twin cached before connectors were in its recipe
    wan_marker = (wan / models.TINY_MARKER).stat().st_mtime_ns
    assert Path(model_root("tiny-ltx2")) == ltx2 and (ltx2 / "connectors").is_dir()
    assert Path(model_root("tiny-wan2.1")) == wan and (wan / models.TINY_MARKER).stat().st_mtime_ns == wan_marker
