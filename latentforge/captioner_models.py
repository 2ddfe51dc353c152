"""Captioning models: resolving a captioner name to a folder or Hub id, its family, and loading it.

A captioner is a transformers vision-language model with its processor (tokenizer, image and
video processors, chat template). `caption.model` is a Hub id (default
"Qwen/Qwen2.5-VL-7B-Instruct"), `caption.model_path` a local folder in the same layout, or one
of the tiny twins below.

Tiny twins (`tiny-qwen2.5-vl`, `tiny-qwen2-vl`, `tiny-qwen3-vl`, `tiny-qwen2.5-omni`) are built
from the REAL classes (`Qwen2_5_VLForConditionalGeneration` / `Qwen2VLForConditionalGeneration` /
`Qwen3VLForConditionalGeneration` / `Qwen2_5OmniForConditionalGeneration` without its talker,
their processors with
`Qwen2VLImageProcessor`, `Qwen2VLVideoProcessor`, Omni's `WhisperFeatureExtractor`, and a
`Qwen2Tokenizer` carrying Qwen's own chat template) with tiny configs and seeded random weights, saved with
`save_pretrained` under `$LATENTFORGE_HOME/tiny/<name>` on first use and from then on loaded
through `from_pretrained`, exactly like real weights. The tokenizer is a byte-level BPE learned
offline from the same fixed caption corpus as the text-encoder twins (latentforge.models). Their
captions are nonsense; they exist for tests and the offline demo. The language-model head rows
of the special tokens are zeroed so greedy decoding never ends on an empty caption.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections import Counter
from typing import Any

import torch

from latentforge.models import (
    _CORPUS,
    _learn_bpe,
    _seeded,
    build_folder_once,
    latentforge_home,
    recipe_marker_ok,
    write_recipe_marker,
)

TINY_CAPTIONER_RECIPE_VERSION = 2
_MARKER = "latentforge_tiny_captioner.json"

# family name -> transformers model_type(s) of config.json
FAMILIES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl", "qwen2.5-omni")
_MODEL_TYPES = {
    "qwen2_vl": "qwen2-vl",
    "qwen2_5_vl": "qwen2.5-vl",
    "qwen3_vl": "qwen3-vl",
    "qwen3_vl_moe": "qwen3-vl",
    "qwen2_5_omni": "qwen2.5-omni",
}
TINY_CAPTIONERS = {
    "tiny-qwen2.5-vl": "qwen2.5-vl",
    "tiny-qwen2-vl": "qwen2-vl",
    "tiny-qwen3-vl": "qwen3-vl",
    "tiny-qwen2.5-omni": "qwen2.5-omni",
}
_SEED = 4321

# Qwen2-VL / Qwen2.5-VL's chat template (chat_template.json of the Hub repos), verbatim.
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen2.5-Omni's chat template (chat_template.json of Qwen/Qwen2.5-Omni-7B), verbatim.
QWEN_OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_OMNI_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|vision_pad|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
]
_OMNI_NAMED = {
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "audio_token": "<|AUDIO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}
_QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


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


def quantization_config(use_8bit: bool, use_4bit: bool, compute_dtype: torch.dtype = torch.bfloat16):
    """A BitsAndBytesConfig for 8-bit or 4-bit (NF4) loading, or None; clear errors where it
    cannot work (no CUDA, bitsandbytes not installed, both switches on)."""
    if not (use_8bit or use_4bit):
        return None
    if use_8bit and use_4bit:
        raise ValueError("caption.use_8bit and caption.use_4bit are both true: choose one")
    which = "caption.use_8bit" if use_8bit else "caption.use_4bit"
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{which}: bitsandbytes quantization needs a CUDA GPU and none is visible to this captioner; "
            "set it to false on CPU-only machines (or run on GPU workers)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:  # transformers imports it when loading
        raise RuntimeError(f"{which}: the bitsandbytes package is not installed (pip install bitsandbytes)")
    from transformers import BitsAndBytesConfig

    if use_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)


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

    quant = quantization_config(use_8bit, use_4bit, dtype)
    processor = transformers.AutoProcessor.from_pretrained(root)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = str(device)
    elif torch.device(device).type != "cpu":
        kwargs["device_map"] = str(device)  # straight onto the GPU, no full copy in RAM
    if family == "qwen2.5-omni":
        model = transformers.Qwen2_5OmniForConditionalGeneration.from_pretrained(root, enable_audio_output=False, **kwargs)
        model.disable_talker()
    else:
        model = transformers.AutoModelForImageTextToText.from_pretrained(root, **kwargs)
    if quant is None:
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
    return recipe_marker_ok(folder, _MARKER, TINY_CAPTIONER_RECIPE_VERSION)


def ensure_tiny_captioner(name: str) -> str:
    """Build the tiny twin once (atomically: parallel workers never see half a folder), with
    the same helper and lock as the VAE / text-encoder twins (latentforge.models)."""
    if name not in TINY_CAPTIONERS:
        raise ValueError(f"unknown tiny captioner {name!r}; allowed: {', '.join(TINY_CAPTIONERS)}")
    return build_folder_once(tiny_captioner_dir(name), lambda dest: _build_tiny_captioner(name, dest), _marker_ok)


_QWEN_VL_NAMED = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}


def tiny_qwen_tokenizer(specials: list[str] | None = None, named: dict[str, str] | None = None):
    """Qwen2Tokenizer (the class of every Qwen2/2.5/3-VL and Omni repo): byte-level BPE with
    Qwen's pre-tokenizer, merges learned from the fixed caption corpus, Qwen's special tokens
    (`specials`, with `named` ones such as image_token exposed as attributes)."""
    specials = specials or _QWEN_SPECIALS
    named = _QWEN_VL_NAMED if named is None else named
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2Tokenizer

    blank = Qwen2Tokenizer()  # only for its normaliser and pre-tokeniser (Qwen's regex + byte level)
    norm = blank.backend_tokenizer.normalizer
    pre = blank.backend_tokenizer.pre_tokenizer
    counts: Counter = Counter()
    for line in _CORPUS.strip().splitlines() + ["system", "user", "assistant"]:
        for piece, _ in pre.pre_tokenize_str(norm.normalize_str(line)):
            counts[tuple(piece)] += 1
    counts[tuple(pre.pre_tokenize_str("\n")[0][0])] += 1
    merges = _learn_bpe(counts)
    vocab: dict[str, int] = {}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in specials:
        vocab.setdefault(special, len(vocab))
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        extra_special_tokens=dict(named),
    )
    tok.add_tokens([AddedToken(s, special=True, normalized=False) for s in specials], special_tokens=True)
    tok.chat_template = QWEN_VL_CHAT_TEMPLATE
    return tok


def _tiny_qwen_text(tok, ids: dict[str, int]) -> dict:
    """The tiny Qwen language model shared by the VL and Omni twins (a fresh dict each call)."""
    return dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=8192,
        # multimodal RoPE: (temporal, height, width) sections summing to head_dim / 2
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def _tiny_qwen_vl(family: str, tok):
    import transformers

    ids = {s: tok.convert_tokens_to_ids(s) for s in _QWEN_SPECIALS}
    text = _tiny_qwen_text(tok, ids)
    tokens = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    if family == "qwen3-vl":
        text.update(head_dim=16)
        text["rope_parameters"] = {**text["rope_parameters"], "mrope_interleaved": True}
        vision = dict(
            depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32, patch_size=16,
            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0],
        )
        cfg = transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
        model = transformers.Qwen3VLForConditionalGeneration(cfg)
    elif family == "qwen2.5-vl":
        vision = dict(
            depth=2,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=32,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
        )
        cfg = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        model = transformers.Qwen2_5_VLForConditionalGeneration(cfg)
    else:
        vision = dict(depth=2, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        cfg = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        model = transformers.Qwen2VLForConditionalGeneration(cfg)
    with torch.no_grad():
        # Random weights often end at once on <|im_end|>, an empty caption: zeroed head rows give
        # the special tokens logit 0, below the best ordinary token for any hidden state in practice.
        head = model.get_output_embeddings().weight
        for tid in ids.values():
            head[tid].zero_()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model


def _tiny_qwen_omni(tok):
    """Qwen2.5-Omni without its talker (speech output): the thinker reads video, audio and text."""
    import transformers

    ids = {s: tok.convert_tokens_to_ids(s) for s in _OMNI_SPECIALS}
    text = _tiny_qwen_text(tok, ids)
    vision = dict(
        depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
    )
    audio = dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=16, output_dim=32)
    token_ids = dict(
        audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
    )
    vision_ids = dict(vision_start_token_id=ids["<|vision_bos|>"], vision_end_token_id=ids["<|vision_eos|>"])
    thinker = dict(text_config=text, vision_config=vision, audio_config=audio, **token_ids, **vision_ids)
    # The talker is never built (enable_audio_output: false); its config only has to be valid.
    talker = dict(
        **token_ids, **vision_ids,
        vocab_size=len(tok), embedding_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        tts_text_start_token_id=0, tts_text_end_token_id=0, tts_text_pad_token_id=0,
        tts_codec_start_token_id=1, tts_codec_end_token_id=2, tts_codec_pad_token_id=3, tts_codec_mask_token_id=4,
    )
    cfg = transformers.Qwen2_5OmniConfig(thinker_config=thinker, talker_config=talker, enable_audio_output=False)
    model = transformers.Qwen2_5OmniForConditionalGeneration(cfg)
    with torch.no_grad():
        head = model.thinker.get_output_embeddings().weight
        for tid in ids.values():
            head[tid].zero_()
    for gc in (model.generation_config, model.thinker.generation_config):
        gc.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
        gc.pad_token_id = ids["<|endoftext|>"]
    return model


def _build_tiny_captioner(name: str, dest: str) -> None:
    import transformers

    family = TINY_CAPTIONERS[name]
    # Small pixel budgets: a 64x64 frame is 4 patches of 28 px after merging.
    image_processor = transformers.Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=224 * 224)
    video_processor = transformers.Qwen2VLVideoProcessor(min_pixels=28 * 28, max_pixels=224 * 224)
    if family == "qwen2.5-omni":
        tok = tiny_qwen_tokenizer(_OMNI_SPECIALS, _OMNI_NAMED)
        model = _seeded(_SEED, _tiny_qwen_omni, tok)
        processor = transformers.Qwen2_5OmniProcessor(
            image_processor=image_processor,
            video_processor=video_processor,
            feature_extractor=transformers.WhisperFeatureExtractor(feature_size=128),  # 128 mel bins, 16 kHz
            tokenizer=tok,
            chat_template=QWEN_OMNI_CHAT_TEMPLATE,
        )
        # from_pretrained of the Omni class requires the speaker table (used by speech output only)
        torch.save({"Chelsie": {"bos_token": 0}}, os.path.join(dest, "spk_dict.pt"))
    elif family == "qwen3-vl":
        # Qwen3-VL: 16 px patches; its video processor bounds the whole video (T*H*W) and its
        # processor writes a timestamp before each frame group. The chat template's vision
        # placeholders are Qwen2.5-VL's (the real one adds tool and thinking markup).
        tok = tiny_qwen_tokenizer()
        model = _seeded(_SEED, _tiny_qwen_vl, family, tok)
        processor = transformers.Qwen3VLProcessor(
            image_processor=transformers.Qwen2VLImageProcessor(patch_size=16, min_pixels=32 * 32, max_pixels=256 * 256),
            video_processor=transformers.Qwen3VLVideoProcessor(size={"shortest_edge": 32 * 32, "longest_edge": 256 * 256 * 8}),
            tokenizer=tok,
            chat_template=QWEN_VL_CHAT_TEMPLATE,
        )
    else:
        tok = tiny_qwen_tokenizer()
        model = _seeded(_SEED, _tiny_qwen_vl, family, tok)
        proc_cls = transformers.Qwen2_5_VLProcessor if family == "qwen2.5-vl" else transformers.Qwen2VLProcessor
        processor = proc_cls(image_processor=image_processor, tokenizer=tok, video_processor=video_processor, chat_template=QWEN_VL_CHAT_TEMPLATE)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    write_recipe_marker(dest, _MARKER, TINY_CAPTIONER_RECIPE_VERSION, name=name, family=family)
