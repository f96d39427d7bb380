"""A throwaway PostgreSQL server for tests: initdb into a temp dir, start on loopback, stop.

Uses Debian's server binaries (``/usr/lib/postgresql/<version>/bin``; the ``postgresql``
package, which ``scripts/bootstrap.sh`` installs). PostgreSQL refuses to run as root, so
when the tests run as root (CI) the data directory is handed to the ``postgres`` system
user and the server processes run as that user (``subprocess`` ``user=``/``group=``).

Connections go over TCP to 127.0.0.1 on a free port; the Unix socket lives in the temp
dir too, so nothing touches the system cluster or /var/run/postgresql.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


class PostgresUnavailable(Exception):
    """The machine cannot run a test PostgreSQL server; the message says why."""


def find_bindir() -> Path:
    """The newest Debian PostgreSQL server bin dir, or the one holding ``initdb`` on PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb): "
        "install Debian's `postgresql` package (scripts/bootstrap.sh does this)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgServer:
    bindir: Path
    root: Path
    port: int
    superuser: str
    _run_as: str | None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root / "sock"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        kwargs = {}
        if self._run_as is not None:
            kwargs = dict(user=self._run_as, group=self._run_as, extra_groups=[])
        return subprocess.run(
            [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
            cwd=self.root, **kwargs,
        )

    @classmethod
    def start(cls, superuser: str = "tester") -> "PgServer":
        bindir = find_bindir()
        run_as: str | None = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root and there is no `postgres` system user to run the test "
                    "server as (PostgreSQL refuses to run as root)"
                ) from None
            run_as = "postgres"
        root = Path(tempfile.mkdtemp(prefix="referral-bot-pg-"))
        if run_as is not None:
            os.chown(root, pw.pw_uid, pw.pw_gid)
        server = cls(bindir=bindir, root=root, port=_free_port(), superuser=superuser, _run_as=run_as)
        try:
            server._init_and_start()
        except BaseException:
            server.stop()
            raise
        return server

    def _init_and_start(self) -> None:
        sock = self.sockdir
        res = self._run("mkdir", "-p", str(sock))
        if res.returncode != 0:
            raise PostgresUnavailable(f"cannot create socket dir: {res.stderr.strip()}")
        res = self._run(
            self.bindir / "initdb", "-D", str(self.datadir), "-U", self.superuser,
            "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
        )
        if res.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {res.stderr.strip()[-500:]}")
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {sock} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=50 -c shared_buffers=32MB"
        )
        res = self._run(
            self.bindir / "pg_ctl", "-D", str(self.datadir), "-l", str(self.root / "server.log"),
            "-o", options, "-w", "-t", "60", "start",
        )
        if res.returncode != 0:
            log = (self.root / "server.log")
            tail = log.read_text()[-800:] if log.exists() else ""
            raise PostgresUnavailable(f"PostgreSQL did not start: {res.stderr.strip()} {tail}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise PostgresUnavailable("PostgreSQL started but does not accept TCP connections")

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run(self.bindir / "pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
