"""The I2V image encoder: which CLIP vision model a preset's image-to-video model conditions on,
and loading it the way diffusers' WanImageToVideoPipeline does.

Wan 2.1 I2V (Wan-AI/Wan2.1-I2V-14B-480P-Diffusers, and its 720P sibling with the same encoder)
cross-attends to CLIP image features of the first frame: `WanImageToVideoPipeline.encode_image`
runs the `image_processor` (CLIPImageProcessor) and `image_encoder` (CLIPVisionModel, OpenCLIP
ViT-H/14) subfolders of that repo and takes `hidden_states[-2]` ([257, 1280] per image). The T2V
repo that the wan2.1 preset reads its VAE from has no image encoder, so the default location is
the I2V repo (its VAE is the same Wan 2.1 VAE). Wan 2.2 (TI2V-5B, I2V-A14B) has no image encoder
("only wan 2.1 i2v transformer accepts image_embeds", diffusers); other families have no Wan-style
I2V condition at all. This module imports no model library until something is loaded.
"""

from __future__ import annotations

from typing import Any

# preset name (tiny twins by their real name) -> the diffusers repo holding image_encoder/ and
# image_processor/
IMAGE_ENCODER_REPOS = {"wan2.1": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"}
I2V_FAMILIES = ("wan",)


def i2v_problem(model: str, model_path: str | None, i2v: bool, image_encoder: str | None) -> str | None:
    """Why these encode_video settings cannot run with this model, or None."""
    from latentforge.models import get_preset

    preset = get_preset(model, model_path)
    for key, on in (("encode_video.i2v", i2v), ("encode_video.image_encoder", image_encoder)):
        if on and preset.family not in I2V_FAMILIES:
            return f"{key}: the {preset.family} family ({preset.name}) has no Wan-style I2V condition; it is for wan2.1 / wan2.2"
    if image_encoder and not i2v:
        return "encode_video.image_encoder is set but encode_video.i2v is false: set encode_video.i2v=true to store CLIP features"
    return None


def image_encoder_location(model: str, model_path: str | None, i2v: bool, image_encoder: str | None) -> str | None:
    """Where the CLIP image encoder of an `i2v` run loads from: `image_encoder` when set, else the
    preset's I2V repo (a tiny twin: its name, resolved to its folder by `load_image_encoder` on the
    node that loads it, as the VAE's twin is); None when the run stores no CLIP features (i2v off,
    or a model without an image encoder, Wan 2.2)."""
    from latentforge.models import get_preset

    if not i2v:
        return None
    if image_encoder:
        return image_encoder
    preset = get_preset(model)  # the preset's own default, whatever model_path holds the VAE
    if preset.name.removeprefix("tiny-") not in IMAGE_ENCODER_REPOS:
        return None
    return preset.name if preset.tiny else IMAGE_ENCODER_REPOS[preset.name]


def load_image_encoder(location: str, device: Any = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """(CLIPImageProcessor, CLIPVisionModel) from `location`'s image_processor/ and image_encoder/
    subfolders (a tiny twin's name: its folder, built on first use), the encoder in eval mode on
    `device` (float32 unless `dtype`, as diffusers' Wan I2V example loads it)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionModel

    from latentforge.models import PRESETS, model_root

    if location in PRESETS and PRESETS[location].tiny:
        location = model_root(location)

    processor = CLIPImageProcessor.from_pretrained(location, subfolder="image_processor")
    encoder = CLIPVisionModel.from_pretrained(location, subfolder="image_encoder", dtype=dtype or torch.float32)
    encoder = encoder.to(device).eval()
    encoder.requires_grad_(False)
    return processor, encoder


def describe_i2v(model: str, model_path: str | None, first_frame_latent: bool, i2v: bool, image_encoder: str | None) -> str:
    """`plan`'s words for the I2V columns of encode_video ("" when none)."""
    parts = ["first-frame latent"] if first_frame_latent else []
    if i2v:
        where = image_encoder_location(model, model_path, i2v, image_encoder)
        parts.append(f"CLIP features from {where} (WanImageToVideoPipeline.encode_image)" if where else "no CLIP features (the model has no image encoder)")
    return "".join(f" + {p}" for p in parts)
