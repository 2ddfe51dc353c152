"""The tiny I2V image encoder of the Wan 2.1 twin: the classes diffusers' WanImageToVideoPipeline
loads from `image_encoder/` and `image_processor/` (transformers CLIPVisionModel and
CLIPImageProcessor, as in Wan-AI/Wan2.1-I2V-14B-480P-Diffusers), with a tiny config.

The real encoder is OpenCLIP ViT-H/14 (1280 wide, 32 layers, 224 px, 257 tokens) behind a
CLIPImageProcessor that resizes the short side to 224, center crops 224 and normalises with
CLIP's mean and std; the twin keeps the processor's steps and statistics at 32 px, and three
layers, so the pipeline's `hidden_states[-2]` is a layer that is neither the first nor the last.
"""

from __future__ import annotations

from typing import Any

IMAGE_SIZE = 32  # the processor's short side and crop; the encoder's image_size


def clip_vision() -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=8, projection_dim=32, hidden_act="gelu",
    )
    return CLIPVisionModel(cfg)


def clip_image_processor() -> Any:
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
