# -*- test-case-name: tests.test_web -*-
"""
The process's open files: starting raises the soft C{RLIMIT_NOFILE} to the
hard limit (L{raiseFileLimit}), and C{--http-max-connections} must leave
room under it for everything else (L{checkFileLimit}).
"""

from __future__ import annotations

import resource
from typing import Any

from twisted.logger import Logger
from twisted.python import usage

from rosteradmin.config import Config


#: Open files kept for all but the HTTP API's connections and the web-app
#: fetches: the XMPP stream, the listening socket, the reactor's own
#: descriptors, log files, and the socket of a connection being refused.
FILE_RESERVE = 128

log = Logger()


def checkFileLimit(config: Config, limit: int) -> None:
    """
    Refuse an C{--http-max-connections} that would leave fewer than
    C{--fetch-concurrency} + L{FILE_RESERVE} of the process's open files to
    the rest: at the cap, the XMPP side and the fetches would fail for want
    of descriptors.  Refusing to start says so at once, where lowering the
    cap behind the operator's back would only show in a log.

    @param limit: The hard C{RLIMIT_NOFILE}, which L{raiseFileLimit} raises
        the soft limit to at start; C{RLIM_INFINITY} for none.
    @raise usage.UsageError: The cap is too high for the limit.
    """
    if limit == resource.RLIM_INFINITY:
        return
    most = limit - config.fetch_concurrency - FILE_RESERVE
    if config.http_max_connections > most:
        raise usage.UsageError(
            f"--http-max-connections: {config.http_max_connections} leaves too few of the {limit} open files "
            f"the process may have (RLIMIT_NOFILE) for the XMPP stream and {config.fetch_concurrency} "
            f"web-app fetches; at most {max(most, 0)} here (or raise LimitNOFILE= / ulimit -Hn)")


def raiseFileLimit(getrlimit: Any = resource.getrlimit, setrlimit: Any = resource.setrlimit) -> int:
    """
    Raise the soft limit on open files (C{RLIMIT_NOFILE}) to the hard
    limit, which needs no privilege, and log it: the usual soft limit,
    1024, is less than a busy HTTP API and the XMPP side may need together.

    @param getrlimit: L{resource.getrlimit}, injectable for tests.
    @param setrlimit: L{resource.setrlimit}, injectable for tests.
    @return: The soft limit now in effect.
    """
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        log.info("open file limit (RLIMIT_NOFILE): {limit}", limit=soft)
        return soft
    try:
        setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as e:
        # The hard limit may be RLIM_INFINITY, which Linux refuses as a
        # soft limit on open files.
        log.warn("open file limit (RLIMIT_NOFILE): {limit}; cannot raise it to the hard limit {hard}: {error}",
                 limit=soft, hard=hard, error=e)
        return soft
    log.info("open file limit (RLIMIT_NOFILE): raised from {soft} to the hard limit, {limit}", soft=soft, limit=hard)
    return hard
