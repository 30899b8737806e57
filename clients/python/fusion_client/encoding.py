"""Turn Python values into the gateway's JSON values, and back.

Requests always travel as JSON with binary values (images, audio) as base64 strings
(``docs/api.md``). Accepted input values:

- ``str``, numbers, ``bool``, lists, dicts: sent as they are;
- ``bytes`` / ``bytearray`` / ``memoryview``: base64;
- ``pathlib.Path``: the file's bytes, base64;
- a ``str`` naming an existing file, where the declared type is ``image`` or ``audio``: the
  file's bytes (a ``str`` that is base64 or a ``data:`` URL is sent as is; anything else is a
  :class:`BadRequest` naming the field, before anything is sent);
- ``PIL.Image.Image``: encoded as PNG;
- a numpy float array where the type is ``audio`` (or an ``(array, sample_rate)`` tuple): a
  16-bit PCM mono WAV at 16 kHz (or the given rate), written with the stdlib ``wave`` module;
- other numpy arrays and numpy scalars: ``.tolist()`` / ``.item()``; ``uint8`` arrays where the
  type is ``image`` go through Pillow.

Pillow and numpy are optional: they are only imported when such a value is passed, or (Pillow)
to decode image outputs when it is installed.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import sys
import wave
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusion_client.errors import BadRequest

BINARY_TYPES = ("image", "audio")
DEFAULT_SAMPLE_RATE = 16000

# Input names whose type is known from the gateway's task catalog; used by ``call`` (the
# models listing does not carry per-task input types) and by pipelines missing a declaration.
CALL_INPUT_TYPES = {"image": "image", "audio": "audio", "labels": "list[text]"}


def _numpy():
    """numpy, if it has been imported by someone (a value cannot be an ndarray otherwise)."""
    return sys.modules.get("numpy")


def _pil_image_module():
    return sys.modules.get("PIL.Image")


def is_pil_image(value: Any) -> bool:
    mod = _pil_image_module()
    return mod is not None and isinstance(value, mod.Image)


def is_ndarray(value: Any) -> bool:
    np = _numpy()
    return np is not None and isinstance(value, np.ndarray)


def is_np_scalar(value: Any) -> bool:
    np = _numpy()
    return np is not None and isinstance(value, np.generic)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def element_type(type_: str | None) -> str | None:
    if type_ and type_.startswith("list[") and type_.endswith("]"):
        return type_[5:-1]
    return None


# ---- binary encoders ---------------------------------------------------------------------

def image_to_png(image: Any) -> bytes:
    """Encode a ``PIL.Image.Image`` as PNG bytes."""
    mode = image.mode
    if mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in mode else "RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def array_to_png(array: Any, field: str) -> bytes:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BadRequest(f"{field}: encoding a numpy array as an image needs Pillow "
                         "(pip install 'fusion-client[image]')", field=field) from exc
    np = _numpy()
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise BadRequest(f"{field}: an image array must be uint8 (HxW or HxWxC), "
                         f"got {arr.dtype}", field=field)
    return image_to_png(Image.fromarray(arr))


def encode_wav(samples: Any, sample_rate: int = DEFAULT_SAMPLE_RATE) -> bytes:
    """Encode samples (numpy array or sequence of floats in [-1, 1]) as a 16-bit mono WAV.

    Float samples are clipped to [-1, 1]; int16 samples are written as they are; a 2-D array
    is mixed down to mono (channels on the shorter axis).
    """
    np = _numpy()
    if np is None:
        import numpy as np  # noqa: F811 - only reached for sequences when numpy is absent
    arr = np.asarray(samples)
    if arr.ndim == 2:
        axis = 0 if arr.shape[0] < arr.shape[1] else 1
        arr = arr.astype(np.float64).mean(axis=axis) if arr.dtype.kind == "f" else \
            arr.mean(axis=axis).astype(arr.dtype)
    if arr.ndim != 1:
        raise ValueError(f"audio must be 1-D (or 2-D to mix down), got shape {arr.shape}")
    if arr.dtype.kind == "f":
        pcm = (np.clip(np.nan_to_num(arr), -1.0, 1.0) * 32767.0).round().astype("<i2")
    elif arr.dtype == np.int16:
        pcm = arr.astype("<i2")
    elif arr.dtype.kind in "iu":
        info = np.iinfo(arr.dtype)
        mid, half = (info.max + info.min + 1) / 2, (info.max - info.min + 1) / 2
        scaled = (arr.astype(np.float64) - mid) / half
        pcm = (np.clip(scaled, -1.0, 1.0) * 32767.0).round().astype("<i2")
    else:
        raise ValueError(f"audio samples must be numbers, got dtype {arr.dtype}")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def decode_wav(data: bytes) -> tuple[Any, int]:
    """Decode 16-bit PCM WAV bytes into ``(float32 numpy array in [-1, 1], sample_rate)``.

    Multi-channel audio is mixed down to mono. Needs numpy.
    """
    import numpy as np

    with wave.open(io.BytesIO(data), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError("only 16-bit PCM WAV is supported")
        rate, channels = w.getframerate(), w.getnchannels()
        frames = w.readframes(w.getnframes())
    arr = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        arr = arr.reshape(-1, channels).mean(axis=1)
    return arr, rate


# ---- input encoding ----------------------------------------------------------------------

def _read_file(path: str | os.PathLike, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BadRequest(f"{field}: cannot read {str(path)!r}: {exc.strerror or exc}",
                         field=field) from exc


def looks_like_file(value: Any) -> bool:
    """Whether ``value`` is a ``str`` naming an existing file (cheap, no read)."""
    if not isinstance(value, str) or not value or len(value) > 4096 or "\0" in value:
        return False
    try:
        return os.path.isfile(value)
    except (OSError, ValueError):
        return False


def encode_value(value: Any, type_: str | None, field: str) -> Any:
    """Encode one input value for JSON; ``type_`` is the declared type, if known."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if type_ in BINARY_TYPES:
            if looks_like_file(value):
                return b64(_read_file(value, field))
            if value.startswith("data:") and "," in value:
                value = value.split(",", 1)[1]
            if _b64decode(value) is None:
                shown = value if len(value) <= 80 else value[:77] + "..."
                raise BadRequest(f"{field}: no such file {shown!r} (and not base64 {type_} data)",
                                 field=field)
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return b64(bytes(value))
    if isinstance(value, os.PathLike):
        return b64(_read_file(value, field))
    if is_pil_image(value):
        return b64(image_to_png(value))
    if is_np_scalar(value):
        return value.item()
    if is_ndarray(value):
        if type_ == "audio":
            return b64(_wav_or_bad(value, DEFAULT_SAMPLE_RATE, field))
        if type_ == "image":
            return b64(array_to_png(value, field))
        if value.dtype.kind in "fiubU":
            return value.tolist()
        raise BadRequest(f"{field}: cannot send a numpy array of dtype {value.dtype}",
                         field=field)
    if isinstance(value, tuple) and type_ == "audio" and len(value) == 2 \
            and isinstance(value[1], int) and not isinstance(value[1], bool):
        return b64(_wav_or_bad(value[0], value[1], field))
    if isinstance(value, list | tuple):
        inner = element_type(type_)
        return [encode_value(v, inner, f"{field}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): encode_value(v, None, f"{field}.{k}") for k, v in value.items()}
    raise BadRequest(f"{field}: cannot send a value of type {type(value).__name__}",
                     field=field)


def _wav_or_bad(samples: Any, rate: int, field: str) -> bytes:
    try:
        return encode_wav(samples, rate)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"{field}: {exc}", field=field) from exc


def encode_inputs(inputs: Mapping[str, Any], types: Mapping[str, str] | None) -> dict[str, Any]:
    """Encode all inputs; ``types`` maps input name → declared type (unknown names: guessed)."""
    out: dict[str, Any] = {}
    for name, value in inputs.items():
        type_ = (types or {}).get(name) or CALL_INPUT_TYPES.get(name)
        out[name] = encode_value(value, type_, f"inputs.{name}")
    return out


# ---- output decoding ---------------------------------------------------------------------

def _b64decode(value: str) -> bytes | None:
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _pil_open(data: bytes) -> Any:
    try:
        from PIL import Image
    except ImportError:
        return data
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except Exception:  # not an image Pillow can read: hand back the bytes
        return data


def decode_value(value: Any, type_: str | None, decode_images: bool = True) -> Any:
    """Decode one output value by its declared type (base64 → bytes → PIL image)."""
    inner = element_type(type_)
    if inner is not None and isinstance(value, list):
        return [decode_value(v, inner, decode_images) for v in value]
    if type_ in BINARY_TYPES and isinstance(value, str):
        data = _b64decode(value)
        if data is None:
            return value
        if type_ == "image" and decode_images:
            return _pil_open(data)
        return data
    return value


def decode_outputs(outputs: Mapping[str, Any], types: Mapping[str, str],
                   decode_images: bool = True) -> dict[str, Any]:
    return {k: decode_value(v, types.get(k), decode_images) for k, v in outputs.items()}


def sniff_extension(data: bytes) -> str:
    """A file extension for encoded media bytes (``.bin`` when unknown)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return ".wav"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data.startswith(b"GIF8"):
        return ".gif"
    if data.startswith(b"fLaC"):
        return ".flac"
    if data.startswith(b"OggS"):
        return ".ogg"
    if data[:3] == b"ID3" or data[:2] == b"\xff\xfb":
        return ".mp3"
    return ".bin"
