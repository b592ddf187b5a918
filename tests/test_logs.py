"""
Tests for the JSON log format.
"""

from __future__ import annotations

import io
import json

import pytest
from twisted.logger import Logger
from twisted.python.usage import UsageError

from rosteradmin.logs import JSONLinesObserver
from rosteradmin.options import Options


def test_eventFieldsBecomeKeys() -> None:
    """
    An event's fields are keys of its JSON line, next to the message.
    """
    out = io.StringIO()
    log = Logger(namespace="rosteradmin.test", observer=JSONLinesObserver(out))
    log.info("roster fetch {user} ok in {elapsed:.3f}s", user="alice", outcome="ok", elapsed=0.0123)
    record = json.loads(out.getvalue())
    assert record["message"] == "roster fetch alice ok in 0.012s"
    assert (record["user"], record["outcome"], record["elapsed"], record["level"], record["namespace"]) == (
        "alice", "ok", 0.0123, "info", "rosteradmin.test")


def test_failuresCarryTheirTraceback() -> None:
    """
    A logged failure keeps its traceback in one field of one line.
    """
    out = io.StringIO()
    log = Logger(namespace="t", observer=JSONLinesObserver(out))
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("it broke")
    [line] = out.getvalue().splitlines()
    assert "ZeroDivisionError" in json.loads(line)["traceback"]


def test_logFormatSetsTwistdLogger() -> None:
    """
    --log-format json points twistd's --logger at the JSON observer, and an
    unknown format is a usage error.
    """
    class Twistd(dict):  # the twistd ServerOptions our Options hang under
        pass

    options = Options()
    options.parent = Twistd(logger=None)
    options.parseOptions(["--jid", "c.example.org", "--secret", "s", "--domain", "example.org",
                          "--roster-url", "http://x/%s", "--no-kick", "--log-format", "json"])
    assert options.parent["logger"] == "rosteradmin.logs.jsonLogObserver"
    with pytest.raises(UsageError, match="--log-format: must be text or json"):
        Options().parseOptions(["--jid", "c.example.org", "--secret", "s", "--domain", "example.org",
                                "--roster-url", "http://x/%s", "--no-kick", "--log-format", "xml"])
