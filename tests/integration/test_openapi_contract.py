"""The OpenAPI document is the contract of the deployed gateway too: schemathesis fuzzes
every operation of the Serve app (its proxy, replicas and real tiny models), finding no
server error, no undocumented status, no response off its schema, no wrong content type.

Bounded (a few examples an operation) to stay under a minute; the in-process fuzz
(tests/unit/test_openapi_contract.py) goes deeper. ``DELETE /v1/cache`` is left out: the
session's app is shared, and clearing its cache would race the cache tests beside it.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="session")
def api_schema(gateway_url):
    return schemathesis.openapi.from_url(f"{gateway_url}/openapi.json").exclude(
        method="DELETE")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_the_deployed_app_keeps_its_documented_contract(case):
    case.call_and_validate(checks=CHECKS, timeout=60)
