"""The tiny twin of a video-model preset: a diffusers-style folder (vae/, tokenizer/,
text_encoder/, ..., model_index.json) that loads through the same from_pretrained path as
real weights. The preset is duck-typed (name, family, vae_class, pipeline_class,
max_sequence_length) so this package never imports latentforge.models.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any

from latentforge.tiny import encoders, image_encoders
from latentforge.tiny.audio_models import ltx2_audio_parts
from latentforge.tiny.once import seeded, write_recipe_marker
from latentforge.tiny.text_tokenizers import clip_tokenizer, gemma_tokenizer, llama_tokenizer, t5_tokenizer

# Bump when anything a tiny twin is built from changes (configs, corpus, tokenizer recipe,
# seeds): a cached twin with another version is rebuilt. (The LTX-2 twin's `connectors/` came
# without a bump: models._twin_complete rebuilds an LTX-2 twin that lacks it, and only that one.)
# 2: the Wan 2.1 twin has the I2V image encoder (image_encoder/, image_processor/).
# 3: the LTX-2 twin's decoder widens (8, 16, 32) so it can decode; it has audio_vae/ and vocoder/.
TINY_RECIPE_VERSION = 3
TINY_MARKER = "latentforge_tiny.json"

SEED_VAE, SEED_TEXT, SEED_TEXT_2, SEED_CONNECTORS, SEED_IMAGE = 1234, 5678, 9012, 3456, 7890

# Tiny VAE configs: the real families' structure (downsampling layout, latent channels,
# patchify) with 8-channel blocks and one layer per block. Compression equals the real one's.
VAE_CONFIGS: dict[str, dict[str, Any]] = {
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
        # widening as the real (256, 512, 1024): each up block's depth-to-space takes channels
        # away, so equal widths cannot decode (latentforge decode); the encoder's weights are unchanged
        decoder_block_out_channels=(8, 16, 32),
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



def build_video_model(preset: Any, dest: str, text_encoder_class: str) -> None:
    """Build the tiny twin of `preset` into `dest`; `text_encoder_class` is the transformers
    class the loader will use for T5-style families (T5EncoderModel or UMT5EncoderModel)."""
    import diffusers

    base = preset.name[len("tiny-") :]
    family = preset.family
    vae = seeded(SEED_VAE, getattr(diffusers, preset.vae_class), **VAE_CONFIGS[base])
    parts: dict[str, Any] = {"vae": vae}
    L = preset.max_sequence_length
    if family in ("wan", "ltx-video", "cogvideox"):
        tok = t5_tokenizer(L)
        parts["tokenizer"] = tok
        parts["text_encoder"] = seeded(SEED_TEXT, encoders.t5_encoder, text_encoder_class, len(tok))
    elif family == "ltx2":
        tok = gemma_tokenizer(L)
        parts["tokenizer"] = tok
        parts["text_encoder"] = seeded(SEED_TEXT, encoders.gemma3, tok)
        # Its own seed, so adding it left the other parts' weights as they were.
        parts["connectors"] = seeded(SEED_CONNECTORS, encoders.ltx2_connectors, parts["text_encoder"])
        parts.update(ltx2_audio_parts())  # audio_vae/ and vocoder/ (encode_video.with_audio, decode)
    elif family == "hunyuanvideo":
        tok = llama_tokenizer(L + 256)  # + the template prefix the pipeline prepends
        tok2 = clip_tokenizer()
        parts["tokenizer"] = tok
        parts["text_encoder"] = seeded(SEED_TEXT, encoders.llama, tok)
        parts["tokenizer_2"] = tok2
        parts["text_encoder_2"] = seeded(SEED_TEXT_2, encoders.clip_text, tok2)
    else:  # pragma: no cover
        raise ValueError(f"no tiny recipe for family {family!r}")
    if base == "wan2.1":  # Wan 2.1 I2V's CLIP image encoder (models/image_encoder.py), its own seed
        parts["image_encoder"] = seeded(SEED_IMAGE, image_encoders.clip_vision)
        parts["image_processor"] = image_encoders.clip_image_processor()

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
            # as a pipeline's save_pretrained records it: a class defined in a diffusers pipeline
            # folder (LTX-2's connectors) is named by that folder ("ltx2"), others by package.
            module = type(parts[pname]).__module__.split(".")
            lib = module[2] if module[:2] == ["diffusers", "pipelines"] else module[0]
            index[pname] = [lib, type(parts[pname]).__name__]
        elif p.default is inspect.Parameter.empty:
            index[pname] = [None, None]
    with open(os.path.join(dest, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    write_recipe_marker(dest, TINY_MARKER, TINY_RECIPE_VERSION, preset=preset.name, diffusers=diffusers.__version__)
