"""The ``fusion`` argument parser (stdlib argparse).

Pipeline inputs are not declared here: they depend on the pipeline, so ``main`` parses with
``parse_known_args`` and hands the leftover ``--NAME VALUE`` tokens to :mod:`.inputs`.
"""

from __future__ import annotations

import argparse

from fusion_client._version import __version__
from fusion_client.cli.keys import add_parsers as add_key_parsers
from fusion_client.cli.rerank import add_rerank


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # Given on the top-level parser with defaults, and again on every sub-command with
    # SUPPRESS, so that ``fusion --json models`` and ``fusion models --json`` both work.
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--url", default=default,
                        help="gateway URL (default: $FUSION_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", default=default,
                        help="API key (default: $FUSION_API_KEY)")
    parser.add_argument("--json", action="store_true",
                        default=argparse.SUPPRESS if suppress else False,
                        help="machine-readable JSON output")
    parser.add_argument("--timeout", type=float,
                        default=argparse.SUPPRESS if suppress else 60.0,
                        help="seconds per request (default 60)")
    parser.add_argument("--retries", type=int, default=argparse.SUPPRESS if suppress else 3,
                        help="retries on 503 / connection errors (default 3)")


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="PATH",
                        help="write image/audio outputs here (a file, or a folder); with "
                             "several binary outputs the output name is added to the file name")
    parser.add_argument("-i", "--input", metavar="NAME=VALUE", action="append", default=[],
                        help="an input given as NAME=VALUE (same as --NAME VALUE)")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--no-cache", dest="cache_control", action="store_const",
                       const="no-cache", help="recompute every step, then store the results")
    cache.add_argument("--no-store", dest="cache_control", action="store_const",
                       const="no-store", help="bypass the cache entirely")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusion", allow_abbrev=False,
        description="Command line of the fusion multimodal model gateway.",
        epilog="Inputs: --NAME VALUE, parsed by the pipeline's declared types.")
    parser.add_argument("--version", action="version", version=f"fusion-client {__version__}")
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, allow_abbrev=False)
        _common(p, suppress=True)
        return p

    add("pipelines", "list the pipelines and their input/output types")
    add("models", "list the served models")
    add("health", "check that the gateway answers")
    add("cache-stats", "show the cache counters")
    add("clear-cache", "clear the gateway's cache (admin key)")
    run = add("run", "run a pipeline and print its outputs")
    run.add_argument("pipeline")
    _run_options(run)
    stream = add("stream", "run a pipeline, showing steps and progress as they happen")
    stream.add_argument("pipeline")
    _run_options(stream)
    for p in (run, stream):
        p.add_argument("--explain", action="store_true",
                       help="print fusion explanations (fuse steps with explain: true) as a "
                            "table: each source's contribution and rank per label")
    chat = add("chat", "talk to a language model: one prompt, stdin, or a conversation on "
                       "a terminal; the answer streams as it is generated")
    chat.add_argument("prompt", nargs="?", help="the question (default: stdin, or ask "
                      "interactively when stdin is a terminal)")
    chat.add_argument("--model", default="llm", help="a model serving chat (default llm)")
    chat.add_argument("--system", help="a system message")
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument("--temperature", type=float, help="0: deterministic (and cached)")
    chat.add_argument("--top-p", type=float)
    chat.add_argument("--seed", type=int, help="makes sampling reproducible (and cached)")
    chat.add_argument("--stop", action="append", help="a stop string (repeatable)")
    chat.add_argument("--no-stream", action="store_true", help="print the answer at once")
    chat.add_argument("--json-schema", metavar="FILE",
                      help="answer JSON valid against the JSON schema in FILE (constrained "
                           "decoding on the gateway)")
    cache = chat.add_mutually_exclusive_group()
    cache.add_argument("--no-cache", dest="cache_control", action="store_const",
                       const="no-cache", help="recompute, then store")
    cache.add_argument("--no-store", dest="cache_control", action="store_const",
                       const="no-store", help="bypass the cache")
    feedback = add("feedback", "label a fused answer: fusion feedback REQUEST_ID LABEL, or "
                   "many: fusion feedback import labels.jsonl")
    feedback.add_argument("words", nargs="+", metavar="REQUEST_ID LABEL | import FILE")
    feedback.add_argument("--step", help="the fuse step, for a pipeline with several")
    feedback.add_argument("--weight", type=float, help="how much the label counts in a fit")
    feedback.add_argument("--pipeline", help="check that the answer came from this pipeline")
    fit = add("fit", "fit a fusion profile from a pipeline's labelled answers (admin key)")
    fit.add_argument("pipeline")
    fit.add_argument("--step", help="the fuse step, for a pipeline with several")
    fit.add_argument("--since", type=float, help="only answers since (epoch seconds)")
    fit.add_argument("--min-labels", type=int, help="labels needed at least")
    fit.add_argument("--test-fraction", type=float, help="share held out (default 0.3)")
    profiles = add("profiles", "list a pipeline's fusion profiles, or activate one")
    profiles.add_argument("pipeline")
    profiles.add_argument("--activate", metavar="ID", help="serve this profile (admin key; "
                          "'handwritten': the pipeline's own weights)")
    profiles.add_argument("--shadow", action="store_true", help="with --activate: run it "
                          "beside the live answer, without changing answers")
    profiles.add_argument("--step", help="with --activate handwritten: which fuse step")
    add_key_parsers(add, lambda p: _common(p, suppress=True))
    add_rerank(add)
    call = add("call", "call one task of one model")
    call.add_argument("model")
    call.add_argument("task")
    _run_options(call)
    return parser
