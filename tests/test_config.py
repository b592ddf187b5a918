"""
Tests for configuration: precedence, secrets from files and the
environment, and one clear line per bad or missing option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.python.usage import UsageError

from rosteradmin.config import ConfigError, buildConfig
from rosteradmin.tap import Options, makeService

REQUIRED = {"jid": "roster.example.org", "secret": "s", "domain": "example.org",
            "roster_url": "http://app/%s", "no_kick": True}


def build(environ: dict[str, str] | None = None, **values: Any) -> Any:
    return buildConfig({**REQUIRED, **values}, environ=environ or {})


def test_defaults() -> None:
    """
    Unset options take the documented defaults.
    """
    config = build()
    assert (config.xmpp_host, config.xmpp_port, config.http, config.fetch_timeout, config.fetch_concurrency) == (
        "127.0.0.1", 5347, "tcp:5280:interface=127.0.0.1", 10.0, 64)


def test_precedence(tmp_path: Path) -> None:
    """
    Defaults < TOML < environment < command line.
    """
    toml = tmp_path / "c.toml"
    toml.write_text('xmpp_port = 6000\nfetch_timeout = 3\nsecret = "from-file"\n')
    assert build(config=str(toml), secret=None).secret == "from-file"
    assert build(config=str(toml), secret=None, environ={"ROSTERADMIN_SECRET": "from-env"}).secret == "from-env"
    config = build(config=str(toml), secret="from-cli", fetch_timeout="7",
                   environ={"ROSTERADMIN_SECRET": "from-env"})
    assert (config.secret, config.xmpp_port, config.fetch_timeout) == ("from-cli", 6000, 7.0)


def test_secretFile(tmp_path: Path) -> None:
    """
    A secret file is read and its trailing newline dropped.
    """
    path = tmp_path / "secret"
    path.write_text("hunter2\n")
    assert build(secret=None, secret_file=str(path)).secret == "hunter2"


@pytest.mark.parametrize("values, message", [
    ({"jid": None}, "--jid: is required"),
    ({"secret": None}, "--secret: is required"),
    ({"domain": None}, "--domain: is required"),
    ({"roster_url": None}, "--roster-url: is required"),
    ({"jid": "user@roster.example.org"}, "--jid: 'user@roster.example.org' must be a domain"),
    ({"jid": "example.org"}, "--jid: must differ from --domain"),
    ({"roster_url": "ftp://x/%s"}, "--roster-url: must be an http:// or https:// URL"),
    ({"roster_url": "http://x/"}, "--roster-url: must contain %s exactly once"),
    ({"no_kick": None}, "--kick-authorization: is required"),
    ({"xmpp_port": "70000"}, "--xmpp-port: 70000 is not a port number"),
    ({"xmpp_port": "many"}, "--xmpp-port: expected a number"),
    ({"fetch_timeout": "0"}, "--fetch-timeout: must be greater than 0"),
    ({"secret": None, "secret_file": "/nonexistent/secret"}, "--secret-file: cannot read /nonexistent/secret"),
    ({"config": "/nonexistent.toml"}, "--config: cannot read /nonexistent.toml"),
])
def test_badOptionsNamed(values: dict[str, Any], message: str) -> None:
    """
    Each problem is one line naming the option.
    """
    with pytest.raises(ConfigError) as e:
        build(**values)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("jid = ", "is not valid TOML"),
    ("colour = 'blue'", "unknown setting 'colour'"),
    ("no_kick = 'yes'", "--no-kick: expected true or false"),
    ("web_app_headers = 3", "web_app_headers: expected a table of strings"),
])
def test_badTOML(tmp_path: Path, text: str, message: str) -> None:
    """
    Bad TOML files are refused with the reason.
    """
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build(config=str(path), no_kick=None, kick_authorization="k")


def test_optionsBuildTheServiceTree() -> None:
    """
    The twistd options validate into a Config, and makeService builds the
    named services without starting anything.
    """
    options = Options()
    options.parseOptions(["--jid", "roster.example.org", "--secret", "s", "--domain", "example.org",
                          "--roster-url", "http://app/%s", "--kick-authorization", "k",
                          "--http", "tcp:0:interface=127.0.0.1"])
    top = makeService(options)
    assert [s.name for s in top] == ["backend", "component", "http"]
    assert not top.running


def test_badEndpointRefused() -> None:
    """
    A --http value that is not a Twisted endpoint is a usage error.
    """
    with pytest.raises(UsageError, match="--http: 'nonsense:1' is not a Twisted endpoint"):
        Options().parseOptions(["--jid", "roster.example.org", "--secret", "s", "--domain", "example.org",
                                "--roster-url", "http://app/%s", "--no-kick", "--http", "nonsense:1"])
