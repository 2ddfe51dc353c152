"""Model presets and the tiny twins: names, bucket rules, offline builds, real classes, shapes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from latentforge import models
from latentforge.buckets import BucketError, parse_buckets, validate_buckets
from latentforge.models import PRESETS, get_preset, load_text_pipeline, load_vae, model_root, vae_normalization

REAL = ["ltx2", "ltx-video", "wan2.1", "wan2.2", "cogvideox", "hunyuanvideo"]
TINY = [f"tiny-{n}" for n in REAL]




def test_every_preset_resolves():
    assert set(PRESETS) == set(REAL) | set(TINY) | {"tiny"}
    for name in PRESETS:
        p = get_preset(name)
        assert p.family in {"wan", "ltx2", "ltx-video", "cogvideox", "hunyuanvideo"}
        assert p.max_sequence_length > 0 and p.text_encoder_name
        # A bucket that satisfies the rules always maps to a whole latent.
        assert p.spatial_multiple % p.spatial_compression == 0
        assert p.frame_remainder == 1 and p.frame_modulus % p.temporal_compression == 0
        assert p.tiny == name.startswith("tiny")
    for name in REAL:
        real, tiny = get_preset(name), get_preset(f"tiny-{name}")
        for field in ("family", "vae_class", "pipeline_class", "max_sequence_length", "spatial_multiple",
                      "frame_modulus", "frame_remainder", "spatial_compression", "temporal_compression"):
            assert getattr(real, field) == getattr(tiny, field), (name, field)
        assert not real.repo.startswith("tiny")
        assert tiny.text_encoder_name != real.text_encoder_name


def test_preset_constraints():
    table = {  # name: (W/H multiple, F modulus, F remainder, spatial, temporal, max tokens)
        "ltx2": (32, 8, 1, 32, 8, 1024),
        "ltx-video": (32, 8, 1, 32, 8, 128),
        "wan2.1": (16, 4, 1, 8, 4, 512),
        "wan2.2": (32, 4, 1, 16, 4, 512),
        "cogvideox": (16, 8, 1, 8, 4, 226),  # F % 8 == 1: what CogVideo's finetune accepts
        "hunyuanvideo": (16, 4, 1, 8, 4, 256),
    }
    for name, expected in table.items():
        p = get_preset(name)
        got = (p.spatial_multiple, p.frame_modulus, p.frame_remainder, p.spatial_compression,
               p.temporal_compression, p.max_sequence_length)
        assert got == expected, name
    def problems(name, bucket):
        p = get_preset(name)
        try:
            validate_buckets(parse_buckets(bucket), p.spatial_multiple, p.frame_modulus, p.frame_remainder, name)
        except BucketError as e:
            return str(e)
        return None

    assert problems("ltx2", "768x512x121") is None
    assert "F % 8 == 1" in problems("ltx2", "768x512x53")
    assert "multiples of 32" in problems("wan2.2", "848x480x49")
    assert problems("wan2.2", "1280x704x121") is None
    assert problems("wan2.1", "832x480x49") is None
    assert "F % 8 == 1" in problems("cogvideox", "720x480x45")  # the VAE would take it, the trainer not
    assert problems("cogvideox", "720x480x49") is None
    assert get_preset("wan2.1").latent_shape(49, 480, 832) == (13, 60, 104)
    # Embedding caches are shared only where the embedding function is the same (Wan 2.1/2.2).
    names = [get_preset(n).text_encoder_name for n in REAL]
    assert names.count("umt5-xxl-512") == 2 and len(set(names)) == len(names) - 1


def test_unknown_name_lists_allowed_names():
    with pytest.raises(ValueError) as err:
        get_preset("wan3")
    for name in PRESETS:
        assert name in str(err.value)


def test_path_overrides_repo(tmp_path):
    p = get_preset("wan2.1", str(tmp_path))
    assert p.repo == str(tmp_path) and model_root(p) == str(tmp_path)
    assert p.text_encoder_name == "umt5-xxl-512"
    assert model_root("wan2.1") == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    # a tiny preset pointed at a folder loads that folder, it builds nothing
    assert model_root(get_preset("tiny", str(tmp_path))) == str(tmp_path)


def test_tiny_alias(tiny_home):
    assert get_preset("tiny") is get_preset(models.TINY_ALIAS)
    assert models.TINY_ALIAS.startswith("tiny-wan")
    assert model_root("tiny") == str(tiny_home / "tiny" / models.TINY_ALIAS)


@pytest.mark.parametrize("name", TINY)
def test_tiny_twin_layout_and_classes(tiny_home, name):
    p = get_preset(name)
    root = Path(model_root(p))
    assert root == tiny_home / "tiny" / name
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == p.pipeline_class
    assert index["vae"] == ["diffusers", p.vae_class]
    for sub, cls_name in models._TEXT_COMPONENTS[p.family].items():
        assert (root / sub).is_dir(), sub
        if not sub.startswith("tokenizer"):
            assert index[sub] == ["transformers", cls_name]
    assert not [q for q in root.parent.iterdir() if q.name.startswith(".")], "temp folders left behind"
    pipe = load_text_pipeline(p)
    assert type(pipe).__name__ == p.pipeline_class
    assert getattr(pipe, "transformer", None) is None and getattr(pipe, "vae", None) is None
    expected_tok = {"wan": "T5Tokenizer", "ltx-video": "T5Tokenizer", "cogvideox": "T5Tokenizer",
                    "ltx2": "GemmaTokenizer", "hunyuanvideo": "LlamaTokenizer"}[p.family]
    assert type(pipe.tokenizer).__name__ == expected_tok
    if p.family == "hunyuanvideo":
        assert type(pipe.tokenizer_2).__name__ == "CLIPTokenizer"


@pytest.mark.parametrize("name", TINY)
def test_tiny_vae_encodes_to_predicted_shape(tiny_home, name):
    p = get_preset(name)
    vae = load_vae(p)
    assert type(vae).__name__ == p.vae_class and not vae.training
    torch.manual_seed(0)
    for frames, height, width in [(9, 64, 96), (1, 64, 64)]:
        x = torch.rand(1, 3, frames, height, width) * 2 - 1
        with torch.no_grad():
            mean = vae.encode(x).latent_dist.mean
        f, h, w = p.latent_shape(frames, height, width)
        assert mean.shape[0] == 1 and tuple(mean.shape[2:]) == (f, h, w), (name, frames, tuple(mean.shape))
        assert (frames - 1) // p.temporal_compression + 1 == f and height // p.spatial_compression == h
        assert torch.isfinite(mean).all()
    norm = vae_normalization(p)  # read from config / weight files, no model built
    json.dumps(norm)
    if p.family in ("wan", "ltx2", "ltx-video"):
        assert len(norm["latents_mean"]) == len(norm["latents_std"]) == mean.shape[1]
        source = vae.config if p.family == "wan" else dict(vae.named_buffers(recurse=False))
        assert norm["latents_mean"] == pytest.approx([float(v) for v in torch.as_tensor(source["latents_mean"]).flatten()])
    if p.family in ("cogvideox", "hunyuanvideo"):
        assert "scaling_factor" in norm


def _state_digest(root: Path) -> dict[str, str]:
    """sha256 of every weight and tokenizer file of a twin."""
    out = {}
    for f in sorted(root.rglob("*")):
        if f.suffix in (".safetensors", ".json") and f.name != models.TINY_MARKER:
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def test_tiny_build_is_deterministic(tiny_home, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTFORGE_HOME", str(tmp_path / "a"))
    root_a = Path(model_root("tiny-ltx2"))
    monkeypatch.setenv("LATENTFORGE_HOME", str(tmp_path / "b"))
    root_b = Path(model_root("tiny-ltx2"))
    assert root_a != root_b
    vae_a = load_vae("tiny-ltx2").state_dict()
    monkeypatch.setenv("LATENTFORGE_HOME", str(tmp_path / "a"))
    vae_b = load_vae("tiny-ltx2").state_dict()
    key = "encoder.conv_in.conv.weight"
    assert torch.equal(vae_a[key], vae_b[key]) and vae_a[key].abs().sum() > 0
    assert _state_digest(root_a) == _state_digest(root_b)
    # The session's twins (built in another home, maybe by another test order) are the same too.
    assert _state_digest(root_a) == _state_digest(tiny_home / "tiny" / "tiny-ltx2")


_TOKENIZER_DIGESTS = """
import hashlib
from latentforge.tiny import text_tokenizers as t
for build in (lambda: t.t5_tokenizer(512), lambda: t.gemma_tokenizer(1024),
              lambda: t.llama_tokenizer(512), t.clip_tokenizer):
    print(hashlib.sha256(build().backend_tokenizer.to_str().encode()).hexdigest())
"""


def test_tiny_tokenizers_are_the_same_in_another_process():
    """The tiny vocabularies are learned in plain Python from sorted inputs, so another process
    (another hash seed, as on another machine) learns the very same ones. (Weights come from
    torch.manual_seed, which is deterministic already.)"""
    import contextlib
    import io

    env = dict(os.environ, PYTHONHASHSEED=str(12345 if os.environ.get("PYTHONHASHSEED") != "12345" else 54321))
    other = subprocess.run([sys.executable, "-c", _TOKENIZER_DIGESTS], env=env, check=True, capture_output=True, text=True)
    mine = io.StringIO()
    with contextlib.redirect_stdout(mine):
        exec(_TOKENIZER_DIGESTS, {})
    assert other.stdout.split() == mine.getvalue().split() and len(mine.getvalue().split()) == 4


def test_concurrent_builds_share_one_folder(tiny_home, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTFORGE_HOME", str(tmp_path))
    roots, errors = [], []

    def build():
        try:
            roots.append(model_root("tiny-cogvideox"))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(roots)) == 1
    assert [q.name for q in (tmp_path / "tiny").iterdir()] == ["tiny-cogvideox"]
    load_vae("tiny-cogvideox")
    # the same weights as a twin built alone: concurrent builds do not mix their seeded streams
    assert _state_digest(Path(roots[0])) == _state_digest(tiny_home / "tiny" / "tiny-cogvideox")


def test_losing_the_build_race_uses_the_winners_folder(tmp_path, monkeypatch):
    """Another process installs the folder between our build and our rename: ours is dropped."""
    monkeypatch.setenv("LATENTFORGE_HOME", str(tmp_path))
    real_build = models._build_tiny
    final = Path(models.tiny_dir("tiny-wan2.1"))

    def build_and_lose(preset, dest):
        real_build(preset, dest)
        other = tmp_path / "other"
        real_build(preset, str(other))
        (other / "winner.txt").write_text("theirs")
        os.rename(other, final)

    monkeypatch.setattr(models, "_build_tiny", build_and_lose)
    assert Path(model_root("tiny-wan2.1")) == final
    assert (final / "winner.txt").exists()
    assert [q.name for q in final.parent.iterdir()] == ["tiny-wan2.1"]  # our temp folder is gone


def test_stale_twin_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTFORGE_HOME", str(tmp_path))
    root = Path(model_root("tiny-wan2.1"))
    marker = root / models.TINY_MARKER
    marker.write_text(json.dumps({"recipe_version": -1}))
    (root / "leftover.txt").write_text("old")
    assert Path(model_root("tiny-wan2.1")) == root
    assert json.loads(marker.read_text())["recipe_version"] == models.TINY_RECIPE_VERSION
    assert not (root / "leftover.txt").exists()
    assert [q.name for q in (tmp_path / "tiny").iterdir()] == ["tiny-wan2.1"]


CAPTION = (
    "A woman with long brown hair walks along the beach at sunset while the camera slowly pans "
    "to the right; waves crash on the rocks and a red car drives past in the background."
)


@pytest.mark.parametrize("name", ["tiny-wan2.1", "tiny-ltx2", "tiny-hunyuanvideo"])
def test_tiny_tokenizers_know_caption_words(tiny_home, name):
    pipe = load_text_pipeline(name)
    toks = [pipe.tokenizer] + ([pipe.tokenizer_2] if hasattr(pipe, "tokenizer_2") else [])
    n_words = len(CAPTION.split())
    for tok in toks:
        pieces = tok.convert_ids_to_tokens(tok(CAPTION).input_ids)
        words = [t for t in pieces if t not in tok.all_special_tokens]
        assert len(pieces) - len(words) <= 2  # bos / eos only
        assert tok.unk_token not in words
        assert not [t for t in pieces if t.startswith("<0x")], pieces  # no byte fallback
        assert n_words <= len(pieces) <= n_words + 8  # about a token per word (+ punctuation, specials)
    if name == "tiny-ltx2":
        assert pipe.tokenizer.pad_token and pipe.tokenizer.eos_token and pipe.tokenizer.bos_token
        assert pipe.tokenizer(CAPTION).input_ids[0] == pipe.tokenizer.bos_token_id


def test_tiny_llama_template_prefix_matches_hunyuan_crop(tiny_home):
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    tok = load_text_pipeline("tiny-hunyuanvideo").tokenizer
    template = DEFAULT_PROMPT_TEMPLATE["template"]
    prefix_ids = tok(template.format("A cat.")).input_ids[: DEFAULT_PROMPT_TEMPLATE["crop_start"]]
    full = tok(template.format("A cat.")).input_ids
    # the pipeline crops crop_start tokens: exactly the template prefix, the caption comes next
    assert tok.convert_ids_to_tokens(full[len(prefix_ids) :]) == ["A", "▁cat", ".", "<|eot_id|>"]
    assert tok.padding_side == "right"


def test_normalisation_tensors_are_read_without_the_rest_of_the_weights(tiny_home):
    """The driver reads LTX's latents_mean / latents_std as byte ranges of the safetensors file:
    the header and those tensors, not the weights (issue 12: weights stay on the workers)."""
    from fsspec.implementations.local import LocalFileSystem
    from safetensors import safe_open

    from latentforge.models.weights import safetensors_tensors

    (path,) = sorted((Path(model_root(get_preset("tiny-ltx-video"))) / "vae").glob("*.safetensors"))
    read = []

    class Counting(LocalFileSystem):
        def open(self, *args, **kwargs):
            f = super().open(*args, **kwargs)
            real = f.read

            def counted(n=-1):
                data = real(n)
                read.append(len(data))
                return data

            f.read = counted
            return f

    keys = ["latents_mean", "latents_std"]
    got = safetensors_tensors(Counting(), str(path), keys + ["not_there"])
    with safe_open(str(path), framework="pt") as weights:
        for key in keys:
            assert np.array_equal(got[key], weights.get_tensor(key).float().numpy())
        header_and_tensors = 8 + sum(weights.get_tensor(k).numel() * 4 for k in keys) + 64 * 1024
    assert set(got) == set(keys) and sum(read) < header_and_tensors < path.stat().st_size


def test_normalisation_tensors_keep_their_values_in_every_float_dtype(tmp_path):
    """bfloat16 has no numpy dtype: its values come back as the float32 values they are."""
    import fsspec
    from safetensors.torch import save_file

    from latentforge.models.weights import safetensors_tensors

    tensors = {f"t_{d}": torch.randn(3, 5).to(getattr(torch, d)) for d in ("bfloat16", "float16", "float32", "float64")}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    got = safetensors_tensors(fsspec.filesystem("file"), str(tmp_path / "w.safetensors"), list(tensors))
    for key, tensor in tensors.items():
        assert got[key].shape == (3, 5) and np.array_equal(got[key].astype(np.float64), tensor.double().numpy()), key
