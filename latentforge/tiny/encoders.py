"""The tiny text encoders: the real transformers classes (T5/UMT5, Gemma 3, Llama, CLIP) with
tiny configs, sized to the tiny tokenizers, and LTX-2's diffusers text connectors sized to the
tiny Gemma; weights come from the caller's seed."""

from __future__ import annotations


def lm_config(tok, **overrides) -> dict:
    """What every tiny language model shares: its size (32 wide, 2 heads, 2 layers) and `tok`'s
    vocabulary and special ids; one place, so the twins stay equally tiny."""
    shared = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    return {**shared, **overrides}


def t5_encoder(cls_name: str, vocab_size: int):
    import transformers

    cfg_cls = transformers.UMT5Config if cls_name == "UMT5EncoderModel" else transformers.T5Config
    cfg = cfg_cls(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",  # T5 v1.1 / UMT5
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return getattr(transformers, cls_name)(cfg)


def gemma3(tok):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(
        **lm_config(tok),
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=2048,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=512,
    )
    # A minimal vision tower: LTX-2 only runs the language model, but the real class is
    # multimodal and its config needs one. 28 px / 14 px patches -> 2x2 patches -> 4 tokens.
    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    cfg = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    return Gemma3ForConditionalGeneration(cfg)


def llama(tok):
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(
        # HunyuanVideo takes hidden_states[-3] (skips the last two layers): with 3 layers that
        # is the output of the first layer rather than the bare token embeddings.
        **lm_config(tok, num_hidden_layers=3),
        num_key_value_heads=1,
        max_position_embeddings=1024,
    )
    return LlamaModel(cfg)


def clip_text(tok):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        **lm_config(tok),  # eos_token_id: the pooled output is the hidden state at the first EOS
        max_position_embeddings=77,
        projection_dim=32,
    )
    return CLIPTextModel(cfg)


def ltx2_connectors(gemma):
    """LTX-2.0's `connectors` (diffusers LTX2TextConnectors) for the tiny Gemma 3 `gemma`: its
    feature extractor reads hidden * (layers + 1) per token and projects to hidden (text_proj_in,
    no bias, one projection for video and audio, as in Lightricks/LTX-2); the two connector
    transformers (which latentforge never runs) are one 2x16-head layer with 128 registers
    (the real count: padded sequences are multiples of 128)."""
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    text = gemma.config.text_config
    heads, head_dim = 2, text.hidden_size // 2  # inner dim = caption_channels, as the real 30 x 128 = 3840
    return LTX2TextConnectors(
        caption_channels=text.hidden_size,
        text_proj_in_factor=text.num_hidden_layers + 1,
        video_connector_num_attention_heads=heads,
        video_connector_attention_head_dim=head_dim,
        video_connector_num_layers=1,
        audio_connector_num_attention_heads=heads,
        audio_connector_attention_head_dim=head_dim,
        audio_connector_num_layers=1,
    )
