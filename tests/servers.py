"""Real database servers for the tests that need one, started on loopback for the session and stopped
afterwards: PostgreSQL from Debian's package (`.ci/run` installs it), run as an unprivileged user
because PostgreSQL refuses to run as root. A missing server binary fails the test with the install
command; it is never skipped."""

from __future__ import annotations

import getpass
import glob
import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

PASSWORD_ENV = "CONVEYOR_TEST_PG_PASSWORD"
PASSWORD = "conveyor-test-password"


@dataclass(frozen=True)
class Postgres:
    port: int
    user: str
    database: str
    # pg_ctl with its data directory, and the user it runs as (None: this one), for stop / start.
    pg_ctl: tuple[str, ...] = ()
    options: str = ""
    run_as: str | None = None

    def halt(self) -> None:
        """Stops the server at once, as a crash or a network cut looks to its clients."""
        _as_server_user([*self.pg_ctl, "-m", "immediate", "stop"], self.run_as)

    def resume(self) -> None:
        log = Path(self.pg_ctl[-1]).parent / "log"  # beside the data directory, writable by the server's user
        _as_server_user([*self.pg_ctl, "-l", str(log), "-o", self.options, "-w", "start"], self.run_as)

    def url(self, database: str | None = None) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database or self.database}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise RuntimeError("PostgreSQL's server is not installed: `apt-get install postgresql` (.ci/run installs it)")
    return Path(found[-1]).parent


def _as_server_user(command: list[str], user: str | None, **kwargs) -> subprocess.CompletedProcess:
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=120, **kwargs)


def start_postgres(root: Path) -> tuple[Postgres, callable]:
    """initdb + pg_ctl start under `root`, password authentication on 127.0.0.1 only, one database.

    Returns:
      The server's facts and a function that stops it.
    """
    bin_dir = _bin_dir()
    # As root, the server runs as Debian's `postgres` user; as anyone else, as that user.
    run_as = "postgres" if os.geteuid() == 0 else None
    owner = pwd.getpwnam(run_as) if run_as else pwd.getpwnam(getpass.getuser())
    root.mkdir(parents=True, exist_ok=True)
    os.chown(root, owner.pw_uid, owner.pw_gid)
    data, pwfile = root / "data", root / "pwfile"
    pwfile.write_text(PASSWORD)
    os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    user, database, port = "conveyor", "mlmd", _free_port()
    _as_server_user(
        [str(bin_dir / "initdb"), "-D", str(data), "-U", user, "--auth=scram-sha-256", f"--pwfile={pwfile}"], run_as
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data)]
    _as_server_user([*pg_ctl, "-l", str(root / "log"), "-o", options, "-w", "start"], run_as)
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    _as_server_user(
        [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, database], run_as, env=env
    )

    def stop() -> None:
        prefix = ["runuser", "-u", run_as, "--"] if run_as else []
        subprocess.run([*prefix, *pg_ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)

    return Postgres(port, user, database, tuple(pg_ctl), options, run_as), stop


@dataclass(frozen=True)
class MySQL:
    port: int
    user: str
    database: str

    def url(self, database: str | None = None) -> str:
        return f"mysql://{self.user}@127.0.0.1:{self.port}/{database or self.database}"


def start_mysql(root: Path) -> tuple[MySQL, callable]:
    """A MySQL-compatible server (Debian's MariaDB; `.ci/run` installs it) under `root` on 127.0.0.1,
    run as Debian's unprivileged `mysql` user when started as root, with one database and a password user.

    Returns:
      The server's facts and a function that stops it.
    """
    import time

    import pymysql

    server = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    install = shutil.which("mariadb-install-db")
    if not Path(server).exists() or install is None:
        raise RuntimeError("MariaDB's server is not installed: `apt-get install mariadb-server` (.ci/run installs it)")
    run_as = "mysql" if os.geteuid() == 0 else getpass.getuser()
    owner = pwd.getpwnam(run_as)
    root.mkdir(parents=True, exist_ok=True)
    os.chown(root, owner.pw_uid, owner.pw_gid)
    data, sock, port = root / "data", root / "mysqld.sock", _free_port()
    subprocess.run(
        [
            install,
            f"--user={run_as}",
            f"--datadir={data}",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    process = subprocess.Popen(
        [
            server,
            "--no-defaults",
            f"--user={run_as}",
            f"--datadir={data}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={sock}",
            f"--pid-file={root / 'mysqld.pid'}",
            "--skip-name-resolve",
            "--innodb-flush-log-at-trx-commit=0",
            f"--log-error={root / 'error.log'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        if sock.exists():
            try:
                admin = pymysql.connect(unix_socket=str(sock), user="root" if os.geteuid() == 0 else run_as)
                break
            except pymysql.Error:
                pass
        if process.poll() is not None:
            raise RuntimeError(f"mariadbd exited: {(root / 'error.log').read_text()[-2000:]}")
        time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError("mariadbd did not start within 30 s")
    user, database = "conveyor", "mlmd"
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {database}")
        cursor.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{PASSWORD}'")
        cursor.execute(f"GRANT ALL ON {database}.* TO '{user}'@'%'")
    admin.close()

    def stop() -> None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(root, ignore_errors=True)

    return MySQL(port, user, database), stop
