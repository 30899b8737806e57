"""The tiny random language model behind ``tiny:llm``: a Llama-shaped decoder and a byte-level
BPE tokenizer with a ChatML chat template, built offline and saved in the hub layout.

Kept apart from the serving code (``deployments/llm.py``), which loads this folder exactly as
it loads a hub model: ``AutoTokenizer`` + ``AutoModelForCausalLM``. The tokenizer is trained
with the ``tokenizers`` library on a small built-in corpus (no download), so prompts tokenize
with a real algorithm and the chat template is the same kind Qwen2.5-Instruct ships.
"""

from __future__ import annotations

from pathlib import Path

# Qwen2.5-Instruct's template (ChatML turns; tools in the system turn, calls as
# <tool_call> JSON, results as <tool_response> in a user turn), less its default system line.
TOOLS_HEADER = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
    "<function-name>, \"arguments\": <args-json-object>}\n</tool_call>")


# the tiny model's context is 512 positions: its tool instructions say the same in fewer
SHORT_TOOLS_HEADER = "\n\n# Tools\n<tools>"
SHORT_TOOLS_FOOTER = ("\n</tools>\nCall a function as <tool_call>\n{\"name\": <function-name>, "
                      "\"arguments\": <args-json-object>}\n</tool_call>")


def chat_template(default_system: str = "", header: str = TOOLS_HEADER,
                  footer: str = TOOLS_FOOTER) -> str:
    """Qwen2.5's chat template with tool support; ``default_system``: the system turn a
    conversation without one gets (Qwen's "You are Qwen, ..."; none for the tiny model)."""
    head = (f"{{{{- '<|im_start|>system\\n{default_system}<|im_end|>\\n' }}}}"
            if default_system else "")
    return (
        "{%- if tools %}{{- '<|im_start|>system\\n' }}"
        "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
        f"{{%- else %}}{{{{- '{default_system}' }}}}{{%- endif %}}"
        "{{- " + repr(header) + " }}"
        "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
        "{{- " + repr(footer + "<|im_end|>\n") + " }}"
        "{%- else %}{%- if messages[0]['role'] == 'system' %}"
        "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
        "{%- else %}" + head + "{%- endif %}{%- endif %}"
        "{%- for message in messages %}"
        "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first)"
        " or (message.role == 'assistant' and not message.tool_calls) %}"
        "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
        "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role }}"
        "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
        "{%- for tool_call in message.tool_calls %}"
        "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}"
        "{%- endif %}"
        "{{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}"
        "{{- '\", \"arguments\": ' }}{{- tool_call.arguments | tojson }}"
        "{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
        "{%- elif message.role == 'tool' %}"
        "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}"
        "{{- '<|im_start|>user' }}{%- endif %}"
        "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
        "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}"
        "{{- '<|im_end|>\\n' }}{%- endif %}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    )


CHAT_TEMPLATE = chat_template("", SHORT_TOOLS_HEADER, SHORT_TOOLS_FOOTER)
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
# Tools <tools> </tools> Call a function as <tool_call> </tool_call> <tool_response>
{"type": "function", "function": {"name": "get_weather", "description": "the forecast",
"parameters": {"type": "object", "additionalProperties": false, "required": ["city"],
"properties": {"city": {"type": "string", "maxLength": 10}, "days": {"type": "integer",
"minimum": 1, "maximum": 7}, "tags": {"type": "array", "items": {"enum": ["a", "b"]}}}}}}
{"name": <function-name>, "arguments": <args-json-object>} {"name":"noop","arguments":{}}
"""


def build_tiny_tokenizer(folder: Path) -> int:
    """Train a byte-level BPE on the corpus and save it as a fast tokenizer; its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=SPECIAL, show_progress=False,
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
