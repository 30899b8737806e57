"""Content addresses for cached results.

A key reads ``namespace:version:fingerprint:task:sha256hex``. The hash is taken over a
canonical, type-tagged encoding of everything that determines the result (the model
fingerprint, the task and every input and parameter), so:

* the same inputs give the same key in every process and after every restart (no ``hash()``,
  no dependence on dict order: mapping keys are sorted by their canonical encoding);
* values that merely *look* alike give different keys: ``1`` vs ``"1"`` vs ``1.0`` vs
  ``True``, ``b"x"`` vs ``"x"``, ``[]`` vs ``{}``;
* bytes (images, audio) are hashed as bytes, streamed into the hash without copies.

The readable segments (``fingerprint``, ``task``) are only for people and for ``SCAN``;
uniqueness comes from the hash, which covers their full text. Bump ``KEY_VERSION`` whenever
the canonical encoding or the value codec changes, so old entries are never read back.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

KEY_VERSION = "v1"

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SEGMENT_SAFE = "@/._-+=~"
_SEGMENT_MAX = 96
_DOMAIN = b"fusion-cache-key\x00" + KEY_VERSION.encode() + b"\x00"


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is usable as a key prefix (letters, digits, ``_ . -``)."""
    if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
        raise ValueError(f"cache namespace {namespace!r} must be 1-64 characters of "
                         "letters, digits, '_', '.' or '-'")
    return namespace


def _segment(text: str) -> str:
    """A readable key segment: percent-escaped (no ':' or glob characters), length-capped."""
    seg = quote(str(text), safe=_SEGMENT_SAFE) or "_"
    if len(seg) > _SEGMENT_MAX:
        seg = seg[: _SEGMENT_MAX - 17] + "~" + hashlib.sha256(seg.encode()).hexdigest()[:16]
    return seg


def _length(n: int) -> bytes:
    return str(n).encode() + b":"


def _feed(h: Any, value: Any, depth: int = 0) -> None:
    """Feed the canonical encoding of ``value`` into hash object ``h``."""
    if depth > 100:
        raise ValueError("value nested too deeply for a cache key")
    if value is None:
        h.update(b"N")
    elif value is True:
        h.update(b"T")
    elif value is False:
        h.update(b"F")
    elif isinstance(value, int):
        digits = str(int(value)).encode()
        h.update(b"i" + _length(len(digits)) + digits)
    elif isinstance(value, float):
        # IEEE-754 big-endian; one canonical NaN. 0.0 and -0.0 stay distinct (a false miss
        # is harmless, a false hit is not).
        h.update(b"f" + (b"nan" if math.isnan(value) else struct.pack(">d", value)))
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        h.update(b"s" + _length(len(raw)))
        h.update(raw)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = memoryview(value).cast("B")
        h.update(b"b" + _length(raw.nbytes))
        h.update(raw)
    elif isinstance(value, list | tuple):
        h.update(b"l" + _length(len(value)))
        for item in value:
            _feed(h, item, depth + 1)
    elif isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            kh = hashlib.sha256()
            _feed(kh, k, depth + 1)
            items.append((kh.digest(), v))
        items.sort(key=lambda kv: kv[0])
        if len({k for k, _ in items}) != len(items):
            raise ValueError("mapping has keys with the same canonical encoding")
        h.update(b"d" + _length(len(items)))
        for kd, v in items:
            h.update(kd)
            _feed(h, v, depth + 1)
    else:
        raise TypeError(f"cannot build a cache key from a value of type {type(value).__name__}; "
                        "use str, int, float, bool, None, bytes, lists and dicts")


def digest(value: Any) -> str:
    """sha256 hex of the canonical encoding of ``value`` (e.g. for a pipeline spec digest)."""
    h = hashlib.sha256(_DOMAIN + b"digest\x00")
    _feed(h, value)
    return h.hexdigest()


def step_key(namespace: str, fingerprint: str, task: str, inputs: Mapping[str, Any]) -> str:
    """Key of one model step: ``namespace:v1:fingerprint:task:sha256(fp, task, inputs)``."""
    check_namespace(namespace)
    h = hashlib.sha256(_DOMAIN + b"step\x00")
    _feed(h, str(fingerprint))
    _feed(h, str(task))
    _feed(h, inputs)
    return f"{namespace}:{KEY_VERSION}:{_segment(fingerprint)}:{_segment(task)}:{h.hexdigest()}"


def pipeline_key(namespace: str, spec_digest: str, inputs: Mapping[str, Any]) -> str:
    """Key of a whole pipeline run: ``namespace:v1:pipeline:spec_digest:sha256(...)``.

    ``spec_digest`` must change whenever the result could: compute it with ``digest()`` over
    the spec *and* the fingerprints of the models it uses.
    """
    check_namespace(namespace)
    h = hashlib.sha256(_DOMAIN + b"pipeline\x00")
    _feed(h, str(spec_digest))
    _feed(h, inputs)
    return f"{namespace}:{KEY_VERSION}:pipeline:{_segment(spec_digest)}:{h.hexdigest()}"


def lock_key(namespace: str, key: str) -> str:
    """The single-flight lock of ``key``; it stays inside the namespace (``ns:lock:...``)."""
    prefix = namespace + ":"
    rest = key[len(prefix):] if key.startswith(prefix) else key
    return f"{namespace}:lock:{rest}"


def namespace_pattern(namespace: str) -> str:
    """``SCAN MATCH`` pattern of every key in ``namespace`` (glob characters escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", check_namespace(namespace)) + ":*"
