"""One table of error codes: the server's error classes, the OpenAI routes' ``type``,
``docs/api.md`` and the SDK's exceptions must all say the same thing for every code."""

from __future__ import annotations

import re
from pathlib import Path

import fusion_client
from fusion_client.errors import ERROR_CODES as SDK_CODES
from fusion_client.errors import OPENAI_STATUS

from fusion import errors
from fusion.errors import ERROR_CODES, ERRORS_BY_CODE, FusionError, SpecError
from fusion.http.errors import error_body

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def _server_classes() -> dict[str, type[FusionError]]:
    found = {}
    for obj in vars(errors).values():
        if isinstance(obj, type) and issubclass(obj, FusionError) and obj is not SpecError:
            found[obj.code] = obj  # SpecError stops the app at start-up: no client sees it
    return found


def _docs_rows() -> dict[str, tuple[int, str, str]]:
    text = DOCS.read_text()
    table = text[text.index("<!-- error-codes:start"):text.index("<!-- error-codes:end")]
    rows = re.findall(r"^\| `(\w+)` \| (\d{3}) \| `(\w+)` \| `(\w+)` \|", table, re.M)
    return {code: (int(status), otype, exc) for code, status, otype, exc in rows}


def test_every_server_error_class_is_in_the_table_with_its_status():
    classes = _server_classes()
    assert set(classes) == set(ERRORS_BY_CODE)
    for code, cls in classes.items():
        assert cls.status == ERRORS_BY_CODE[code].status, code


def test_docs_table_is_the_servers_table():
    assert _docs_rows() == {e.code: (e.status, e.openai_type, e.sdk_exception)
                            for e in ERROR_CODES}
    assert "step_failed" in _docs_rows()


def test_sdk_raises_the_tables_exception_for_every_code():
    assert set(SDK_CODES) == set(ERRORS_BY_CODE)
    for e in ERROR_CODES:
        cls, status = SDK_CODES[e.code]
        assert cls is getattr(fusion_client, e.sdk_exception), e.code
        assert status == e.status, e.code
    assert fusion_client.StepFailed.default_code == "step_failed"
    openai_moved = {e.code: e.openai_status for e in ERROR_CODES if e.openai_status != e.status}
    assert openai_moved == OPENAI_STATUS


def test_openai_error_type_follows_the_table():
    for code, cls in _server_classes().items():
        body = error_body(cls("x"), "rid", openai=True)
        assert body["error"]["type"] == ERRORS_BY_CODE[code].openai_type, code
