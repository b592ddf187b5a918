# -*- test-case-name: tests.integration.test_harness -*-
"""
A throwaway local Prosody for the demo and the integration tests.

It runs C{contrib/prosody/rosteradmin.cfg.lua}, the configuration operators
are told to use, unchanged: the generated file holds only what is
site-specific (loopback ports, a private data directory, no TLS, plain
passwords) and then includes it, so docs and tests cannot drift apart.

Prosody's HTTP server is off unless asked for (C{httpPort}): then it serves
WebSocket (RFC 7395) and BOSH (XEP-0206) clients, such as Converse.js, on
that loopback port and on no other (Prosody's default HTTP port, 5280, is
rosteradmin's API port in the demo).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Collection
from pathlib import Path

#: Names fixed by contrib/prosody/rosteradmin.cfg.lua.
DOMAIN = "example.org"
COMPONENT_JID = "roster.example.org"
MUC_DOMAIN = "conference.example.org"
COMPONENT_SECRET = "change-me"


class ProsodyNotAvailable(RuntimeError):
    """
    Prosody or its community modules are not installed, or it would not start.
    """


def freePort(avoid: Collection[int] = ()) -> int:
    """
    A TCP port on 127.0.0.1 that is free right now.

    @param avoid: Ports handed out already but perhaps not listened on yet.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in avoid:
            return port


def _storageName(host: str) -> str:
    # Prosody's internal storage escapes '.' in host directory names.
    return host.replace(".", "%2e")


class LocalProsody:
    """
    A Prosody process on loopback ports with its data in C{directory}.

    @ivar c2sPort: The client port.
    @ivar componentPort: The XEP-0114 component port.
    @ivar httpPort: The port of Prosody's HTTP server (WebSocket and BOSH),
        or C{None} for none.
    """

    domain = DOMAIN
    componentJID = COMPONENT_JID
    mucDomain = MUC_DOMAIN
    secret = COMPONENT_SECRET

    def __init__(self, directory: str | Path, includeConfig: str | Path,
                 c2sPort: int | None = None, componentPort: int | None = None,
                 logLevel: str = "debug", hasComponents: bool = True,
                 httpPort: int | None = None) -> None:
        """
        @param includeConfig: The rosteradmin part of the configuration,
            normally C{contrib/prosody/rosteradmin.cfg.lua}.
        @param c2sPort: The client port; a free one if not given.
        @param componentPort: The component port; a free one if not given.
        @param logLevel: The lowest level Prosody logs (benchmarks want
            less than tests).
        @param hasComponents: Whether the configuration defines components
            (else the component port never opens, and start does not wait
            for it).
        @param httpPort: Serve WebSocket (L{websocketURL}) and BOSH
            (L{boshURL}) on this loopback port, 0 for a free one; by
            default Prosody's HTTP server stays off.
        @raise ValueError: C{httpPort} is the client or component port.
        """
        self.logLevel = logLevel
        self.hasComponents = hasComponents
        self.directory = Path(directory)
        self.includeConfig = Path(includeConfig).resolve()
        self.c2sPort = c2sPort or freePort()
        self.componentPort = componentPort or freePort()
        if httpPort == 0:
            httpPort = freePort(avoid={self.c2sPort, self.componentPort})
        elif httpPort in (self.c2sPort, self.componentPort):
            raise ValueError(f"HTTP port {httpPort} is the client or component port")
        self.httpPort = httpPort
        self.dataPath = self.directory / "data"
        self.configPath = self.directory / "prosody.cfg.lua"
        self.logPath = self.directory / "prosody.log"
        self.accounts: dict[str, str] = {}
        self._process: subprocess.Popen[bytes] | None = None

    def addAccount(self, username: str, password: str) -> None:
        """
        Create an account by writing Prosody's storage file directly
        (prosodyctl, as root, drops to the prosody user and cannot write
        into a private directory).
        """
        accounts = self.dataPath / _storageName(self.domain) / "accounts"
        accounts.mkdir(parents=True, exist_ok=True)
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        (accounts / f"{username}.dat").write_text(f'return {{ ["password"] = "{quoted}"; }};\n')
        self.accounts[username] = password

    def storedRosterPath(self, username: str) -> Path:
        """
        The file of the roster Prosody stores for a user (internal storage),
        which may not exist.
        """
        return self.dataPath / _storageName(self.domain) / "roster" / f"{username}.dat"

    def storedRoster(self, username: str) -> str:
        """
        The raw text of the roster Prosody stores for a user ("" if none).
        """
        path = self.storedRosterPath(username)
        return path.read_text() if path.exists() else ""

    @property
    def websocketURL(self) -> str:
        """
        Where WebSocket clients connect (plain C{ws:}), once L{httpPort} is set.
        """
        return f"ws://127.0.0.1:{self.httpPort}/xmpp-websocket"

    @property
    def boshURL(self) -> str:
        """
        Where BOSH clients connect (plain C{http:}), once L{httpPort} is set.
        """
        return f"http://127.0.0.1:{self.httpPort}/http-bind"

    def writeConfig(self) -> None:
        self.dataPath.mkdir(parents=True, exist_ok=True)
        ports = "http_ports = { }\nhttps_ports = { }"
        enabled = '"roster"; "saslauth"; "disco"; "ping"; "time"; "version"'
        disabled = '"tls"; "s2s"; "posix"; "http"; "bosh"; "websocket"'
        http = ""
        if self.httpPort is not None:
            ports = (f'http_ports = {{ {self.httpPort} }}\nhttp_interfaces = {{ "127.0.0.1" }}\n'
                     "https_ports = { }")
            enabled += '; "websocket"; "bosh"'
            disabled = '"tls"; "s2s"; "posix"'
            # Clients name 127.0.0.1 in the Host header, no VirtualHost:
            # http_default_host sends them to the users' host, where
            # websocket and bosh are loaded.  Without "secure", Prosody
            # offers no PLAIN over plain ws:// or BOSH; a TLS proxy in
            # front makes them secure, and the c2s port here has no TLS
            # either.
            http = (f'http_default_host = "{self.domain}"\n'
                    "consider_websocket_secure = true\nconsider_bosh_secure = true\n")
        self.configPath.write_text(f"""-- generated by rosteradmin_demo.devprosody: site-specific settings only
run_as_root = true
pidfile = "{self.directory / 'prosody.pid'}"
data_path = "{self.dataPath}"
log = {{ {self.logLevel} = "{self.logPath}" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.c2sPort} }}
c2s_interfaces = {{ "127.0.0.1" }}
component_ports = {{ {self.componentPort} }}
component_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{ }}
{ports}
c2s_direct_tls_ports = {{ }}
s2s_direct_tls_ports = {{ }}
modules_enabled = {{ {enabled} }}
modules_disabled = {{ {disabled} }}
{http}c2s_require_encryption = false
s2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"
plugin_paths = {{ "/usr/lib/prosody/modules", "{self.includeConfig.parent}" }}

Include "{self.includeConfig}"
""")

    def command(self) -> list[str]:
        """
        The command line that runs Prosody in the foreground on
        L{configPath}; a subclass may run another Prosody.

        @raise ProsodyNotAvailable: Prosody or mod_delegation is not installed.
        """
        binary = shutil.which("prosody")
        if binary is None:
            raise ProsodyNotAvailable(
                "prosody is not installed: run `bash scripts/test.sh`, or "
                "`apt-get install prosody prosody-modules`"
            )
        if not any(Path("/usr/lib/prosody/modules").glob("mod_delegation*")):
            raise ProsodyNotAvailable("mod_delegation is missing: `apt-get install prosody-modules`")
        return [binary, "--config", str(self.configPath), "-F"]

    def start(self, timeout: float = 20.0) -> None:
        """
        Start Prosody and wait until its client, component and HTTP ports
        accept connections.

        @raise ProsodyNotAvailable: It is not installed or did not start;
            the message holds the end of its log.
        """
        command = self.command()
        self.writeConfig()
        output = open(self.directory / "prosody.stdout", "ab")
        self._process = subprocess.Popen(
            command,
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.directory, env={**os.environ, "LANG": "C.UTF-8"},
        )
        output.close()
        deadline = time.monotonic() + timeout
        ports = [self.c2sPort] + ([self.componentPort] if self.hasComponents else [])
        ports += [] if self.httpPort is None else [self.httpPort]
        while not all(self._accepts(port) for port in ports):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ProsodyNotAvailable(f"Prosody did not start:\n{self.logTail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """
        Stop Prosody (SIGTERM, then SIGKILL).
        """
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """
        Stop and start again, on the same ports with the same data.
        """
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def logTail(self, lines: int = 40) -> str:
        texts = []
        for path in (self.directory / "prosody.stdout", self.logPath):
            if path.exists():
                texts.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(texts)

    @staticmethod
    def _accepts(port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0
