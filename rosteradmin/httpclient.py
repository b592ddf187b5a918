# -*- test-case-name: tests.test_web,tests.test_ejabberdapi -*-
"""
The one place an HTTP client for a peer (the web app, ejabberd's HTTP API)
is built: a treq client over a connection pool of its own, so that one
peer's kept-alive connections never wait behind another's.
"""

from __future__ import annotations

from typing import Any

import treq
from twisted.web.client import Agent, HTTPConnectionPool


def makeHTTPClient(reactor: Any, connectTimeout: float,
                   keptAlive: int) -> tuple[treq.client.HTTPClient, HTTPConnectionPool]:
    """
    A treq client with a persistent connection pool of its own.

    @param connectTimeout: Seconds a new connection may take to open.
    @param keptAlive: Connections kept open per host: as many as calls the
        caller has in flight, so each can reuse one.
    @return: The client, and the pool under it (its owner closes it when
        stopping).
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = keptAlive
    return treq.client.HTTPClient(Agent(reactor, connectTimeout=connectTimeout, pool=pool)), pool
