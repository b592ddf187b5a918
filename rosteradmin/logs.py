# -*- test-case-name: tests.test_logs -*-
"""
Log output for log shippers: C{--log-format json}.

twistd owns the log observers; this module only provides the observer
factory that C{--log-format json} hands to twistd (its C{--logger} hook).
Each event becomes one JSON object on one line: C{time}, C{level},
C{namespace}, the formatted C{message}, and the event's own fields
(C{user}, C{outcome}, C{elapsed}, ...) as keys, so shippers can filter on
them without parsing the message.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

from twisted.logger import ILogObserver, LogEvent, formatEvent
from zope.interface import implementer

#: Keys of legacy (twisted.python.log) events that repeat the message.
_LEGACY_KEYS = frozenset({"message", "system", "time", "isError", "format", "why"})


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each event as one line of JSON.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, event: LogEvent) -> None:
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(),
            "level": event["log_level"].name if "log_level" in event else "info",
            "namespace": event.get("log_namespace", "-"),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if key.startswith("log_") or key in _LEGACY_KEYS or key in record:
                continue
            if value is None or isinstance(value, (str, int, float, bool)):
                record[key] = value
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.out.flush()


def jsonLogObserver() -> ILogObserver:
    """
    JSON lines on standard output (journald, Docker and most shippers read
    it from there).
    """
    return JSONLinesObserver(sys.stdout)
