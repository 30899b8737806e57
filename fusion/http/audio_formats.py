"""Audio bodies of the OpenAI audio routes: speech formats and subtitle files.

Speech comes out of a ``tts`` model as a 16-bit WAV; this turns it into what
``POST /v1/audio/speech`` was asked for, with ``soundfile`` alone (its wheel carries
libsndfile 1.2 with LAME, mpg123 and Opus built in, so no system codec is needed):
``wav`` and ``flac`` at the voice's rate, ``mp3`` (MPEG layer III), ``opus`` (Ogg Opus, 24 kHz,
a rate Opus takes) and ``pcm`` as OpenAI sends it: raw signed 16-bit little-endian mono at
24 kHz. ``aac`` would need an AAC encoder, which no kept library ships: refused by name.

Subtitles (``srt``, ``vtt``) are written from a transcription's segments.
"""

from __future__ import annotations

import io
import re
import struct
from typing import Any

from fusion.errors import Unsupported
from fusion.resample import resample  # the routes take it from here too

SPEECH_FORMATS = {"wav": "audio/wav", "flac": "audio/flac", "pcm": "audio/pcm",
                  "mp3": "audio/mpeg", "opus": "audio/ogg"}
STREAMED_FORMATS = ("wav", "pcm")  # bytes can go out sentence by sentence
PCM_RATE = 24000  # OpenAI's pcm: 24 kHz, 16-bit signed little-endian, mono
SENTENCE_PAUSE_S = 0.2  # the silence the tts backend puts between sentences


def check_speech_format(fmt: str) -> str:
    if fmt not in SPEECH_FORMATS:
        raise Unsupported(f"response_format {fmt!r} is not supported; use one of "
                          f"{sorted(SPEECH_FORMATS)} (aac needs an encoder the gateway does "
                          "not ship)", field="response_format")
    return fmt


def read_wav(data: bytes) -> tuple[Any, int]:
    """WAV bytes → (float32 mono samples, sample rate)."""
    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples.mean(axis=1), rate


def pcm16(samples: Any) -> bytes:
    import numpy as np

    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def silence(rate: int, seconds: float = SENTENCE_PAUSE_S) -> bytes:
    return b"\x00\x00" * int(rate * seconds)


def encode_speech(wav: bytes, fmt: str) -> bytes:
    """A whole utterance (WAV bytes from the tts model) in ``fmt``."""
    import soundfile as sf

    if fmt == "wav":
        return wav
    samples, rate = read_wav(wav)
    if fmt == "pcm":
        return pcm16(resample(samples, rate, PCM_RATE))
    buf = io.BytesIO()
    if fmt == "flac":
        sf.write(buf, samples, rate, format="FLAC", subtype="PCM_16")
    elif fmt == "mp3":
        sf.write(buf, samples, rate, format="MP3", subtype="MPEG_LAYER_III")
    elif fmt == "opus":
        sf.write(buf, resample(samples, rate, PCM_RATE), PCM_RATE, format="OGG",
                 subtype="OPUS")
    else:
        check_speech_format(fmt)
    return buf.getvalue()


def streaming_wav_header(rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say "unknown" (0xFFFFFFFF), as streamed WAVs do;
    libsndfile, ffmpeg and browsers read up to the end of the body."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


def sentences(text: str) -> list[str]:
    """Split after ``.``, ``!``, ``?`` (and their CJK forms) followed by space; the pieces
    are synthesised one by one so the first is heard before the last is made."""
    parts = [p.strip() for p in re.split(r"(?<=[.!?。！？])\s+", text.strip())]
    return [p for p in parts if p]


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(segments: list[dict[str, Any]]) -> str:
    """SubRip: numbered cues from 1, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``."""
    cues = [f"{i}\n{_clock(s['start'], ',')} --> {_clock(s['end'], ',')}\n{s['text'].strip()}\n"
            for i, s in enumerate(segments, 1)]
    return "\n".join(cues)


def to_vtt(segments: list[dict[str, Any]]) -> str:
    """WebVTT: the ``WEBVTT`` line, then ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` cues."""
    cues = [f"{_clock(s['start'], '.')} --> {_clock(s['end'], '.')}\n{s['text'].strip()}\n"
            for s in segments]
    return "\n".join(["WEBVTT\n", *cues])
