"""The value codec: msgpack behind a magic/version/CRC header. Never pickle.

A cache is a shared store: anyone who can write to Redis could plant a value, and
unpickling is code execution. So values are encoded with msgpack (``str``, ``int``,
``float``, ``bool``, ``None``, ``bytes`` kept raw, lists and dicts; tuples come back as
lists) and decoding only ever builds those inert types.

Layout: ``b"\\x00FSC"`` · version byte · CRC-32 of the body (big-endian) · msgpack body.
Anything else — a planted pickle, random bytes, a truncated or bit-flipped value, another
version, msgpack extension types — raises ``CorruptValue``; callers treat it as a miss.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack

MAGIC = b"\x00FSC"
VERSION = 1
_HEADER = struct.Struct(">4sBI")
HEADER_SIZE = _HEADER.size


class CorruptValue(ValueError):
    """Stored bytes that are not a value this codec wrote (or were damaged)."""


class UnencodableValue(TypeError):
    """A value holding a type the codec refuses (objects, arrays, huge ints ...)."""


def _no_ext(code: int, data: bytes) -> Any:
    raise CorruptValue(f"msgpack extension type {code} is not allowed")


def encode(value: Any) -> bytes:
    """Bytes for ``value``; raises ``UnencodableValue`` for unsupported types."""
    try:
        body = msgpack.packb(value, use_bin_type=True, datetime=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise UnencodableValue(f"cannot cache this value: {exc}") from exc
    return _HEADER.pack(MAGIC, VERSION, zlib.crc32(body)) + body


def decode(data: bytes | bytearray | memoryview) -> Any:
    """The value behind ``data``; raises ``CorruptValue`` for anything this codec did not write."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CorruptValue(f"stored value is a {type(data).__name__}, not bytes")
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise CorruptValue("stored value is shorter than the header")
    magic, version, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptValue("stored value has no fusion cache header")
    if version != VERSION:
        raise CorruptValue(f"stored value has codec version {version}, expected {VERSION}")
    body = memoryview(data)[HEADER_SIZE:]
    if zlib.crc32(body) != crc:
        raise CorruptValue("stored value fails its checksum")
    try:
        return msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=False,
                               ext_hook=_no_ext, timestamp=0)
    except CorruptValue:
        raise
    except Exception as exc:  # msgpack raises a variety of types for bad input
        raise CorruptValue(f"stored value does not decode: {exc}") from exc
