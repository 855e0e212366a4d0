"""A run's lock on a shared ML Metadata store, held by the database server itself, so two checkouts on
two machines never interleave their runs and pushes of one pipeline. The output directory's file lock
(runner.output_lock) cannot see another machine.

PostgreSQL: a session-level advisory lock on a dedicated connection; the server drops it when that
connection ends, so a killed run releases it. The holder names itself in `application_name`, which a
waiting or refused run reads back from pg_stat_activity. MySQL (and MariaDB): GET_LOCK on a dedicated
connection, released the same way; a waiting or refused run names the holder's connection from the
process list. A run either is refused at once (the default) or waits up to `metadata.lock_wait` seconds
(`conveyor run --lock-wait`), saying whom it waits for.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import time
import zlib
from collections.abc import Iterator
from typing import Optional, TextIO

from pipeline.metadata import MetadataStore

# How often a waiting run asks the server again: short next to a run (minutes), long next to a query.
POLL_SECONDS = 0.5


class StoreLocked(RuntimeError):
    """Another run of the same pipeline holds the shared store's lock."""


def _key(pipeline_name: str) -> int:
    """A stable 32-bit advisory-lock key per pipeline (one pipeline's runs exclude each other only)."""
    return zlib.crc32(f"conveyor:{pipeline_name}".encode()) & 0x7FFFFFFF


@contextlib.contextmanager
def store_lock(
    store: MetadataStore, pipeline_name: str, wait: float = 0.0, progress: Optional[TextIO] = None
) -> Iterator[None]:
    """Holds the store's lock for `pipeline_name` for the duration; a SQLite store needs none (the output
    directory's lock covers it).

    Args:
      store: the run's ML Metadata store.
      pipeline_name: whose runs exclude each other.
      wait: seconds to wait for a run that holds the lock before refusing; 0 refuses at once.
      progress: where a waiting run says whom it waits for (a line per holder), e.g. the terminal.

    Raises:
      StoreLocked: another run still holds it after `wait` seconds; names who, where, since when.
      MetadataUnavailable: the server cannot be reached.
    """
    if not store.shared:
        yield
        return
    lock = _MySQLLock(pipeline_name) if store.kind == "mysql" else _PostgresLock(pipeline_name)
    connection = store.driver_connection(_describe_me(pipeline_name))
    if store.kind == "postgresql":
        connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            deadline, announced = time.monotonic() + wait, None
            while not lock.take(cursor, min(POLL_SECONDS, max(deadline - time.monotonic(), 0.0))):
                holder = lock.holder(cursor)
                if time.monotonic() >= deadline:
                    raise _refused(pipeline_name, store, holder, wait)
                if progress is not None and holder != announced:
                    progress.write(
                        f"  waiting up to {wait:g}s for pipeline '{pipeline_name}' on {store.shown}: "
                        f"it is being run by {holder}\n"
                    )
                    progress.flush()
                    announced = holder
                if lock.polls:
                    time.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0.0)))
        yield
    finally:
        connection.close()


class _PostgresLock:
    """pg_try_advisory_lock, asked again while waiting (the server has no wait with a timeout for it)."""

    polls = True

    def __init__(self, pipeline_name: str):
        self.key = _key(pipeline_name)

    def take(self, cursor, _seconds: float) -> bool:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
        return bool(cursor.fetchone()[0])

    def holder(self, cursor) -> str:
        cursor.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.objid = %s AND l.granted",
            (self.key,),
        )
        row = cursor.fetchone()
        return row[0] if row and row[0] else "another session"


class _MySQLLock:
    """GET_LOCK, which waits on the server itself for up to the seconds it is given."""

    polls = False

    def __init__(self, pipeline_name: str):
        self.name = f"conveyor:{pipeline_name}"[:64]

    def take(self, cursor, seconds: float) -> bool:
        cursor.execute("SELECT GET_LOCK(%s, %s)", (self.name, seconds))
        return cursor.fetchone()[0] == 1

    def holder(self, cursor) -> str:
        cursor.execute(
            "SELECT p.ID, p.USER, p.HOST FROM information_schema.PROCESSLIST p WHERE p.ID = IS_USED_LOCK(%s)",
            (self.name,),
        )
        row = cursor.fetchone()
        return f"connection {row[0]} of {row[1]} from {row[2]}" if row else "another session"


def _refused(pipeline_name: str, store: MetadataStore, holder: str, waited: float) -> StoreLocked:
    after = f" (still, after waiting {waited:g}s)" if waited else ""
    return StoreLocked(
        f"pipeline '{pipeline_name}' is being run against {store.shown} by {holder}{after}; wait for that run "
        "to finish (a run that dies releases the lock), or let a run wait for it: metadata.lock_wait or "
        "`conveyor run --lock-wait SECONDS`"
    )


def _describe_me(pipeline_name: str) -> str:
    return (
        f"conveyor run {pipeline_name} (pid {os.getpid()} on {socket.gethostname()} by {getpass.getuser()}, "
        f"started {time.strftime('%Y-%m-%d %H:%M:%S')})"
    )
