"""CLIP image features of a clip's first frame, the I2V condition that Wan 2.1 I2V cross-attends
to (`clip_feature_*` columns; encode_video.i2v).

They are made by diffusers' own `WanImageToVideoPipeline.encode_image`, on a pipeline that holds
only the image processor and image encoder (every other component None), as the text side calls
the pipelines' `encode_prompt`: the CLIPImageProcessor on the first frame (as a PIL image, the
pipeline's input), the CLIPVisionModel with `output_hidden_states=True`, `hidden_states[-2]`.
Runs inside the VAE actor (operators/vae.py), on its device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from latentforge.models.image_encoder import load_image_encoder


def image_pipeline(location: str, device: Any = "cpu", dtype: torch.dtype | None = None) -> Any:
    """A WanImageToVideoPipeline with only `image_processor` and `image_encoder` (from `location`)."""
    from diffusers import WanImageToVideoPipeline

    processor, encoder = load_image_encoder(location, device, dtype)
    return WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=None, scheduler=None, image_processor=processor, image_encoder=encoder
    )


class ImageFeatures:
    """Same-shape clips uint8 [B, F, H, W, 3] -> CLIP features of each first frame [B, tokens, dim]."""

    def __init__(self, location: str, device: Any = "cpu"):
        self.device = torch.device(device)
        self.pipe = image_pipeline(location, self.device)
        self.weights_bytes = sum(p.numel() * p.element_size() for p in self.pipe.image_encoder.parameters())

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        images = [Image.fromarray(np.ascontiguousarray(clip[0])) for clip in frames]
        return self.pipe.encode_image(images, self.device)
