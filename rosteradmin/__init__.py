"""
rosteradmin: a web application owns the rosters of an XMPP service.

An XMPP external component (XEP-0114) that answers users' roster queries from
rosters fetched over HTTP, writes them into the server (XEP-0355, XEP-0356),
and serves an HTTP API to refresh rosters and kick room occupants.
"""

#: The release, in one place: setup.py reads it, and C{twistd rosteradmin
#: --version}, C{rosteradmin-ctl --version} and C{/metrics} show it.  A
#: release changes it (docs/releasing.md).
__version__ = "0.9.0"
