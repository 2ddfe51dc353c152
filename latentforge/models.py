"""Model presets: a name -> the VAE and text-encoder classes, ids and bucket rules of a family.

A preset names a diffusers-format repository (a Hub id, or a local folder with `vae/`,
`text_encoder/`, `tokenizer/` and, for HunyuanVideo, `text_encoder_2/` and `tokenizer_2/`),
the diffusers VAE class, and the diffusers pipeline whose `encode_prompt` *is* the text
encoding: latentforge never reimplements a pipeline's prompt encoding, it instantiates the
pipeline with only its text components and calls it.

Every preset has a `tiny-<name>` twin built from the same real classes (the diffusers VAE
class, the transformers text encoder class, the real tokenizer class) with tiny configs and
deterministic random weights. A twin is built on first use under
`$LATENTFORGE_HOME/tiny/<name>` (default `~/.cache/latentforge`), saved with
`save_pretrained`, and from then on loaded only through the ordinary `from_pretrained` path,
exactly like real weights. `tiny` is an alias of `tiny-wan2.1` (see `TINY_ALIAS` for why).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import re
import shutil
import string
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import torch

# Bump when anything a tiny twin is built from changes (configs, corpus, tokenizer recipe,
# seeds): a cached twin with another version is rebuilt.
TINY_RECIPE_VERSION = 1
_TINY_MARKER = "latentforge_tiny.json"


@dataclass(frozen=True)
class ModelPreset:
    name: str  # "wan2.1", "tiny-wan2.1", ...
    family: str  # "wan" | "ltx2" | "ltx-video" | "cogvideox" | "hunyuanvideo"
    repo: str  # diffusers-format Hub id, or a local folder with vae/, text_encoder/, tokenizer/ ...
    vae_class: str  # diffusers class name
    pipeline_class: str  # diffusers pipeline whose encode_prompt defines the text encoding
    # Output path embeddings/encoder=<name>: identifies the embedding function (weights, max
    # length, template), so two presets share it only when their embeddings are interchangeable.
    text_encoder_name: str
    max_sequence_length: int  # what the pipeline's __call__ uses by default
    spatial_multiple: int  # bucket W and H must be multiples of this
    frame_modulus: int  # bucket F must satisfy F % frame_modulus == frame_remainder
    frame_remainder: int
    spatial_compression: int  # latent H, W = H / s, W / s
    temporal_compression: int  # latent F = (F - 1) // t + 1 (causal video VAEs)
    tiny: bool = False

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(frames, height, width) of the latent of a bucket (channels depend on the VAE)."""
        t, s = self.temporal_compression, self.spatial_compression
        return ((num_frames - 1) // t + 1, height // s, width // s)


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

_REAL_PRESETS = [
    # LTX-2: Gemma 3 12B; encode_prompt returns ALL of Gemma's hidden states stacked and
    # flattened per token ([T, hidden * (layers + 1)]), left-padded to 1024 (LTX2Pipeline.__call__
    # default). The connectors that consume them belong to the transformer side.
    # VAE: 32x spatial, 8x temporal, causal first frame -> F % 8 == 1.
    ModelPreset(
        name="ltx2",
        family="ltx2",
        repo="Lightricks/LTX-2",
        vae_class="AutoencoderKLLTX2Video",
        pipeline_class="LTX2Pipeline",
        text_encoder_name="ltx2-gemma3-12b-1024",
        max_sequence_length=1024,
        spatial_multiple=32,
        frame_modulus=8,
        frame_remainder=1,
        spatial_compression=32,
        temporal_compression=8,
    ),
    # LTX-Video (0.9.x): T5-v1.1-XXL, 128 tokens (LTXPipeline.__call__ default).
    ModelPreset(
        name="ltx-video",
        family="ltx-video",
        repo="Lightricks/LTX-Video",
        vae_class="AutoencoderKLLTXVideo",
        pipeline_class="LTXPipeline",
        text_encoder_name="t5-v1_1-xxl-128",
        max_sequence_length=128,
        spatial_multiple=32,
        frame_modulus=8,
        frame_remainder=1,
        spatial_compression=32,
        temporal_compression=8,
    ),
    # Wan 2.1: UMT5-XXL. WanPipeline.encode_prompt defaults to 226 tokens but
    # WanPipeline.__call__ passes max_sequence_length=512, which is what generation (and the
    # Wan trainers) use; the embeddings beyond the tokens are zeros either way.
    # VAE 8x spatial, 4x temporal; the transformer patchifies 2x2 -> W, H multiples of 16.
    ModelPreset(
        name="wan2.1",
        family="wan",
        repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        vae_class="AutoencoderKLWan",
        pipeline_class="WanPipeline",
        text_encoder_name="umt5-xxl-512",
        max_sequence_length=512,
        spatial_multiple=16,
        frame_modulus=4,
        frame_remainder=1,
        spatial_compression=8,
        temporal_compression=4,
    ),
    # Wan 2.2 TI2V-5B: the Wan2.2 VAE (z_dim 48, 2x2 pixel patchify inside the VAE, 16x
    # spatial, 4x temporal). The transformer patchifies the latent 2x2 again, so a bucket's W
    # and H must be multiples of 16 * 2 = 32. Same UMT5-XXL text encoder (same weights, same
    # 512-token encode) as Wan 2.1, hence the same text_encoder_name: embeddings are shared.
    ModelPreset(
        name="wan2.2",
        family="wan",
        repo="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        vae_class="AutoencoderKLWan",
        pipeline_class="WanPipeline",
        text_encoder_name="umt5-xxl-512",
        max_sequence_length=512,
        spatial_multiple=32,
        frame_modulus=4,
        frame_remainder=1,
        spatial_compression=16,
        temporal_compression=4,
    ),
    # CogVideoX: T5-v1.1-XXL, 226 tokens (CogVideoXPipeline.__call__ default). Its T5 runs
    # without an attention mask and the transformer sees all 226 positions, so the padding
    # positions carry caption-dependent values that a trimmed embedding does not keep.
    ModelPreset(
        name="cogvideox",
        family="cogvideox",
        repo="THUDM/CogVideoX-2b",
        vae_class="AutoencoderKLCogVideoX",
        pipeline_class="CogVideoXPipeline",
        text_encoder_name="t5-v1_1-xxl-226",
        max_sequence_length=226,
        spatial_multiple=16,
        frame_modulus=4,
        frame_remainder=1,
        spatial_compression=8,
        temporal_compression=4,
    ),
    # HunyuanVideo: llava-llama-3-8b (3rd-last hidden state, system-prompt template cropped)
    # + CLIP-L pooled vector; 256 tokens after the template (HunyuanVideoPipeline.__call__).
    ModelPreset(
        name="hunyuanvideo",
        family="hunyuanvideo",
        repo="hunyuanvideo-community/HunyuanVideo",
        vae_class="AutoencoderKLHunyuanVideo",
        pipeline_class="HunyuanVideoPipeline",
        text_encoder_name="llava-llama3-8b-clip-l-256",
        max_sequence_length=256,
        spatial_multiple=16,
        frame_modulus=4,
        frame_remainder=1,
        spatial_compression=8,
        temporal_compression=4,
    ),
]

_TINY_ENCODER_SHORT = {
    "ltx2": "gemma3",
    "ltx-video": "t5",
    "wan2.1": "umt5",
    "wan2.2": "umt5",
    "cogvideox": "t5",
    "hunyuanvideo": "llama-clip",
}


def _tiny_twin(p: ModelPreset) -> ModelPreset:
    name = f"tiny-{p.name}"
    return dataclasses.replace(
        p,
        name=name,
        repo=name,  # resolved by model_root: built under $LATENTFORGE_HOME/tiny/<name>
        # Random weights: a different function from the real encoder (and from each other).
        text_encoder_name=f"{name}-{_TINY_ENCODER_SHORT[p.name]}-{p.max_sequence_length}",
        tiny=True,
    )


PRESETS: dict[str, ModelPreset] = {p.name: p for p in _REAL_PRESETS}
PRESETS.update({f"tiny-{p.name}": _tiny_twin(p) for p in _REAL_PRESETS})
# `tiny`: the twin to use offline and in tests. On CPU the fastest twin is tiny-ltx-video
# (its VAE patchifies 4x4 before any convolution: ~15 ms for a 9x64x64 clip vs ~0.3 s for
# tiny-wan2.1, whose causal VAE runs chunk by chunk at full resolution), but `tiny` stays
# tiny-wan2.1: the default model is Wan, and its bucket rules (x16, F = 4k+1) accept the small
# buckets demos and tests use (e.g. 256x144x17), which LTX (x32, 8k+1) and Wan 2.2 (x32) refuse.
# Every twin encodes a 9-frame 64x64 clip and a batch of captions well under a second.
TINY_ALIAS = "tiny-wan2.1"
PRESETS["tiny"] = PRESETS[TINY_ALIAS]


def get_preset(name: str, path: str | None = None) -> ModelPreset:
    """The preset called `name`; `path` (a local diffusers-format folder) replaces its repo."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; allowed: {', '.join(PRESETS)}") from None
    if path:
        preset = dataclasses.replace(preset, repo=os.fspath(path), tiny=False)
    return preset


def latentforge_home() -> str:
    return os.path.expanduser(os.environ.get("LATENTFORGE_HOME") or "~/.cache/latentforge")


def model_root(preset: ModelPreset | str) -> str:
    """Hub id or local folder to load from; a tiny twin is built there on first use."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if preset.tiny:
        return _ensure_tiny(preset)
    return preset.repo


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

# The text components each pipeline's encode_prompt uses, with the transformers class of each
# (as in the real repos' model_index.json). Tokenizers load through AutoTokenizer, which reads
# the class from tokenizer_config.json.
_TEXT_COMPONENTS: dict[str, dict[str, str]] = {
    "wan": {"tokenizer": "AutoTokenizer", "text_encoder": "UMT5EncoderModel"},
    "ltx-video": {"tokenizer": "AutoTokenizer", "text_encoder": "T5EncoderModel"},
    "cogvideox": {"tokenizer": "AutoTokenizer", "text_encoder": "T5EncoderModel"},
    "ltx2": {"tokenizer": "AutoTokenizer", "text_encoder": "Gemma3ForConditionalGeneration"},
    "hunyuanvideo": {
        "tokenizer": "AutoTokenizer",
        "text_encoder": "LlamaModel",
        "tokenizer_2": "AutoTokenizer",
        "text_encoder_2": "CLIPTextModel",
    },
}


def _diffusers_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def load_vae(preset: ModelPreset | str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The preset's VAE via `<VaeClass>.from_pretrained(root, subfolder="vae")`, in eval mode."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    cls = _diffusers_class(preset.vae_class)
    vae = cls.from_pretrained(model_root(preset), subfolder="vae", torch_dtype=dtype)
    vae = vae.to(device).eval()
    vae.requires_grad_(False)
    return vae


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.detach().float().cpu().flatten().tolist()]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return float(value)


_NORMALIZATION_KEYS = ("latents_mean", "latents_std", "scaling_factor", "shift_factor")


def vae_normalization(preset: ModelPreset | str) -> dict:
    """The VAE's normalisation stats, JSON-serialisable, for the latent files' metadata.

    Read without building the model, so the driver of a cluster run stays light: from the VAE's
    config where the class keeps them there (Wan, CogVideoX, Hunyuan), and for the LTX VAEs,
    which keep per-channel `latents_mean` / `latents_std` as weight buffers, those two tensors
    alone from the safetensors files (lazily, through safe_open). Keys with no value are left out.
    """
    from safetensors import safe_open

    preset = get_preset(preset) if isinstance(preset, str) else preset
    root = model_root(preset)
    config = _diffusers_class(preset.vae_class).load_config(root, subfolder="vae")
    out: dict[str, Any] = {k: _jsonable(config[k]) for k in _NORMALIZATION_KEYS if config.get(k) is not None}
    missing = [k for k in ("latents_mean", "latents_std") if k not in out]
    if missing:
        if os.path.isdir(root):
            folder = os.path.join(root, "vae")
        else:
            from huggingface_hub import snapshot_download

            folder = os.path.join(snapshot_download(root, allow_patterns=["vae/*"]), "vae")
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".safetensors"):
                continue
            with safe_open(os.path.join(folder, name), framework="pt") as weights:
                for key in [k for k in missing if k in weights.keys()]:
                    out[key] = _jsonable(weights.get_tensor(key))
    return out


def load_text_pipeline(preset: ModelPreset | str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The family's diffusers pipeline holding only its text components.

    The tokenizer(s) and text encoder(s) are loaded one by one with `from_pretrained(root,
    subfolder=...)` (so a Hub repo's transformer and VAE are never downloaded) and the pipeline is
    constructed with every other component None. All five pipelines' __init__ accept that: they
    read VAE/transformer attributes behind `getattr(self, "vae", None)`-style guards (LTX's
    `getattr(self, "transformer")` has no default but register_modules sets the attribute to
    None, so it holds too). The pipeline's own `encode_prompt` can then be called.
    """
    import transformers

    preset = get_preset(preset) if isinstance(preset, str) else preset
    root = model_root(preset)
    components: dict[str, Any] = {}
    for sub, cls_name in _TEXT_COMPONENTS[preset.family].items():
        cls = getattr(transformers, cls_name)
        if sub.startswith("tokenizer"):
            components[sub] = cls.from_pretrained(root, subfolder=sub)
        else:
            kwargs: dict[str, Any] = {"dtype": dtype}
            if torch.device(device).type != "cpu":
                kwargs["device_map"] = str(device)  # straight onto the GPU, no full copy in RAM
            model = cls.from_pretrained(root, subfolder=sub, **kwargs)
            model = model.to(device).eval()
            model.requires_grad_(False)
            components[sub] = model

    pipe_cls = _diffusers_class(preset.pipeline_class)
    params = inspect.signature(pipe_cls.__init__).parameters
    for pname, p in params.items():
        if pname == "self" or pname in components or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.default is inspect.Parameter.empty:
            components[pname] = None  # vae, transformer, scheduler, connectors, ...
    return pipe_cls(**components)


# ---------------------------------------------------------------------------------------------
# Tiny twins
# ---------------------------------------------------------------------------------------------


def tiny_dir(preset: ModelPreset | str) -> str:
    name = preset if isinstance(preset, str) else preset.name
    name = get_preset(name).name  # resolve the `tiny` alias
    return os.path.join(latentforge_home(), "tiny", name)


def recipe_marker_ok(folder: str, marker: str, version: int) -> bool:
    """Whether `folder` is a finished tiny twin of recipe `version` (its marker file, written last)."""
    try:
        with open(os.path.join(folder, marker)) as f:
            return json.load(f).get("recipe_version") == version
    except (OSError, ValueError):
        return False


def write_recipe_marker(folder: str, marker: str, version: int, **about: Any) -> None:
    """The marker `recipe_marker_ok` looks for, with what built the twin; written last."""
    import transformers

    record = {"recipe_version": version, **about, "torch": torch.__version__, "transformers": transformers.__version__}
    with open(os.path.join(folder, marker), "w") as f:
        json.dump(record, f, indent=2)


def _marker_ok(folder: str) -> bool:
    return recipe_marker_ok(folder, _TINY_MARKER, TINY_RECIPE_VERSION)


# torch's RNG is process-global: two threads seeding and drawing at once would interleave
# their streams, so builds within a process are serialised (processes race via os.rename). One
# lock for every tiny twin, the captioners of latentforge.captioner_models included.
_BUILD_LOCK = threading.Lock()


def _ensure_tiny(preset: ModelPreset) -> str:
    return build_folder_once(tiny_dir(preset), lambda dest: _build_tiny(preset, dest), _marker_ok)


def build_folder_once(final: str, build: Callable[[str], None], complete: Callable[[str], bool]) -> str:
    """Make the folder `final` once: `build(dest)` writes it (save_pretrained, a marker file
    last) into a temp folder beside `final`, which is then renamed into place, so the folder
    appears whole or not at all and parallel workers (same machine or not) can all call this;
    the loser of a race throws its copy away and uses the winner's, which is identical (same
    seeds). `complete(folder)` says whether a folder is finished and current (its marker); a
    folder that is not (another recipe version) is replaced. Builds in one process are
    serialised (`_BUILD_LOCK`). Returns `final`."""
    if complete(final):
        return final
    with _BUILD_LOCK:
        if complete(final):  # built by another thread while this one waited
            return final
        parent = os.path.dirname(final)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=parent)
        try:
            build(tmp)
            if os.path.isdir(final) and not complete(final):
                # A twin from another recipe version: move it aside first (another process may
                # do the same at the same moment, hence the tolerated errors).
                stale = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.stale-", dir=parent)
                try:
                    os.rename(final, os.path.join(stale, "old"))
                except OSError:
                    pass
                shutil.rmtree(stale, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not complete(final):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# A fixed English corpus for the tiny tokenizers: caption vocabulary (subjects, actions,
# places, colours, light, camera language), the HunyuanVideo system-prompt template, digits and
# punctuation. Most words of a typical caption are single tokens of every tiny tokenizer.
# HunyuanVideoPipeline crops a hard-coded 95 tokens (Llama 3's count for its template prefix);
# the template lines below are worded so that the tiny Llama tokenizer also splits that prefix
# into exactly 95 tokens ("angles" is left out so it becomes "▁angle" + "s"), which a test checks.
_CORPUS = """
A woman with long brown hair and light skin smiles at another woman with long blonde hair.
The woman with brown hair wears a black jacket and has a small, barely noticeable mole on her right cheek.
The camera angle is a close-up, focused on the woman's face. The lighting is warm and natural, likely from
the setting sun, casting a soft glow on the scene. The scene appears to be real-life footage.
A man with short gray hair plays a red electric guitar on a dark stage under bright blue spotlights.
A cat walks on the grass, realistic. A dog runs across a green field and jumps over a wooden fence.
A young girl in a yellow dress rides a bicycle down a quiet street lined with tall trees in autumn.
An old man sits on a bench in the park and feeds white birds while children play in the background.
A red car drives along a winding mountain road at sunset; the camera follows it from above with a drone.
Waves crash against the rocks on a rocky beach while the ocean water sparkles in the afternoon sunlight.
A chef in a white uniform cuts fresh vegetables on a kitchen table, then stirs a pot of soup.
Two people walk hand in hand through a busy city at night, surrounded by neon signs and reflections in the rain.
A horse gallops through a snowy forest as snow falls slowly; the shot is wide and cinematic.
A small boat floats on a calm lake in the early morning fog, with mountains and a cloudy sky behind it.
A person is typing on a laptop in a modern office with large windows and a view of the skyline.
Close-up of a hand holding a cup of hot coffee; steam rises and the background is blurry.
The video shows a timelapse of clouds moving over a desert with orange sand dunes and long shadows.
A group of friends laughs around a campfire in the woods, their faces lit by the flickering fire.
An aerial view of a river flowing through a valley, surrounded by green hills and small houses.
A young man with a beard and glasses reads a book in a library, turning the pages slowly.
A bird flies over the sea and lands on a wooden pole near the harbor, where fishing boats are docked.
A dancer in a purple costume spins on the floor of a studio with mirrors and soft pink light.
The camera slowly pans left to right, then zooms in on a glass bottle on a table next to a vase of flowers.
Static shot, medium shot, tracking shot, handheld camera, low angle, high angle, slow motion, time-lapse.
Film grain, vintage style, anime style, cartoon, 3D animation, photorealistic, high quality, 4k, 8k, HDR.
A train moves past a station as people wait on the platform; a clock on the wall shows the time.
Her eyes look toward the window; his hands are on the steering wheel; they are talking and smiling.
It is raining heavily outside, and water drips from the leaves of the plants in the garden.
There are three cars, two trees, one house, four birds, five flowers, six chairs, seven people and nine lamps.
Zero, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 16, 24, 30, 48, 60, 100, 2024, 2025.
What, where, when, who, why, how: this, that, these, those, very, more, most, some, all, each, every, into, onto.
Colors: red, orange, yellow, green, blue, purple, pink, brown, black, white, gray, grey, golden, silver, dark, bright.
Light: sunny, shadow, shadows, backlit, silhouette, dim, glowing, neon, candle, lamp, moonlight, daylight.
Objects: phone, screen, door, wall, floor, road, bridge, building, tower, hat, shirt, shoes, bag, box, ball, paper.
Actions: walking, running, jumping, sitting, standing, dancing, singing, eating, drinking, looking, holding, turning.
Describe the video by detailing the following aspects: 1. The main content and theme of the video.
2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects.
3. Actions, events, behaviors temporal relationships, physical movement changes of the objects.
4. background environment, light, style and atmosphere.
5. camera angle, movements, and transitions used in the video:
system user assistant
"""


def _corpus_words() -> list[str]:
    """Words and punctuation runs of the corpus, in corpus order (repeats kept: frequencies)."""
    return re.findall(r"[A-Za-z]+(?:'[A-Za-z]+)?|\d|[^\sA-Za-z\d]", _CORPUS)


def _learn_bpe(words: Counter) -> list[tuple[str, str]]:
    """Byte-pair merges over symbol tuples until every word is one symbol, deterministically:
    the most frequent pair first, ties broken by the smallest pair.

    Plain Python (incremental pair counts + a lazy heap) so that a twin's vocabulary never
    depends on a trainer's thread scheduling or hash seeds: every machine builds the same one.
    """
    import heapq
    from collections import defaultdict

    items = sorted(words.items())
    syms = [list(w) for w, _ in items]
    freq = [c for _, c in items]
    counts: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, w in enumerate(syms):
        for p in zip(w, w[1:]):
            counts[p] += freq[i]
            where[p].add(i)
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap:
        negc, pair = heapq.heappop(heap)
        c = counts.get(pair, 0)
        if c <= 0:
            continue
        if -negc != c:  # stale entry: requeue with the current count
            heapq.heappush(heap, (-c, pair))
            continue
        merges.append(pair)
        a, b = pair
        for i in sorted(where.pop(pair, ())):
            w, f = syms[i], freq[i]
            new, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    new.append(a + b)
                    j += 2
                else:
                    new.append(w[j])
                    j += 1
            if len(new) == len(w):
                continue
            for q in zip(w, w[1:]):
                counts[q] -= f
            for q in zip(new, new[1:]):
                counts[q] += f
                where[q].add(i)
                heapq.heappush(heap, (-counts[q], q))
            syms[i] = new
        counts.pop(pair, None)
    return merges


def _sp_bpe_vocab(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab + merges for a SentencePiece-style BPE (Gemma, Llama 2 style): '▁' marks a word
    start, byte-fallback tokens <0x00>..<0xFF> make every string encodable."""
    counts: Counter = Counter()
    for w in _corpus_words():
        counts[tuple("▁" + w)] += 2
        counts[tuple(w)] += 1  # the first word of a text (Gemma adds no prefix space)
    counts[tuple("\n\n")] += 1  # one token in Gemma 3 and Llama 3 (chat templates)
    merges = _learn_bpe(counts)
    vocab: dict[str, int] = {}
    for tok in specials + [f"<0x{i:02X}>" for i in range(256)]:
        vocab.setdefault(tok, len(vocab))
    for ch in sorted({c for w in counts for c in w}):
        vocab.setdefault(ch, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return vocab, merges


def _tiny_t5_tokenizer(model_max_length: int):
    """T5Tokenizer (the class of both T5-v1.1 and UMT5 repos): a Unigram vocabulary with
    '▁word' pieces scored by log frequency, plus single characters as a fallback."""
    from transformers import T5Tokenizer

    counts: Counter = Counter()
    for w in _corpus_words():
        counts["▁" + w] += 2
        counts[w] += 1
    total = sum(counts.values())
    pieces = sorted(((p, math.log(c / total)) for p, c in counts.items()), key=lambda x: (-x[1], x[0]))
    chars = sorted({c for p in counts for c in p} | set(string.ascii_letters + string.digits + string.punctuation) | {"▁"})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    seen = {v[0] for v in vocab}
    for p, s in pieces:
        if p not in seen:
            vocab.append((p, s))
            seen.add(p)
    for ch in chars:
        if ch not in seen:
            vocab.append((ch, -20.0))  # below any word: whole words win the Viterbi path
            seen.add(ch)
    return T5Tokenizer(vocab=vocab, extra_ids=8, model_max_length=model_max_length)


_GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
_GEMMA_IMAGE_TOKENS = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]


def _tiny_gemma_tokenizer(model_max_length: int):
    from transformers import GemmaTokenizerFast

    vocab, merges = _sp_bpe_vocab(_GEMMA_SPECIALS + _GEMMA_IMAGE_TOKENS)
    tok = GemmaTokenizerFast(
        vocab=vocab,
        merges=merges,
        model_max_length=model_max_length,
        add_bos_token=True,  # as Gemma's own tokenizer
        padding_side="left",  # what LTX2Pipeline sets anyway; pad and eos both exist
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    return tok


_LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def _tiny_llama_tokenizer(model_max_length: int):
    from transformers import LlamaTokenizerFast

    vocab, merges = _sp_bpe_vocab(["<unk>"] + _LLAMA3_SPECIALS)
    tok = LlamaTokenizerFast(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
        add_bos_token=True,
        model_max_length=model_max_length,
        # HunyuanVideoPipeline crops the template prefix from the front of the sequence, which
        # assumes right padding (as the llava-llama-3 tokenizer does).
        padding_side="right",
        extra_special_tokens={"start_header": "<|start_header_id|>", "end_header": "<|end_header_id|>", "eot": "<|eot_id|>"},
    )
    return tok


def _tiny_clip_tokenizer():
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    base = CLIPTokenizer()  # only for its normaliser and pre-tokeniser (CLIP's regex + byte level)
    norm = base.backend_tokenizer.normalizer
    pre = base.backend_tokenizer.pre_tokenizer
    counts: Counter = Counter()
    for line in _CORPUS.strip().splitlines():
        for piece, _ in pre.pre_tokenize_str(norm.normalize_str(line)):
            counts[tuple(piece[:-1]) + (piece[-1] + "</w>",)] += 1
    merges = _learn_bpe(counts)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for tok in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(tok, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for tok in ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(tok, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _seeded(seed: int, fn, *args, **kwargs):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(*args, **kwargs)


def _tiny_t5_encoder(cls_name: str, vocab_size: int):
    import transformers

    cfg_cls = transformers.UMT5Config if cls_name == "UMT5EncoderModel" else transformers.T5Config
    cfg = cfg_cls(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",  # T5 v1.1 / UMT5
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return getattr(transformers, cls_name)(cfg)


def _tiny_gemma3(tok):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=2048,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    # A minimal vision tower: LTX-2 only runs the language model, but the real class is
    # multimodal and its config needs one. 28 px / 14 px patches -> 2x2 patches -> 4 tokens.
    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    cfg = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    return Gemma3ForConditionalGeneration(cfg)


def _tiny_llama(tok):
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        # HunyuanVideo takes hidden_states[-3] (skips the last two layers): with 3 layers that
        # is the output of the first layer rather than the bare token embeddings.
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return LlamaModel(cfg)


def _tiny_clip_text(tok):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,  # pooled output = hidden state at the first EOS
        pad_token_id=tok.pad_token_id,
    )
    return CLIPTextModel(cfg)


# Tiny VAE configs: the real families' structure (downsampling layout, latent channels,
# patchify) with 8-channel blocks and one layer per block. Compression equals the real one's.
_TINY_VAE_CONFIGS: dict[str, dict[str, Any]] = {
    "wan2.1": dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]),
    "wan2.2": dict(
        base_dim=8,
        decoder_base_dim=8,
        z_dim=48,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        is_residual=True,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        latents_mean=[0.0] * 48,
        latents_std=[1.0] * 48,
    ),
    "ltx-video": dict(
        latent_channels=128,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        patch_size=4,
        patch_size_t=1,
    ),
    "ltx2": dict(
        latent_channels=128,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1),
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        patch_size=4,
        patch_size_t=1,
        # The class's default formula (patch * 2 ** #scaling blocks) counts a temporal-only
        # block as spatial; the real LTX-2 config states the ratios explicitly, so does this.
        spatial_compression_ratio=32,
        temporal_compression_ratio=8,
    ),
    "cogvideox": dict(block_out_channels=(8, 8, 8, 8), latent_channels=16, layers_per_block=1, norm_num_groups=2),
    "hunyuanvideo": dict(block_out_channels=(8, 8, 8, 8), latent_channels=16, layers_per_block=1, norm_num_groups=2),
}

_SEED_VAE, _SEED_TEXT, _SEED_TEXT_2 = 1234, 5678, 9012


def _build_tiny(preset: ModelPreset, dest: str) -> None:
    """Build the tiny twin of `preset` into `dest` (a diffusers-style pipeline folder)."""
    import diffusers

    base = preset.name[len("tiny-") :]
    family = preset.family
    vae = _seeded(_SEED_VAE, _diffusers_class(preset.vae_class), **_TINY_VAE_CONFIGS[base])
    parts: dict[str, Any] = {"vae": vae}
    L = preset.max_sequence_length
    if family in ("wan", "ltx-video", "cogvideox"):
        tok = _tiny_t5_tokenizer(L)
        te_cls = _TEXT_COMPONENTS[family]["text_encoder"]
        parts["tokenizer"] = tok
        parts["text_encoder"] = _seeded(_SEED_TEXT, _tiny_t5_encoder, te_cls, len(tok))
    elif family == "ltx2":
        tok = _tiny_gemma_tokenizer(L)
        parts["tokenizer"] = tok
        parts["text_encoder"] = _seeded(_SEED_TEXT, _tiny_gemma3, tok)
    elif family == "hunyuanvideo":
        tok = _tiny_llama_tokenizer(L + 256)  # + the template prefix the pipeline prepends
        tok2 = _tiny_clip_tokenizer()
        parts["tokenizer"] = tok
        parts["text_encoder"] = _seeded(_SEED_TEXT, _tiny_llama, tok)
        parts["tokenizer_2"] = tok2
        parts["text_encoder_2"] = _seeded(_SEED_TEXT_2, _tiny_clip_text, tok2)
    else:  # pragma: no cover
        raise ValueError(f"no tiny recipe for family {family!r}")

    for sub, obj in parts.items():
        obj.save_pretrained(os.path.join(dest, sub))

    # model_index.json, so the folder also loads with <Pipeline>.from_pretrained(folder, ...)
    # (passing None for the components recorded as null: those a precompute does not need).
    pipe_cls = getattr(diffusers, preset.pipeline_class)
    index: dict[str, Any] = {"_class_name": preset.pipeline_class, "_diffusers_version": diffusers.__version__}
    for pname, p in inspect.signature(pipe_cls.__init__).parameters.items():
        if pname == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if pname in parts:
            lib = "diffusers" if pname == "vae" else "transformers"
            index[pname] = [lib, type(parts[pname]).__name__]
        elif p.default is inspect.Parameter.empty:
            index[pname] = [None, None]
    with open(os.path.join(dest, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    write_recipe_marker(dest, _TINY_MARKER, TINY_RECIPE_VERSION, preset=preset.name, diffusers=diffusers.__version__)
