"""Decode and encode media at the model boundary, turning every failure into ``BadInput``.

Decoding happens in the replica (where the pixels are needed), before batching, so an
undecodable upload fails its own request with a 4xx naming the field and nothing else.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from fusion.errors import BadInput
from fusion.resample import resample

MAX_IMAGE_PIXELS = 4096 * 4096
MAX_AUDIO_SECONDS = 600.0


def decode_image(data: bytes, field: str = "image",
                 max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Bytes of any PIL-readable image → RGB image; 4xx for junk, bombs and empty files."""
    if not data:
        raise BadInput(f"{field} is empty", field=field)
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > max_pixels:
                raise BadInput(f"{field} is {img.width}x{img.height}, over the "
                               f"{max_pixels} pixel limit", field=field)
            if img.width < 1 or img.height < 1:
                raise BadInput(f"{field} has no pixels", field=field)
            return img.convert("RGB")
    except BadInput:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInput(f"{field} is not a decodable image ({type(exc).__name__})",
                       field=field) from exc


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def decode_audio(data: bytes, field: str = "audio", sampling_rate: int = 16000,
                 max_seconds: float = MAX_AUDIO_SECONDS) -> np.ndarray:
    """Bytes of an audio file (WAV/FLAC/OGG/MP3…) → mono float32 at ``sampling_rate``."""
    if not data:
        raise BadInput(f"{field} is empty", field=field)
    try:
        import soundfile as sf

        wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        wav = wav.mean(axis=1)
    except Exception:  # soundfile cannot read it: try PyAV (mp3, m4a, webm …)
        try:
            from faster_whisper.audio import decode_audio as av_decode

            wav, sr = av_decode(io.BytesIO(data), sampling_rate=sampling_rate), sampling_rate
        except Exception as exc:
            raise BadInput(f"{field} is not decodable audio ({type(exc).__name__})",
                           field=field) from exc
    if wav.size == 0:
        raise BadInput(f"{field} has no samples", field=field)
    if wav.size / sr > max_seconds:
        raise BadInput(f"{field} is {wav.size / sr:.0f}s long, over the {max_seconds:.0f}s "
                       "limit", field=field)
    return resample(wav, sr, sampling_rate)  # low-passed: 48 kHz uploads do not alias


def encode_wav(samples: np.ndarray, sampling_rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, sampling_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
