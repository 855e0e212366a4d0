"""ML Metadata on real PostgreSQL and MariaDB (MySQL-compatible) servers on loopback: runs, a cached re-run
and the registry commands on the shared store, the server's lock between two checkouts, and one clear
line for every failure."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main
from components.pusher.publish import list_versions
from pipeline.config import OutputConfig
from pipeline.metadata import DEFAULT_PASSWORD_ENV, MetadataStore
from pipeline.runner import run_local
from pipeline.store_lock import StoreLocked, store_lock
from registry.lineage import open_store, pipeline_runs, run_executions
from tests.conftest import PROJECT_ROOT
from tests.servers import PASSWORD, PASSWORD_ENV, start_mysql, start_postgres

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["postgresql", "mysql"])
def server(request):
    start = start_postgres if request.param == "postgresql" else start_mysql
    server, stop = start(Path(f"/tmp/conveyor-{request.param}-{os.getpid()}"))
    names = (PASSWORD_ENV, DEFAULT_PASSWORD_ENV)  # named by a config, and the one --metadata alone uses
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: PASSWORD for name in names})
    yield server
    stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def pg_runs(server, e2e_config, tmp_path_factory):
    """Two runs of the e2e pipeline with their registry on the server: the first pushes, the second is cached."""
    out = tmp_path_factory.mktemp("shared_out")
    store = MetadataStore.parse(server.url(), PASSWORD_ENV)
    config = e2e_config.replace(output=OutputConfig(**{**OutputConfig.under(out).__dict__, "metadata": store}))
    logs = tmp_path_factory.mktemp("shared_logs")
    first = run_local(config, io.StringIO(), logs)
    second = run_local(config, io.StringIO(), logs)
    return config, out, first, second


def test_runs_write_their_registry_to_the_server_and_the_rerun_is_cached(pg_runs):
    config, out, first, second = pg_runs
    assert not (out / "metadata.sqlite").exists(), "the shared store replaces the output directory's file"
    assert first.summary.pushed_to and list_versions(config.serving_model_dir) == [
        int(Path(first.summary.pushed_to).name)
    ]
    assert second.summary.pushed_to is None and {"Trainer", "Evaluator", "SafePusher"} <= set(second.summary.cached)
    store = open_store(config.output.store)
    runs = pipeline_runs(store, config.name)
    assert len(runs) == 2
    assert run_executions(store, runs[1], config.name)["Trainer"].state == "cached"
    assert store.get_contexts_by_type("pipeline_run")[0].custom_properties["user"].string_value


def test_registry_commands_read_the_shared_store(pg_runs, server, capsys):
    config, out, first, _ = pg_runs
    args = ["--config", config.source, "--output-dir", str(out), "--metadata", server.url()]
    assert main(["models", "list", *args]) == 0
    listed = capsys.readouterr().out
    assert Path(first.summary.pushed_to).name in listed and "<- served" in listed
    assert main(["runs", "list", *args]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if "succeeded" in line]) == 2


def test_a_second_checkout_is_refused_while_a_run_holds_the_servers_lock(pg_runs, server, tmp_path, capsys):
    config, *_ = pg_runs
    with store_lock(config.output.store, config.name):
        with pytest.raises(StoreLocked) as err:
            with store_lock(config.output.store, config.name):
                pass
        code = main(
            [
                "run",
                "--config",
                config.source,
                "--output-dir",
                str(tmp_path / "other"),
                "--metadata",
                server.url(),
                "--data-root",
                config.data_root,
            ]
        )
    assert code == 2
    message = capsys.readouterr().err
    postgresql = server.url().startswith("postgresql")
    holder = f"conveyor run {config.name} (pid {os.getpid()}" if postgresql else "connection "
    assert f"pipeline '{config.name}' is being run against {server.url()} by {holder}" in message
    assert str(err.value) in message.replace("error: ", "")
    assert not (tmp_path / "other" / "pipeline_root").exists(), "nothing ran"


def test_a_killed_run_releases_the_lock(pg_runs, server):
    config, *_ = pg_runs
    script = (
        "import sys, time\n"
        "from pipeline.metadata import MetadataStore\n"
        "from pipeline.store_lock import store_lock\n"
        f"with store_lock(MetadataStore.parse({server.url()!r}, {PASSWORD_ENV!r}), {config.name!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLocked):
            with store_lock(config.output.store, config.name):
                pass
    finally:
        holder.kill()
        holder.wait()
    for _ in range(50):  # the server notices the dropped connection at once, but give it a moment
        try:
            with store_lock(config.output.store, config.name):
                return
        except StoreLocked:
            import time

            time.sleep(0.1)
    pytest.fail("the lock of a killed run was not released")


BAD_STORES = {
    "postgresql": [
        ("postgresql://conveyor@127.0.0.1:{port}/nodb", PASSWORD, 'database "nodb" does not exist'),
        ("postgresql://conveyor@127.0.0.1:{port}/mlmd", "wrong", "password authentication failed"),
        ("postgresql://conveyor@127.0.0.1:1/mlmd", PASSWORD, "Connection refused"),
        ("postgresql://conveyor:secret@127.0.0.1:{port}/mlmd", PASSWORD, "no password in the URL"),
    ],
    "mysql": [
        # MySQL answers a database that does not exist with the user's missing grant on it.
        ("mysql://conveyor@127.0.0.1:{port}/nodb", PASSWORD, "to database 'nodb'"),
        ("mysql://conveyor@127.0.0.1:{port}/mlmd", "wrong", "Access denied for user 'conveyor'"),
        ("mysql://conveyor@127.0.0.1:1/mlmd", PASSWORD, "Can't connect"),
    ],
}


def _run_command(e2e_config, tmp_path, out, url, **overrides) -> list[str]:
    """`conveyor run` of the e2e pipeline from a config file of its own, on the store at `url`."""
    import yaml

    raw = yaml.safe_load(Path(e2e_config.source).read_text())
    raw["data"]["root"] = e2e_config.data_root
    raw["schema"] = e2e_config.schema_path
    raw.update(overrides)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    return [sys.executable, "-m", "cli", "run", "--config", str(config_file), "--output-dir", str(out)] + [
        "--metadata",
        url,
    ]


def test_an_unusable_store_ends_in_one_line_before_anything_runs(server, e2e_config, tmp_path):
    for n, (url, password, words) in enumerate(BAD_STORES[server.url().split(":")[0]]):
        env = {**os.environ, PASSWORD_ENV: password}
        env.pop(DEFAULT_PASSWORD_ENV, None)
        out = tmp_path / f"out{n}"
        command = _run_command(
            e2e_config, tmp_path, out, url.format(port=server.port), metadata={"password_env": PASSWORD_ENV}
        )
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            timeout=300,
            env=env,
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], done.stderr
        assert "secret" not in done.stderr and password not in done.stderr
        assert not (out / "pipeline_root").exists()


def test_metadata_copy_brings_a_local_history_into_the_shared_store_once(two_runs, e2e_config, server, capsys):
    """The e2e runs' SQLite registry copied into the server: the same versions and runs; again, nothing."""
    source = f"sqlite://{e2e_config.output.metadata_path}"
    target = server.url("mlmd")
    assert main(["metadata", "copy", "--from", source, "--to", target]) == 0
    first = capsys.readouterr().out
    assert re.search(r"copied \d+ type\(s\), [1-9]\d* context\(s\), [1-9]\d* artifact\(s\), [1-9]\d* execution", first)
    assert main(["metadata", "copy", "--from", source, "--to", target]) == 0
    assert "copied 0 type(s), 0 context(s), 0 artifact(s), 0 execution(s), 0 event(s)" in capsys.readouterr().out
    out = str(Path(e2e_config.output.metadata_path).parent)
    args = ["--config", e2e_config.source, "--output-dir", out]
    for command in (["models", "list"], ["runs", "list"]):
        assert main([*command, *args]) == 0
        local = capsys.readouterr().out
        assert main([*command, *args, "--metadata", target]) == 0
        shared = capsys.readouterr().out
        # The server also holds this module's own runs of the pipeline; every local row must be there too.
        local_rows = [line for line in local.splitlines() if line.strip()]
        assert len(local_rows) >= 2 and all(row in shared.splitlines() for row in local_rows), (local, shared)


def test_a_server_lost_mid_run_fails_that_run_clearly_and_the_next_run_resumes_from_cache(e2e_config, tmp_path):
    """A PostgreSQL server of its own, halted while Transform runs: the run fails naming the store; once the
    server is back, the next run reuses every component that had finished."""
    import time

    server, stop = start_postgres(Path(f"/tmp/conveyor-pg-lost-{os.getpid()}"))
    try:
        training = {"train_steps": 40, "eval_steps": 5}
        command = _run_command(e2e_config, tmp_path, tmp_path / "out", server.url(), training=training)
        env = {**os.environ, DEFAULT_PASSWORD_ENV: PASSWORD}
        run = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stderr=subprocess.PIPE, text=True)
        seen = ""
        while "DataGate" not in seen or "Transform" not in seen.split("DataGate", 1)[1]:
            line = run.stderr.readline()
            assert line, f"the run ended before Transform started: {seen}"
            seen += line
            time.sleep(0.01)
        server.halt()
        _, rest = run.communicate(timeout=600)
        assert run.returncode == 1, seen + rest
        assert f"lost ML Metadata at {server.url()} during the run" in rest
        assert "the next run continues from the cache" in rest
        server.resume()
        again = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stderr
        for finished in ("CsvExampleGen", "StatisticsGen", "ExampleValidator"):  # DataGate, no outputs, always runs
            assert re.search(rf"{finished}\s+from cache", again.stderr), again.stderr
    finally:
        stop()
