"""A run's lock on a shared ML Metadata store, held by the database server itself, so two checkouts on
two machines never interleave their runs and pushes of one pipeline. The output directory's file lock
(runner.output_lock) cannot see another machine.

PostgreSQL: a session-level advisory lock on a dedicated connection; the server drops it when that
connection ends, so a killed run releases it. The holder names itself in `application_name`, which a
refused run reads back from pg_stat_activity.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import time
import zlib
from collections.abc import Iterator

from pipeline.metadata import MetadataStore, MetadataUnavailable


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
      MetadataUnavailable: the server cannot be reached, or the store's kind has no lock here (MySQL).
    """
    if not store.shared:
        yield
        return
    if store.kind != "postgresql":
        raise MetadataUnavailable(
            f"conveyor run on {store.shown}: runs need the server's lock, implemented for PostgreSQL only so far; "
            "the registry commands (models, runs) read a MySQL store"
        )
    import psycopg2

    me = (
        f"conveyor run {pipeline_name} (pid {os.getpid()} on {socket.gethostname()} by {getpass.getuser()}, "
        f"started {time.strftime('%Y-%m-%d %H:%M:%S')})"
    )[:63]
    try:
        connection = psycopg2.connect(
            host=store.host,
            port=store.port,
            user=store.user,
            dbname=store.database,
            password=store.password() or None,
            application_name=me,
            connect_timeout=10,
        )
    except psycopg2.Error as err:
        reason = " ".join(str(err).split())[:300]
        raise MetadataUnavailable(f"cannot lock ML Metadata at {store.shown}: {reason}") from None
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
                raise StoreLocked(
                    f"pipeline '{pipeline_name}' is being run against {store.shown} by {holder}; wait for that run "
                    "to finish (a run that dies releases the lock)"
                )
        yield
    finally:
        connection.close()
