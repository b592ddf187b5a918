# -*- test-case-name: tests.integration.test_ejabberd -*-
"""
A throwaway local ejabberd for the integration tests: the other server
rosteradmin supports.  The host's, Debian 12's ejabberd 23.01, speaks the
C{:1} namespaces of XEP-0355 (C{urn:xmpp:delegation:1}) and XEP-0356
(C{urn:xmpp:privilege:1}); Debian 13's ejabberd 24.12 runs under C{chroot}
from the root C{scripts/debian13.sh} builds (L{tests.integration.debianroot}),
with C{contrib/ejabberd/rosteradmin.yml} and its HTTP API.

It runs the Debian package's C{ejabberdctl foreground} as the C{ejabberd}
user (ejabberdctl refuses to run as anyone else but root, and as root it
would only C{su} to that user), with everything in a private temporary
directory: configuration, Mnesia spool, logs and C{HOME} (so the Erlang
cookie lives there too, and nothing in C{/var/lib/ejabberd} is needed).
C{ERL_DIST_PORT} pins Erlang distribution to a free loopback port, so no
C{epmd} is started and runs in parallel cannot clash.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from rosteradmin_demo.devprosody import freePort
from tests.integration.debianroot import DebianRoot

EJABBERDCTL = "/usr/sbin/ejabberdctl"
#: The Debian 13 ejabberds the tests run (C{ROSTERADMIN_EJABBERD}): trixie's,
#: and trixie-backports' (scripts/ejabberd-backports.sh builds its root).
EJABBERD_VERSIONS = ("24.12", "26.07")
#: The system user the Debian package runs ejabberd as.
EJABBERD_USER = "ejabberd"


#: The rosteradmin part of the host ejabberd's configuration: delegation
#: and privileges, as rosteradmin first used them (test_ejabberd.py shows
#: what does not work that way).
PRIVILEGED_SETUP = """\
acl:
  roster_component:
    server: "{componentJID}"
access_rules:
  roster_component_access:
    allow: roster_component
api_permissions:
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"
modules:
  mod_disco: {{}}
  mod_ping: {{}}
  mod_roster:
    versioning: true
  mod_privilege:
    roster:
      both: roster_component_access
    presence:
      managed_entity: roster_component_access
  mod_delegation:
    namespaces:
      "jabber:iq:roster":
        access: roster_component_access
        filtering: []
"""


class EjabberdNotAvailable(RuntimeError):
    """
    ejabberd is not installed, cannot run here, or would not start.
    """


class LocalEjabberd:
    """
    An ejabberd process on loopback ports with its data in a fresh
    temporary directory, which L{stop} removes.

    @ivar c2sPort: The client port.
    @ivar componentPort: The XEP-0114 component port.
    @ivar apiPort: The port of mod_http_api (with C{include} only).
    @ivar apiURL: mod_http_api's base URL, for C{--ejabberd-api-url}.
    @ivar accounts: The password of each account created at start.
    @ivar directory: Its directory on the host (inside the root, with one).
    """

    domain = "example.org"
    componentJID = "roster.example.org"
    secret = "ejabberd-test-secret"

    def __init__(self, accounts: dict[str, str], root: Path | None = None, include: Path | None = None,
                 contribModules: tuple[Path, ...] = ()) -> None:
        """
        @param accounts: The accounts to create once it runs, username to
            password.
        @param root: The Debian root whose ejabberd runs (under C{chroot}),
            or C{None} for the host's.
        @param include: The rosteradmin part of the configuration (access
            rules, API permissions, modules) to include instead of the
            privileged setup written here; an HTTP listener for mod_http_api
            is added.
        @param contribModules: Source directories of contrib modules (each
            named after its module, with its C{.spec}, C{src/} and
            C{conf/}) to install once it runs, as an operator does: copied
            into C{~/.ejabberd-modules/sources}, then C{ejabberdctl
            module_install}, which compiles the module and loads it with
            the configuration in its C{conf/}.
        """
        self.accounts = dict(accounts)
        self.root = None if root is None else DebianRoot(root)
        self.include = include
        self.contribModules = contribModules
        self.c2sPort = freePort()
        self.componentPort = freePort()
        self.distPort = freePort()
        self.apiPort = freePort()
        self.apiURL = f"http://127.0.0.1:{self.apiPort}/api"
        self.node = f"rosteradmintest{os.getpid()}x{self.distPort}@localhost"
        self.directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._user: tuple[int, int] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """
        Start ejabberd, wait until its client and component ports accept
        connections, and create the accounts; after L{stop} with C{keep},
        start it again on the same directory, data and accounts.

        @raise EjabberdNotAvailable: It is not installed, we are not root,
            or it did not start within C{timeout} seconds; the message holds
            the end of its logs.
        """
        if self.directory is not None:
            self._run(time.monotonic() + timeout, timeout, fresh=False)
            return
        self._user = self._findUser()
        wanted = os.environ.get("ROSTERADMIN_EJABBERD")
        if self.root is not None and wanted and not self.version().startswith(wanted + "-"):
            raise EjabberdNotAvailable(f"ROSTERADMIN_EJABBERD={wanted}, but {self.root.path} holds ejabberd "
                                       f"{self.version()}: set ROSTERADMIN_DEBIAN13_ROOT to its root")
        # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700, closed
        # to the ejabberd user.  With a root, in its /tmp: ejabberd sees
        # its directory at the path inside the root.
        base = None if self.root is None else self.root.path / "tmp"
        self.directory = Path(tempfile.mkdtemp(prefix="rosteradmin-ejabberd-", dir=base))
        self._writeConfig()
        for path in [self.directory, *self.directory.rglob("*")]:
            os.chown(path, *self._user)
        self._run(time.monotonic() + timeout, timeout, fresh=True)

    def _run(self, deadline: float, timeout: float, fresh: bool) -> None:
        """
        Run C{ejabberdctl foreground} on the directory and wait for its
        ports; if C{fresh}, then create the accounts and install the
        contrib modules (a restart finds both in its spool and home).
        """
        assert self.directory is not None
        output = open(self.directory / "log" / "stdout.log", "ab")
        # Its own process group: stop() ends beam and its helpers together.
        self._process = self._popen(self._ctl("foreground"), stdout=output, start_new_session=True)
        output.close()
        try:
            ports = [self.c2sPort, self.componentPort] + ([self.apiPort] if self.include is not None else [])
            while not all(self._accepts(port) for port in ports):
                if self._process.poll() is not None:
                    raise EjabberdNotAvailable(f"ejabberd exited with status {self._process.returncode}")
                if time.monotonic() > deadline:
                    raise EjabberdNotAvailable(f"ejabberd did not open its ports within {timeout:g}s")
                time.sleep(0.1)
            if fresh:
                self._register(max(deadline - time.monotonic(), 10.0))
                for module in self.contribModules:
                    self._install(module.name, max(deadline - time.monotonic(), 10.0))
        except EjabberdNotAvailable as e:
            tail = self.logTail()
            self.stop()
            raise EjabberdNotAvailable(f"{e}:\n{tail}") from None

    def stop(self, timeout: float = 15.0, keep: bool = False) -> None:
        """
        Stop ejabberd: SIGTERM to the Erlang VM, which it takes as a clean
        shutdown, then SIGKILL to its whole process group (beam and its
        helpers) if it has not exited after C{timeout} seconds; then remove
        its directory, unless C{keep} (to L{start} it again).
        """
        process, self._process = self._process, None
        if process is not None:
            # Not the group: ejabberdctl's shell would die at once and leave
            # beam to init; it exits by itself once beam has.
            beam = self._beamPID()
            if beam is not None and process.poll() is None:
                try:
                    os.kill(beam, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            self._signalGroup(process.pid, signal.SIGKILL)
            process.wait()
        if self.directory is not None and not keep:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def _beamPID(self) -> int | None:
        """
        The Erlang VM's process id, from the pidfile ejabberd writes once
        started.
        """
        assert self.directory is not None
        try:
            return int((self.directory / "ejabberd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def version(self) -> str:
        """
        The Debian version of the ejabberd that runs (C{24.12-1},
        C{26.07-1~bpo13+1}): what a test expects can depend on it.
        """
        argv = ["dpkg-query", "-W", "-f=${Version}", "ejabberd"]
        command = argv if self.root is None else self.root.command(argv)
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()

    def release(self) -> str:
        """
        The upstream release of the ejabberd that runs (C{24.12}).
        """
        return self.version().split(":")[-1].split("-")[0]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def logTail(self, lines: int = 40) -> str:
        """
        The end of ejabberd's standard output and of its logs.
        """
        if self.directory is None:
            return ""
        texts = []
        for name in ("stdout.log", "ejabberd.log", "error.log"):
            path = self.directory / "log" / name
            if path.exists():
                texts.append(f"--- {name}")
                texts.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(texts)

    def _findUser(self) -> tuple[int, int]:
        """
        The uid and gid ejabberd runs as: the C{ejabberd} user of the root
        it runs in, or of the host.

        @raise EjabberdNotAvailable: ejabberd, its user or the root is
            missing, or we are not root.
        """
        if self.root is not None:
            if not self.root.built():
                raise EjabberdNotAvailable(self.root.missing())
            if not self.root.inRoot(Path(EJABBERDCTL)).exists():
                raise EjabberdNotAvailable(f"no ejabberd in {self.root.path}: run `bash scripts/debian13.sh`")
        elif not os.path.exists(EJABBERDCTL):
            raise EjabberdNotAvailable(
                "ejabberd is not installed: run `bash scripts/test.sh`, or `apt-get install ejabberd`")
        if os.geteuid() != 0:
            raise EjabberdNotAvailable(f"the ejabberd tests must run as root (to run ejabberd as {EJABBERD_USER!r})")
        try:
            if self.root is not None:
                return self.root.user(EJABBERD_USER)
            entry = pwd.getpwnam(EJABBERD_USER)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            raise EjabberdNotAvailable(f"no {EJABBERD_USER!r} user: is the ejabberd package installed?") from None

    def _popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """
        Run an ejabberdctl command line as the ejabberd user: straight on
        the host, or through C{chroot}, which (run by us as root) changes
        to that user once inside the root.
        """
        assert self.directory is not None and self._user is not None
        kwargs.setdefault("stdout", subprocess.PIPE)
        common: dict[str, Any] = dict(stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.directory,
                                      env=self._env())
        if self.root is not None:
            return subprocess.Popen(self.root.command(argv, self._user), **common, **kwargs)
        uid, gid = self._user
        return subprocess.Popen(argv, **common, user=uid, group=gid, extra_groups=[], **kwargs)

    def _inside(self, path: Path) -> Path:
        """
        A path of ours as ejabberd sees it.
        """
        return path if self.root is None else self.root.fromRoot(path)

    def _register(self, timeout: float, accounts: dict[str, str] | None = None) -> None:
        """
        Create the accounts (all of L{accounts} by default), all at once:
        each C{ejabberdctl} call starts an Erlang VM of its own, which takes
        about a second.
        """
        # ejabberd reads no account list from its configuration, and its
        # Mnesia spool is binary: asking the running node is the reliable way.
        assert self.directory is not None
        calls = {username: self._popen(self._ctl("register", username, self.domain, password))
                 for username, password in (self.accounts if accounts is None else accounts).items()}
        deadline = time.monotonic() + timeout
        problems = []
        for username, call in calls.items():
            try:
                output, _ = call.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                call.kill()
                call.communicate()
                problems.append(f"`ejabberdctl register {username}` took over {timeout:g}s")
                continue
            if call.returncode != 0:
                problems.append(f"`ejabberdctl register {username}` failed ({call.returncode}): "
                                f"{output.decode(errors='replace').strip()}")
        if problems:
            raise EjabberdNotAvailable("\n".join(problems))

    def addAccount(self, username: str, password: str, timeout: float = 30.0) -> None:
        """
        Create an account on the running server (C{ejabberdctl register}),
        unless it has one of that name already: a module's tests share
        one ejabberd.
        """
        self.addAccounts({username: password}, timeout)

    def addAccounts(self, accounts: dict[str, str], timeout: float = 60.0) -> None:
        """
        Create the accounts it does not have yet, all at once
        (L{addAccount}'s, for many).
        """
        new = {username: password for username, password in accounts.items() if username not in self.accounts}
        if new:
            self.accounts.update(new)
            self._register(timeout, new)

    def ctl(self, *arguments: str, timeout: float = 60.0) -> str:
        """
        Run one C{ejabberdctl} command against this server, as an operator
        would on its machine: its output.

        @raise EjabberdNotAvailable: It failed or took over C{timeout}.
        """
        call = self._popen(self._ctl(*arguments))
        try:
            output, _ = call.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            call.kill()
            call.communicate()
            raise EjabberdNotAvailable(f"`ejabberdctl {' '.join(arguments)}` took over {timeout:g}s") from None
        text = output.decode(errors="replace").strip()
        if call.returncode != 0:
            raise EjabberdNotAvailable(f"`ejabberdctl {' '.join(arguments)}` on {self.node} failed "
                                       f"({call.returncode}): {text}")
        return text

    def _install(self, module: str, timeout: float) -> None:
        """
        Install a contrib module from its sources, and check that it runs.
        """
        text = self.ctl("module_install", module, timeout=timeout)
        if module not in self.ctl("modules_installed", timeout=timeout):
            raise EjabberdNotAvailable(f"{module} is not installed after `ejabberdctl module_install`: {text}")

    def _ctl(self, *arguments: str) -> list[str]:
        assert self.directory is not None
        directory = self._inside(self.directory)
        return [EJABBERDCTL, "-d", str(directory), "-c", str(directory / "ejabberdctl.cfg"),
                "-f", str(directory / "ejabberd.yml"), "-s", str(directory / "spool"),
                "-l", str(directory / "log"), *arguments]

    def _env(self) -> dict[str, str]:
        assert self.directory is not None
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self._inside(self.directory) / "home"),
                "USER": EJABBERD_USER, "LOGNAME": EJABBERD_USER, "LANG": "C.UTF-8"}

    def _writeConfig(self) -> None:
        assert self.directory is not None
        for name in ("spool", "log", "home"):
            (self.directory / name).mkdir()
        for module in self.contribModules:
            # ejabberd's contrib modules live in ~/.ejabberd-modules.
            shutil.copytree(module, self.directory / "home" / ".ejabberd-modules" / "sources" / module.name)
        directory = self._inside(self.directory)
        # ERL_OPTIONS reaches the server and every ejabberdctl call alike;
        # the cookie keeps other nodes on this machine out.
        (self.directory / "ejabberdctl.cfg").write_text(f"""\
# generated by tests/integration/ejabberd.py
ERLANG_NODE={self.node}
ERL_DIST_PORT={self.distPort}
INET_DIST_INTERFACE=127.0.0.1
ERL_OPTIONS="-setcookie {secrets.token_hex(16)} -env ERL_CRASH_DUMP_BYTES 0"
EJABBERD_PID_PATH={directory / 'ejabberd.pid'}
EJABBERD_BYPASS_WARNINGS=true
""")
        (self.directory / "inetrc").write_text(
            '{lookup,["file","native"]}.\n{host,{127,0,0,1}, ["localhost"]}.\n')
        site = f"""\
# generated by tests/integration/ejabberd.py
hosts:
  - {self.domain}
loglevel: info
log_rotate_count: 0
certfiles: []
auth_method: internal
auth_password_format: plain
listen:
  -
    port: {self.c2sPort}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls: false
    starttls_required: false
  -
    port: {self.componentPort}
    ip: "127.0.0.1"
    module: ejabberd_service
    access: all
    hosts:
      {self.componentJID}:
        password: "{self.secret}"
"""
        if self.include is not None:
            # The operator's part, unchanged, next to the site's: ports,
            # secrets, TLS.  The rules it names (c2s, the API's
            # permissions) live in it.
            shutil.copyfile(self.include, self.directory / "rosteradmin.yml")
            site += f"""\
  -
    port: {self.apiPort}
    ip: "127.0.0.1"
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api
include_config_file: {directory / "rosteradmin.yml"}
"""
        else:
            site += PRIVILEGED_SETUP.format(componentJID=self.componentJID)
        (self.directory / "ejabberd.yml").write_text(site)

    @staticmethod
    def _signalGroup(pid: int, signum: int) -> None:
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            pass

    @staticmethod
    def _accepts(port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0
