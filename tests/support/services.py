"""Throw-away backing services for tests and benchmarks.

``private_redis`` starts a ``redis-server`` on a free loopback port (nothing persisted);
``temporary_database`` creates a PostgreSQL database and drops it afterwards. Neither
touches the shared instances other users may rely on.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import redis

from churnops.processes import free_port, terminate

DEFAULT_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"


@contextmanager
def private_redis(start_timeout_s: float = 10.0) -> Iterator[str]:
    """Yield ``host:port`` of a fresh redis-server; it is stopped on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server not found on PATH (Debian: apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="churnops-redis-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        terminate(proc, 10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def temporary_database(admin_dsn: str = DEFAULT_ADMIN_DSN, prefix: str = "churnops_tmp") -> Iterator[str]:
    """Yield the name of a new, empty database; it is dropped (with its connections) on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
