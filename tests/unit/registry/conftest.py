"""A throwaway PostgreSQL server for the registry tests, so the `postgresql+psycopg://` path runs for real.

One cluster per test session (initdb + start, about two seconds, fsync off), one fresh database per test. The
cluster lives in its own temporary folder, listens on 127.0.0.1 on a free port and a unix socket in that folder,
and is stopped and deleted afterwards. PostgreSQL refuses to run as root, so under root the server runs as the
`postgres` (or `nobody`) user through runuser/su. Without PostgreSQL binaries, the psycopg driver, or a way to
drop privileges the postgres cases are skipped with the reason, so a machine without PostgreSQL still passes.
`LLMTAILOR_TEST_PG_BIN` names a folder with initdb/pg_ctl when they are not on PATH.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_USER = "tailor"  # the cluster's superuser; the URL carries a password that trust auth ignores
PG_PASSWORD = "s3cret-not-shown"
BACKENDS = ("sqlite", "postgres")


@dataclass
class PgCluster:
    """A running throwaway cluster; `database()` makes a fresh, empty database and returns its URL."""

    host: str
    port: int
    socket_dir: Path
    _count: itertools.count

    def admin_conninfo(self) -> str:
        return f"host={self.socket_dir} port={self.port} user={PG_USER} dbname=postgres"

    def database(self) -> str:
        import psycopg

        name = f"reg_{next(self._count)}"
        with psycopg.connect(self.admin_conninfo(), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@{self.host}:{self.port}/{name}"


def _pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: $LLMTAILOR_TEST_PG_BIN, PATH, or the newest Debian-style install."""
    candidates = [os.environ.get("LLMTAILOR_TEST_PG_BIN", "")]
    found = shutil.which("initdb")
    candidates.append(str(Path(found).parent) if found else "")
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def _as_user() -> tuple[list[str] | None, str | None]:
    """(argv prefix running a shell command unprivileged, that user's name), or (None, None) if impossible."""
    if os.geteuid() != 0:
        return ["/bin/sh", "-c"], None
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        if shutil.which("runuser"):
            return ["runuser", "-u", user, "--", "/bin/sh", "-c"], user
        if shutil.which("su"):
            return ["su", user, "-s", "/bin/sh", "-c"], user
    return None, None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """Start a PostgreSQL cluster for the whole session, or skip saying what is missing."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'llmtailor[postgres]')")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) on PATH, in /usr/lib/postgresql or $LLMTAILOR_TEST_PG_BIN")
    prefix, user = _as_user()
    if prefix is None:
        pytest.skip("running as root with no postgres/nobody user or runuser/su to drop privileges for initdb")
    root = Path(tempfile.mkdtemp(prefix="tailor-pg-"))  # short path: unix socket names are limited to ~100 chars
    if user is not None:
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data, log = root / "data", root / "server.log"

    def sh(cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, cmd], capture_output=True, text=True, timeout=60, cwd=root)

    q = shlex.quote
    init = sh(f"{q(str(bindir / 'initdb'))} -D {q(str(data))} -U {PG_USER} -A trust -E UTF8 --no-sync")
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed: {init.stderr or init.stdout}")
    started = None
    for _ in range(3):  # the free port can be taken between picking and binding it; try another
        port = _free_port()
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        started = sh(f"{q(str(bindir / 'pg_ctl'))} -D {q(str(data))} -l {q(str(log))} -w -t 30 -o {q(opts)} start")
        if started.returncode == 0:
            break
    if started is None or started.returncode != 0:
        text = log.read_text(errors="replace") if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed: {started.stderr if started else ''}\n{text[-2000:]}")
    try:
        yield PgCluster("127.0.0.1", port, root, itertools.count(1))
    finally:
        sh(f"{q(str(bindir / 'pg_ctl'))} -D {q(str(data))} -m fast -w stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def registry_url(request, tmp_path) -> str:
    """The same registry test on a SQLite file and on a fresh database of the throwaway PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'reg.db'}"
    return request.getfixturevalue("pg_cluster").database()
