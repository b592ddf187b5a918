"""
The chat page the demo serves with C{--websocket}, and the demo's options
for it.  The browser side runs in the integration tests (test_converse.py,
test_demo.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from twisted.python import usage
from twisted.web.test.requesthelper import DummyRequest

from rosteradmin_demo.demo import DemoOptions
from rosteradmin_demo.devchat import ChatPage, ConverseNotInstalled, converseDirectory, converseDist, localSettings

PAGE = Path(__file__).resolve().parents[1] / "contrib" / "converse"


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    """
    A Converse.js C{dist/} directory with its two main files.
    """
    directory = converseDist(tmp_path)
    directory.mkdir(parents=True)
    (directory / "converse.min.js").write_text("/* converse */")
    (directory / "converse.min.css").write_text("/* style */")
    (tmp_path / "secret.txt").write_text("not served")
    return directory


def get(page: ChatPage, *segments: bytes) -> tuple[int, str | None, bytes]:
    request = DummyRequest(list(segments))
    body = page.render_GET(request)
    kinds = request.responseHeaders.getRawHeaders(b"content-type") or [None]
    return request.responseCode or 200, kinds[0] and kinds[0].decode(), body


def test_servesPageSettingsAndDist(dist: Path) -> None:
    """
    C{/} is contrib's C{index.html} unchanged, C{/config.js} sets the
    settings given (read at each request), C{/dist/...} serves the package.
    """
    settings = localSettings("ws://127.0.0.1:15280/xmpp-websocket", "example.org")
    page = ChatPage(PAGE, settings, dist)
    assert get(page) == (200, "text/html", (PAGE / "index.html").read_bytes())
    assert get(page, b"index.html")[2] == (PAGE / "index.html").read_bytes()

    code, kind, body = get(page, b"config.js")
    assert (code, kind) == (200, "text/javascript; charset=utf-8")
    prefix = b"window.converseSiteSettings = "
    assert body.startswith(prefix)
    assert json.loads(body[len(prefix):].rstrip(b";\n")) == {
        "websocket_url": "ws://127.0.0.1:15280/xmpp-websocket", "locked_domain": "example.org",
        "reuse_scram_keys": False}
    page.settings["i18n"] = "en"
    assert b'"i18n": "en"' in get(page, b"config.js")[2]

    code, kind, body = get(page, b"dist", b"converse.min.js")
    assert (code, body) == (200, b"/* converse */") and kind in ("text/javascript", "application/javascript")
    assert get(page, b"dist", b"converse.min.css") == (200, "text/css", b"/* style */")


@pytest.mark.parametrize("segments", [
    (b"dist", b"..", b"..", b"secret.txt"),
    (b"dist", b"nothing.js"),
    (b"package.json",),
    (b"dist",),
    (b"dist", b"a\x00b.js"),
])
def test_servesNothingElse(dist: Path, segments: tuple[bytes, ...]) -> None:
    """
    Paths outside C{dist/}, missing files and other files of the page's
    directory are 404.
    """
    assert get(ChatPage(PAGE, {}, dist), *segments)[0] == 404


def test_refusesWithoutConverse(tmp_path: Path) -> None:
    """
    Without the npm package the page cannot work: the error says how to
    install it.
    """
    with pytest.raises(ConverseNotInstalled, match=r"bash scripts/demo.sh --websocket"):
        ChatPage(PAGE, {}, converseDist(tmp_path))


def test_converseDirectory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """
    Where setup.sh installs Converse.js: the variable's directory, else the
    user's cache.
    """
    monkeypatch.setenv("ROSTERADMIN_CONVERSE_DIR", str(tmp_path))
    assert converseDirectory() == tmp_path
    monkeypatch.delenv("ROSTERADMIN_CONVERSE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert converseDirectory() == tmp_path / "cache" / "rosteradmin" / "converse"


def test_websocketPortsOwnByDefault() -> None:
    """
    With C{--websocket}, the defaults give Prosody's HTTP server and the
    chat page ports of their own: neither is the API's 5280.
    """
    options = DemoOptions()
    options.parseOptions(["--websocket"])
    ports = [options[name] for name in ("c2s-port", "component-port", "webapp-port", "http-port",
                                        "websocket-port", "chat-port")]
    assert len(set(ports)) == len(ports) and options["http-port"] == 5280


def test_clashingPortsRefused() -> None:
    """
    Two of the demo's servers on one port: a usage error naming both,
    instead of one of them failing to start.
    """
    with pytest.raises(usage.UsageError, match=r"--websocket-port and --http-port are both 5280"):
        DemoOptions().parseOptions(["--websocket", "--websocket-port", "5280"])
    # Without --websocket, the WebSocket port is not used.
    DemoOptions().parseOptions(["--websocket-port", "5280"])
