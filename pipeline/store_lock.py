"""A run's lock on a shared ML Metadata store, held by the database server itself, so two checkouts on
two machines never interleave their runs and pushes of one pipeline. The output directory's file lock
(runner.output_lock) cannot see another machine.

PostgreSQL: a session-level advisory lock on a dedicated connection; the server drops it when that
connection ends, so a killed run releases it. The holder names itself in `application_name`, which a
refused run reads back from pg_stat_activity. MySQL (and MariaDB): GET_LOCK on a dedicated connection,
released the same way; a refused run names the holder's connection from the process list.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import time
import zlib
from collections.abc import Iterator

from pipeline.metadata import MetadataStore


class StoreLocked(RuntimeError):
    """Another run of the same pipeline holds the shared store's lock."""


def _key(pipeline_name: str) -> int:
    """A stable 32-bit advisory-lock key per pipeline (one pipeline's runs exclude each other only)."""
    return zlib.crc32(f"conveyor:{pipeline_name}".encode()) & 0x7FFFFFFF


@contextlib.contextmanager
def store_lock(store: MetadataStore, pipeline_name: str) -> Iterator[None]:
    """Holds the store's lock for `pipeline_name` for the duration; a SQLite store needs none (the output
    directory's lock covers it).

    Raises:
      StoreLocked: another run holds it; names who, where, since when.
      MetadataUnavailable: the server cannot be reached.
    """
    if not store.shared:
        yield
        return
    if store.kind == "mysql":
        with _mysql_lock(store, pipeline_name):
            yield
        return
    connection = store.driver_connection(_describe_me(pipeline_name))
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", (_key(pipeline_name),))
            if not cursor.fetchone()[0]:
                cursor.execute(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.objid = %s AND l.granted",
                    (_key(pipeline_name),),
                )
                row = cursor.fetchone()
                holder = row[0] if row and row[0] else "another session"
                raise _refused(pipeline_name, store, holder)
        yield
    finally:
        connection.close()


def _refused(pipeline_name: str, store: MetadataStore, holder: str) -> StoreLocked:
    return StoreLocked(
        f"pipeline '{pipeline_name}' is being run against {store.shown} by {holder}; wait for that run "
        "to finish (a run that dies releases the lock)"
    )


def _describe_me(pipeline_name: str) -> str:
    return (
        f"conveyor run {pipeline_name} (pid {os.getpid()} on {socket.gethostname()} by {getpass.getuser()}, "
        f"started {time.strftime('%Y-%m-%d %H:%M:%S')})"
    )


@contextlib.contextmanager
def _mysql_lock(store: MetadataStore, pipeline_name: str) -> Iterator[None]:
    name = f"conveyor:{pipeline_name}"[:64]
    connection = store.driver_connection(_describe_me(pipeline_name))
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT GET_LOCK(%s, 0)", (name,))
            if cursor.fetchone()[0] != 1:
                cursor.execute(
                    "SELECT p.ID, p.USER, p.HOST FROM information_schema.PROCESSLIST p WHERE p.ID = IS_USED_LOCK(%s)",
                    (name,),
                )
                row = cursor.fetchone()
                holder = f"connection {row[0]} of {row[1]} from {row[2]}" if row else "another session"
                raise _refused(pipeline_name, store, holder)
        yield
    finally:
        connection.close()
