"""Captioning without Ray: prompts, frame sampling, the tiny VLM twin through the real
processor/chat-template/generate path (with an oracle), quantisation errors, the manifest
writer and the ChronoEdit pair helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from latentforge.captioner_models import (
    captioner_root,
    detect_family,
    family_from_name,
    load_captioner,
)
from latentforge.config import ConfigError, load_config
from latentforge.formats.caption_manifest import manifest_bytes, manifest_rows
from latentforge.formats.manifests import read_manifest
from latentforge.models.placement import quantization_config
from latentforge.operators.captioning import (
    CaptionOptions,
    caption_prompt,
    clean_output,
    fit_pixels,
    load_audio_span,
    prepare_caption_input,
    sample_frame_indices,
)
from latentforge.operators.captioner import TransformersCaptioner
from latentforge.operators.probe import probe
from latentforge.sample_media import make_image, make_video
from latentforge.tiny.captioners import QWEN_VL_CHAT_TEMPLATE

TINY = "tiny-qwen2.5-vl"


# ---------------------------------------------------------------------------------------------
# Prompts and cleanup


def test_default_prompt_covers_the_aspects_and_forbids_openers():
    p = caption_prompt("video")
    for word in ("chronological", "shot type", "camera", "subjects", "setting", "lighting", "on-screen text", "The video shows"):
        assert word in p
    assert "audio" not in p.lower()
    heard = caption_prompt("video", audio=True)
    assert "speech" in heard and "audio" in heard
    assert "image" in caption_prompt("image") and "speech" not in caption_prompt("image", audio=True)
    assert len(caption_prompt("video", "short")) < len(p) / 2
    assert caption_prompt("video", custom="Say what {media} this is.\n") == "Say what video this is."
    with pytest.raises(ValueError, match="expected one of default, short"):
        caption_prompt("video", "long")


def test_edit_prompts():
    short = caption_prompt("edit", task="edit")
    cot = caption_prompt("edit", task="edit", cot=True)
    assert "first image" in short and "instruction" in short
    assert "80 to 100 words" in cot and "stay the same" in cot


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The video shows a cat on a mat.", "A cat on a mat."),
        ('  "In this clip, a dog   runs."  ', "A dog runs."),
        ("<think>a long chain of thought</think>\nA red car drives.", "A red car drives."),
        ("a \x04car\x00", "A car"),
        ("   ", ""),
        ("", ""),
    ],
)
def test_clean_output(raw, expected):
    assert clean_output(raw) == expected


# ---------------------------------------------------------------------------------------------
# Frames


@pytest.mark.parametrize(
    "size, budget, expected",
    [((160, 96), 100000, (160, 96)), ((1920, 1080), 640 * 360, (640, 360)), ((1080, 1920), 640 * 360, (360, 640)), ((300, 100), 4096, (110, 36))],
)
def test_fit_pixels(size, budget, expected):
    w, h = fit_pixels(*size, budget)
    assert (w, h) == expected and w * h <= budget


def test_sample_frame_indices():
    # 10 s at 24 fps, 2 fps -> 20 frames, every 12th
    idx, rate = sample_frame_indices(0, 240, 24.0, 2.0, 32)
    assert idx == list(range(0, 240, 12)) and rate == pytest.approx(2.0)
    # capped: 60 s -> 120 frames wanted, 32 spread evenly over the span, rate lowered
    idx, rate = sample_frame_indices(100, 1540, 24.0, 2.0, 32)
    assert len(idx) == 32 and idx[0] == 100 and idx[-1] < 1540 and rate == pytest.approx(32 / 60)
    # shorter than one sampling step: one frame
    assert sample_frame_indices(5, 8, 24.0, 2.0, 32)[0] == [5]
    assert sample_frame_indices(5, 5, 24.0, 2.0, 32) == ([], 0.0)


def test_prepare_caption_input_decides_and_samples(tmp_path):
    video = probe({"uri": str(make_video(tmp_path / "v.mp4", 320, 180, 48, 24)), "media_type": "video", "caption": None})
    image = probe({"uri": str(make_image(tmp_path / "i.png", 200, 100)), "media_type": "image", "caption": None})
    captioned = {**video, "caption": "Already there."}

    out = prepare_caption_input(video, fps=2, max_frames=32, max_pixels=64 * 36)
    assert out["_caption_todo"] and out["_caption_kind"] == "video"
    assert out["_caption_frames"].shape == (4, 36, 64, 3) and out["_caption_fps"] == pytest.approx(2.0)
    assert prepare_caption_input(video, max_frames=3, max_pixels=64 * 36)["_caption_frames"].shape[0] == 3
    img = prepare_caption_input(image, max_pixels=50 * 25)
    assert img["_caption_kind"] == "image" and img["_caption_frames"].shape == (1, 25, 50, 3)

    kept = prepare_caption_input(captioned)
    assert not kept["_caption_todo"] and kept["caption"] == "Already there." and kept["_caption_frames"].size == 0
    assert prepare_caption_input(captioned, override=True)["_caption_todo"]
    cached = prepare_caption_input(video, cached={out["_caption_key"]: "From an earlier run."})
    assert not cached["_caption_todo"] and cached["_caption_cached"] and cached["caption"] == "From an earlier run."

    edit = prepare_caption_input({**video, "start_frame": 10, "end_frame": 30}, task="edit", max_pixels=64 * 36)
    assert edit["_caption_kind"] == "edit" and edit["_caption_frames"].shape == (2, 36, 64, 3)
    bad = prepare_caption_input({**video, "uri": str(tmp_path / "gone.mp4")})
    assert bad["error_stage"] == "caption" and "caption frames failed" in bad["error"]


def test_audio_span_is_16khz_mono(tmp_path):
    path = make_video(tmp_path / "a.mp4", 96, 64, 48, 24, audio=True)
    audio = load_audio_span(str(path), 0.5, 1.5)
    assert audio.dtype == np.float32 and abs(len(audio) - 16000) < 400
    assert np.abs(audio).max() > 0.05  # the 440 Hz tone
    assert load_audio_span(str(make_video(tmp_path / "silent.mp4", 96, 64, 12, 24)), 0, 0.5).size == 0


# ---------------------------------------------------------------------------------------------
# The tiny VLM twin and the transformers captioner


def test_tiny_twin_is_the_real_classes_loaded_with_from_pretrained():
    import transformers

    root = captioner_root(TINY)
    assert Path(root, "model.safetensors").exists() and Path(root, "chat_template.jinja").exists()
    assert detect_family(root) == "qwen2.5-vl" and family_from_name("Qwen/Qwen3-VL-8B-Instruct") == "qwen3-vl"
    assert family_from_name("Qwen/Qwen2.5-Omni-7B") == "qwen2.5-omni"
    processor, model = load_captioner(root, "qwen2.5-vl")
    assert type(model) is transformers.Qwen2_5_VLForConditionalGeneration
    assert type(processor) is transformers.Qwen2_5_VLProcessor
    assert type(processor.tokenizer).__name__ == "Qwen2Tokenizer"
    assert type(processor.video_processor).__name__ == "Qwen2VLVideoProcessor"
    assert processor.chat_template == QWEN_VL_CHAT_TEMPLATE
    tokens = processor.tokenizer.tokenize("<|im_start|>user\nA red car drives.<|im_end|>")
    assert tokens[0] == "<|im_start|>" and tokens[-1] == "<|im_end|>" and "Ġred" in tokens


def _item(frames, fps=2.0, kind="video"):
    return {"kind": kind, "frames": frames, "fps": fps, "uri": "x"}


def test_captioner_matches_processor_and_generate_run_by_hand():
    """Oracle: the actor's caption equals the chat template -> processor -> generate -> decode
    path written out by hand, and different videos in one batch keep their own results."""
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 255, (4, 56, 84, 3), dtype=np.uint8), rng.integers(0, 255, (2, 84, 56, 3), dtype=np.uint8)]
    options = CaptionOptions(model=TINY, max_new_tokens=6, max_pixels=84 * 56)
    actor = TransformersCaptioner(options, device="cpu")
    got = actor.caption_rows([_item(c) for c in clips])

    processor, model = load_captioner(captioner_root(TINY), "qwen2.5-vl")
    for clip, text in zip(clips, got):
        messages = [{"role": "user", "content": [{"type": "video", "video": clip}, {"type": "text", "text": caption_prompt("video")}]}]
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert prompt.startswith("<|im_start|>system\n") and "<|vision_start|><|video_pad|><|vision_end|>" in prompt
        inputs = processor(
            text=[prompt],
            videos=[clip],
            video_metadata=[{"total_num_frames": len(clip), "fps": 2.0, "frames_indices": list(range(len(clip)))}],
            do_sample_frames=False,
            return_tensors="pt",
        )
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        expected = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
        assert text == expected and text.strip()


def test_captioner_batch_images_edits_and_errors():
    rng = np.random.default_rng(1)
    actor = TransformersCaptioner(CaptionOptions(model=TINY, max_new_tokens=4, task="describe"), device="cpu")
    image = _item(rng.integers(0, 255, (1, 40, 60, 3), dtype=np.uint8), kind="image")
    edit = _item(rng.integers(0, 255, (2, 40, 60, 3), dtype=np.uint8), kind="edit")
    video = _item(rng.integers(0, 255, (3, 40, 60, 3), dtype=np.uint8))
    broken = _item(np.zeros((0, 0, 0, 3), dtype=np.uint8))  # no frames: the model call fails
    results = actor.caption_rows([image, edit, video, broken])
    assert all(isinstance(r, str) and r.strip() for r in results[:3])
    assert isinstance(results[3], Exception)

    # the batch interface: rows without a todo flag pass untouched, failures become error rows
    n = 3
    frames = np.empty(n, dtype=object)
    frames[:] = [video["frames"], np.zeros((0, 0, 0, 3), np.uint8), np.zeros((0, 0, 0, 3), np.uint8)]
    batch = {
        "uri": np.array(["a.mp4", "b.mp4", "c.mp4"], dtype=object),
        "caption": np.array([None, "Kept.", None], dtype=object),
        "error": np.array([None, None, None], dtype=object),
        "error_stage": np.array([None, None, None], dtype=object),
        "_caption_todo": np.array([True, False, True]),
        "_caption_kind": np.array(["video", None, "video"], dtype=object),
        "_caption_fps": np.array([2.0, 0.0, 2.0]),
        "_caption_frames": frames,
    }
    out = actor(batch)
    assert "_caption_frames" not in out
    assert isinstance(out["caption"][0], str) and out["_caption_generated"].tolist() == [True, False, False]
    assert out["caption"][1] == "Kept." and out["error"][1] is None
    assert out["error_stage"][2] == "caption" and out["error"][2].startswith("c.mp4: captioning failed")


@pytest.mark.parametrize("name, family, cls", [("tiny-qwen2-vl", "qwen2-vl", "Qwen2VLForConditionalGeneration"), ("tiny-qwen3-vl", "qwen3-vl", "Qwen3VLForConditionalGeneration")])
def test_other_qwen_families(name, family, cls):
    rng = np.random.default_rng(2)
    actor = TransformersCaptioner(CaptionOptions(model=name, max_new_tokens=4, max_pixels=64 * 48), device="cpu")
    assert actor.family == family and type(actor.model).__name__ == cls
    video = _item(rng.integers(0, 255, (4, 48, 64, 3), dtype=np.uint8), fps=1.0)
    results = actor.caption_rows([video, _item(video["frames"][:1], kind="image"), _item(video["frames"][:2], kind="edit")])
    assert all(isinstance(r, str) and r.strip() for r in results)
    if family == "qwen3-vl":  # Qwen3-VL writes each frame group's time, from the rate we pass
        prompt = actor.processor.batch_decode(actor._inputs([video])["input_ids"])[0]
        assert "<0.5 seconds>" in prompt and "<2.5 seconds>" in prompt


def test_omni_hears_the_audio_unless_no_audio(tmp_path):
    """The tiny Qwen2.5-Omni (real classes, talker off): audio goes in interleaved with the
    video frames, and the prompt asks about it; `no_audio` leaves both out."""
    import transformers

    row = probe({"uri": str(make_video(tmp_path / "a.mp4", 96, 64, 48, 24, audio=True)), "media_type": "video", "caption": None})
    prepared = prepare_caption_input(row, fps=2, max_pixels=84 * 56, with_audio=True)
    assert prepared["_caption_audio"].dtype == np.float32 and abs(len(prepared["_caption_audio"]) - 32000) < 400
    item = {"kind": "video", "frames": prepared["_caption_frames"], "fps": prepared["_caption_fps"], "uri": "a", "audio": prepared["_caption_audio"]}

    hearing = TransformersCaptioner(CaptionOptions(model="tiny-qwen2.5-omni", max_new_tokens=4), device="cpu")
    assert hearing.family == "qwen2.5-omni" and hearing.hears_audio
    assert isinstance(hearing.model, transformers.Qwen2_5OmniForConditionalGeneration) and not hearing.model.has_talker
    inputs = hearing._inputs([item])
    assert "input_features" in inputs and "speech" in hearing._messages(item)[0]["content"][-1]["text"]
    text = hearing.processor.batch_decode(inputs["input_ids"])[0]
    assert "<|audio_bos|>" in text and "<|AUDIO|>" in text and "<|VIDEO|>" in text
    [caption] = hearing.caption_rows([item])
    assert isinstance(caption, str) and caption.strip()

    deaf = TransformersCaptioner(CaptionOptions(model="tiny-qwen2.5-omni", max_new_tokens=4, no_audio=True), device="cpu")
    inputs = deaf._inputs([item])
    assert "input_features" not in inputs and "<|AUDIO|>" not in deaf.processor.batch_decode(inputs["input_ids"])[0]
    assert "speech" not in deaf._messages(item)[0]["content"][-1]["text"]
    assert isinstance(deaf.caption_rows([item])[0], str)


def test_quantization_needs_cuda_and_bitsandbytes(monkeypatch):
    assert quantization_config(None, torch.bfloat16, "caption.use_8bit") is None
    with pytest.raises(ValueError, match="choose one"):
        load_captioner("unused", "qwen2.5-vl", use_8bit=True, use_4bit=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="caption.use_8bit: bitsandbytes quantization needs a CUDA GPU"):
        quantization_config(8, torch.bfloat16, "caption.use_8bit")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "bitsandbytes" else real_find_spec(name, *a, **k))
    with pytest.raises(RuntimeError, match="encode_text.quantization: the bitsandbytes package is not installed"):
        quantization_config(4, torch.bfloat16, "encode_text.quantization")
    # installed: a BitsAndBytesConfig (transformers imports bitsandbytes itself when loading)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: object() if name == "bitsandbytes" else real_find_spec(name, *a, **k))
    cfg = quantization_config(4, torch.float16, "caption.use_4bit")
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4" and cfg.bnb_4bit_compute_dtype == torch.float16
    assert quantization_config(8, torch.bfloat16, "caption.use_8bit").load_in_8bit


def test_models_load_onto_one_gpu_or_spread_over_several(monkeypatch):
    """A model actor with one GPU loads onto it; with several (num_gpus > 1, so CUDA sees
    several) accelerate spreads it ("auto") and the model is not moved after loading."""
    from latentforge.models.placement import device_map_for, load_kwargs, needs_move

    assert device_map_for("cpu") is None and needs_move(load_kwargs("cpu", torch.float32))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device_map_for("cuda") == "cuda"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    kwargs = load_kwargs("cuda", torch.bfloat16)
    assert kwargs == {"dtype": torch.bfloat16, "device_map": "auto"} and not needs_move(kwargs)


def test_tiny_captioners_share_the_model_twins_atomic_build(tmp_path, monkeypatch):
    """Tiny captioners are built by latentforge.tiny.once.build_folder_once: under the same lock as
    the VAE / text twins (torch's RNG is process-global), in a temp folder renamed into place; a
    lost race uses the winner's folder, and a twin of another recipe version is rebuilt."""
    import json
    import os
    import threading

    from latentforge import captioner_models
    from latentforge.tiny import once

    monkeypatch.setenv("LATENTFORGE_HOME", str(tmp_path))
    final = Path(captioner_models.tiny_captioner_dir(TINY))
    builds = []

    def fake_build(name, dest):
        assert once.BUILD_LOCK.locked()  # no model twin draws from torch's RNG meanwhile
        assert Path(dest).parent == final.parent and Path(dest).name.startswith(f".{TINY}.tmp-")
        builds.append(name)
        (Path(dest) / captioner_models.TINY_CAPTIONER_MARKER).write_text(json.dumps({"recipe_version": captioner_models.TINY_CAPTIONER_RECIPE_VERSION}))

    monkeypatch.setattr(captioner_models, "build_tiny_captioner", fake_build)
    roots = []
    threads = [threading.Thread(target=lambda: roots.append(captioner_root(TINY))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert roots == [str(final)] * 3 and builds == [TINY]  # built once
    assert [p.name for p in final.parent.iterdir()] == [TINY]

    # another recipe version: rebuilt in place, the old folder gone
    (final / captioner_models.TINY_CAPTIONER_MARKER).write_text(json.dumps({"recipe_version": -1}))
    (final / "leftover.txt").write_text("old")
    assert captioner_root(TINY) == str(final) and builds == [TINY, TINY]
    assert not (final / "leftover.txt").exists() and [p.name for p in final.parent.iterdir()] == [TINY]

    # another process installs the folder between our build and our rename: ours is dropped
    (final / captioner_models.TINY_CAPTIONER_MARKER).write_text(json.dumps({"recipe_version": -1}))

    def build_and_lose(name, dest):
        fake_build(name, dest)
        other = tmp_path / "other"
        other.mkdir()
        (other / captioner_models.TINY_CAPTIONER_MARKER).write_text(json.dumps({"recipe_version": captioner_models.TINY_CAPTIONER_RECIPE_VERSION}))
        (other / "winner.txt").write_text("theirs")
        os.rename(final, tmp_path / "gone")
        os.rename(other, final)

    monkeypatch.setattr(captioner_models, "build_tiny_captioner", build_and_lose)
    assert captioner_root(TINY) == str(final) and (final / "winner.txt").exists()
    assert [p.name for p in final.parent.iterdir()] == [TINY]  # our temp folder is gone


# ---------------------------------------------------------------------------------------------
# Config


def test_caption_config_errors_name_the_field(tmp_path):
    base = {"input": "in/", "output": "out/", "model": "tiny", "buckets": "64x64x9"}
    cfg = load_config(None, ["caption.enabled=true", "caption.fps=4", "caption.model=tiny-qwen2.5-vl"], **base)
    assert cfg.caption.enabled and cfg.caption.fps == 4.0 and cfg.caption.model == "tiny-qwen2.5-vl"
    cases = [
        (["caption.backend=claude"], "caption.backend: Input should be 'transformers' or 'openai'"),
        (["caption.prompt=long"], "caption.prompt: Input should be 'default' or 'short'"),
        (["caption.family=llava"], "caption.family: Input should be 'auto', 'qwen2-vl', 'qwen2.5-vl', 'qwen3-vl' or 'qwen2.5-omni'"),
        (["caption.fps=0"], "caption.fps: Input should be greater than 0"),
        (["caption.use_8bit=true", "caption.use_4bit=true"], "caption.use_8bit and caption.use_4bit are both true"),
        (["caption.backend=openai"], "caption.base_url is required when caption.backend is 'openai'"),
        ([f"caption.prompt_file={tmp_path / 'nope.txt'}"], "caption.prompt_file: file not found"),
        (["caption.colour=red"], "caption.colour: unknown key"),
        (["caption.manifest=out/captions.txt"], "caption.manifest: 'out/captions.txt' must end with .jsonl, .json or .csv"),
    ]
    for overrides, expected in cases:
        with pytest.raises(ConfigError) as err:
            load_config(None, overrides, **base)
        assert expected in str(err.value), (overrides, str(err.value))


# ---------------------------------------------------------------------------------------------
# Manifest writer


def _record(key, uri, caption, order, start=0, end=10, frames=10, media="video", span=False, **columns):
    return {
        "key": key, "order": [order, start], "uri": uri, "media_type": media, "caption": caption,
        "start_frame": start, "end_frame": end, "fps": 24.0, "span": span, "generated": True, "columns": columns,
    }


def _clip_records(tmp_path):
    """Two spans of one video, a whole clip with a list column, an image outside the folder."""
    return [
        _record("k2", str(tmp_path / "clips/b.mp4"), "Second, with a comma.", 1, 12, 40, span=True, scene_index=1),
        _record("k1", str(tmp_path / "clips/b.mp4"), "First.", 1, 0, 12, span=True, scene_index=0),
        _record("k0", str(tmp_path / "clips/a.mp4"), 'Quoted "text".', 0, tags=["x", "y"]),
        _record("k3", "/elsewhere/still.png", "A still.", 2, 0, 1, media="image"),
    ]


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".csv"])
def test_manifest_formats_read_back(tmp_path, ext):
    (tmp_path / "clips").mkdir()
    records = _clip_records(tmp_path)
    url = str(tmp_path / f"captions{ext}")
    rows = manifest_rows(records, url)
    assert [r["caption"] for r in rows] == ['Quoted "text".', "First.", "Second, with a comma.", "A still."]
    assert rows[0]["media_path"] == "clips/a.mp4" and rows[3]["media_path"] == "/elsewhere/still.png"
    assert rows[1]["start_frame"] == 0 and rows[2]["end_frame"] == 40 and rows[3]["start_frame"] == 0
    Path(url).write_bytes(manifest_bytes(rows, url))
    back = read_manifest(url)
    assert [Path(r["uri"]) for r in back] == [tmp_path / "clips/a.mp4", tmp_path / "clips/b.mp4", tmp_path / "clips/b.mp4", Path("/elsewhere/still.png")]
    assert [r["caption"] for r in back] == [r["caption"] for r in rows]
    assert all(r["error"] is None for r in back)
    assert int(back[2]["start_frame"]) == 12 and int(back[2]["end_frame"]) == 40
    # no spans: no span columns
    plain = manifest_rows([records[2]], url)
    assert set(plain[0]) == {"caption", "media_path", "tags"}


@pytest.mark.parametrize("name", ["captions.jsonl", "captions.json", "captions.csv", "metadata.csv"])
def test_manifest_streamed_from_parts_equals_the_whole_one(tmp_path, name):
    """The caption pipeline's write tasks leave sorted parts; merging them streams the same bytes
    as writing all records at once (the driver never holds them), a retried part's repeats once."""
    from latentforge.formats.caption_manifest import merge_manifest, write_manifest, write_manifest_part

    (tmp_path / "clips").mkdir()
    records = [*_clip_records(tmp_path), _record("k4", str(tmp_path / "clips/c.mp4"), "Third\nline.", 3, extra_column="only here")]
    whole = tmp_path / "whole" / name
    whole.parent.mkdir()
    assert write_manifest(str(whole), records) == 5
    parts = [write_manifest_part(str(tmp_path / "parts"), chunk) for chunk in (records[:2], records[2:], records[1:3])]
    urls = [u for p in parts for u in p["manifest_parts"]]
    streamed = tmp_path / "streamed" / name
    assert merge_manifest(str(streamed), urls, any(p["manifest_spans"] for p in parts), None, str(tmp_path / "parts")) == 5
    media_relative = lambda text: text.replace(str(tmp_path / "whole"), "").replace(str(tmp_path / "streamed"), "")  # noqa: E731
    assert media_relative(streamed.read_text()) == media_relative(whole.read_text())
    assert not (tmp_path / "parts").exists() and not list(streamed.parent.glob(".tmp-*"))


def test_chronoedit_pairs_to_videos_and_metadata(tmp_path):
    import av

    from latentforge.formats.chronoedit import main, make_chronoedit_dataset, read_pairs

    for i in range(3):
        make_image(tmp_path / f"in/{i}_before.png", 90, 60, seed=i)
        make_image(tmp_path / f"in/{i}_after.jpg", 90 if i else 45, 60 if i else 30, seed=i + 7)
    lines = ["before,after,prompt,key,source"]
    lines += [f"in/{i}_before.png,in/{i}_after.jpg,Make it {i},,web" for i in range(3)]
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    assert main([str(tmp_path / "pairs.csv"), str(tmp_path / "edits")]) == 0
    rows = read_manifest(str(tmp_path / "edits"))  # the chronoedit reader: metadata.csv wins
    assert [r["caption"] for r in rows] == ["Make it 0", "Make it 1", "Make it 2"]
    assert [r["key"] for r in rows] == ["0_before", "1_before", "2_before"] and rows[0]["source"] == "web"
    with av.open(rows[0]["uri"]) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    assert len(frames) == 2 and frames[1].shape == (60, 90, 3)  # the after image resized to the before's size
    from PIL import Image

    before = np.asarray(Image.open(tmp_path / "in/0_before.png").convert("RGB")).astype(int)
    assert np.abs(frames[0].astype(int) - before).mean() < 1.5  # qp 0, 4:4:4: lossless up to YUV rounding

    # without prompts: no metadata.csv, a dataset.jsonl for the caption pipeline instead
    pairs = [{**p, "prompt": None} for p in read_pairs(tmp_path / "pairs.csv")]
    result = make_chronoedit_dataset(pairs, tmp_path / "unlabelled")
    assert result["missing_prompts"] == 3 and "metadata" not in result
    todo = read_manifest(result["dataset"])
    assert all(r["caption"] is None and r["error"] is None for r in todo) and todo[0]["key"] == "0_before"
