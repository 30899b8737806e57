"""OpenAI's audio routes: ``POST /v1/audio/speech`` and ``POST /v1/audio/transcriptions``.

Speech runs any ``tts`` model's ``speak`` task; OpenAI's voice names (``alloy``...) are
aliases of the model's voices (its ``voice_aliases``, configurable per model). ``wav`` and
``pcm`` stream: the text is split into sentences, each synthesised (and cached) on its own
and sent as soon as it is ready, so playback starts after the first sentence; the first is
made before the response starts, so a bad voice or an overloaded model is still a plain
4xx/5xx. Other formats are encoded whole (``fusion.http.audio_formats``).

Transcriptions run any ``audio`` model's ``transcribe`` task and answer ``json``, ``text``,
``verbose_json`` (``duration``, ``language``, ``segments``, and ``words`` with
``timestamp_granularities[]=word``), ``srt`` and ``vtt``. ``prompt``, ``temperature`` and
``language`` go to the model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from fusion.core.gateway import Gateway
from fusion.core.run_types import CachePolicy
from fusion.errors import BadInput, FusionError, Unsupported
from fusion.http.audio_formats import (
    PCM_RATE,
    SPEECH_FORMATS,
    STREAMED_FORMATS,
    check_speech_format,
    encode_speech,
    pcm16,
    read_wav,
    resample,
    sentences,
    silence,
    streaming_wav_header,
    to_srt,
    to_vtt,
)
from fusion.http.auth import require_key
from fusion.http.context import cache_policy, gateway, request_deadline
from fusion.http.openai.compat import OPENAI_ERRORS, name_params, pick_model
from fusion.http.payloads import read_form

log = logging.getLogger("fusion.http.openai.audio")

TRANSCRIPT_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
GRANULARITIES = ("segment", "word")


_TRANSCRIPTION_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {"type": "object", "required": ["file", "model"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "the audio file"},
        "model": {"type": "string", "description": "an audio model (GET /v1/models)"},
        "response_format": {"type": "string", "enum": list(TRANSCRIPT_FORMATS),
                            "default": "json"},
        "language": {"type": "string", "description": "code or English name; empty: detect"},
        "prompt": {"type": "string"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
        "timestamp_granularities[]": {"type": "array", "items": {
            "type": "string", "enum": list(GRANULARITIES)},
            "description": "with verbose_json; word adds words"}}}}}}}


class VoiceId(BaseModel):
    id: str


class SpeechRequest(BaseModel):
    model: str
    input: str = Field(min_length=1, max_length=4096)
    voice: str | VoiceId = ""  # a name, or OpenAI's custom-voice form {"id": name}
    response_format: str = "mp3"  # OpenAI's default
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = None
    stream_format: str | None = None


router = APIRouter(tags=["openai"], dependencies=[Depends(require_key)])


@router.post("/v1/audio/speech", response_class=Response, responses={
    200: {"content": {t: {} for t in SPEECH_FORMATS.values()}, "description": "the audio"},
    **OPENAI_ERRORS}, dependencies=[Depends(name_params({"text": "input"}))])
async def speech(req: SpeechRequest, gw: Gateway = Depends(gateway),
                 deadline: float | None = Depends(request_deadline),
                 policy: CachePolicy = Depends(cache_policy)) -> Response:
    """Speak ``input`` in a voice of a ``tts`` model; ``wav`` and ``pcm`` stream by sentence."""
    model = pick_model(gw, req.model, "speak")
    fmt = check_speech_format(req.response_format)
    if req.stream_format not in (None, "audio"):
        raise Unsupported("stream_format 'sse' is not supported; the audio itself streams "
                          "(wav, pcm)", field="stream_format")
    if req.instructions:
        raise Unsupported("instructions are not supported by the gateway's voices",
                          field="instructions")
    voice = await _voice(gw, model, req.voice if isinstance(req.voice, str) else req.voice.id)

    async def speak(text: str) -> bytes:
        out, _ = await gw.call_model(model, "speak", {
            "text": text, "voice": voice, "speed": req.speed}, policy, deadline=deadline)
        return out["audio"]

    media = SPEECH_FORMATS[fmt]
    parts = sentences(req.input) if fmt in STREAMED_FORMATS else [req.input]
    first = await speak(parts[0] if parts else req.input)
    if len(parts) <= 1:
        return Response(encode_speech(first, fmt), media_type=media)
    return StreamingResponse(_stream(first, parts[1:], speak, fmt), media_type=media)


@router.post("/v1/audio/transcriptions", openapi_extra=_TRANSCRIPTION_BODY, responses={
    200: {"content": {"application/json": {"schema": {"type": "object"}}, "text/plain": {},
                      "text/vtt": {}},
          "description": "the transcript in response_format"}, **OPENAI_ERRORS},
    dependencies=[Depends(name_params({"audio": "file",
                                       "timestamps": "timestamp_granularities"}))])
async def transcriptions(request: Request, gw: Gateway = Depends(gateway),
                         deadline: float | None = Depends(request_deadline),
                         policy: CachePolicy = Depends(cache_policy)) -> Any:
    """Transcribe an uploaded audio file."""
    try:
        form = await request.form(max_part_size=gw.config.limits.max_body_bytes)
    except Exception as exc:
        raise BadInput(f"expected multipart form data ({exc})", field="file") from None
    fields = await read_form(form, {"file": "audio"}, gw.config.limits.max_body_bytes,
                             prefix="")
    if not isinstance(fields.get("file"), bytes):
        raise BadInput("file is required (multipart upload)", field="file")
    model = pick_model(gw, fields.get("model"), "transcribe")
    if str(fields.get("stream", "")).lower() == "true":
        raise Unsupported("stream is not supported for transcriptions: the whole transcript "
                          "comes in one response", field="stream")
    fmt = fields.get("response_format") or "json"
    if fmt not in TRANSCRIPT_FORMATS:
        raise BadInput(f"response_format must be one of {list(TRANSCRIPT_FORMATS)}",
                       field="response_format")
    grains = [*form.getlist("timestamp_granularities[]"),
              *form.getlist("timestamp_granularities")]
    for grain in grains:
        if grain not in GRANULARITIES:
            raise BadInput(f"timestamp_granularities: {grain!r} is not one of "
                           f"{list(GRANULARITIES)}", field="timestamp_granularities")
    if grains and fmt != "verbose_json":
        raise BadInput("timestamp_granularities needs response_format verbose_json",
                       field="timestamp_granularities")
    timestamps = "" if fmt in ("json", "text") else ("word" if "word" in grains else "segment")
    inputs: dict[str, Any] = {"audio": fields["file"], "timestamps": timestamps,
                              "temperature": _temperature(fields.get("temperature"))}
    for name in ("language", "prompt"):
        if fields.get(name):
            inputs[name] = str(fields[name])
    out, _ = await gw.call_model(model, "transcribe", inputs, policy, deadline=deadline)
    return _transcript(out, fmt, words="word" in grains)


async def _voice(gw: Gateway, model: str, voice: str) -> str:
    """The voice to ask the model for: an OpenAI name (``alloy``) becomes the model's voice
    through the table it reports (``voice_aliases``), so the cache keys the voice actually
    heard; anything else is checked against the voices it reports, so an unknown name gets a
    400 listing the real ones (and the aliases) before any synthesis."""
    info = await gw.model_info(model)
    voices = list(info.get("voices") or [])
    aliases = dict(info.get("voice_aliases") or {})
    voice = aliases.get(voice, voice)
    if voice and voices and voice not in voices:
        raise Unsupported(f"voice {voice!r} is not a voice of model '{model}'; use one of "
                          f"{voices} or OpenAI's names {sorted(aliases)}", field="voice")
    return voice


def _temperature(value: Any) -> float:
    if value in (None, ""):
        return 0.0
    try:
        temp = float(value)
    except (TypeError, ValueError):
        raise BadInput("temperature must be a number between 0 and 1",
                       field="temperature") from None
    if not 0.0 <= temp <= 1.0:
        raise BadInput("temperature must be between 0 and 1", field="temperature")
    return temp


def _transcript(out: dict[str, Any], fmt: str, words: bool) -> Any:
    if fmt == "text":
        return PlainTextResponse(out["text"])
    if fmt == "srt":
        return PlainTextResponse(to_srt(out.get("segments") or []))
    if fmt == "vtt":
        return PlainTextResponse(to_vtt(out.get("segments") or []), media_type="text/vtt")
    body: dict[str, Any] = {"text": out["text"]}
    if fmt == "verbose_json":
        duration = float(out.get("duration") or 0.0)
        body = {"task": "transcribe", "language": out.get("language", ""),
                "duration": duration, "text": out["text"],
                "segments": out.get("segments") or []}
        if words:
            body["words"] = out.get("words") or []
        body["usage"] = {"type": "duration", "seconds": math.ceil(duration)}
    return body


async def _stream(first: bytes, rest: list[str], speak: Callable[[str], Awaitable[bytes]],
                  fmt: str) -> AsyncIterator[bytes]:
    """The first sentence's audio, then each next one as it is made, a pause between.

    An error after the first bytes cannot change the status any more: the stream ends
    there (the client sees a short body), as OpenAI's streamed audio does.
    """
    samples, rate = read_wav(first)
    if fmt == "pcm":
        samples, rate = resample(samples, rate, PCM_RATE), PCM_RATE
    else:
        yield streaming_wav_header(rate)
    yield pcm16(samples)
    for text in rest:
        try:
            more, more_rate = read_wav(await speak(text))
        except FusionError as err:
            log.warning("speech stream cut short at %r: %s", text[:40], err.message)
            return
        yield silence(rate)
        yield pcm16(resample(more, more_rate, rate))
