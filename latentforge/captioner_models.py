"""Captioning models: resolving a captioner name to a folder or Hub id, its family, and loading it.

A captioner is a transformers vision-language model with its processor (tokenizer, image and
video processors, chat template). `caption.model` is a Hub id (default
"Qwen/Qwen2.5-VL-7B-Instruct"), `caption.model_path` a local folder in the same layout, or one
of the tiny twins (`tiny-qwen2.5-vl`, `tiny-qwen2-vl`, `tiny-qwen3-vl`, `tiny-qwen2.5-omni`).

A tiny twin is built from the REAL classes (`Qwen2_5_VLForConditionalGeneration` /
`Qwen2VLForConditionalGeneration` / `Qwen3VLForConditionalGeneration` /
`Qwen2_5OmniForConditionalGeneration` without its talker, their real processors and a
`Qwen2Tokenizer` carrying Qwen's own chat template) with tiny configs and seeded random weights
(the recipe: latentforge.tiny.captioners), saved with `save_pretrained` under
`$LATENTFORGE_HOME/tiny/<name>` on first use and from then on loaded through `from_pretrained`,
exactly like real weights.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from latentforge.models import latentforge_home
from latentforge.models.placement import load_kwargs, needs_move
from latentforge.tiny.captioners import (
    TINY_CAPTIONER_MARKER,
    TINY_CAPTIONER_RECIPE_VERSION,
    TINY_CAPTIONERS,
    build_tiny_captioner,
)
from latentforge.tiny.once import build_folder_once, recipe_marker_ok

# family name -> transformers model_type(s) of config.json
FAMILIES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl", "qwen2.5-omni")
_MODEL_TYPES = {
    "qwen2_vl": "qwen2-vl",
    "qwen2_5_vl": "qwen2.5-vl",
    "qwen3_vl": "qwen3-vl",
    "qwen3_vl_moe": "qwen3-vl",
    "qwen2_5_omni": "qwen2.5-omni",
}


def is_tiny(name: str) -> bool:
    return name in TINY_CAPTIONERS


def captioner_root(model: str, model_path: str | None = None) -> str:
    """Folder or Hub id to load the captioner from; a tiny twin is built on first use."""
    if model_path:
        return os.fspath(model_path)
    if model in TINY_CAPTIONERS:
        return ensure_tiny_captioner(model)
    return model


def family_from_name(name: str) -> str | None:
    """A family guessed from a Hub id or folder name (for `plan`, which loads nothing)."""
    n = name.lower().replace("_", "-")
    if n in TINY_CAPTIONERS:
        return TINY_CAPTIONERS[n]
    if "omni" in n:
        return "qwen2.5-omni"
    if "qwen3-vl" in n:
        return "qwen3-vl"
    if "qwen2.5-vl" in n or "qwen2-5-vl" in n:
        return "qwen2.5-vl"
    if "qwen2-vl" in n:
        return "qwen2-vl"
    return None


def detect_family(root: str, family: str = "auto") -> str:
    """The captioner family from config.json's model_type ("generic" for other VLMs)."""
    if family != "auto":
        return family
    model_type = None
    config_file = os.path.join(root, "config.json")
    if os.path.isfile(config_file):
        with open(config_file) as f:
            model_type = json.load(f).get("model_type")
    else:
        try:
            from transformers import AutoConfig

            model_type = AutoConfig.from_pretrained(root).model_type
        except Exception:  # noqa: BLE001 - fall back to the name
            return family_from_name(root) or "generic"
    return _MODEL_TYPES.get(model_type or "", family_from_name(root) or "generic")


# ---------------------------------------------------------------------------------------------
# Loading


def load_captioner(
    root: str,
    family: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    use_8bit: bool = False,
    use_4bit: bool = False,
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """(processor, model) through from_pretrained; the model in eval mode on `device`.

    Qwen2.5-Omni loads without its talker (speech output) and captions with its thinker, the
    part that reads video and audio and writes text.
    """
    import transformers

    if use_8bit and use_4bit:
        raise ValueError("caption.use_8bit and caption.use_4bit are both true: choose one")
    bits = 8 if use_8bit else 4 if use_4bit else None
    kwargs = load_kwargs(device, dtype, bits, "caption.use_8bit" if use_8bit else "caption.use_4bit")
    processor = transformers.AutoProcessor.from_pretrained(root)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if family == "qwen2.5-omni":
        model = transformers.Qwen2_5OmniForConditionalGeneration.from_pretrained(root, enable_audio_output=False, **kwargs)
        model.disable_talker()
    else:
        model = transformers.AutoModelForImageTextToText.from_pretrained(root, **kwargs)
    if needs_move(kwargs):
        model = model.to(device)
    model.eval()
    model.requires_grad_(False)
    tok = getattr(processor, "tokenizer", None)
    if tok is not None:
        tok.padding_side = "left"  # batched generation continues every prompt from its last token
    return processor, model


def generation_model(model: Any, family: str) -> Any:
    """What `generate` is called on: Omni's thinker (text out), the model itself otherwise."""
    return model.thinker if family == "qwen2.5-omni" else model


# ---------------------------------------------------------------------------------------------
# Tiny twins


def tiny_captioner_dir(name: str) -> str:
    return os.path.join(latentforge_home(), "tiny", name)


def _marker_ok(folder: str) -> bool:
    return recipe_marker_ok(folder, TINY_CAPTIONER_MARKER, TINY_CAPTIONER_RECIPE_VERSION)


def ensure_tiny_captioner(name: str) -> str:
    """Build the tiny twin once (atomically: parallel workers never see half a folder), with
    the same helper and lock as the VAE / text-encoder twins (latentforge.tiny.once)."""
    if name not in TINY_CAPTIONERS:
        raise ValueError(f"unknown tiny captioner {name!r}; allowed: {', '.join(TINY_CAPTIONERS)}")
    return build_folder_once(tiny_captioner_dir(name), lambda dest: build_tiny_captioner(name, dest), _marker_ok)
