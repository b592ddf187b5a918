"""
The twistd plugin: C{twistd -n rosteradmin --help}.

Kept to one line so that C{twistd --help} imports nothing heavy; the work is
in L{rosteradmin.tap}.
"""

from twisted.application.service import ServiceMaker

rosteradmin = ServiceMaker(
    "rosteradmin",
    "rosteradmin.tap",
    "Web-app-owned rosters for an XMPP server (XEP-0114 component)",
    "rosteradmin",
)
