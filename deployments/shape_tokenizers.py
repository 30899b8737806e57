"""Tokenizers of the right kind and size for ``shape:`` models, built offline in code.

A shape model has a hub model's architecture with random weights; its tokenizer must have the
hub tokenizer's algorithm and vocabulary size, because a random model's output ids cover the
whole vocabulary and every one must decode, and because the embedding and output layers are
sized by it. The vocabularies here are trained offline on a Zipf-weighted list of English
words, so common words are single tokens and a text is about as many tokens long as with the
real tokenizer (sequence length is what compute scales with); the token *strings* and ids
differ from the real ones, but special tokens sit at the real ids, so generation configs
(start, end, padding ids) are the real ones.

CLIP is the exception: open_clip ships OpenAI's BPE merges, so the CLIP tokenizer is the real
one, rebuilt from that file exactly as OpenAI's ``vocab.json`` was derived from it.
"""

from __future__ import annotations

import gzip
import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def bytes_to_unicode() -> list[str]:
    """GPT-2's byte → printable character table, in GPT-2's id order (256 symbols)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def english_words() -> list[str]:
    """~33k lowercase English words, most frequent first: the whole-word tokens of CLIP's
    BPE vocabulary (open_clip ships it), in merge order."""
    vocab, _ = clip_bpe()
    return [t[:-4] for t in list(vocab)[512:] if t.endswith("</w>") and t[:-4].isalpha()
            and t[:-4].isascii()]


def _corpus() -> Iterator[str]:
    """A Zipf-weighted word corpus, so trained vocabularies hold whole common words (and
    texts tokenize to about as many tokens as with the real vocabularies)."""
    for rank, word in enumerate(english_words()):
        yield " ".join([word] * (1 + 20000 // (rank + 20)))
        if rank < 8000:
            yield " ".join([word.capitalize()] * (1 + 2000 // (rank + 20)))
    yield string.printable


def _letter_strings(prefixes: list[str]) -> Iterator[tuple[str, str]]:
    """``(base, letter)`` pairs, breadth first: every base grows by one lowercase letter."""
    level = list(prefixes)
    while True:
        nxt = []
        for base in level:
            for c in string.ascii_lowercase:
                nxt.append(base + c)
                yield base, c
        level = nxt


def trained_bpe(tok: Any) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and merges of a trained ``tokenizers`` BPE model, as the ``transformers``
    tokenizers take them: merges as pairs (the saved JSON holds lists in newer ``tokenizers``
    releases, ``"a b"`` strings in older ones)."""
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return dict(model["vocab"]), merges


def byte_level_bpe(size: int, specials: tuple[str, ...] = ()) -> tuple[dict[str, int],
                                                                        list[tuple[str, str]]]:
    """GPT-2 style byte-level BPE of exactly ``size`` tokens (``specials`` first, then the 256
    byte symbols, then merges): trained on the word corpus, then topped up with generated
    merges (``Ġ`` + letters) where the corpus runs out of pairs."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=size, show_progress=False, special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    vocab, merges = trained_bpe(tok)
    for base, c in _letter_strings(["Ġ", *string.ascii_lowercase]):
        if len(vocab) >= size:
            break
        if base in vocab and base + c not in vocab:
            vocab[base + c] = len(vocab)
            merges.append((base, c))
    return vocab, merges


def wordpiece_vocab(size: int) -> dict[str, int]:
    """A BERT-uncased style WordPiece vocabulary of ``size`` tokens, trained on the corpus.

    Special tokens at BERT's ids (``[PAD]`` 0, ``[UNK]`` 100, ``[CLS]`` 101, ``[SEP]`` 102,
    ``[MASK]`` 103, ``[unusedN]`` between), then characters, words and ``##``-pieces.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    specials = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]",
                "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    alphabet = [c for c in string.printable if not c.isspace() and not c.isupper()]
    tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(
        vocab_size=size, show_progress=False, special_tokens=specials,
        initial_alphabet=alphabet))
    vocab = tok.get_vocab()
    ordered = sorted(vocab, key=vocab.get)
    for base, c in _letter_strings(["##"]):  # top up if the corpus ran out of pairs
        if len(ordered) >= size:
            break
        if base + c not in vocab:
            vocab[base + c] = len(ordered)
            ordered.append(base + c)
    return {t: i for i, t in enumerate(ordered[:size])}


def bert_tokenizer(vocab_size: int, model_max_length: int = 512, **extra: Any) -> Any:
    from transformers import BertTokenizer

    return BertTokenizer(vocab=wordpiece_vocab(vocab_size), do_lower_case=True,
                         model_max_length=model_max_length, **extra)


def chatml_tokenizer(bpe_size: int, specials: list[str], model_max_length: int,
                     chat_template: str) -> Any:
    """Qwen2-style: byte-level BPE of ``bpe_size`` tokens (no prefix space), then the ChatML
    special tokens at the ids after it, and the model's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab, merges = byte_level_bpe(bpe_size)
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, model_max_length=model_max_length,
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=chat_template)


def bart_tokenizer(vocab_size: int, model_max_length: int = 1024) -> Any:
    """RoBERTa/BART byte-level BPE: ``<s> <pad> </s> <unk>`` 0–3, BPE, ``<mask>`` last."""
    from transformers import BartTokenizer

    vocab, merges = byte_level_bpe(vocab_size - 1, ("<s>", "<pad>", "</s>", "<unk>"))
    tok = BartTokenizer(vocab=vocab, merges=merges,
                        model_max_length=model_max_length)
    if len(tok) != vocab_size:
        raise AssertionError(f"BART tokenizer has {len(tok)} tokens, expected {vocab_size}")
    return tok


def clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's vocabulary (49408 tokens) from the BPE merges open_clip ships."""
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    alphabet = bytes_to_unicode()
    tokens = alphabet + [a + "</w>" for a in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(model_max_length: int = 77, pad_token: str = "<|endoftext|>") -> Any:
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe()
    return CLIPTokenizer(vocab=vocab, merges=merges,
                         model_max_length=model_max_length, pad_token=pad_token)
