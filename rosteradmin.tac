"""
Run rosteradmin with C{twistd -ny rosteradmin.tac}.

Reads the TOML file named by C{ROSTERADMIN_CONFIG} (default
C{/etc/rosteradmin/rosteradmin.toml}); secrets may come from the
C{ROSTERADMIN_SECRET}, C{ROSTERADMIN_KICK_AUTHORIZATION} and
C{ROSTERADMIN_REFRESH_AUTHORIZATION} environment variables.
"""

import os

from twisted.application import service

from rosteradmin import tap

options = tap.Options()
options.parseOptions(
    ["--config", os.environ.get("ROSTERADMIN_CONFIG", "/etc/rosteradmin/rosteradmin.toml")]
)
application = service.Application("rosteradmin")
tap.makeService(options).setServiceParent(application)
