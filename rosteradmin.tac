"""
Run rosteradmin with C{twistd -ny rosteradmin.tac}.

Reads the TOML file named by C{ROSTERADMIN_CONFIG} (default
C{/etc/rosteradmin/rosteradmin.toml}); secrets may come from the
C{ROSTERADMIN_SECRET}, C{ROSTERADMIN_KICK_AUTHORIZATION} and
C{ROSTERADMIN_REFRESH_AUTHORIZATION} environment variables.

A bad configuration ends start-up with one line and exit code
C{rosteradmin.startup.EX_CONFIG}, as with C{twistd rosteradmin}.
"""

import os

from twisted.application import service
from twisted.python.usage import UsageError

from rosteradmin.options import Options
from rosteradmin.startup import refuseToStart
from rosteradmin.tap import makeService

options = Options()
try:
    options.parseOptions(
        ["--config", os.environ.get("ROSTERADMIN_CONFIG", "/etc/rosteradmin/rosteradmin.toml")]
    )
except UsageError as e:
    refuseToStart(str(e))
application = service.Application("rosteradmin")
makeService(options).setServiceParent(application)
