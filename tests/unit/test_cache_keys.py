"""Cache keys: stable across processes, sensitive to everything that changes a result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fusion.cache import KEY_VERSION, digest, lock_key, pipeline_key, step_key
from fusion.cache.keys import namespace_pattern

ROOT = Path(__file__).resolve().parents[2]
INPUTS = {"image": b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "max_new_tokens": 20,
          "labels": ["cat", "dog"], "template": "a photo of a {}", "t": 0.5, "x": None}


def test_format() -> None:
    key = step_key("fusion", "hub:org/model@abc123", "caption", INPUTS)
    ns, version, fp, task, sha = key.split(":")
    assert (ns, version, task) == ("fusion", KEY_VERSION, "caption")
    assert fp == "hub%3Aorg/model@abc123"  # readable, but never a ':' or a glob character
    assert len(sha) == 64 and int(sha, 16) >= 0
    pk = pipeline_key("fusion", "d" * 64, {"text": "hi"})
    assert pk.startswith(f"fusion:{KEY_VERSION}:pipeline:{'d' * 64}:")
    assert lock_key("fusion", key) == "fusion:lock:" + key.split(":", 1)[1]


def test_golden_value() -> None:
    """If this changes, the canonical encoding changed: bump KEY_VERSION."""
    key = step_key("ns", "tiny:clip", "zero_shot", {"image": b"x", "labels": ["a", "b"], "n": 1})
    assert key == ("ns:v1:tiny%3Aclip:zero_shot:"
                   "3fda69a151e125ad6f24cbb0998046252bd1a55a2a258e750e506c017e1ab970")


def test_same_inputs_same_key_in_any_order() -> None:
    a = step_key("ns", "fp", "t", {"a": 1, "b": [1, 2], "c": {"x": b"1", "y": "2"}})
    b = step_key("ns", "fp", "t", {"c": {"y": "2", "x": b"1"}, "b": [1, 2], "a": 1})
    assert a == b
    assert step_key("ns", "fp", "t", {"l": (1, 2)}) == step_key("ns", "fp", "t", {"l": [1, 2]})
    assert step_key("ns", "fp", "t", {"b": bytearray(b"ab")}) == step_key(
        "ns", "fp", "t", {"b": b"ab"})


def test_stable_across_processes() -> None:
    code = ("import json,sys; from fusion.cache import step_key, digest; "
            "i={'image': bytes(range(256)), 'labels': ['cat','dog'], 'k': {'z': 1, 'a': 2.5}}; "
            "print(json.dumps([step_key('ns','fp','task',i), digest({'s': i})]))")
    here = [step_key("ns", "fp", "task", {"image": bytes(range(256)), "labels": ["cat", "dog"],
                                          "k": {"a": 2.5, "z": 1}}),
            digest({"s": {"labels": ["cat", "dog"], "image": bytes(range(256)),
                          "k": {"z": 1, "a": 2.5}}})]
    for seed in ("1", "12345"):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed})
        assert json.loads(out.stdout) == here


@pytest.mark.parametrize("a, b", [
    ({"a": 1}, {"a": "1"}),
    ({"a": 1}, {"a": 1.0}),
    ({"a": 1}, {"a": True}),
    ({"a": 0}, {"a": False}),
    ({"a": None}, {"a": "None"}),
    ({"a": b"x"}, {"a": "x"}),
    ({"a": []}, {"a": {}}),
    ({"a": [1, 2]}, {"a": [2, 1]}),
    ({"a": ["ab"]}, {"a": ["a", "b"]}),
    ({"a": "b"}, {"ab": ""}),
    ({"a": 1}, {"a": 1, "b": None}),
    ({"a": {"b": 1}}, {"a": [["b", 1]]}),
    ({"a": 0.0}, {"a": -0.0}),
])
def test_lookalikes_differ(a: dict, b: dict) -> None:
    assert step_key("ns", "fp", "t", a) != step_key("ns", "fp", "t", b)


def test_every_part_matters() -> None:
    base = step_key("ns", "fp1", "caption", INPUTS)
    assert step_key("ns", "fp1", "caption", dict(INPUTS)) == base
    assert step_key("ns", "fp2", "caption", INPUTS) != base
    assert step_key("ns", "fp1", "ocr", INPUTS) != base
    assert step_key("ns2", "fp1", "caption", INPUTS) != base
    assert step_key("ns", "fp1", "caption", {**INPUTS, "max_new_tokens": 21}) != base
    flipped = bytearray(INPUTS["image"])
    flipped[-1] ^= 1
    assert step_key("ns", "fp1", "caption", {**INPUTS, "image": bytes(flipped)}) != base
    assert pipeline_key("ns", "d1", INPUTS) != pipeline_key("ns", "d2", INPUTS)
    # a step and a pipeline never share a key, even with look-alike segments
    assert step_key("ns", "pipeline", "d1", INPUTS) != pipeline_key("ns", "d1", INPUTS)


def test_segment_text_cannot_collide() -> None:
    # ':' in a fingerprint is escaped, and the hash covers the full text anyway
    assert step_key("ns", "a:b", "t", {}) != step_key("ns", "a%3Ab", "t", {})
    long_fp = "x" * 500
    key = step_key("ns", long_fp, "t", {})
    assert len(key) < 250 and key != step_key("ns", long_fp + "y", "t", {})


def test_nan_is_one_value() -> None:
    assert step_key("n", "f", "t", {"v": float("nan")}) == step_key("n", "f", "t",
                                                                    {"v": -float("nan")})


@pytest.mark.parametrize("bad", [{"a": object()}, {"a": {1, 2}}, {"a": 1j}])
def test_unsupported_values_raise(bad: dict) -> None:
    with pytest.raises(TypeError):
        step_key("ns", "fp", "t", bad)


@pytest.mark.parametrize("ns", ["", "a:b", "a*", "with space", "x" * 65, "a[b]"])
def test_namespace_checked(ns: str) -> None:
    with pytest.raises(ValueError):
        step_key(ns, "fp", "t", {})


def test_namespace_pattern() -> None:
    assert namespace_pattern("fusion") == "fusion:*"
