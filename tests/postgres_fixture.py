"""A real, throwaway PostgreSQL server for the usage ledger's tests, started from Debian's
binaries (``apt-get install postgresql``) in a temporary directory on a free port.

PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user the
Debian package creates. A missing binary fails the test: CI must run these tests, never skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.redis_fixture import free_port


def _binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    path = found[-1] if found else shutil.which(name)
    if not path:
        pytest.fail(f"{name} is missing: install PostgreSQL (apt-get install postgresql); "
                    "these tests must run, not skip")
    return path


class PostgresServer:
    """One postgres process; ``stop()`` kills it hard (a crash), ``start()`` brings it back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="aiproxy-pg-"))
        self.data = self.workdir / "data"
        self.log = self.workdir / "postgres.log"
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root, and there is no 'postgres' user to run the "
                            "server as (apt-get install postgresql creates it)")
            self.user = "postgres"
            shutil.chown(self.workdir, "postgres", "postgres")
        self._run(_binary("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        command = list(argv)
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, check=check, capture_output=True, timeout=60)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        # fsync=off is safe for these tests: a killed server's writes are in the OS's cache.
        # synchronous_commit stays on: with it off, a crash loses commits already answered.
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.workdir} "
                   "-c fsync=off -c full_page_writes=off")
        result = self._run(_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                           "-o", options, "-w", "-t", "30", "start", check=False)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"postgres did not start: {result.stderr.decode()} {log}")

    def stop(self) -> None:
        """Stop at once (immediate mode: connections are cut, as in a crash)."""
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop",
                  check=False)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One server for the session (each test gets its own database: ``postgres_url``)."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of the test's own, which it may stop and start."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


async def fresh_database(server: PostgresServer) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server.url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.url_for(name)


@pytest.fixture
async def postgres_url(postgres_server: PostgresServer) -> str:
    """A new, empty database on the session's server."""
    return await fresh_database(postgres_server)

