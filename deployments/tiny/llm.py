"""The tiny random language model behind ``tiny:llm``: a Llama-shaped decoder and a byte-level
BPE tokenizer with a ChatML chat template, built offline and saved in the hub layout.

Kept apart from the serving code (``deployments/llm.py``), which loads this folder exactly as
it loads a hub model: ``AutoTokenizer`` + ``AutoModelForCausalLM``. The tokenizer is trained
with the ``tokenizers`` library on a small built-in corpus (no download), so prompts tokenize
with a real algorithm and the chat template is the same kind Qwen2.5-Instruct ships.
"""

from __future__ import annotations

from pathlib import Path

# Qwen2.5's template, trimmed to what the gateway sends (no tools): ChatML turns.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CONTEXT = 512  # positions: small, so tests reach the context limit cheaply

_CORPUS = """
the quick brown fox jumps over the lazy dog. a picture of a cat sitting on a red chair.
what is in this image? describe the photo in one sentence. the text in the image says hello.
you are a helpful assistant. answer the question about the recording. the speaker says that
the weather is good today and the meeting starts at nine. draw a small house by the sea with
a boat, a tree and a blue sky. please expand this prompt into a detailed description.
user assistant system question answer caption transcript prompt image audio text words
one two three four five six seven eight nine ten hello world yes no maybe thanks
"""


def build_tiny_tokenizer(folder: Path) -> int:
    """Train a byte-level BPE on the corpus and save it as a fast tokenizer; its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = [line.strip() for line in _CORPUS.strip().splitlines()]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token=None,
                                   model_max_length=CONTEXT, chat_template=CHAT_TEMPLATE)
    fast.save_pretrained(folder)
    return tok.get_vocab_size()


def build_tiny_llm(folder: str | Path) -> None:
    """Tokenizer + a 2-layer Llama (hidden 64) with random weights, seeded: same every build."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    vocab = build_tiny_tokenizer(folder)
    pad, eos = 0, 2  # <|endoftext|>, <|im_end|> (special tokens come first)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=CONTEXT, bos_token_id=None, eos_token_id=eos,
                         pad_token_id=pad, tie_word_embeddings=False, initializer_range=0.2)
    # initializer_range 0.2 (not 0.02): answers then depend on the prompt instead of one
    # token repeated, so tests can tell prompts apart
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id, gen.bos_token_id = eos, pad, None
    gen.do_sample = False
    # tokens that are half a UTF-8 character or a control byte: a random model would string
    # them into mojibake; suppressed, every answer is printable text
    tok = PreTrainedTokenizerFast.from_pretrained(folder)
    gen.suppress_tokens = [i for i in range(vocab) if i not in (pad, eos) and not all(
        c != "\ufffd" and (c.isprintable() or c in " \n") for c in tok.decode([i]))
        or i == 1]
    model.save_pretrained(folder)
