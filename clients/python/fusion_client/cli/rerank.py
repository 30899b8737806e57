"""``fusion rerank``: rank documents against a query from a shell.

    fusion rerank "a kitten" "the stock market fell" "a kitten on a rug" "quantum physics"
    fusion rerank "a red car" --image a.png --image b.png --model clip --top-n 1
    fusion rerank "refund policy" --lines faq.txt --top-n 3 --json

Documents are the positional texts, then each line of ``--lines`` files, then ``--image``
files (a CLIP model ranks images against the text query). Prints one line per result, best
first: rank, index (into the documents as listed), score and the document.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import IO, Any

from fusion_client.cli.inputs import UsageError
from fusion_client.cli.output import write_json
from fusion_client.client import FusionClient


def add_rerank(add: Any) -> None:
    p: argparse.ArgumentParser = add("rerank", "rank documents by relevance to a query")
    p.add_argument("query")
    p.add_argument("documents", nargs="*", help="texts to rank")
    p.add_argument("--lines", metavar="FILE", action="append", default=[],
                   help="a text file: each non-empty line is a document (repeatable)")
    p.add_argument("--image", metavar="PATH", action="append", default=[],
                   help="an image document (a CLIP model; repeatable)")
    p.add_argument("--model", default="text", help="a model that ranks (default text)")
    p.add_argument("--top-n", type=int, help="print the best N only")


def cmd_rerank(client: FusionClient, args: argparse.Namespace, out: IO[str],
               err: IO[str]) -> None:
    docs: list[Any] = list(args.documents)
    for name in args.lines:
        try:
            docs += [line for line in Path(name).read_text().splitlines() if line.strip()]
        except OSError as exc:
            raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
    docs += [Path(p) for p in args.image]
    if not docs:
        raise UsageError("give documents: texts, --lines FILE or --image PATH")
    results = client.rerank(args.query, docs, model=args.model, top_n=args.top_n)
    if args.json:
        write_json(out, [r.model_dump(exclude_none=True) for r in results])
        return
    for rank, r in enumerate(results, start=1):
        doc = docs[r.index]
        shown = f"[image] {doc}" if isinstance(doc, Path) else doc
        out.write(f"{rank:>3}  #{r.index:<4} {r.relevance_score:8.4f}  {shown}\n")
