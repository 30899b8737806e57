"""Constrained decoding for the ``llm`` family: JSON mode, JSON schemas and tool calls.

The grammar library is **llguidance** (Rust, one abi3 wheel with no dependencies; what
OpenAI's own structured outputs are built on). Measured against xgrammar on the tiny LLM's
tokenizer (600 tokens), both compile a schema in ~2 ms and compute a mask in well under a
millisecond per token (llguidance 0.07 ms, xgrammar 0.025 ms); llguidance was chosen because
it needs nothing beside itself (xgrammar pulls apache-tvm-ffi and triton), keeps the
tokenizer's special tokens out of JSON strings by default (xgrammar let ``<|im_start|>``
into a string), and takes Lark grammars that embed JSON schemas (``%json{...}``), which is
how a tool call's ``<tool_call>`` wrapper and its schema-checked arguments become one
grammar. ``outlines`` and ``lm-format-enforcer`` were not chosen: slower mask computation
in Python, more dependencies.

``GrammarLogits`` is a transformers logits processor: one matcher per row of a batch (None
for an unconstrained row), fed the token each row just produced, masking every token the
grammar forbids. A row whose grammar is complete may only end (end-of-text tokens). The mask
is applied with plain torch ops (llguidance's own helper ``torch.compile``s at import, ~8 s).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fusion.errors import BadInput

log = logging.getLogger("fusion.deployments.grammar")

# compact JSON: a random or small model given free whitespace can fill max_tokens with it
JSON_OPTIONS = {"whitespace_flexible": False}
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


def tokenizer_info(tokenizer: Any, vocab: int, eos_ids: list[int]) -> Any:
    """The llguidance view of a fast Hugging Face tokenizer (built once per model)."""
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=eos_ids)


def strict_schema(schema: Any) -> Any:
    """OpenAI's ``strict``: objects take no properties beyond those listed (unless the schema
    says otherwise), so the answer has exactly the declared shape."""
    if isinstance(schema, dict):
        out = {k: strict_schema(v) for k, v in schema.items()}
        if out.get("type") == "object" or "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [strict_schema(v) for v in schema]
    return schema


def _reraise_control(exc: BaseException) -> None:
    """Only errors of the schema become a 400; an interrupt or exit stays what it is."""
    if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
        raise exc


def json_grammar(schema: dict[str, Any]) -> str:
    import llguidance

    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    except BaseException as exc:  # noqa: BLE001 (a Rust panic is a BaseException too)
        _reraise_control(exc)
        raise BadInput(f"response_format: the JSON schema cannot be compiled: {exc}",
                       field="response_format") from None


def _arguments(function: dict[str, Any]) -> Any:
    params = function.get("parameters") or ANY_JSON_OBJECT
    return strict_schema(params) if function.get("strict") else params


def tool_call_grammar(functions: list[dict[str, Any]], parallel: bool) -> str:
    """Hermes/Qwen2.5 tool calls (``<tool_call>\\n{"name":…,"arguments":…}\\n</tool_call>``),
    each naming one of ``functions`` with arguments valid against its ``parameters``."""
    import llguidance

    calls = [{"type": "object", "additionalProperties": False,
              "required": ["name", "arguments"],
              "properties": {"name": {"const": f["name"]},
                             "arguments": _arguments(f)}}
             for f in functions]
    schema = {"anyOf": calls} if len(calls) > 1 else calls[0]
    schema = {**schema, "x-guidance": JSON_OPTIONS}
    lark = ('start: call' + (' ("\\n" call)*' if parallel else '') + '\n'
            'call: "<tool_call>\\n" body "\\n</tool_call>"\n'
            f'body: %json {json.dumps(schema)}\n')
    return llguidance.LLMatcher.grammar_from_lark(lark)


def check_grammar(info: Any, grammar: str, field: str) -> None:
    """A grammar the library cannot compile is the client's error, naming ``field``."""
    import llguidance

    try:
        error = llguidance.LLMatcher.validate_grammar(grammar, info)
    except BaseException as exc:  # noqa: BLE001 (a grammar the library cannot even read)
        _reraise_control(exc)
        error = str(exc) or type(exc).__name__
    if error and not error.startswith("WARNING"):
        raise BadInput(f"{field}: the schema cannot be enforced: {error}", field=field)


class GrammarLogits:
    """Masks each constrained row's logits to what its grammar allows next.

    Per step, for the whole batch at once: the rows' last tokens are read in one transfer,
    every live matcher's mask is computed into one buffer, and the masks are unpacked and
    applied in one tensor operation. The masks are computed in this thread, one row after
    another: llguidance's own thread pool (``LLExecutor``) cost 35 % of a batch of 8 on the
    2-core machine against 9 % this way (its idle workers spin beside torch's thread).
    """

    def __init__(self, info: Any, grammars: list[str | None], start: int,
                 eos_ids: list[int]) -> None:
        import llguidance
        import numpy as np

        self.matchers = [llguidance.LLMatcher(info, g) if g is not None else None
                         for g in grammars]
        self.start, self.eos_ids = start, set(eos_ids)
        self.done = [m is None for m in self.matchers]
        words = (info.vocab_size + 31) // 32
        self.masks = np.zeros((len(grammars), words), dtype=np.int32)
        self.eos = np.zeros(words * 32, dtype=bool)
        self.eos[[t for t in eos_ids if t < words * 32]] = True

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np
        import torch

        last = input_ids[:, -1].tolist() if input_ids.shape[1] > self.start else None
        rows: list[int] = []
        for row, matcher in enumerate(self.matchers):
            if self.done[row]:
                continue
            if last is not None:
                if last[row] in self.eos_ids or matcher.is_stopped():
                    self.done[row] = True  # ended: its row only pads from now on
                    continue
                if not matcher.consume_token(last[row]):
                    log.warning("grammar refused token %d: %s", last[row], matcher.get_error())
                    self.done[row] = True
                    continue
            rows.append(row)
        if not rows:
            return scores
        size = self.masks.shape[1] * 4
        for i, row in enumerate(rows):  # in this thread: a pool's idle spinning costs more
            self.matchers[row].unsafe_compute_mask_ptr(self.masks.ctypes.data + i * size, size)
        bits = np.unpackbits(self.masks[:len(rows)].view(np.uint8), axis=1,
                             bitorder="little").astype(bool)
        for i, row in enumerate(rows):
            if self.matchers[row].is_stopped():  # complete, nothing may follow: end here
                bits[i] = self.eos
        vocab = scores.shape[1]
        allowed = np.zeros((len(rows), vocab), dtype=bool)
        width = min(vocab, bits.shape[1])
        allowed[:, :width] = bits[:, :width]
        index = torch.tensor(rows, device=scores.device)
        forbid = torch.from_numpy(~allowed).to(scores.device)
        scores[index] = scores[index].masked_fill(forbid, float("-inf"))
        return scores
