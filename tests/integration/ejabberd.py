# -*- test-case-name: tests.integration.test_ejabberd -*-
"""
A throwaway local ejabberd for the integration tests: the other server
rosteradmin supports, which speaks the C{:1} namespaces of XEP-0355
(C{urn:xmpp:delegation:1}) and XEP-0356 (C{urn:xmpp:privilege:1}).

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

from rosteradmin.devprosody import freePort

EJABBERDCTL = "/usr/sbin/ejabberdctl"
#: The system user the Debian package runs ejabberd as.
EJABBERD_USER = "ejabberd"


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
    @ivar accounts: The password of each account created at start.
    """

    domain = "example.org"
    componentJID = "roster.example.org"
    secret = "ejabberd-test-secret"

    def __init__(self, accounts: dict[str, str]) -> None:
        """
        @param accounts: The accounts to create once it runs, username to
            password.
        """
        self.accounts = dict(accounts)
        self.c2sPort = freePort()
        self.componentPort = freePort()
        self.distPort = freePort()
        self.node = f"rosteradmintest{os.getpid()}x{self.distPort}@localhost"
        self.directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """
        Start ejabberd, wait until its client and component ports accept
        connections, and create the accounts.

        @raise EjabberdNotAvailable: It is not installed, we are not root,
            or it did not start within C{timeout} seconds; the message holds
            the end of its logs.
        """
        if not os.path.exists(EJABBERDCTL):
            raise EjabberdNotAvailable(
                "ejabberd is not installed: run `bash scripts/test.sh`, or `apt-get install ejabberd`")
        try:
            user = pwd.getpwnam(EJABBERD_USER)
        except KeyError:
            raise EjabberdNotAvailable(f"no {EJABBERD_USER!r} user: is the ejabberd package installed?") from None
        if os.geteuid() != 0:
            raise EjabberdNotAvailable(f"the ejabberd tests must run as root (to run ejabberd as {EJABBERD_USER!r})")
        # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700, closed
        # to the ejabberd user.
        self.directory = Path(tempfile.mkdtemp(prefix="rosteradmin-ejabberd-"))
        self._writeConfig()
        for path in [self.directory, *self.directory.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        deadline = time.monotonic() + timeout
        output = open(self.directory / "log" / "stdout.log", "ab")
        self._process = subprocess.Popen(
            self._ctl("foreground"), stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.directory, env=self._env(user), user=user.pw_uid, group=user.pw_gid, extra_groups=[],
            start_new_session=True,  # its own process group: stop() ends beam and its helpers together
        )
        output.close()
        try:
            while not (self._accepts(self.c2sPort) and self._accepts(self.componentPort)):
                if self._process.poll() is not None:
                    raise EjabberdNotAvailable(f"ejabberd exited with status {self._process.returncode}")
                if time.monotonic() > deadline:
                    raise EjabberdNotAvailable(f"ejabberd did not open its ports within {timeout:g}s")
                time.sleep(0.1)
            self._register(user, max(deadline - time.monotonic(), 10.0))
        except EjabberdNotAvailable as e:
            tail = self.logTail()
            self.stop()
            raise EjabberdNotAvailable(f"{e}:\n{tail}") from None

    def stop(self, timeout: float = 15.0) -> None:
        """
        Stop ejabberd: SIGTERM to the Erlang VM, which it takes as a clean
        shutdown, then SIGKILL to its whole process group (beam and its
        helpers) if it has not exited after C{timeout} seconds; then remove
        its directory.
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
        if self.directory is not None:
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

    def _register(self, user: pwd.struct_passwd, timeout: float) -> None:
        """
        Create the accounts, all at once: each C{ejabberdctl} call starts an
        Erlang VM of its own, which takes about a second.
        """
        # ejabberd reads no account list from its configuration, and its
        # Mnesia spool is binary: asking the running node is the reliable way.
        assert self.directory is not None
        calls = {
            username: subprocess.Popen(
                self._ctl("register", username, self.domain, password), stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.directory, env=self._env(user),
                user=user.pw_uid, group=user.pw_gid, extra_groups=[],
            )
            for username, password in self.accounts.items()
        }
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

    def _ctl(self, *arguments: str) -> list[str]:
        assert self.directory is not None
        return [EJABBERDCTL, "-d", str(self.directory), "-c", str(self.directory / "ejabberdctl.cfg"),
                "-f", str(self.directory / "ejabberd.yml"), "-s", str(self.directory / "spool"),
                "-l", str(self.directory / "log"), *arguments]

    def _env(self, user: pwd.struct_passwd) -> dict[str, str]:
        assert self.directory is not None
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.directory / "home"),
                "USER": user.pw_name, "LOGNAME": user.pw_name, "LANG": "C.UTF-8"}

    def _writeConfig(self) -> None:
        assert self.directory is not None
        for name in ("spool", "log", "home"):
            (self.directory / name).mkdir()
        # ERL_OPTIONS reaches the server and every ejabberdctl call alike;
        # the cookie keeps other nodes on this machine out.
        (self.directory / "ejabberdctl.cfg").write_text(f"""\
# generated by tests/integration/ejabberd.py
ERLANG_NODE={self.node}
ERL_DIST_PORT={self.distPort}
INET_DIST_INTERFACE=127.0.0.1
ERL_OPTIONS="-setcookie {secrets.token_hex(16)} -env ERL_CRASH_DUMP_BYTES 0"
EJABBERD_PID_PATH={self.directory / 'ejabberd.pid'}
EJABBERD_BYPASS_WARNINGS=true
""")
        (self.directory / "inetrc").write_text(
            '{lookup,["file","native"]}.\n{host,{127,0,0,1}, ["localhost"]}.\n')
        (self.directory / "ejabberd.yml").write_text(f"""\
# generated by tests/integration/ejabberd.py
hosts:
  - {self.domain}
loglevel: info
log_rotate_count: 0
certfiles: []
auth_method: internal
auth_password_format: plain
acl:
  roster_component:
    server: "{self.componentJID}"
access_rules:
  c2s:
    allow: all
  roster_component_access:
    allow: roster_component
api_permissions:
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"
listen:
  -
    port: {self.c2sPort}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    access: c2s
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
""")

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
