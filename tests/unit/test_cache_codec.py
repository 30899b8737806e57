"""The value codec: exact round trips of result values; anything foreign is CorruptValue."""

from __future__ import annotations

import os
import pickle

import msgpack
import pytest

from fusion.cache import CorruptValue, UnencodableValue, decode, encode
from fusion.cache.codec import HEADER_SIZE

VALUE = {
    "text": "a cat on a mat — ünïcode ✓",
    "image": b"\x89PNG\r\n\x1a\n\x00\xff" * 100,
    "audio": bytes(range(256)),
    "embedding": [0.1, -2.5, 3.0, 1e-300, float("inf")],
    "labels": [{"label": "cat", "score": 0.9}, {"label": "dog", "score": 0.1}],
    "nested": [[1, [2, [b"deep", None]]], {"k": {"v": [True, False]}}],
    "int": 2**63 - 1, "neg": -(2**63), "zero": 0, "f": 1.0, "none": None, "empty": {}, "el": [],
}


def test_round_trip_is_exact() -> None:
    back = decode(encode(VALUE))
    assert back == VALUE
    assert type(back["image"]) is bytes and type(back["f"]) is float
    assert type(back["int"]) is int and back["nested"][1]["k"]["v"][0] is True


def test_tuples_become_lists_and_subclasses_their_base() -> None:
    class Str(str):
        pass

    assert decode(encode({"t": (1, 2), "s": Str("x"), "b": bytearray(b"y")})) == {
        "t": [1, 2], "s": "x", "b": b"y"}


@pytest.mark.parametrize("bad", [{"o": object()}, {"i": 2**64}, {"s": {1}}, {"c": 1j}])
def test_unencodable(bad: dict) -> None:
    with pytest.raises(UnencodableValue):
        encode(bad)


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_pickle_payload_is_never_executed(tmp_path) -> None:
    marker = tmp_path / "pwned"
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        payload = pickle.dumps(_Evil(str(marker)), protocol=protocol)
        with pytest.raises(CorruptValue):
            decode(payload)
        # even behind a valid-looking header with the right magic
        with pytest.raises(CorruptValue):
            decode(encode({})[:HEADER_SIZE] + payload)
    assert not marker.exists()


def _corruptions() -> list[bytes]:
    good = encode(VALUE)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x40
    wrong_version = bytearray(good)
    wrong_version[4] = 99
    return [b"", b"\x00FS", os.urandom(64), good[:-1], bytes(flipped), bytes(wrong_version),
            b"\x00FSC\x01" + b"\x00" * 4,  # header with a checksum of nothing, then nothing
            msgpack.packb(VALUE, use_bin_type=True),  # raw msgpack without the header
            b'{"json": true}']


@pytest.mark.parametrize("data", _corruptions())
def test_corrupt_values(data: bytes) -> None:
    with pytest.raises(CorruptValue):
        decode(data)


def test_extension_types_rejected() -> None:
    import struct
    import zlib

    body = msgpack.packb(msgpack.ExtType(5, b"payload"))
    data = struct.pack(">4sBI", b"\x00FSC", 1, zlib.crc32(body)) + body
    with pytest.raises(CorruptValue):
        decode(data)


def test_non_bytes_rejected() -> None:
    with pytest.raises(CorruptValue):
        decode("a string")  # type: ignore[arg-type]
