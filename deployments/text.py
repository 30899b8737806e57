"""Text family on transformers: sentence embeddings, NLI zero-shot, sequence classification.

Three torch backends (and ``onnx``, the same model on ONNX Runtime: ``deployments.text_onnx``):

- ``embedding``: ``AutoModel`` + pooling (mean by default, or what a sentence-transformers
  ``1_Pooling/config.json`` says) + L2 norm. A model trained for shortened (Matryoshka)
  embeddings declares the sizes with ``options.matryoshka_dims``; only then does the OpenAI
  route honour ``dimensions`` (``info()`` reports ``embedding_dim`` and ``dimensions``).
  ``zero_shot`` embeds the text and one prompt per label (``template`` with ``{}`` replaced
  by the label) and returns
  ``softmax(cosine / temperature)``; the temperature defaults to 0.05 (``options.temperature``),
  which turns the small cosine gaps of sentence encoders (0.1–0.3) into usable scores.
- ``nli``: ``AutoModelForSequenceClassification`` trained on NLI; ``zero_shot`` scores the
  pair (text, prompt) per label and returns the softmax over labels of the entailment logits,
  the entailment index read from ``config.label2id``.
- ``classifier``: ``AutoModelForSequenceClassification``; ``classify`` returns every label of
  ``config.id2label`` with softmax scores (sigmoid for multi-label models).
- ``cross_encoder``: ``AutoModelForSequenceClassification`` trained to score a (query,
  passage) pair (ms-marco cross-encoders, bge-reranker); ``rerank`` is one pair per item, so
  the router caches each pair and batches a document list through the list path
  (``fusion.core.rank``). The score is ``sigmoid(logit)`` for a one-logit model (what
  sentence-transformers' ``CrossEncoder``, TEI and Infinity answer), else the softmax of the
  last label ("relevant").

Templates are filled with ``str.replace("{}", label)``, never ``str.format``: a template comes
from the client, and ``format`` would let it read attributes of its argument.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from deployments.base import ModelBackend, Progress
from deployments.common import check_text, fill_template, hub_kwargs, optimise, ranked
from fusion.errors import BadInput, SpecError
from fusion.registry import Family
from fusion.tasks import TaskSpec, param

log = logging.getLogger("fusion.deployments.text")

DEFAULT_TEMPERATURE = 0.05
# ``quantize: int8`` on the text family quantises these Linear layers (``options.int8_layers``).
# Measured on MiniLM (tests/unit/test_compression.py, ops/bench/edge.py): all layers give
# ~2.5x at batch 8 but embeddings at cosine ~0.97 to fp32; the FFN layers carry the
# activation outliers, so "attention" (Q, K, V, output) keeps cosine >= 0.99 but gains only
# ~1.2x. For speed at that accuracy use the onnx backend with quantize: int8 (~2.7x).
INT8_LAYERS = {"attention": lambda name: ".attention." in f".{name}.", "all": None}
FORWARD_CHUNK = 64  # sequences per forward pass; bounds memory for many labels x items
TORCH_BACKENDS = ("embedding", "nli", "classifier", "cross_encoder")  # onnx: deployments.text_onnx


class TextModel(ModelBackend):
    family = "text"
    marker_files = ("config.json",)

    def load_weights(self) -> None:
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        loc, kw = self.resolved.location, hub_kwargs(self)
        backend = self.config.backend
        if backend not in TORCH_BACKENDS:
            raise SpecError(f"{self.config.name}: backend {backend!r} is not served by "
                            f"{type(self).__name__} (the family's backend_models names its "
                            "class; load it through fusion.registry.model_class)")
        self.tokenizer = AutoTokenizer.from_pretrained(loc, **kw)
        cls = AutoModel if backend == "embedding" else AutoModelForSequenceClassification
        model = cls.from_pretrained(loc, dtype=self.dtype, **kw)
        model.to(self.device, self.dtype).eval()
        self.model_config = model.config
        self.read_options()
        if backend == "nli":
            self.entail_idx = self._entailment_index(model.config.label2id)
        if backend != "embedding":
            n = model.config.num_labels
            self.labels = [str(model.config.id2label.get(i, f"LABEL_{i}")) for i in range(n)]
            self.multi_label = model.config.problem_type == "multi_label_classification"
        self.int8_layers = str(self.config.options.get("int8_layers", "attention"))
        if self.int8_layers not in INT8_LAYERS:
            raise SpecError(f"{self.config.name}: options.int8_layers {self.int8_layers!r} is "
                            f"not one of {sorted(INT8_LAYERS)}")
        self.model = optimise(model, self.config, self.device,
                              include=INT8_LAYERS[self.int8_layers])
        self._torch = torch
        self.embedding_dim = int(getattr(model.config, "hidden_size", 0) or 0)
        dims = self.config.options.get("matryoshka_dims") or []
        if not all(isinstance(d, int) and 0 < d < self.embedding_dim for d in dims):
            raise SpecError(f"{self.config.name}: options.matryoshka_dims must be sizes "
                            f"between 1 and {self.embedding_dim - 1}, got {dims}")
        self.matryoshka_dims = sorted(dims)

    def info(self) -> dict[str, Any]:
        info = super().info()
        if self.config.backend == "embedding":
            info.update(embedding_dim=self.embedding_dim, dimensions=self.matryoshka_dims)
        return info

    def read_options(self) -> None:
        """The options every backend of the family reads (torch and ONNX Runtime alike), once
        ``self.tokenizer`` and ``self.model_config`` are loaded; ``SpecError`` names a bad one."""
        options, name = self.config.options, self.config.name
        self.max_length = int(options.get("max_length") or min(
            self.tokenizer.model_max_length or 512,
            getattr(self.model_config, "max_position_embeddings", 512) or 512, 512))
        self.temperature = float(options.get("temperature", DEFAULT_TEMPERATURE))
        if not self.temperature > 0:
            raise SpecError(f"{name}: options.temperature must be > 0")
        self.pooling = options.get("pooling") or self._st_pooling() or "mean"
        if self.pooling not in ("mean", "cls", "max"):
            raise SpecError(f"{name}: pooling {self.pooling!r} is not mean/cls/max")

    def variant(self) -> str:
        base = super().variant()
        return f"{base}-{self.int8_layers}" if base else ""

    def _st_pooling(self) -> str | None:
        """Pooling mode of a sentence-transformers folder (``1_Pooling/config.json``)."""
        if not self.resolved.local:
            return None
        cfg = Path(self.resolved.location) / "1_Pooling" / "config.json"
        if not cfg.is_file():
            return None
        data = json.loads(cfg.read_text())
        if data.get("pooling_mode_cls_token"):
            return "cls"
        if data.get("pooling_mode_max_tokens"):
            return "max"
        return "mean"

    def _entailment_index(self, label2id: dict[str, int]) -> int:
        for label, idx in label2id.items():
            if label.lower().startswith("entail"):
                return int(idx)
        raise SpecError(f"{self.config.name}: NLI model has no entailment label in "
                        f"label2id {label2id}; use the classifier backend instead")

    # -- request side -------------------------------------------------------------------------

    def prepare(self, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        item = super().prepare(task, inputs)
        if task == "rerank":
            check_text(item["query"], "query")
            check_text(item["document"], "document")
            return item
        check_text(item["text"])
        if task == "zero_shot":
            item["prompts"] = fill_template(item["template"], item["labels"])
        return item

    def run(self, task: str, items: list[Any], progress: Progress | None = None) -> list[dict]:
        self.task_spec(task)
        if not items:
            return []
        if task == "rerank":
            logits = self._logits([it["query"] for it in items],
                                  [it["document"] for it in items])
            scores = logits[:, 0].sigmoid() if logits.shape[-1] == 1 else \
                logits.softmax(-1)[:, -1]
            return [{"score": float(s)} for s in scores.tolist()]
        texts = [it["text"] for it in items]
        if task == "embed":
            emb = self._embed(texts)
            return [{"embedding": e.tolist()} for e in emb]
        if task == "classify":
            logits = self._logits(texts)
            probs = logits.sigmoid() if self.multi_label else logits.softmax(-1)
            return [{"labels": ranked(self.labels, p.tolist())} for p in probs]
        if task == "zero_shot" and self.config.backend == "nli":
            pairs = [(it["text"], p) for it in items for p in it["prompts"]]
            entail = self._logits([a for a, _ in pairs], [b for _, b in pairs])[:, self.entail_idx]
            out, start = [], 0
            for it in items:
                n = len(it["prompts"])
                scores = entail[start:start + n].softmax(-1).tolist()
                out.append({"labels": ranked(it["labels"], scores)})
                start += n
            return out
        if task == "zero_shot":
            # one forward pass over the texts and every distinct prompt of the batch
            prompts = list(dict.fromkeys(p for it in items for p in it["prompts"]))
            emb = self._embed(texts + prompts)
            text_emb, prompt_emb = emb[:len(texts)], emb[len(texts):]
            where = {p: i for i, p in enumerate(prompts)}
            out = []
            for i, it in enumerate(items):
                idx = [where[p] for p in it["prompts"]]
                sims = prompt_emb[idx] @ text_emb[i]
                scores = (sims / self.temperature).softmax(-1).tolist()
                out.append({"labels": ranked(it["labels"], scores)})
            return out
        raise BadInput(f"task {task!r} is not implemented by the text family", field="task")

    # -- model side ---------------------------------------------------------------------------

    def _encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, Any]:
        batch = self.tokenizer(texts, pairs, padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def _embed(self, texts: list[str]) -> Any:
        torch = self._torch
        chunks = []
        with torch.inference_mode():
            for s in range(0, len(texts), FORWARD_CHUNK):
                batch = self._encode(texts[s:s + FORWARD_CHUNK])
                hidden = self.model(**batch).last_hidden_state.float()
                chunks.append(self.pool(hidden, batch["attention_mask"]).cpu())
        return torch.cat(chunks)

    def pool(self, hidden: Any, attention_mask: Any) -> Any:
        """Pooled (mean, cls or max over real tokens) and L2-normalised sentence vectors."""
        torch = self._torch
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, -math.inf).max(dim=1).values
        else:
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def _logits(self, texts: list[str], pairs: list[str] | None = None) -> Any:
        torch = self._torch
        chunks = []
        with torch.inference_mode():
            for s in range(0, len(texts), FORWARD_CHUNK):
                batch = self._encode(texts[s:s + FORWARD_CHUNK],
                                     pairs[s:s + FORWARD_CHUNK] if pairs else None)
                chunks.append(self.model(**batch).logits.float().cpu())
        return torch.cat(chunks)


FAMILY = Family(
    name="text",
    tasks={
        "embed": TaskSpec({"text": param("text")}, {"embedding": "embedding"},
                          doc="L2-normalised sentence embedding."),
        "zero_shot": TaskSpec(
            {"text": param("text"), "labels": param("list[text]"),
             "template": param("text", "{}", False)},
            {"labels": "labels"}, doc="Score each label against the text; scores sum to 1."),
        "classify": TaskSpec({"text": param("text")}, {"labels": "labels"},
                             doc="Sequence classification with the model's own labels."),
        "rerank": TaskSpec({"query": param("text"), "document": param("text")},
                           {"score": "float"},
                           doc="Relevance of one document to a query (a cross-encoder): one "
                               "pair per item, so each pair is cached on its own."),
    },
    backends={"embedding": ("embed", "zero_shot"), "nli": ("zero_shot",),
              "classifier": ("classify",), "onnx": ("embed", "zero_shot"),
              "cross_encoder": ("rerank",)},
    model=TextModel,
    # by path: ONNX Runtime's class imports this module, and only onnx models need it
    backend_models={"onnx": "deployments.text_onnx:OnnxTextModel"},
    tiny={"text-embedding": "deployments.tiny.text:build_tiny_embedding",
          "text-classifier": "deployments.tiny.text:build_tiny_classifier",
          "text-nli": "deployments.tiny.text:build_tiny_nli",
          "text-cross-encoder": "deployments.tiny.text:build_tiny_cross_encoder"},
)
