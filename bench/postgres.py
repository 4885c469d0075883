"""PostgreSQL for the peer measurement: one the harness starts, or the machine's on loopback.

The peer (bench.peer) checkpoints LangGraph to PostgreSQL, and its CPU per step
counts the server's processes as the overhead section counts Redis's. So the
harness prefers a server of its own: ``initdb`` into a temporary folder
(Debian's binaries under /usr/lib/postgresql/*/bin if they are not on PATH),
one ``postgres`` process on a free loopback port that nothing else uses, run as
the ``postgres`` user when the harness is root (PostgreSQL refuses to run as
root), stopped and deleted afterwards. Without the binaries it falls back to a
server answering on 127.0.0.1:5432 with trust authentication, in a database of
its own (``tether_bench``) that it creates and drops, never touching another.
Without either, ``start`` raises PostgresUnavailable with the reason, which
the harness prints as a skipped line.

The server it starts commits with ``synchronous_commit=off``: its WAL reaches
the disk within a fraction of a second, not before each commit returns, which
is the durability of the Redis Tether is measured on (``appendfsync
everysec``, tether.dev.redis_server), so neither side is charged a disk flush
per write that the other does not pay.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg

from tether.dev.lifetime import die_with_parent
from tether.dev.redis_server import free_port
from tether.errors import TetherError

LOOPBACK = "postgresql://postgres@127.0.0.1:5432"
BENCH_DATABASE = "tether_bench"
# Trusted local connections, and no flushes while the throwaway cluster is created.
INITDB_OPTIONS = ("-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync")
# The server the harness starts: what it commits like (see the module's doc).
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "synchronous_commit": "off",
    "max_connections": "20",
}


class PostgresUnavailable(TetherError):
    """Neither PostgreSQL's binaries nor a server on loopback: the peer is skipped."""


@dataclass
class Postgres:
    """A PostgreSQL database the peer may write to, and the server processes to meter."""

    url: str
    kind: str  # "started" (the harness's own) or "loopback" (the machine's)
    postmaster: int

    def server_pids(self) -> list[int]:
        """The postmaster and every process it runs now (backends, WAL writer, checkpointer)."""
        try:
            root = psutil.Process(self.postmaster)
            return [root.pid, *(p.pid for p in root.children(recursive=True))]
        except psutil.Error:
            return []


def find_binaries() -> Path | None:
    """The folder holding initdb and postgres: PATH first, then Debian's versioned folders."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("postgres"):
        return Path(initdb).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "postgres").is_file():
            return Path(folder)
    return None


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """A server of the harness's own if the binaries exist and it starts, else a database
    on loopback; PostgresUnavailable, saying why each failed, when neither can be had."""
    reasons: list[str] = []
    with contextlib.ExitStack() as stack:
        server: Postgres | None = None
        binaries = find_binaries()
        if binaries is None:
            reasons.append("no initdb/postgres on PATH or under /usr/lib/postgresql/*/bin")
        else:
            try:
                server = stack.enter_context(_started(binaries))
            except PostgresUnavailable as exc:
                reasons.append(str(exc))
        if server is None:
            try:
                server = stack.enter_context(_loopback())
            except psycopg.Error as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                reasons.append(f"nothing accepts {LOOPBACK} ({first})")
        if server is None:
            raise PostgresUnavailable(
                "; ".join(reasons)
                + "; install PostgreSQL (Debian: apt-get install postgresql) to measure the peer"
            )
        yield server


def _as_postgres_user() -> tuple[int | None, int | None]:
    """Popen's user and group: PostgreSQL's own account when the harness runs as root."""
    if os.geteuid() != 0:
        return None, None
    try:
        account = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PostgresUnavailable(
            "the harness runs as root, which PostgreSQL refuses, and there is no 'postgres' "
            "user to run the server as; run the bench as another user or create that user"
        ) from exc
    return account.pw_uid, account.pw_gid


@contextlib.contextmanager
def _started(binaries: Path, timeout_s: float = 30.0) -> Iterator[Postgres]:
    user, group = _as_postgres_user()
    folder = Path(tempfile.mkdtemp(prefix="tether-bench-pg-"))
    data = folder / "data"
    if user is not None and group is not None:
        os.chown(folder, user, group)
    port = free_port()
    process: subprocess.Popen[bytes] | None = None
    try:
        with (folder / "initdb.log").open("wb") as out:
            done = subprocess.run(
                [str(binaries / "initdb"), "-D", str(data), *INITDB_OPTIONS],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=folder,
                check=False,
                user=user,
                group=group,
            )
        if done.returncode != 0:
            raise PostgresUnavailable(
                f"initdb in {data} failed (exit {done.returncode}); see {folder / 'initdb.log'}"
            )
        options = {**SETTINGS, "port": str(port), "unix_socket_directories": str(folder)}
        argv = [str(binaries / "postgres"), "-D", str(data)]
        for name, value in options.items():
            argv += ["-c", f"{name}={value}"]
        with (folder / "postgres.log").open("wb") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=folder,
                preexec_fn=die_with_parent(),
                user=user,
                group=group,
            )
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        _wait_ready(url, process, folder, timeout_s)
        yield Postgres(url=url, kind="started", postmaster=process.pid)
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # a fast shutdown: sessions end, no waiting
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ready(url: str, process: subprocess.Popen[bytes], folder: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PostgresUnavailable(
                f"postgres exited at start (exit {process.returncode}); "
                f"see {folder / 'postgres.log'}"
            )
        try:
            with psycopg.connect(url, connect_timeout=1):
                return
        except psycopg.OperationalError:
            time.sleep(0.1)
    raise PostgresUnavailable(
        f"postgres in {folder} did not accept connections within {timeout_s:g} s; "
        f"see {folder / 'postgres.log'}"
    )


@contextlib.contextmanager
def _loopback() -> Iterator[Postgres]:
    admin = f"{LOOPBACK}/postgres"
    with psycopg.connect(admin, autocommit=True, connect_timeout=2) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE}")
        conn.execute(f"CREATE DATABASE {BENCH_DATABASE}")
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()
    postmaster = _postmaster_of(int(backend[0])) if backend else 0
    try:
        yield Postgres(url=f"{LOOPBACK}/{BENCH_DATABASE}", kind="loopback", postmaster=postmaster)
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=2) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")


def _postmaster_of(backend: int) -> int:
    """The server process a backend was forked from (0 when it runs where psutil cannot see)."""
    try:
        parent = psutil.Process(backend).parent()
    except psutil.Error:
        return 0
    return parent.pid if parent is not None else 0
