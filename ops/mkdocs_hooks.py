"""MkDocs hooks (mkdocs.yml ``hooks:``): the reference pages that must say what the code says
are generated from the code at build time, so the site cannot drift from it.

- ``reference/errors.md`` from ``fusion.errors.ERROR_CODES``, the one error table;
- ``reference/openapi.json`` and ``reference/openapi.md`` from the FastAPI app, built in-process
  over no gateway (``create_api`` only asks for one when a request arrives): no Ray, no models;
- ``reference/sdk.md`` from ``clients/python/README.md``, the SDK's own manual;
- ``reference/layout.md`` from the README's "Layout" section.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

METHODS = ("get", "post", "put", "patch", "delete")


def _root(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).resolve().parent


def _cell(text: Any) -> str:
    """A value safe inside one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def errors_page() -> str:
    from fusion.errors import ERROR_CODES

    rows = "\n".join(f"| `{e.code}` | {e.status} | `{e.openai_type}` | `{e.sdk_exception}` | "
                     f"{_cell(e.meaning)} |" for e in ERROR_CODES)
    return f"""# Error codes

Generated from `fusion/errors.py` (`ERROR_CODES`), the one table that the server's error
classes, the OpenAI-compatible routes' `type`, the SDK's exceptions and
[the HTTP API page](../api.md#errors) follow (`tests/unit/test_error_table.py` compares them).

A gateway route answers an error with

```json
{{"error": {{"code": "bad_input", "message": "image is not a decodable image",
           "field": "inputs.image", "request_id": "…"}}}}
```

and an OpenAI-compatible route with OpenAI's body, `{{"error": {{"message", "type", "code",
"param"}}}}`, `param` naming the field. A `503` carries `Retry-After`; the SDK retries after it.

| code | HTTP | OpenAI `type` | SDK exception | meaning |
|---|---|---|---|---|
{rows}
"""


def _slug(name: str) -> str:
    """An explicit heading id, so links to a schema never depend on Markdown's slugs."""
    return "schema-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _schema_name(schema: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if schema.get("type") == "array":
        return f"list[{_schema_name(schema.get('items', {}))}]"
    if "anyOf" in schema:
        return " or ".join(_schema_name(s) for s in schema["anyOf"])
    return schema.get("type", "object")


def _operation(method: str, path: str, op: dict) -> str:
    lines = [f"### `{method.upper()} {path}`", ""]
    if op.get("summary"):
        lines += [f"**{op['summary']}**", ""]
    if op.get("description"):
        lines += [op["description"].strip(), ""]
    params = op.get("parameters", [])
    if params:
        lines += ["| parameter | in | required | type |", "|---|---|---|---|"]
        lines += [f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} | "
                  f"{_cell(_schema_name(p.get('schema', {})))} |" for p in params]
        lines.append("")
    body = op.get("requestBody", {}).get("content", {})
    if body:
        kinds = ", ".join(f"`{kind}` ({_cell(_schema_name(spec.get('schema', {})))})"
                          for kind, spec in body.items())
        lines += [f"Request body: {kinds}", ""]
    responses = op.get("responses", {})
    if responses:
        lines += ["| status | description |", "|---|---|"]
        lines += [f"| {code} | {_cell(r.get('description', ''))} |"
                  for code, r in responses.items()]
        lines.append("")
    return "\n".join(lines)


def _schemas(schemas: dict) -> str:
    out = []
    for name, schema in schemas.items():
        out += [f"### {name} {{ #{_slug(name)} }}", ""]
        if schema.get("description"):
            out += [schema["description"].strip(), ""]
        props, required = schema.get("properties", {}), set(schema.get("required", ()))
        if props:
            out += ["| field | type | required | default |", "|---|---|---|---|"]
            out += [f"| `{field}` | {_cell(_schema_name(spec))} | "
                    f"{'yes' if field in required else 'no'} | "
                    f"{_cell(json.dumps(spec['default'])) if 'default' in spec else ''} |"
                    for field, spec in props.items()]
        elif "enum" in schema:
            out.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
        out.append("")
    return "\n".join(out)


def openapi_page(doc: dict) -> str:
    by_tag: dict[str, list[str]] = {}
    for path, ops in doc["paths"].items():
        for method in METHODS:
            if method in ops:
                tag = (ops[method].get("tags") or ["other"])[0]
                by_tag.setdefault(tag, []).append(_operation(method, path, ops[method]))
    sections = "\n".join(f"## {tag}\n\n" + "\n".join(ops) for tag, ops in by_tag.items())
    schemas = doc.get("components", {}).get("schemas", {})
    names = ", ".join(f"[`{name}`](#{_slug(name)})" for name in schemas)
    info = doc["info"]
    return f"""# OpenAPI

Generated from the gateway's FastAPI app (`fusion.http.app.create_api`) when this site was
built: the same document a running gateway serves at `/openapi.json`, with Swagger UI at
`/docs` and ReDoc at `/redoc`. Download it: [openapi.json](openapi.json)
({info['title']} {info['version']}, OpenAPI {doc['openapi']}). What each route means, its
bodies and its events are on [the HTTP API page](../api.md); its errors in
[Error codes](errors.md).

Schemas: {names or 'none'}.

{sections}
## Schemas

{_schemas(schemas)}"""


def openapi_document() -> dict:
    from fusion.errors import FusionError
    from fusion.http.app import create_api

    def no_gateway():
        raise FusionError("the docs build serves no requests")

    return create_api(no_gateway).openapi()


def layout_page(readme: str) -> str:
    """The README's "Layout" section (written once, there), as a page of the site."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return ("# Code layout\n\nWhere things are in the repository, following the request path "
            "(`fusion/` is model-agnostic; `deployments/` holds the model families).\n"
            + section)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = _root(config)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # this checkout's fusion, not an installed one
    doc = openapi_document()
    generated = {
        "reference/errors.md": errors_page(),
        "reference/openapi.md": openapi_page(doc),
        "reference/openapi.json": json.dumps(doc, indent=2, sort_keys=True) + "\n",
        "reference/sdk.md": (root / "clients" / "python" / "README.md").read_text("utf-8"),
        "reference/layout.md": layout_page((root / "README.md").read_text("utf-8")),
    }
    for src_uri, content in generated.items():
        files.append(File.generated(config, src_uri, content=content))
    return files
