"""Caption text: cleanup of VLM habits, trigger words, and the caption_id that keys embeddings.

Captioners (issue: captioning) and manifests both end here, so the text that is encoded and
the id it is stored under come from one place.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from latentforge.operators.base import Resources
from latentforge.rows import has_value, is_error

RESOURCES = Resources(num_cpus=0.25)  # a few string operations per row

# Openers VLMs put before the content; they cost tokens and teach the model nothing.
_OPENER = re.compile(
    r"""^\s*(?:
        (?:the\s+)?(?:video|clip|footage|scene)\s+(?:begins|opens|starts)\s+with
      | (?:in\s+)?(?:this|the)\s+(?:video|clip|image|picture|photo|footage|scene|frame)s?
        (?:\s+(?:we\s+(?:see|can\s+see)|(?:clearly\s+)?(?:shows|depicts|features|captures|presents|displays|showcases|is\s+showing|portrays)))?
        (?:\s+that)?
      | we\s+(?:see|can\s+see)
    )\s*[,:]?\s*""",
    re.IGNORECASE | re.VERBOSE,
)


def clean_caption(text: str | None) -> str:
    """Strip a leading 'The video shows'-style opener, normalise whitespace, capitalise."""
    if not text:
        return ""
    text = re.sub(r"\s+", " ", text).strip()
    stripped = _OPENER.sub("", text, count=1).strip()
    if not stripped:  # the whole caption was an opener: keep it rather than invent emptiness
        stripped = text
    return stripped[:1].upper() + stripped[1:]


def final_caption(text: str | None, trigger_word: str | None = None, strip_openers: bool = True) -> str:
    """The exact text the encoder sees: optional cleanup, then the LoRA trigger word in front."""
    caption = clean_caption(text) if strip_openers else re.sub(r"\s+", " ", text or "").strip()
    if trigger_word and caption:
        caption = f"{trigger_word.strip()} {caption}"
    return caption


def caption_id(text: str) -> str:
    """Hash of the final caption text: one embedding per distinct caption."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def finalize_caption(row: dict[str, Any], trigger_word: str | None = None, strip_openers: bool = True) -> dict[str, Any]:
    """Row stage after any captioning: `caption` becomes the text that will be encoded, with its
    `caption_id`. A row that failed earlier keeps its caption as it was when it failed."""
    out = dict(row)
    text = row.get("caption")
    if has_value(text) and not is_error(row):
        text = final_caption(text, trigger_word, strip_openers) or None
    else:
        text = text if has_value(text) else None
    out["caption"] = text
    out["caption_id"] = caption_id(text) if text else None
    return out
