# -*- test-case-name: tests.test_config,tests.test_web,tests.integration.test_twistd -*-
"""
How the process starts and stops: the top of the service tree, and the one
line and exit code that end a start-up which cannot succeed.

Exit codes: a configuration error (a bad or unknown option, a bad file, an
C{--http} endpoint that can never listen) exits with L{EX_CONFIG}, which the
systemd unit lists in C{RestartPreventExitStatus=} so that a broken
configuration is not restarted in a loop; a failure that may clear up by
itself (the HTTP port still held by another process) exits with 1, which
C{Restart=on-failure} retries.  So does a C{--state} file whose lock
another process held throughout start-up; an unreadable one is moved aside
and a new one started (L{rosteradmin.state}), while one of another schema or
a path that cannot be created is a configuration error.
"""

from __future__ import annotations

import errno
import sys
from typing import NoReturn

from twisted.application import service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.error import CannotListenError

from rosteradmin.filelimit import raiseFileLimit


#: C{EX_CONFIG} of C{sysexits.h}: the configuration is wrong, so restarting
#: with the same configuration cannot help.
EX_CONFIG = 78

#: Listening errors that may clear up by themselves: the port is still held
#: by another process, or the interface's address is not up yet.
TRANSIENT_LISTEN_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL})


def refuseToStart(message: str, code: int = EX_CONFIG) -> NoReturn:
    """
    End start-up with one line on standard error instead of a usage page or
    a traceback, and an exit code that tells systemd whether restarting can
    help.

    @param message: What is wrong, starting with the option it is about.
    @param code: L{EX_CONFIG}, or 1 for a failure that may clear up by itself.
    """
    print(f"rosteradmin: {message}", file=sys.stderr)
    raise SystemExit(code)


def refuseToListen(error: CannotListenError | OSError | OverflowError, http: str) -> NoReturn:
    """
    End start-up because the HTTP API cannot listen on C{http}: exit code 1
    when the cause may clear up by itself (a port in use), so systemd
    restarts it, L{EX_CONFIG} otherwise.

    @param error: What listening raised.
    @param http: The C{--http} endpoint, named when the error names no
        address.
    """
    if isinstance(error, CannotListenError):
        # UNIX sockets have no interface; their port is the path.
        where = f"{error.interface or '*'}:{error.port}" if error.interface is not None else repr(http)
        cause = error.socketError
        # A cause that is not an OSError is a UNIX socket's lock held
        # by a live process: like a port in use.
        transient = not isinstance(cause, OSError) or cause.errno in TRANSIENT_LISTEN_ERRORS
        refuseToStart(f"--http: cannot listen on {where}: {cause}", 1 if transient else EX_CONFIG)
    if isinstance(error, OSError):
        # A UNIX socket's lock file, next to it, cannot be created (its
        # directory is missing or not writable).
        refuseToStart(f"--http: cannot listen on {http!r}: {error.strerror}")
    # A TCP port above 65535: bind() refuses it.
    refuseToStart(f"--http: cannot listen on {http!r}: {error}")


class SequentialService(service.MultiService):
    """
    The top service.  It refuses to start when the HTTP API cannot listen,
    and stops its children one after the other, last started first: the
    HTTP API drains its requests while the component and the backend still
    serve them.

    @ivar http: The C{--http} endpoint, named when it cannot listen.
    """

    def __init__(self, http: str) -> None:
        super().__init__()
        self.http = http

    def privilegedStartService(self) -> None:
        """
        Bind the HTTP API's port first thing (twistd calls this before the
        reactor runs, and before it drops privileges).  If it cannot, end
        the process with one line (L{refuseToListen}) instead of a service
        that looks alive without its API.
        """
        try:
            super().privilegedStartService()
        except (CannotListenError, OSError, OverflowError) as e:
            refuseToListen(e, self.http)

    def startService(self) -> None:
        """
        Raise the open file limit, then start the children.
        """
        raiseFileLimit()
        super().startService()

    async def _stopInOrder(self) -> None:
        for child in reversed(list(self)):
            await maybeDeferred(child.stopService)

    def stopService(self) -> Deferred[None]:
        service.Service.stopService(self)
        return ensureDeferred(self._stopInOrder())
