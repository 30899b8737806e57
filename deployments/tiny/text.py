"""Tiny random BERT models: embedding, classifier, NLI and cross-encoder (reranker).

Built from code into a folder and loaded back by the family's ``load_weights``, like real
weights; named by the ``tiny`` recipes of ``deployments.text.FAMILY``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_WORDS = str.split(
    "the a an this that it is was are be to of and in on for with as at by from not no yes "
    "i you he she we they my your love hate like good bad great terrible awful wonderful "
    "happy sad phone food movie day man woman dog cat photo picture text review positive "
    "negative neutral entailment contradiction about example sentence"
)


def _tiny_tokenizer(folder: Path) -> int:
    """A WordPiece (BERT) tokenizer over common words and ASCII characters; returns its size."""
    from transformers import BertTokenizer

    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list(dict.fromkeys(_WORDS + chars + [f"##{c}" for c in chars if c.isalnum()]))
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=128)
    tok.save_pretrained(folder)
    return len(vocab)


def _tiny_bert_config(vocab_size: int, **extra: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                      pad_token_id=0, **extra)


def _save_seeded(folder: Path, cls: Any, config: Any) -> None:
    import torch

    torch.manual_seed(0)
    model = cls(config).eval()
    model.save_pretrained(folder)


def build_tiny_embedding(folder: str | Path) -> None:
    from transformers import BertModel

    folder = Path(folder)
    _save_seeded(folder, BertModel, _tiny_bert_config(_tiny_tokenizer(folder)))


def build_tiny_classifier(folder: str | Path) -> None:
    from transformers import BertForSequenceClassification

    folder = Path(folder)
    cfg = _tiny_bert_config(_tiny_tokenizer(folder), id2label={0: "negative", 1: "positive"},
                            label2id={"negative": 0, "positive": 1})
    _save_seeded(folder, BertForSequenceClassification, cfg)


def build_tiny_nli(folder: str | Path) -> None:
    from transformers import BertForSequenceClassification

    folder = Path(folder)
    names = ["contradiction", "neutral", "entailment"]
    cfg = _tiny_bert_config(_tiny_tokenizer(folder), id2label=dict(enumerate(names)),
                            label2id={n: i for i, n in enumerate(names)})
    _save_seeded(folder, BertForSequenceClassification, cfg)


def build_tiny_cross_encoder(folder: str | Path) -> None:
    """One relevance logit per (query, document) pair, as ms-marco cross-encoders have."""
    from transformers import BertForSequenceClassification

    folder = Path(folder)
    cfg = _tiny_bert_config(_tiny_tokenizer(folder), num_labels=1)
    _save_seeded(folder, BertForSequenceClassification, cfg)
