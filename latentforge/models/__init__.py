"""Model presets: a name -> the VAE and text-encoder classes, ids and bucket rules of a family.

A preset names a diffusers-format repository (a Hub id, or a local folder with `vae/`,
`text_encoder/`, `tokenizer/`; for HunyuanVideo also `text_encoder_2/` and `tokenizer_2/`, for
LTX-2 `connectors/`), the diffusers VAE class, and the diffusers pipeline whose `encode_prompt`
*is* the text encoding: latentforge never reimplements a pipeline's prompt encoding, it
instantiates the pipeline with only its text components and calls it.

Every preset has a `tiny-<name>` twin built from the same real classes (the diffusers VAE
class, the transformers text encoder class, the real tokenizer class) with tiny configs and
deterministic random weights. A twin is built on first use under
`$LATENTFORGE_HOME/tiny/<name>` (default `~/.cache/latentforge`), saved with
`save_pretrained`, and from then on loaded only through the ordinary `from_pretrained` path,
exactly like real weights; the recipe lives in `latentforge.tiny`. `tiny` is an alias of
`tiny-wan2.1` (see `TINY_ALIAS` for why).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from latentforge.models.placement import load_kwargs, needs_move
from latentforge.models.weights import normalization_stats
from latentforge.tiny.once import build_folder_once, recipe_marker_ok
from latentforge.tiny.video_models import TINY_MARKER, TINY_RECIPE_VERSION, build_video_model

if TYPE_CHECKING:  # torch is imported where a model is loaded: the driver reads presets only
    import torch


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

# Bucket rules and latent compression shared by several families (see ModelPreset).
_LTX_GEOMETRY = dict(spatial_multiple=32, frame_modulus=8, frame_remainder=1, spatial_compression=32, temporal_compression=8)
_X16_GEOMETRY = dict(spatial_multiple=16, frame_modulus=4, frame_remainder=1, spatial_compression=8, temporal_compression=4)
_WAN22_GEOMETRY = dict(spatial_multiple=32, frame_modulus=4, frame_remainder=1, spatial_compression=16, temporal_compression=4)
# CogVideoX: its VAE alone takes F % 4 == 1, but CogVideo's finetune refuses clips unless
# (F - 1) % 8 == 0, so the preset follows the trainer (docs/models.md, docs/exporters.md).
_COGVIDEOX_GEOMETRY = {**_X16_GEOMETRY, "frame_modulus": 8}

_REAL_PRESETS = [
    # LTX-2: Gemma 3 12B; encode_prompt returns ALL of Gemma's hidden states stacked and
    # flattened per token ([T, hidden * (layers + 1)]), left-padded to 1024 (LTX2Pipeline.__call__
    # default). What is stored is what the LTX-2 trainer stores: those states through the
    # `connectors` component's text feature extractor (normalisation + projection, before the
    # connector transformers), [T, 3840] -- hence the "-features" name; the stacked form
    # (encode_text.ltx2_stacked_hidden_states) keeps the name without it (text_encoder_name()).
    # VAE: 32x spatial, 8x temporal, causal first frame -> F % 8 == 1.
    ModelPreset(
        name="ltx2", family="ltx2", repo="Lightricks/LTX-2",
        vae_class="AutoencoderKLLTX2Video", pipeline_class="LTX2Pipeline",
        text_encoder_name="ltx2-gemma3-12b-1024-features", max_sequence_length=1024, **_LTX_GEOMETRY,
    ),
    # LTX-Video (0.9.x): T5-v1.1-XXL, 128 tokens (LTXPipeline.__call__ default).
    ModelPreset(
        name="ltx-video", family="ltx-video", repo="Lightricks/LTX-Video",
        vae_class="AutoencoderKLLTXVideo", pipeline_class="LTXPipeline",
        text_encoder_name="t5-v1_1-xxl-128", max_sequence_length=128, **_LTX_GEOMETRY,
    ),
    # Wan 2.1: UMT5-XXL. WanPipeline.encode_prompt defaults to 226 tokens but
    # WanPipeline.__call__ passes max_sequence_length=512, which is what generation (and the
    # Wan trainers) use; the embeddings beyond the tokens are zeros either way.
    # VAE 8x spatial, 4x temporal; the transformer patchifies 2x2 -> W, H multiples of 16.
    ModelPreset(
        name="wan2.1", family="wan", repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        vae_class="AutoencoderKLWan", pipeline_class="WanPipeline",
        text_encoder_name="umt5-xxl-512", max_sequence_length=512, **_X16_GEOMETRY,
    ),
    # Wan 2.2 TI2V-5B: the Wan2.2 VAE (z_dim 48, 2x2 pixel patchify inside the VAE, 16x
    # spatial, 4x temporal). The transformer patchifies the latent 2x2 again, so a bucket's W
    # and H must be multiples of 16 * 2 = 32. Same UMT5-XXL text encoder (same weights, same
    # 512-token encode) as Wan 2.1, hence the same text_encoder_name: embeddings are shared.
    ModelPreset(
        name="wan2.2", family="wan", repo="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        vae_class="AutoencoderKLWan", pipeline_class="WanPipeline",
        text_encoder_name="umt5-xxl-512", max_sequence_length=512, **_WAN22_GEOMETRY,
    ),
    # CogVideoX: T5-v1.1-XXL, 226 tokens (CogVideoXPipeline.__call__ default). Its T5 runs
    # without an attention mask and the transformer sees all 226 positions, so the padding
    # positions carry caption-dependent values that a trimmed embedding does not keep.
    ModelPreset(
        name="cogvideox", family="cogvideox", repo="THUDM/CogVideoX-2b",
        vae_class="AutoencoderKLCogVideoX", pipeline_class="CogVideoXPipeline",
        text_encoder_name="t5-v1_1-xxl-226", max_sequence_length=226, **_COGVIDEOX_GEOMETRY,
    ),
    # HunyuanVideo: llava-llama-3-8b (3rd-last hidden state, system-prompt template cropped)
    # + CLIP-L pooled vector; 256 tokens after the template (HunyuanVideoPipeline.__call__).
    ModelPreset(
        name="hunyuanvideo", family="hunyuanvideo", repo="hunyuanvideo-community/HunyuanVideo",
        vae_class="AutoencoderKLHunyuanVideo", pipeline_class="HunyuanVideoPipeline",
        text_encoder_name="llava-llama3-8b-clip-l-256", max_sequence_length=256, **_X16_GEOMETRY,
    ),
]

# The VAE compute dtype on a GPU when encode_video.compute_dtype is unset, after each model's
# published usage (docs/models.md, "Dtypes"): diffusers' Wan examples keep the VAE in float32;
# HunyuanVideo's run its VAE in float16; LTX-Video, LTX-2 and CogVideoX run theirs in bfloat16.
# On the CPU everything computes in float32 (bf16 kernels are slow there).
VAE_COMPUTE_DTYPE_ON_GPU = {"wan": "float32", "hunyuanvideo": "float16", "ltx-video": "bfloat16", "ltx2": "bfloat16", "cogvideox": "bfloat16"}
# Text encoders whose activations overflow float16 (T5 / UMT5 feed-forwards, Gemma 3): refused.
FP16_OVERFLOWS = {"wan": "UMT5-XXL", "ltx-video": "T5-v1.1-XXL", "cogvideox": "T5-v1.1-XXL", "ltx2": "Gemma 3"}


def video_dtypes(family: str, compute: str | None, storage: str | None, use_gpus: bool, recorded: dict | None = None) -> tuple[str, str]:
    """(compute, storage) dtype of the VAE stage: what the config sets, else what the output was
    made with (`recorded`, from its run.json: a resume on other hardware keeps the output's
    dtypes), else the defaults: the family's compute dtype on GPU, float32 on CPU; bfloat16
    storage on GPU, float32 on CPU."""
    recorded = recorded or {}
    compute = compute or recorded.get("compute") or (VAE_COMPUTE_DTYPE_ON_GPU[family] if use_gpus else "float32")
    storage = storage or recorded.get("storage") or ("bfloat16" if use_gpus else "float32")
    return compute, storage


_TINY_ENCODER_SHORT = {
    "ltx2": "gemma3",
    "ltx-video": "t5",
    "wan2.1": "umt5",
    "wan2.2": "umt5",
    "cogvideox": "t5",
    "hunyuanvideo": "llama-clip",
}


# LTX-2's embeddings partition names the stored form: its text feature extractor's output
# (the default) ends in this; the stacked hidden states are the name without it.
LTX2_FEATURES_SUFFIX = "-features"


def _tiny_twin(p: ModelPreset) -> ModelPreset:
    name = f"tiny-{p.name}"
    suffix = LTX2_FEATURES_SUFFIX if p.text_encoder_name.endswith(LTX2_FEATURES_SUFFIX) else ""
    return dataclasses.replace(
        p,
        name=name,
        repo=name,  # resolved by model_root: built under $LATENTFORGE_HOME/tiny/<name>
        # Random weights: a different function from the real encoder (and from each other).
        text_encoder_name=f"{name}-{_TINY_ENCODER_SHORT[p.name]}-{p.max_sequence_length}{suffix}",
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


def text_encoder_name(preset: ModelPreset, ltx2_stacked_hidden_states: bool = False) -> str:
    """The embeddings partition name (`embeddings/encoder=<name>`) of what encode_text stores:
    the preset's, except LTX-2 with `ltx2_stacked_hidden_states`, whose stacked Gemma hidden
    states keep the name without LTX2_FEATURES_SUFFIX, so the two forms never share a folder."""
    if preset.family == "ltx2" and ltx2_stacked_hidden_states:
        return preset.text_encoder_name.removesuffix(LTX2_FEATURES_SUFFIX)
    return preset.text_encoder_name


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
# Diffusers components of the text side, loaded by load_text_pipeline when asked for: LTX-2's
# `connectors`, whose text feature extractor (normalisation + text_proj_in, or LTX-2.3's
# video_text_proj_in / audio_text_proj_in) turns the stacked hidden states into what is stored.
# Each as model_index.json records it: (library, class), the library a diffusers pipeline folder.
_DIFFUSERS_TEXT_COMPONENTS: dict[str, dict[str, tuple[str, str]]] = {"ltx2": {"connectors": ("ltx2", "LTX2TextConnectors")}}


def _diffusers_class(name: str):
    import diffusers

    return getattr(diffusers, name)


def load_vae(preset: ModelPreset | str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """The preset's VAE via `<VaeClass>.from_pretrained(root, subfolder="vae")`, in eval mode
    (float32 unless `dtype`)."""
    import torch

    dtype = dtype or torch.float32
    preset = get_preset(preset) if isinstance(preset, str) else preset
    cls = _diffusers_class(preset.vae_class)
    vae = cls.from_pretrained(model_root(preset), subfolder="vae", torch_dtype=dtype)
    vae = vae.to(device).eval()
    vae.requires_grad_(False)
    return vae


def vae_normalization(preset: ModelPreset | str) -> dict:
    """The VAE's normalisation stats, JSON-serialisable, for the latent files' metadata; read
    without building the model or downloading its weights (weights.normalization_stats)."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    return normalization_stats(model_root(preset))


def load_text_pipeline(
    preset: ModelPreset | str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    connectors: bool = True,
    quantization_bits: int | None = None,
):
    """The family's diffusers pipeline holding only its text components.

    The tokenizer(s) and text encoder(s) are loaded one by one with `from_pretrained(root,
    subfolder=...)` (so a Hub repo's transformer and VAE are never downloaded), for LTX-2 also
    its `connectors` (diffusers LTX2TextConnectors, subfolder `connectors/`) unless `connectors`
    is False, and the pipeline is
    constructed with every other component None. All five pipelines' __init__ accept that: they
    read VAE/transformer attributes behind `getattr(self, "vae", None)`-style guards (LTX's
    `getattr(self, "transformer")` has no default but register_modules sets the attribute to
    None, so it holds too). The pipeline's own `encode_prompt` can then be called.
    """
    import torch
    import transformers

    dtype = dtype or torch.float32
    preset = get_preset(preset) if isinstance(preset, str) else preset
    root = model_root(preset)
    components: dict[str, Any] = {}
    for sub, cls_name in _TEXT_COMPONENTS[preset.family].items():
        cls = getattr(transformers, cls_name)
        if sub.startswith("tokenizer"):
            components[sub] = cls.from_pretrained(root, subfolder=sub)
        else:
            # onto the GPU(s) directly; quantised when asked (encode_text.quantization)
            kwargs = load_kwargs(device, dtype, quantization_bits, "encode_text.quantization")
            model = cls.from_pretrained(root, subfolder=sub, **kwargs)
            model = (model.to(device) if needs_move(kwargs) else model).eval()
            model.requires_grad_(False)
            components[sub] = model
    if connectors:
        import diffusers.pipelines

        for sub, (library, cls_name) in _DIFFUSERS_TEXT_COMPONENTS.get(preset.family, {}).items():
            cls = getattr(getattr(diffusers.pipelines, library), cls_name)
            model = cls.from_pretrained(root, subfolder=sub, torch_dtype=dtype)
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
# Tiny twins (their recipe: latentforge.tiny)
# ---------------------------------------------------------------------------------------------


def tiny_dir(preset: ModelPreset | str) -> str:
    name = preset if isinstance(preset, str) else preset.name
    name = get_preset(name).name  # resolve the `tiny` alias
    return os.path.join(latentforge_home(), "tiny", name)


def _marker_ok(folder: str) -> bool:
    return recipe_marker_ok(folder, TINY_MARKER, TINY_RECIPE_VERSION)


def _twin_complete(preset: ModelPreset, folder: str) -> bool:
    """A current twin: its marker, and every diffusers text component the loader asks for (an
    LTX-2 twin built before `connectors/` (or `audio_vae/` and `vocoder/`) was part of its recipe is rebuilt; the other twins,
    and their bytes, are untouched: TINY_RECIPE_VERSION stays)."""
    subs = [*_DIFFUSERS_TEXT_COMPONENTS.get(preset.family, {}), *(("audio_vae", "vocoder") if preset.family == "ltx2" else ())]
    return _marker_ok(folder) and all(os.path.isdir(os.path.join(folder, sub)) for sub in subs)


def _build_tiny(preset: ModelPreset, dest: str) -> None:
    """Build the tiny twin of `preset` into `dest`, with the text encoder class this module's
    loader will ask for (so the recipe and the loader cannot disagree)."""
    build_video_model(preset, dest, _TEXT_COMPONENTS[preset.family]["text_encoder"])


def _ensure_tiny(preset: ModelPreset) -> str:
    return build_folder_once(tiny_dir(preset), lambda dest: _build_tiny(preset, dest), lambda f: _twin_complete(preset, f))
