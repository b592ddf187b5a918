# -*- test-case-name: tests.test_config,tests.test_logs,tests.test_reference,tests.integration.test_twistd -*-
"""
The command-line options of C{twistd rosteradmin}:

    twistd -n --pidfile= rosteradmin --config /etc/rosteradmin/rosteradmin.toml

Every option of L{rosteradmin.config.SETTINGS} is a command-line option, a
TOML key and, for secrets, an environment variable and a C{--<name>-file}.
All validation happens in L{Options.postOptions}, so a bad configuration
stops start-up with one line naming the option, before anything connects
(L{rosteradmin.startup.refuseToStart}).
"""

from __future__ import annotations

import getopt
import resource
import sys
from typing import Any

from twisted import copyright
from twisted.internet import endpoints
from twisted.python import usage

from rosteradmin import __version__
from rosteradmin.config import SETTINGS, Config, ConfigError, buildConfig
from rosteradmin.filelimit import checkFileLimit
from rosteradmin.startup import refuseToStart


def _optionTables() -> tuple[list[list[Any]], list[list[Any]]]:
    """
    The C{optParameters} and C{optFlags} tables, built from L{SETTINGS} so
    options, TOML keys and docs cannot drift apart.
    """
    parameters: list[list[Any]] = [
        ["config", "c", None, "TOML configuration file; a relative secret file path in it is read from its directory"],
        ["log-format", None, "text", "text, or json: one JSON object per event and line, for log shippers"],
    ]
    flags: list[list[Any]] = [["verbose", "v", "log every stanza sent and received"]]
    for setting in SETTINGS:
        if not setting.cli:
            continue
        if setting.kind is bool:
            flags.append([setting.name, None, setting.help])
            continue
        default = "" if setting.default is None else f" [default: {setting.default}]"
        parameters.append([setting.name, None, None, setting.help + default])
        if setting.secret:
            parameters.append([
                setting.name + "-file", None, None,
                f"file holding the {setting.name} (or set {setting.environmentVariable})",
            ])
    return parameters, flags


class Options(usage.Options):
    """
    The options of C{twistd rosteradmin}.

    @ivar config: The validated L{Config}, after parsing.
    """

    synopsis = "[options]"
    longdesc = (
        "An XMPP external component (XEP-0114) that serves users' rosters from a web "
        "application, with an HTTP API to refresh them and to kick users from rooms. "
        "Options may also come from a TOML file (--config); secrets also from files "
        "or the environment."
    )
    optParameters, optFlags = _optionTables()

    config: Config

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse and validate the options.  Under twistd (our parent is its
        C{ServerOptions}), a usage error ends start-up with one line and
        L{rosteradmin.startup.EX_CONFIG}: twistd itself would print its
        whole usage page before the message and exit 1, which systemd
        restarts.

        @raise usage.UsageError: A bad or missing option, when not run by
            twistd (the tac file, tests).
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            if isinstance(e.__context__, getopt.GetoptError):
                # An unknown option, or a value missing or given to a flag.
                refuseToStart(f"{e}; `twistd rosteradmin --help` lists the options")
            refuseToStart(str(e))

    def opt_version(self) -> None:
        """
        Show rosteradmin's version (and Twisted's) and exit.
        """
        print(f"rosteradmin {__version__} (Twisted {copyright.version})")
        sys.exit(0)

    def parseArgs(self, *args: str) -> None:
        """
        Refuse words that are not options, naming the first: usually a value
        given to a flag (C{--no-kick true}).
        """
        if args:
            raise usage.UsageError(f"unexpected argument {args[0]!r}: flags such as --no-kick take no value")

    def postOptions(self) -> None:
        commandLine: dict[str, Any] = {}
        for setting in SETTINGS:
            if not setting.cli:
                continue
            value = self[setting.name]
            if setting.kind is bool:
                value = True if value else None
            commandLine[setting.key] = value
            if setting.secret:
                commandLine[setting.key + "_file"] = self[setting.name + "-file"]
        commandLine["config"] = self["config"]
        try:
            self.config = buildConfig(commandLine)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self._checkEndpoint()
        checkFileLimit(self.config, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        self._chooseLogFormat()

    def _chooseLogFormat(self) -> None:
        """
        twistd creates its log observer after parsing our options, from its
        own C{--logger}; C{--log-format json} sets that.
        """
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(f"--log-format: must be text or json, got {self['log-format']!r}")
        if self["log-format"] == "json" and self.parent is not None:
            self.parent["logger"] = "rosteradmin.logs.jsonLogObserver"

    def _checkEndpoint(self) -> None:
        """
        Build the C{--http} endpoint once, so that what its parser checks
        (the syntax, C{ssl:}'s certificate and key files, C{systemd:}'s
        inherited socket) is a configuration error here, not a traceback
        later.
        """
        from twisted.internet import reactor

        http = self.config.http
        try:
            endpoints.serverFromString(reactor, http)
        except OSError as e:
            # ssl: reads its certificate and key when parsed.
            raise usage.UsageError(f"--http: {http!r}: cannot read {e.filename}: {e.strerror}") from None
        except Exception as e:
            # Endpoint parsers are plugins: a bad description raises
            # ValueError, TypeError, or whatever their libraries raise
            # (OpenSSL on a malformed certificate).
            if http.startswith("systemd:") and isinstance(e, (IndexError, KeyError)):
                # An index or a name beyond the sockets systemd passed.
                raise usage.UsageError(
                    f"--http: {http!r}: systemd passed no such socket "
                    "(start rosteradmin from a .socket unit, or listen on tcp: or unix:)") from None
            raise usage.UsageError(f"--http: {http!r} is not a Twisted endpoint: {e}") from None
