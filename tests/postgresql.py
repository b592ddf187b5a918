"""
A private PostgreSQL server for the tests, from Debian's C{postgresql}
package (C{scripts/setup.sh} installs it): a new cluster in a temporary
directory, on a free loopback port, its Unix socket in the same
directory, started and stopped by the tests themselves as they start
Prosody.

PostgreSQL refuses to run as root, and the tests run as root on CI and
here: then C{initdb} and C{pg_ctl} run as the C{postgres} user that the
package creates (C{runuser}), and the directory is handed to it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from rosteradmin_demo.devprosody import freePort

#: The superuser the cluster is created with; it logs in without a
#: password (C{trust}) over loopback only.
SUPERUSER = "rosteradmin"

#: Seconds C{pg_ctl} waits for the server to start or stop.
WAIT = 30

#: Settings for speed: the tests never outlive a power loss.
_FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def serverBinaries() -> Path:
    """
    The directory of the newest installed PostgreSQL's C{initdb} and
    C{pg_ctl}.

    @raise RuntimeError: None is installed, saying how to install it.
    """
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
                           "bash scripts/setup.sh installs Debian's postgresql package")
    return Path(found[-1]).parent


class PostgreSQLServer:
    """
    One PostgreSQL cluster for a test session.

    @ivar directory: Holds the cluster (C{data}), its log and its socket.
    @ivar port: Its loopback TCP port, kept across L{stop} and L{start}.
    """

    def __init__(self) -> None:
        self.bin = serverBinaries()
        self.directory = Path(tempfile.mkdtemp(prefix="rosteradmin-postgresql-"))
        self.port = freePort()
        self._databases = 0
        self._user: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres") if _userExists("postgres") else pwd.getpwnam("nobody")
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
            self._user = ["runuser", "-u", owner.pw_name, "--"]

    def _run(self, program: str, *args: str) -> None:
        command = [*self._user, str(self.bin / program), *args]
        # In its own directory: the unprivileged user may not enter ours.
        done = subprocess.run(command, capture_output=True, text=True, timeout=WAIT + 30, cwd=self.directory)
        if done.returncode != 0:
            log = self.directory / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")

    def start(self) -> None:
        """
        Start it (again), waiting until it takes connections; the first
        time, create the cluster.
        """
        if not (self.directory / "data").exists():
            self._run("initdb", "-D", str(self.directory / "data"), "-U", SUPERUSER, "-A", "trust", "--no-sync",
                      "-E", "UTF8", "--locale=C")
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 {_FAST}"
        self._run("pg_ctl", "-D", str(self.directory / "data"), "-l", str(self.directory / "log"), "-o", options,
                  "-w", "-t", str(WAIT), "start")

    def stop(self) -> None:
        """
        Stop it at once (C{-m fast}: its clients are disconnected).
        """
        self._run("pg_ctl", "-D", str(self.directory / "data"), "-m", "fast", "-w", "-t", str(WAIT), "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def newDatabase(self, password: str | None = None) -> str:
        """
        The URL of a new, empty database.

        @param password: If given, the database belongs to a login role of
            its own, which must give this password over TCP (as a deployed
            server asks), unlike L{SUPERUSER}; the URL names the role, not
            the password.
        """
        import psycopg
        from psycopg import sql

        self._databases += 1
        name = f"test{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            if password is None:
                db.execute(f"CREATE DATABASE {name}")
                return self.url(name)
            role = f"owner{self._databases}"
            db.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
            db.execute(f"CREATE DATABASE {name} OWNER {role}")
            # The first matching line decides: before initdb's trust lines.
            hba = self.directory / "data" / "pg_hba.conf"
            hba.write_text(f"host {name} {role} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
            db.execute("SELECT pg_reload_conf()")
        url = f"postgresql://{role}@127.0.0.1:{self.port}/{name}"
        deadline = time.monotonic() + WAIT
        while _connects(url):  # until the reload took effect
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} still lets a connection without a password in")
            time.sleep(0.05)
        return url

    def remove(self) -> None:
        """
        Stop it if it runs, and delete its directory.
        """
        if (self.directory / "data" / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _userExists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _connects(url: str) -> bool:
    """
    Whether a connection to C{url} with no password is let in.
    """
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.OperationalError:
        return False
    return True
