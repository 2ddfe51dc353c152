"""Images of any bit depth as the 8-bit RGB that every VAE preset is fed.

Pillow's `convert("RGB")` clips 16-bit and 32-bit integer images at 255 instead of scaling
them, so a 16-bit grayscale PNG became almost all white. Here values are scaled from the
image's range to 0..255 first.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# Integer modes whose values run to 65535 (16-bit PNG/TIFF open as one of these).
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def rgb8(im: Image.Image) -> Image.Image:
    """The image upright (EXIF orientation) in 8-bit RGB, high-depth values scaled, not clipped."""
    im = ImageOps.exif_transpose(im)
    if im.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")
    return im.convert("RGB")
