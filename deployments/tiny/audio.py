"""A tiny random Whisper (1+1 layers, d_model 32) with a real tokenizer.

Built from code into a folder and loaded back by the family's ``load_weights``, like real
weights; named by the ``tiny`` recipes of ``deployments.audio.FAMILY``.
"""

from __future__ import annotations

from pathlib import Path

_CORPUS = (
    "the quick brown fox jumps over the lazy dog",
    "hello world, this is a test of speech recognition.",
    "one two three four five six seven eight nine ten",
    "a model turns audio into text and text into labels",
)
_SPECIAL_TAIL = ("<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
                 "<|nocaptions|>", "<|notimestamps|>")


def _byte_level_bpe(corpus: tuple[str, ...], vocab_size: int) -> tuple[dict[str, int], list]:
    """A small GPT-2 style byte-level BPE (all 256 byte symbols + learned merges), offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from deployments.shape_tokenizers import trained_bpe

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus) * 4, trainer)
    return trained_bpe(tok)


def build_tiny_whisper(folder: str | Path) -> None:
    """A random 1+1 layer Whisper (d_model 32) with a real tokenizer and generation config.

    Generation is deterministic (greedy) and can only emit text tokens or end-of-text: every
    other special token is suppressed, as in the real checkpoints.
    """
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    folder = Path(folder)
    vocab, merges = _byte_level_bpe(_CORPUS, 400)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges, model_max_length=64)
    specials = ["<|startoftranscript|>", *(f"<|{c}|>" for c in LANGUAGES), *_SPECIAL_TAIL]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    # timestamp tokens right after <|notimestamps|>, as in the real vocabularies: long-form
    # (> 30 s) generation predicts them to move its window
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    ids = tokenizer.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    lang_to_id = {f"<|{c}|>": ids(f"<|{c}|>") for c in LANGUAGES}
    special_ids = [ids(t) for t in specials]
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80),
                                 tokenizer=tokenizer)

    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=32, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=1500,
        max_target_positions=64, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=sot, begin_suppress_tokens=None, suppress_tokens=None)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=24, do_sample=False, num_beams=1, is_multilingual=True,
        lang_to_id=lang_to_id,
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"),
        return_timestamps=False, max_initial_timestamp_index=50,
        begin_suppress_tokens=[ids("Ġ"), eot], suppress_tokens=special_ids)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
