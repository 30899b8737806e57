"""The OpenAPI document is the contract of the deployed gateway too: schemathesis fuzzes
every operation of the Serve app (its proxy, replicas and real tiny models), finding no
server error, no undocumented status, no response off its schema, no wrong content type.

Bounded (a few valid and a few invalid examples an operation) to stay around a minute; the
in-process fuzz (tests/unit/test_openapi_contract.py) goes deeper. ``DELETE /v1/cache`` is
left out: the session's app is shared, and clearing its cache would race the cache tests
beside it. (One test walking the operations, since schemathesis' fixture-based
parametrization does not run under this pytest.)
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def test_the_deployed_app_keeps_its_documented_contract(gateway_url):
    schema = schemathesis.openapi.from_url(f"{gateway_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13
    failures: dict[str, BaseException] = {}
    for operation in operations:
        if operation.method.upper() == "DELETE":
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(mode))
            @settings(max_examples=10, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case) -> None:
                case.call_and_validate(checks=CHECKS, timeout=60)

            try:
                fuzz()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                continue
            except Exception as exc:  # every operation's failure, not the first only
                failures[f"{operation.method.upper()} {operation.path} ({mode.value})"] = exc
    assert not failures, "\n\n".join(f"{k}: {v}" for k, v in failures.items())
