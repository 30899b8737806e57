"""Language-model family on transformers: ``chat`` and ``complete`` with token streaming.

``AutoModelForCausalLM`` + ``AutoTokenizer`` from any source the loader resolves (``hub:``,
``path:``, ``tiny:llm``). A chat is rendered with the tokenizer's own chat template when it
has one (so an instruct model sees the turns it was trained on), else as ``role: content``
lines.

Why it is shaped this way:

- Every limit is checked in ``prepare``, before batching, so one client's bad request fails
  alone and names its field: roles, empty messages, ``max_tokens`` ≤ 0 or above the context,
  a prompt that fills the context. A ``max_tokens`` that fits the context but not beside the
  prompt is clamped to what is left (the answer ends with ``finish_reason: length``).
- Unary calls batch (``@serve.batch``): greedy requests (temperature 0) share one left-padded
  ``generate``; sampled ones run one by one, so a seed gives the same answer whatever else
  is in the batch.
- A streamed call runs alone and yields text deltas as tokens come
  (``deployments.llm_streaming``); the final text is cut by the same code as the unary
  one, so a stream and a call agree. Text
  that could still turn into a ``stop`` string, or an unfinished UTF-8 character, is held
  back until it is known. When the caller goes away, Ray cancels the stream and a stopping
  criterion ends ``generate`` at the next token.
- A unary call carries its own cancel event (``Prepared.cancel``): when its caller goes
  away (the client disconnected) the replica sets it and that row stops at the next token;
  a batch whose rows are all cancelled ends, so the batch slot is free at once.
- ``response_format`` (JSON mode, JSON schema) and forced tool calls are enforced by
  constrained decoding (``deployments.grammar``: llguidance as a logits processor, one
  grammar per row of a batch); ``tools`` are rendered through the chat template and the
  model's ``<tool_call>`` blocks parsed into OpenAI ``tool_calls`` (``fusion.structured``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deployments import grammar
from deployments.base import ModelBackend, Progress
from deployments.common import check_text, hub_kwargs, optimise
from deployments.llm_streaming import DeltaStreamer, StopCriteria
from fusion.chat import chat_messages
from fusion.errors import BadInput, SpecError
from fusion.registry import Family
from fusion.structured import (
    ResponseFormat,
    Tools,
    check_response_format,
    check_tools,
    parse_tool_calls,
)
from fusion.tasks import Param, TaskSpec, param

log = logging.getLogger("fusion.deployments.llm")

DEFAULT_MAX_TOKENS = 128
MAX_STOPS = 4  # as OpenAI


@dataclass(frozen=True)
class Prepared:
    """One checked request: prompt token ids and the generation parameters."""

    ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    grammar: str | None = None  # constrained decoding (JSON, tool calls)
    format: ResponseFormat | None = None
    tools: Tools | None = None  # tools offered (choice not "none"): calls are parsed
    chat: bool = False
    # set when the caller went away: this row stops at the next token
    cancel: threading.Event = field(default_factory=threading.Event, compare=False)


class LlmModel(ModelBackend):
    marker_files = ("config.json",)

    def load_weights(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        loc, kw = self.resolved.location, hub_kwargs(self)
        tok = AutoTokenizer.from_pretrained(loc, **kw)
        model = AutoModelForCausalLM.from_pretrained(loc, dtype=self.dtype, **kw)
        model.to(self.device).eval()
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.tokenizer = tok
        opts = self.config.options
        self.context = int(opts.get("context") or getattr(model.config,
                                                          "max_position_embeddings", 0)
                           or tok.model_max_length)
        self.default_max_tokens = int(opts.get("max_tokens", DEFAULT_MAX_TOKENS))
        if self.context < 2 or self.default_max_tokens < 1:
            raise SpecError(f"{self.config.name}: options.context must be >= 2 and "
                            "options.max_tokens >= 1")
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = sorted({*eos, *([tok.eos_token_id] if tok.eos_token_id is not None
                                       else [])})
        self.pad_id = tok.pad_token_id
        self.counts = {"generations": 0, "cancelled": 0, "tokens": 0, "last_cancelled_tokens": 0,
                       "running": 0}  # running: rows generating now
        self.chat_template = bool(getattr(tok, "chat_template", None))
        # a template that mentions tools renders them (Qwen2.5's, Llama 3.1's, ...)
        self.tool_template = "tools" in str(getattr(tok, "chat_template", "") or "")
        self.vocab = int(model.config.vocab_size)
        self._grammar_info: Any = None
        self.model = optimise(model, self.config, self.device)
        self._torch = torch

    def info(self) -> dict[str, Any]:
        return {**super().info(), "context": self.context, "chat_template": self.chat_template,
                "tools": self.tool_template}

    @property
    def grammar_info(self) -> Any:
        """llguidance's view of the tokenizer, built on first use (a JSON or tool request)."""
        if self._grammar_info is None:
            self._grammar_info = grammar.tokenizer_info(self.tokenizer, self.vocab,
                                                        self.eos_ids)
        return self._grammar_info

    # -- request side -------------------------------------------------------------------------

    def render(self, messages: list[dict[str, Any]], tools: Tools | None = None) -> str:
        if self.chat_template:
            extra = {"tools": tools.template_tools()} if tools is not None else {}
            try:
                return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                          add_generation_prompt=True, **extra)
            except Exception as exc:  # a template that refuses a turn (e.g. no system role)
                raise BadInput(f"the model's chat template refused the messages: {exc}",
                               field="messages") from None
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"

    def prepare(self, task: str, inputs: dict[str, Any]) -> Prepared:
        item = super().prepare(task, inputs)
        fmt = check_response_format(item.get("response_format"))
        tools = None
        if task == "chat":
            field = "messages" if item.get("messages") is not None else "prompt"
            tools = check_tools(item.get("tools"), item.get("tool_choice"),
                                item.get("parallel_tool_calls"))
            if tools is not None and tools.choice == "none":
                tools = None  # the model is not told of them, and calls none
            if tools is not None and not self.tool_template:
                raise BadInput(f"model {self.config.name!r} has no chat template that takes "
                               "tools", field="tools")
            text = self.render(chat_messages(item), tools)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            field = "prompt"
            ids = self.tokenizer(check_text(item["prompt"], "prompt"))["input_ids"]
        if not ids:
            raise BadInput(f"{field} is empty after tokenization", field=field)
        if len(ids) >= self.context:
            raise BadInput(f"{field} is {len(ids)} tokens; the model's context is "
                           f"{self.context} tokens, and the answer needs at least one",
                           field=field)
        max_tokens = item["max_tokens"]
        if max_tokens is None:
            max_tokens = self.default_max_tokens
        elif max_tokens <= 0:
            raise BadInput(f"max_tokens must be at least 1, got {max_tokens}",
                           field="max_tokens")
        elif max_tokens > self.context:
            raise BadInput(f"max_tokens {max_tokens} is above the model's context of "
                           f"{self.context} tokens", field="max_tokens")
        temperature, top_p, seed = item["temperature"], item["top_p"], item["seed"]
        if not 0 <= temperature <= 2:
            raise BadInput(f"temperature must lie in [0, 2], got {temperature}",
                           field="temperature")
        if not 0 < top_p <= 1:
            raise BadInput(f"top_p must lie in (0, 1], got {top_p}", field="top_p")
        if seed is not None and not -(1 << 63) <= seed < (1 << 63):
            raise BadInput("seed must fit in 64 bits", field="seed")
        stop = tuple(item["stop"] or ())
        if len(stop) > MAX_STOPS:
            raise BadInput(f"stop takes at most {MAX_STOPS} strings", field="stop")
        for i, s in enumerate(stop):
            if not s:
                raise BadInput(f"stop[{i}] is empty", field=f"stop[{i}]")
        rules = None
        if tools is not None and tools.forced:
            rules, where = grammar.tool_call_grammar(
                tools.called(), tools.parallel and tools.choice == "required"), "tools"
        elif fmt is not None:
            schema = grammar.strict_schema(fmt.schema) if fmt.strict else fmt.schema
            rules, where = grammar.json_grammar(schema), "response_format"
        if rules is not None:
            grammar.check_grammar(self.grammar_info, rules, where)
        return Prepared(ids, min(max_tokens, self.context - len(ids)), temperature, top_p,
                        stop, seed, rules, fmt, tools, task == "chat")

    # -- model side ---------------------------------------------------------------------------

    def run(self, task: str, items: list[Any], progress: Progress | None = None) -> list[dict]:
        """Greedy items together in one padded batch; sampled ones one by one (seeds)."""
        self.task_spec(task)
        out: list[dict] = [{} for _ in items]
        greedy = [i for i, it in enumerate(items) if it.temperature == 0]
        if greedy:
            for i, res in zip(greedy, self.generate([items[i] for i in greedy]), strict=True):
                out[i] = res
        for i, it in enumerate(items):
            if it.temperature != 0:
                out[i] = self.generate([it])[0]
        return out

    def generate(self, items: list[Prepared], on_text: Callable[[str], None] | None = None,
                 cancel: threading.Event | None = None) -> list[dict]:
        """One ``generate`` over ``items`` (left-padded; all greedy, or one sampled item).
        ``on_text`` (one item only) receives text deltas as tokens come."""
        torch = self._torch
        from transformers import LogitsProcessorList

        if cancel is not None and cancel.is_set() or all(it.cancel.is_set() for it in items):
            results = [self._result(it, [], cancelled=True) for it in items]
            for res in results:
                self._count(res)
            return results
        width = max(len(it.ids) for it in items)
        ids = [[self.pad_id] * (width - len(it.ids)) + it.ids for it in items]
        mask = [[0] * (width - len(it.ids)) + [1] * len(it.ids) for it in items]
        first = items[0]
        kwargs: dict[str, Any] = {"max_new_tokens": max(it.max_tokens for it in items),
                                  "pad_token_id": self.pad_id, "eos_token_id": self.eos_ids,
                                  "do_sample": first.temperature > 0}
        if first.temperature > 0:
            kwargs.update(temperature=first.temperature, top_p=first.top_p)
            if first.seed is not None:
                torch.manual_seed(first.seed)  # under the replica's forward-pass lock
        streamer = DeltaStreamer(self, first.stop) if on_text is not None else None
        if streamer is not None:
            streamer.on_text = on_text
        criteria = StopCriteria(self, [it.stop for it in items], width, cancel, streamer,
                                 [it.cancel for it in items])
        if any(it.grammar for it in items):
            kwargs["logits_processor"] = LogitsProcessorList([grammar.GrammarLogits(
                self.grammar_info, [it.grammar for it in items], width, self.eos_ids)])
        self.counts["running"] += len(items)
        try:
            with torch.inference_mode():
                out = self._generate(torch, ids, mask, criteria, streamer, kwargs)
        finally:
            self.counts["running"] -= len(items)
        everyone = cancel is not None and cancel.is_set()
        results = [self._result(it, out[row, width:].tolist(), everyone or it.cancel.is_set())
                   for row, it in enumerate(items)]
        for res in results:
            self._count(res)
        if streamer is not None:
            streamer.finish(results[0]["text"])
        return [self._structure(it, res) for it, res in zip(items, results, strict=True)]

    def _generate(self, torch: Any, ids: list[list[int]], mask: list[list[int]],
                  criteria: Any, streamer: Any, kwargs: dict[str, Any]) -> Any:
        from transformers import StoppingCriteriaList

        return self.model.generate(
            input_ids=torch.tensor(ids, device=self.device),
            attention_mask=torch.tensor(mask, device=self.device),
            stopping_criteria=StoppingCriteriaList([criteria]), streamer=streamer, **kwargs)

    def _structure(self, item: Prepared, result: dict) -> dict:
        """The JSON value of a ``response_format`` answer; tool calls parsed out of the text."""
        out = {**result, "json": None}
        if item.chat:
            out["tool_calls"] = None
        if item.tools is not None:
            content, calls = parse_tool_calls(result["text"], item.tools)
            if calls:
                out.update(text=content, tool_calls=calls)
                if out["finish_reason"] == "stop":
                    out["finish_reason"] = "tool_calls"
        elif item.format is not None and result["finish_reason"] == "stop":
            try:
                out["json"] = json.loads(result["text"])
            except ValueError:  # cut by a stop string: the text is what came
                log.info("%s: a response_format answer did not parse", self.config.name)
        return out

    def _count(self, result: dict) -> None:
        tokens = result["usage"]["completion_tokens"]
        self.counts["generations"] += 1
        self.counts["tokens"] += tokens
        if result["finish_reason"] == "cancelled":
            self.counts["cancelled"] += 1
            self.counts["last_cancelled_tokens"] = tokens

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)

    def _result(self, item: Prepared, new: list[int], cancelled: bool) -> dict:
        """Cut the new tokens at end-of-text, ``max_tokens`` and the first stop string."""
        ended = next((i for i, t in enumerate(new) if t in self.eos_ids or t == self.pad_id),
                     None)
        tokens = new[:ended] if ended is not None else new[:item.max_tokens]
        reason = "stop" if ended is not None and ended < item.max_tokens else "length"
        tokens = tokens[:item.max_tokens]
        text = self.decode(tokens)
        cut = min((i for i in (text.find(s) for s in item.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        elif cancelled and len(tokens) < item.max_tokens and (
                ended is None or new[ended] not in self.eos_ids):  # padded after the cancel
            reason = "cancelled"
        prompt = len(item.ids)
        return {"text": text, "finish_reason": reason,
                "usage": {"prompt_tokens": prompt, "completion_tokens": len(tokens),
                          "total_tokens": prompt + len(tokens)}}


def _sampled(inputs: dict[str, Any]) -> str | None:
    """Why a completion is not cached: sampled without a seed, it differs every time."""
    if inputs.get("temperature") == 0 or inputs.get("seed") is not None:
        return None
    return "sampled (temperature > 0 and no seed): not cached"


_GENERATE = {
    "max_tokens": Param("int", False, None),  # None: the model's default, within its context
    "temperature": Param("float", False, 1.0),
    "top_p": Param("float", False, 1.0),
    "stop": Param("list[text]", False, None),
    "seed": Param("int", False, None),
    "response_format": Param("json", False, None),  # OpenAI's: json_object / json_schema
}
_TOOLS = {"tools": Param("json", False, None), "tool_choice": Param("json", False, None),
          "parallel_tool_calls": Param("bool", False, None)}
# json: the parsed answer of a response_format request (null otherwise)
_GENERATED = {"text": "text", "finish_reason": "text", "usage": "json", "json": "json"}

FAMILY = Family(
    name="llm",
    tasks={
        "chat": TaskSpec(
            {"messages": Param("json", False, None), "prompt": Param("text", False, None),
             "system": Param("text", False, None), **_GENERATE, **_TOOLS},
            {**_GENERATED, "tool_calls": "json"},
            streams_tokens=True, uncacheable=_sampled,
            doc="Answer a conversation (messages, or one user prompt) with the model's chat "
                "template; deterministic when temperature is 0 or a seed is given."),
        "complete": TaskSpec(
            {"prompt": param("text"), **_GENERATE}, _GENERATED, streams_tokens=True,
            uncacheable=_sampled, doc="Continue the prompt as plain text."),
    },
    backends={"transformers": ("chat", "complete")},
    model=LlmModel,
    tiny={"llm": "deployments.tiny.llm:build_tiny_llm"},
    doc="Causal language models on transformers: chat and completion, streamed token by "
        "token.",
)
