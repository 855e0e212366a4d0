"""Where ML Metadata lives: a SQLite file (the default, one per output directory) or a server a team
shares (PostgreSQL, or a MySQL-compatible one such as the database Kubeflow Pipelines keeps).

A store is named by a URL: `sqlite:///abs/path.sqlite`, `postgresql://user@host:port/db` or
`mysql://user@host:port/db`. The password never sits in a URL or a config file: it is read from the
environment variable the config names (`metadata.password_env`). Ground level: imports nothing of the
project.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

SCHEMES = ("sqlite", "postgresql", "mysql")
# Where the password is read from when the config names no variable (metadata.password_env).
DEFAULT_PASSWORD_ENV = "CONVEYOR_METADATA_PASSWORD"
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
_DB_NAME = re.compile(r"^[A-Za-z0-9_$-]{1,63}$")


class MetadataUnavailable(RuntimeError):
    """The store cannot be opened: unreachable server, wrong credentials, missing database or file."""


@dataclass(frozen=True)
class MetadataStore:
    """One ML Metadata store. Build it with `parse`; `shown` is safe to print (it holds no password)."""

    kind: str
    path: str = ""
    host: str = ""
    port: int = 0
    user: str = ""
    database: str = ""
    password_env: str = ""

    @classmethod
    def sqlite(cls, path: str | Path) -> MetadataStore:
        return cls("sqlite", path=str(Path(path).absolute()))

    @classmethod
    def parse(cls, url: str, password_env: str = "") -> MetadataStore:
        """Reads a store URL.

        Raises:
          ValueError: the URL is malformed or holds a password; the message says what is expected.
        """
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ValueError(
                f"'{url}' is not an ML Metadata URL: use sqlite:///PATH, postgresql://USER@HOST:PORT/DB "
                "or mysql://USER@HOST:PORT/DB"
            )
        if parts.scheme == "sqlite":
            if parts.netloc or not parts.path:
                raise ValueError(f"'{url}': a SQLite store is sqlite:///ABSOLUTE/PATH (three slashes)")
            return cls.sqlite(unquote(parts.path))
        if parts.password is not None:
            raise ValueError(
                f"'{parts.scheme}://{parts.username}:***@{parts.hostname}...': no password in the URL; put it in an "
                "environment variable and name it in the config (metadata.password_env)"
            )
        database = parts.path.lstrip("/")
        if not parts.hostname or not parts.username or not _DB_NAME.match(database):
            raise ValueError(f"'{url}' must name a user, a host and a database: {parts.scheme}://USER@HOST:PORT/DB")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError as err:
            raise ValueError(f"'{url}': {err}") from None
        return cls(
            parts.scheme,
            host=parts.hostname,
            port=port,
            user=unquote(parts.username),
            database=database,
            password_env=password_env,
        )

    @property
    def shared(self) -> bool:
        """A server store, seen by every checkout that names it (not a file of this output directory)."""
        return self.kind != "sqlite"

    @property
    def shown(self) -> str:
        """The URL, without any password."""
        if self.kind == "sqlite":
            return f"sqlite://{self.path}"
        return f"{self.kind}://{self.user}@{self.host}:{self.port}/{self.database}"

    def password(self) -> str:
        """The password from the named environment variable, else from CONVEYOR_METADATA_PASSWORD when
        that is set, else "" (a server that needs none).

        Raises:
          MetadataUnavailable: the variable is named but not set.
        """
        if not self.password_env:
            return os.environ.get(DEFAULT_PASSWORD_ENV, "")
        if self.password_env not in os.environ:
            raise MetadataUnavailable(
                f"ML Metadata at {self.shown}: environment variable {self.password_env} (metadata.password_env) is "
                "not set; export it with the database password"
            )
        return os.environ[self.password_env]

    def unavailable(self, reason: str) -> MetadataUnavailable:
        """The one error for a store that cannot be used: the URL without its password, why, what to do."""
        reason = " ".join(str(reason).split())[:300]
        return MetadataUnavailable(
            f"cannot open ML Metadata at {self.shown}: {reason}; check that the server runs and the user, database "
            "and password (metadata.password_env) are right (config key metadata.url or --metadata)"
        )

    def driver_connection(self, application: str = ""):
        """A DB-API connection to the server through its own client library (psycopg2, PyMySQL), for what
        ml_metadata does not offer: the run lock, and connection errors that say why.

        Raises:
          MetadataUnavailable: the server cannot be reached or refuses the user, password or database.
        """
        password = self.password()
        try:
            if self.kind == "postgresql":
                import psycopg2

                return psycopg2.connect(
                    host=self.host,
                    port=self.port,
                    user=self.user,
                    dbname=self.database,
                    password=password or None,
                    application_name=application[:63] or None,
                    connect_timeout=10,
                )
            import pymysql

            return pymysql.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                database=self.database,
                password=password,
                program_name=application[:60] or None,
                connect_timeout=10,
            )
        except Exception as err:  # noqa: BLE001 - each driver has its own error classes; all mean "cannot open"
            raise self.unavailable(str(err)) from None

    def connection_config(self):
        """The ml_metadata ConnectionConfig for this store."""
        from ml_metadata.proto import metadata_store_pb2

        config = metadata_store_pb2.ConnectionConfig()
        if self.kind == "sqlite":
            config.sqlite.filename_uri = self.path
            config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        elif self.kind == "postgresql":
            mend_server_clients()
            pg = config.postgresql
            pg.host, pg.port, pg.user, pg.dbname = self.host, str(self.port), self.user, self.database
            pg.skip_db_creation = True  # a mistyped database name must not start an empty registry
            password = self.password()
            if password:
                pg.password = password
        else:
            mend_server_clients()
            my = config.mysql
            my.host, my.port, my.user, my.database = self.host, self.port, self.user, self.database
            my.skip_db_creation = True
            password = self.password()
            if password:
                my.password = password
        return config


# Two faults of ML Metadata 1.16's PostgreSQL backend, found running TFX on it here, mended in this
# process for every ML Metadata client (TFX's included) when a server store is opened (the row order
# for MySQL too, where no fault was seen but SQL gives no order either):
#
# 1. Get*ByID returns rows in the server's order, not the ids' (SQLite returns them in id order). TFX's
#    cache publishes a cached execution's outputs by position, so a cached Transform recorded its
#    transform graph as transformed_examples and the next component found no examples. The rows are
#    put back into the order of the requested ids.
#
# 2. It writes a string property holding a backslash as 'E'a\\b'',
# which PostgreSQL refuses as a syntax error (tried here: "a\\b" fails; quotes, newlines, tabs and
# braces pass). TFX writes backslashes (a failed resolver's execution result, every first run), so
# runs on PostgreSQL would die. Until that is fixed upstream, string property values travel to a
# PostgreSQL store with each backslash as U+E000 (a private-use character), and come back restored,
# for every ML Metadata client in this process; other readers of the database see U+E000.
BACKSLASH_STAND_IN = "\ue000"


def _map_string_values(message, old: str, new: str) -> None:
    """Replaces `old` by `new` in every ml_metadata Value.string_value inside a protobuf message."""
    from google.protobuf.descriptor import FieldDescriptor

    if message.DESCRIPTOR.full_name == "ml_metadata.Value":
        if message.WhichOneof("value") == "string_value" and old in message.string_value:
            message.string_value = message.string_value.replace(old, new)
        return
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                for item in value.values():
                    _map_string_values(item, old, new)
        elif field.label == FieldDescriptor.LABEL_REPEATED:
            for item in value:
                _map_string_values(item, old, new)
        else:
            _map_string_values(value, old, new)


# Method: (the request's id field, the response's rows field).
_BY_ID = {
    "GetArtifactsByID": ("artifact_ids", "artifacts"),
    "GetExecutionsByID": ("execution_ids", "executions"),
    "GetContextsByID": ("context_ids", "contexts"),
}


def _in_requested_order(request, response, ids_field: str, rows_field: str) -> None:
    position = {i: n for n, i in enumerate(getattr(request, ids_field))}
    rows = sorted(getattr(response, rows_field), key=lambda row: position.get(row.id, len(position)))
    copies = [type(row)() for row in rows]
    for copy, row in zip(copies, rows, strict=True):
        copy.CopyFrom(row)
    del getattr(response, rows_field)[:]
    getattr(response, rows_field).extend(copies)


def mend_server_clients() -> None:
    """Installs both mends for server stores (idempotent); called when one is opened."""
    from ml_metadata.metadata_store import metadata_store

    cls = metadata_store.MetadataStore
    if getattr(cls, "_conveyor_postgresql_fix", False):
        return
    original = cls._call_method

    def call_method(self, method_name, request, response):
        server = self._config.WhichOneof("config") in ("postgresql", "mysql")
        if not server:
            return original(self, method_name, request, response)
        postgresql = self._config.HasField("postgresql")
        if postgresql:
            _map_string_values(request, "\\", BACKSLASH_STAND_IN)
        try:
            return original(self, method_name, request, response)
        finally:
            if postgresql:
                _map_string_values(request, BACKSLASH_STAND_IN, "\\")
                _map_string_values(response, BACKSLASH_STAND_IN, "\\")
            if method_name in _BY_ID:
                _in_requested_order(request, response, *_BY_ID[method_name])

    cls._call_method = call_method
    cls._conveyor_postgresql_fix = True
