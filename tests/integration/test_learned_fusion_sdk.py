"""The learned-fusion loop through the SDK and the ``fusion`` CLI, against the real gateway
app in-process (the embedded runtime's gateway over ``shapes_fused``'s two models): answers
via ``FusionClient.run``, labels via ``fusion feedback import``, ``fusion fit``, ``fusion
profiles --activate``, rollback via the SDK, and the SDK's typed error naming the field."""

from __future__ import annotations

import asyncio
import io
import json

import httpx
import pytest
from fusion_client import FusionClient
from fusion_client.cli import main
from fusion_client.errors import NotFound
from fusion_client.transport import SyncOverAsyncTransport

from fusion.core.keys import hash_key
from fusion.core.startup import load_config, start_gateway
from fusion.embedded.models import LocalModels
from fusion.http.app import create_api
from tests.integration.test_learned_fusion import images

pytestmark = pytest.mark.models


class KeptOpen(SyncOverAsyncTransport):
    """One event loop for the whole test (the gateway's batch queues live on it): the
    clients each CLI call builds and closes leave it running."""

    def close(self) -> None:
        pass

    def shut(self) -> None:
        """Cancel what still runs on the loop (the batch queues' workers), then close it."""
        async def cancel_the_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        if self._loop is not None:
            self._run(cancel_the_rest())
        super().close()


def test_sdk_and_cli_loop(database_url, tmp_path):
    args = {"models": [{"name": "shapes", "family": "image_classify",
                        "source": "tiny:shapes-cnn"},
                       {"name": "clip", "family": "clip", "source": "tiny:clip"}],
            "database": {"url": database_url}, "observability": {"access_log": "off"},
            "auth": {"anonymous": True, "admin_key_hashes": [hash_key("learn-admin-key")]}}
    config = load_config(args)
    gateway = start_gateway(config, LocalModels(config, None), None)
    transport = KeptOpen(httpx.ASGITransport(app=create_api(lambda: gateway)))

    def fusion(*argv: str) -> str:
        out, err = io.StringIO(), io.StringIO()
        code = main(["--url", "http://gateway", "--api-key", "learn-admin-key", *argv],
                    transport=transport, stdout=out,
                     stderr=err)
        assert code == 0, err.getvalue()
        return out.getvalue()

    try:
        client = FusionClient("http://gateway", "learn-admin-key", transport=transport,
                              decode_images=False)
        lines = []
        for truth, image in images(60, seed=11):
            result = client.run("shapes_fused", {"image": image})
            assert result.outputs["explanation"]["profile"] is None
            lines.append(json.dumps({"request_id": result.request_id, "label": truth}))
        lines.append(json.dumps({"request_id": "never-answered", "label": "circle"}))
        labels = tmp_path / "labels.jsonl"
        labels.write_text("# one label per line\n" + "\n".join(lines) + "\n")
        assert fusion("feedback", "import", str(labels)).startswith(
            "imported 60 labels (0 replaced), 1 refused")
        first = json.loads(lines[0])
        said = fusion("feedback", first["request_id"], first["label"])
        assert said.startswith("replaced the label of shapes_fused/fused answer")

        fitted = json.loads(fusion("--json", "fit", "shapes_fused"))
        table = fusion("fit", "shapes_fused")
        assert "learned fusion" in table and "hand-written fusion" in table
        profile = fitted["profile"]
        assert "is now active" in fusion("profiles", "shapes_fused", "--activate", profile)
        listing = fusion("profiles", "shapes_fused")
        assert any(line.startswith(profile) and " active " in line
                   for line in listing.splitlines())
        answer = client.run("shapes_fused", {"image": images(1, seed=12)[0][1]})
        assert answer.outputs["explanation"]["profile"]["id"] == profile

        assert client.activate_profile("shapes_fused", "handwritten")["state"] == "active"
        assert client.profiles("shapes_fused")["active"] == {}
        with pytest.raises(NotFound) as err:
            client.feedback("never-answered", "circle")
        assert err.value.field == "request_id"
        client.close()
    finally:
        transport.shut()
        gateway.learning.close()
