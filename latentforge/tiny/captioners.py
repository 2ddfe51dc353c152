"""Tiny Qwen-VL / Qwen2.5-Omni captioner twins: the real transformers model and processor
classes with tiny configs, seeded weights and the tiny Qwen tokenizer.

Their captions are nonsense; they exist for tests and the offline demo. The language-model head
rows of the special tokens are zeroed so greedy decoding never ends on an empty caption.
"""

from __future__ import annotations

import os

import torch

from latentforge.tiny.encoders import lm_config
from latentforge.tiny.once import seeded, write_recipe_marker
from latentforge.tiny.text_tokenizers import qwen_tokenizer

# Bump when anything a tiny captioner is built from changes: a cached twin of another version is rebuilt.
TINY_CAPTIONER_RECIPE_VERSION = 2
TINY_CAPTIONER_MARKER = "latentforge_tiny_captioner.json"

# tiny twin name -> captioner family
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


_QWEN_VL_NAMED = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}



def _never_emit_specials_first(lm, ids: dict[str, int], generation_configs: list) -> None:
    """Random weights often end at once on <|im_end|>, an empty caption: zeroed head rows give
    the special tokens logit 0, below the best ordinary token for any hidden state in practice."""
    with torch.no_grad():
        head = lm.get_output_embeddings().weight
        for tid in ids.values():
            head[tid].zero_()
    for gc in generation_configs:
        gc.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
        gc.pad_token_id = ids["<|endoftext|>"]


def _qwen_text(tok, ids: dict[str, int]) -> dict:
    """The tiny Qwen language model shared by the VL and Omni twins (a fresh dict each call)."""
    return lm_config(
        tok,
        num_key_value_heads=1,
        max_position_embeddings=8192,
        # multimodal RoPE: (temporal, height, width) sections summing to head_dim / 2
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def _qwen_vl(family: str, tok):
    import transformers

    ids = {s: tok.convert_tokens_to_ids(s) for s in _QWEN_SPECIALS}
    text = _qwen_text(tok, ids)
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
    _never_emit_specials_first(model, ids, [model.generation_config])
    return model


def _qwen_omni(tok):
    """Qwen2.5-Omni without its talker (speech output): the thinker reads video, audio and text."""
    import transformers

    ids = {s: tok.convert_tokens_to_ids(s) for s in _OMNI_SPECIALS}
    text = _qwen_text(tok, ids)
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
    _never_emit_specials_first(model.thinker, ids, [model.generation_config, model.thinker.generation_config])
    return model


def build_tiny_captioner(name: str, dest: str) -> None:
    """Build the tiny captioner `name` (a key of TINY_CAPTIONERS) into the folder `dest`."""
    import transformers

    family = TINY_CAPTIONERS[name]
    # Small pixel budgets: a 64x64 frame is 4 patches of 28 px after merging.
    image_processor = transformers.Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=224 * 224)
    video_processor = transformers.Qwen2VLVideoProcessor(min_pixels=28 * 28, max_pixels=224 * 224)
    if family == "qwen2.5-omni":
        tok = qwen_tokenizer(_OMNI_SPECIALS, _OMNI_NAMED, QWEN_VL_CHAT_TEMPLATE)
        model = seeded(_SEED, _qwen_omni, tok)
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
        tok = qwen_tokenizer(_QWEN_SPECIALS, _QWEN_VL_NAMED, QWEN_VL_CHAT_TEMPLATE)
        model = seeded(_SEED, _qwen_vl, family, tok)
        processor = transformers.Qwen3VLProcessor(
            image_processor=transformers.Qwen2VLImageProcessor(patch_size=16, min_pixels=32 * 32, max_pixels=256 * 256),
            video_processor=transformers.Qwen3VLVideoProcessor(size={"shortest_edge": 32 * 32, "longest_edge": 256 * 256 * 8}),
            tokenizer=tok,
            chat_template=QWEN_VL_CHAT_TEMPLATE,
        )
    else:
        tok = qwen_tokenizer(_QWEN_SPECIALS, _QWEN_VL_NAMED, QWEN_VL_CHAT_TEMPLATE)
        model = seeded(_SEED, _qwen_vl, family, tok)
        proc_cls = transformers.Qwen2_5_VLProcessor if family == "qwen2.5-vl" else transformers.Qwen2VLProcessor
        processor = proc_cls(image_processor=image_processor, tokenizer=tok, video_processor=video_processor, chat_template=QWEN_VL_CHAT_TEMPLATE)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    write_recipe_marker(dest, TINY_CAPTIONER_MARKER, TINY_CAPTIONER_RECIPE_VERSION, name=name, family=family)
