"""Whisper segments and words in OpenAI's ``verbose_json`` shape, for both audio backends.

Times are seconds rounded to the millisecond and kept within the audio: a model may place a
timestamp past the end (random weights do, real ones by a few ms), and a subtitle cue or a
word past the end of the file helps no one.
"""

from __future__ import annotations

from typing import Any


def clip_time(t: float, duration: float) -> float:
    """A time in seconds, rounded to ms and kept within the audio (a model may overshoot)."""
    return round(min(max(float(t), 0.0), duration), 3)


def segment_dict(n: int, start: float, end: float, text: str, duration: float,
                 **extra: Any) -> dict[str, Any]:
    """One segment in OpenAI's ``verbose_json`` shape; scores a backend lacks are ``None``."""
    seg = {"id": n, "seek": 0, "start": clip_time(start, duration),
           "end": clip_time(max(start, end), duration), "text": text.strip(), "tokens": [],
           "temperature": None, "avg_logprob": None, "compression_ratio": None,
           "no_speech_prob": None}
    for key, value in extra.items():
        seg[key] = round(value, 4) if isinstance(value, float) and key != "temperature" \
            else value
    return seg
