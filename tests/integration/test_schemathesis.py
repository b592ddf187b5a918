"""
schemathesis against the OpenAPI document, on the running service with a
real Prosody: every response's status, content type and body match the
document (so no 5xx but the documented 500/502/503/504).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from tests.integration.service import KICK_AUTHORIZATION, RunningService

OPENAPI = Path(__file__).parents[2] / "docs" / "openapi.json"
CHECKS = "status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest_twisted.ensureDeferred
async def test_schemathesis(prosody: Any, webapp: Any, clients: Any, tmp_path: Path) -> None:
    """
    Generated requests for every operation get documented responses.  Bob
    sits in the room of the document's kick example, so the kick's success
    path is among them.
    """
    webapp.rosters["alice"] = {"bob@example.org": {"name": "Bob"}}
    service = RunningService(prosody, webapp.url, ["--iq-timeout", "2", "--fetch-timeout", "2"])
    await service.start()
    bob = await clients("bob")
    await bob.joinRoom("room@conference.example.org", "Bob")
    try:
        cli = Path(sys.executable).parent / "schemathesis"
        out, err, code = await getProcessOutputAndValue(str(cli), [
            "run", str(OPENAPI), "--url", service.baseURL, "--checks", CHECKS,
            "--max-examples", "25", "--seed", "1", "--request-timeout", "10",
            "-H", f"Authorization: {KICK_AUTHORIZATION}", "--no-color",
        ], env={**os.environ, "SCHEMATHESIS_HOOKS": ""}, path=str(tmp_path))
    finally:
        await service.stop()
    print(out.decode()[-4000:], err.decode()[-2000:])
    assert code == 0
    assert any(p.getAttribute("from") == "room@conference.example.org/Bob" and "code='307'" in p.toXml()
               for p in bob.presences), "the kick example never reached the room"
