"""Whether a claimant is alive: a fact about processes, never about the as-of clock.

A claim records who holds it (:func:`holder_identity`: host, boot, PID namespace and process
id) and a heartbeat on the database's clock, renewed with every window of requests. A
claimant is dead when its heartbeat is older than the lease, or — without waiting for the
lease — when it ran on this very machine and PID namespace and its process is gone (a
``kill -9``, an OOM kill). The process check only ever answers "dead" when it is sure: a
holder elsewhere, or a PID that now belongs to another process, counts as alive until the
lease runs out, which errs on the side of never sending twice (SPEC B1).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import socket
from pathlib import Path

from sqlalchemy import Connection, func, select


@functools.cache
def _machine() -> str:
    """This host, boot and PID namespace: the scope in which a process id means one process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""  # no /proc: the process check is off, the lease alone decides
    return f"{socket.gethostname()}|{boot}|{pidns}"


def holder_identity() -> str:
    """Who holds a claim made by this process (stored with the claim)."""
    return f"{_machine()}|{os.getpid()}"


def holder_is_gone(holder: str | None) -> bool:
    """True only when ``holder`` provably no longer runs: same machine and PID namespace as
    this process, and its process id is gone or a zombie."""
    machine = _machine()
    if not machine or not holder:
        return False
    where, _, pid_text = holder.rpartition("|")
    if where != machine or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


def database_now(conn: Connection) -> dt.datetime:
    """The database's current time (aware UTC): one clock for claimants on every machine."""
    value = conn.execute(select(func.current_timestamp())).scalar()
    if isinstance(value, str):  # SQLite: 'YYYY-MM-DD HH:MM:SS', UTC
        value = dt.datetime.fromisoformat(value)
    assert isinstance(value, dt.datetime)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
