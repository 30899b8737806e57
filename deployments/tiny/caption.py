"""A tiny random captioner: ViT encoder + GPT-2 decoder, WordPiece tokenizer.

Built from code into a folder and loaded back by the family's ``load_weights``, like real
weights; named by the ``tiny`` recipes of ``deployments.caption.FAMILY``.
"""

from __future__ import annotations

from pathlib import Path

from deployments.tiny.text import _tiny_tokenizer


def build_tiny_caption(folder: str | Path) -> None:
    import torch
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    folder = Path(folder)
    vocab = _tiny_tokenizer(folder)  # [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    encoder = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64)
    decoder = GPT2Config(vocab_size=vocab, n_positions=160, n_embd=32, n_layer=1, n_head=2,
                         bos_token_id=2, eos_token_id=3, pad_token_id=0,
                         is_decoder=True, add_cross_attention=True)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.eos_token_id, config.pad_token_id = 2, 3, 0
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config=config).eval()
    gen = model.generation_config
    gen.decoder_start_token_id, gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = 2, 2, 3, 0
    gen.do_sample, gen.num_beams = False, 1
    gen.suppress_tokens = [0, 1, 2, 3, 4]  # no special tokens: a caption is never empty
    model.save_pretrained(folder)
