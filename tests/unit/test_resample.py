"""Resampling low-passes before it decimates: 48 kHz audio going to 16 kHz (what Whisper takes)
keeps what lies under 8 kHz and drops what lies above, instead of folding it back.

Linear interpolation, the resampler before ``soxr``, turns a 12 kHz tone at 48 kHz into a
4 kHz tone at 16 kHz at nearly full strength; the tests pin that this no longer happens on
both paths that resample: decoding an upload (``deployments.media``) and encoding speech for
the OpenAI audio route (``fusion.http.audio_formats``).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from deployments.media import decode_audio
from fusion.http.audio_formats import PCM_RATE, encode_speech
from fusion.resample import resample


def tone(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[spectrum.argmax()])


def wav(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def test_a_tone_above_the_new_nyquist_is_suppressed_not_aliased():
    high = tone(12_000, 48_000)
    out = resample(high, 48_000, 16_000)
    assert out.dtype == np.float32 and out.size == 16_000
    assert rms(out[200:-200]) < 0.01 * rms(high)  # > 40 dB down (edges: filter ramp-up)
    # what linear interpolation made of it: a 4 kHz tone at about full strength
    linear = np.interp(np.linspace(0, high.size - 1, 16_000), np.arange(high.size), high)
    assert rms(linear) > 0.5 * rms(high) and peak_hz(linear, 16_000) == pytest.approx(4000, 5)


@pytest.mark.parametrize("rate, target", [(48_000, 16_000), (44_100, 16_000), (22_050, 24_000)])
def test_a_tone_below_it_passes_at_its_own_frequency(rate, target):
    low = tone(1000, rate)
    out = resample(low, rate, target)
    assert out.size == round(low.size * target / rate)
    assert rms(out[200:-200]) == pytest.approx(rms(low), rel=0.02)
    assert peak_hz(out, target) == pytest.approx(1000, abs=2)


def test_same_rate_and_empty_input_come_back_as_float32():
    x = np.arange(5, dtype=np.float64)
    assert resample(x, 16_000, 16_000).dtype == np.float32
    assert resample(np.zeros(0), 48_000, 16_000).size == 0


def test_uploaded_48k_audio_is_low_passed_when_decoded_for_the_model():
    mixed = tone(1000, 48_000) + tone(12_000, 48_000)
    out = decode_audio(wav(mixed, 48_000), sampling_rate=16_000)
    assert out.size == 16_000
    assert rms(out[200:-200]) == pytest.approx(rms(tone(1000, 48_000)), rel=0.02)
    assert peak_hz(out, 16_000) == pytest.approx(1000, abs=2)


def test_speech_encoded_as_pcm_is_resampled_to_openai_rate():
    voice = tone(1000, 22_050, amplitude=0.25)
    pcm = encode_speech(wav(voice, 22_050), "pcm")
    out = np.frombuffer(pcm, "<i2").astype(np.float32) / 32767
    assert out.size == round(voice.size * PCM_RATE / 22_050)
    assert peak_hz(out, PCM_RATE) == pytest.approx(1000, abs=2)
