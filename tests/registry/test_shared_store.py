"""ML Metadata on real PostgreSQL and MariaDB (MySQL-compatible) servers on loopback: runs, a cached re-run
and the registry commands on the shared store, `schema approve` of a run's statistics, the server's lock
between two checkouts (refused or waited for), two runs started at once, warm start across two spans,
`conveyor ui`, `predict` and `monitor` on the shared store, and one clear line for every failure."""

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cli.main import main
from components.pusher.publish import list_versions
from pipeline.config import SPAN_PATTERN, ConfigError, OutputConfig, load_config
from pipeline.metadata import DEFAULT_PASSWORD_ENV, MetadataStore
from pipeline.runner import run_local
from pipeline.store_lock import StoreLocked, store_lock
from registry.lineage import created_ms, int_property, open_store, pipeline_runs, run_executions, updated_ms
from registry.runs import run_status
from schema.review import read_schema, write_schema
from tests.conftest import PROJECT_ROOT, TAXI_CONFIG, sample_taxi_rows, write_csv
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
def spans_root(e2e_config, tmp_path_factory):
    """The e2e data as span 1, and another 400 real trips as span 2 (for the runs that follow on the server)."""
    root = tmp_path_factory.mktemp("shared_spans")
    write_csv(root / "span-1" / "data.csv", *sample_taxi_rows(400))
    write_csv(root / "span-2" / "data.csv", *sample_taxi_rows(400, seed=11))
    return root


@pytest.fixture(scope="module")
def pg_runs(server, e2e_config, spans_root, tmp_path_factory):
    """Two runs of the e2e pipeline on span 1 with their registry on the server: the first pushes, the
    second is cached."""
    out = tmp_path_factory.mktemp("shared_out")
    store = MetadataStore.parse(server.url(), PASSWORD_ENV)
    config = e2e_config.replace(
        output=OutputConfig(**{**OutputConfig.under(out).__dict__, "metadata": store}),
        data_root=str(spans_root),
        span_pattern=SPAN_PATTERN,
        span=1,
    )
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


def test_a_rollback_is_refused_while_a_run_holds_the_servers_lock(pg_runs, server, capsys):
    """`conveyor models rollback` (and the UI's rollback, the same code) writes the registry and the serving
    directory as a run does, so it takes the store's lock too: refused, naming the holder, nothing rolled back."""
    config, *_ = pg_runs
    before = list_versions(config.serving_model_dir)
    args = ["--config", config.source, "--output-dir", str(Path(config.output.metadata_path).parent)]
    with store_lock(config.output.store, config.name):
        code = main(["models", "rollback", *args, "--metadata", server.url()])
    assert code == 2
    assert f"pipeline '{config.name}' is being run against {server.url()}" in capsys.readouterr().err
    assert list_versions(config.serving_model_dir) == before


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


def _hold_lock(store: MetadataStore, pipeline_name: str, seconds: float) -> threading.Event:
    """Holds the store's lock in a thread for `seconds`, as a running checkout does; set once it is held."""
    held = threading.Event()

    def hold() -> None:
        with store_lock(store, pipeline_name):
            held.set()
            time.sleep(seconds)

    threading.Thread(target=hold, daemon=True).start()
    assert held.wait(30), "the holder never took the lock"
    return held


def _holder_words(server) -> str:
    """How a waiting run names this process as the holder (MySQL names the connection, not the process)."""
    return f"conveyor run lock-test (pid {os.getpid()}" if server.url().startswith("postgresql") else "connection "


def test_a_run_set_to_wait_says_whom_it_waits_for_and_takes_the_lock_once_it_is_free(server):
    store = MetadataStore.parse(server.url(), PASSWORD_ENV)
    _hold_lock(store, "lock-test", 2.0)
    said, start = io.StringIO(), time.monotonic()
    with store_lock(store, "lock-test", wait=60, progress=said):
        waited = time.monotonic() - start
    assert 1.0 < waited < 30, waited
    lines = said.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert f"waiting up to 60s for pipeline 'lock-test' on {server.url()}: it is being run by " in lines[0]
    assert _holder_words(server) in lines[0]


def test_a_run_that_waited_in_vain_is_refused_naming_the_holder(server):
    store = MetadataStore.parse(server.url(), PASSWORD_ENV)
    _hold_lock(store, "lock-test", 6.0)
    said, start = io.StringIO(), time.monotonic()
    with pytest.raises(StoreLocked) as err:
        with store_lock(store, "lock-test", wait=1.5, progress=said):
            pytest.fail("took a lock that another run holds")
    assert 1.4 < time.monotonic() - start < 5
    message = str(err.value)
    assert f"pipeline 'lock-test' is being run against {server.url()} by {_holder_words(server)}" in message
    assert "(still, after waiting 1.5s)" in message and "metadata.lock_wait" in message
    assert "waiting up to 1.5s" in said.getvalue()


def test_the_lock_wait_comes_from_the_metadata_section_and_a_bad_value_names_the_key(tmp_path):
    import yaml

    raw = yaml.safe_load(TAXI_CONFIG.read_text())
    raw["schema"] = str(TAXI_CONFIG.parent.parent / "schema" / "taxi" / "schema.pbtxt")
    raw["data"]["root"] = str(TAXI_CONFIG.parent.parent / "data" / "taxi")
    for value, expected in ((90, 90.0), (None, 0.0), (-1, "config key 'metadata.lock_wait': must be at least 0.0")):
        raw["metadata"] = {} if value is None else {"lock_wait": value}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        if isinstance(expected, str):
            with pytest.raises(ConfigError, match=re.escape(expected)):
                load_config(path)
        else:
            assert load_config(path).output.lock_wait == expected


def test_schema_approve_of_a_runs_statistics_logs_the_run_that_made_them(pg_runs, server, tmp_path, capsys):
    """Approving from the latest run (cached: its statistics are the first run's) and from a run by id;
    each review-log entry names the run that computed the statistics and the store, without a password."""
    import yaml

    config, out, *_ = pg_runs
    header, curated = read_schema(config.schema_path)
    kept = [f for f in curated.feature if f.name not in ("tips", "company")]
    del curated.feature[:]
    curated.feature.extend(kept)
    schema = tmp_path / "schema.pbtxt"
    write_schema(schema, header, curated)
    raw = yaml.safe_load(TAXI_CONFIG.read_text())
    raw["data"]["root"], raw["schema"] = config.data_root, str(schema)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    runs = pipeline_runs(open_store(config.output.store), config.name)
    first, latest = runs[0].name, runs[-1].name
    args = ["--config", str(config_file), "--output-dir", str(out), "--metadata", server.url()]
    assert main(["schema", "approve", *args, "--run", "--feature", "tips"]) == 0
    assert f"statistics made by run {first} in {server.url()}" in capsys.readouterr().out
    assert main(["schema", "approve", *args, "--run", first, "--feature", "company"]) == 0
    capsys.readouterr()
    entries = [json.loads(line) for line in (tmp_path / "reviews.jsonl").read_text().splitlines()]
    assert [e["features"] for e in entries] == [["tips"], ["company"]]
    statistics = run_executions(open_store(config.output.store), runs[0], config.name)["StatisticsGen"]
    made = {"id": first, "store": server.url(), "statistics": statistics.output("statistics").uri, "spans": [1]}
    assert entries[0]["run"] == {**made, "reused_by": latest} and latest != first
    assert entries[1]["run"] == made
    assert entries[0]["rows"] > 200
    assert entries[0]["data"].endswith(f"Split-train/FeatureStats.pb (run {first}, span 1)")
    assert {"tips", "company"} <= {f.name for f in read_schema(schema)[1].feature}
    assert main(["schema", "approve", *args, "--run", "no-such-run"]) == 2
    assert f"pipeline '{config.name}' has no run 'no-such-run'" in capsys.readouterr().err


def _small_config_keys(e2e_config) -> dict:
    """e2e_config's smallest set-up (five features, 40 steps, thresholds a tiny model meets) as config keys."""
    evaluation = e2e_config.evaluation
    return {
        "features": [dataclasses.asdict(f) for f in e2e_config.features],
        "training": dataclasses.asdict(e2e_config.training),
        "evaluation": {
            "metrics": list(evaluation.metrics),
            "slices": [list(s) for s in evaluation.slices],
            "thresholds": [
                {k: v for k, v in dataclasses.asdict(t).items() if v is not None} for t in evaluation.thresholds
            ],
        },
    }


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_two_checkouts_started_at_once_take_turns_and_span_two_warm_starts_from_span_one(
    pg_runs, server, e2e_config, tmp_path, capsys
):
    """Two `conveyor run`s of span 2 from two output directories, started together on one PostgreSQL store
    (one told to wait by metadata.lock_wait, the other by --lock-wait): one runs while the other waits,
    never interleaving; the first trains, warm-started from span 1's model, and pushes; the second is
    served from the cache; the registry holds both runs, complete."""
    config, _, first, _ = pg_runs
    store = open_store(config.output.store)
    span_one = run_executions(store, pipeline_runs(store, config.name)[0], config.name)
    span_one_model = span_one["Trainer"].output("model")
    before = len(pipeline_runs(store, config.name))
    checkouts, commands = [tmp_path / "a", tmp_path / "b"], []
    for n, checkout in enumerate(checkouts):
        checkout.mkdir()
        keys = _small_config_keys(e2e_config) | {"metadata": {"lock_wait": 600} if n == 0 else {}}
        command = _run_command(config, checkout, checkout / "out", server.url(), **keys)
        commands.append(command + (["--lock-wait", "600"] if n == 1 else []))
    start = time.monotonic()
    logs = [open(checkout / "stderr.txt", "w+", encoding="utf-8") for checkout in checkouts]
    processes = [
        subprocess.Popen(c, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True)
        for c, log in zip(commands, logs, strict=True)
    ]
    codes = [p.wait(timeout=900) for p in processes]
    print(f"two concurrent runs took {time.monotonic() - start:.0f}s", file=sys.stderr)
    said = []
    for log in logs:
        log.seek(0)
        said.append(log.read())
        log.close()
    assert codes == [0, 0], said
    waiting = [n for n, text in enumerate(said) if "waiting up to 600s for pipeline" in text]
    assert len(waiting) == 1, said
    waiter, runner = waiting[0], 1 - waiting[0]
    assert f"it is being run by conveyor run {config.name} (pid {processes[runner].pid} " in said[waiter]

    store = open_store(config.output.store)
    runs = pipeline_runs(store, config.name)
    assert len(runs) == before + 2
    executions = [run_executions(store, run, config.name) for run in runs[-2:]]
    ran, waited = executions
    for run in executions:
        assert run_status(run)[0] == "succeeded"
        assert not [n for n, e in run.items() if e.state in ("running", "new")], "half-written executions"
    # Turns, not interleaving: the waiting run recorded nothing before the first run's last record.
    assert max(updated_ms(e.execution) for e in ran.values()) <= min(created_ms(e.execution) for e in waited.values())
    assert ran["Trainer"].state == "complete" and waited["Trainer"].state == "cached"
    assert [m.id for m in ran["Trainer"].inputs["base_model"]] == [span_one_model.id], "warm start from span 1"
    assert [int_property(e, "span") for e in ran["CsvExampleGen"].outputs["examples"]] == [2]
    assert [int_property(e, "span") for e in span_one["CsvExampleGen"].outputs["examples"]] == [1]
    pushes = [e for run in executions for n, e in run.items() if n.endswith("Pusher") and e.state == "complete"]
    assert pushes and all(len(e.inputs["model"]) == 1 for e in pushes), "each push has one model"
    assert {m.id for e in pushes for m in e.inputs["model"]} == {ran["Trainer"].output("model").id}
    pushed = list_versions(checkouts[runner] / "out" / "serving_model" / config.model_name)
    assert len(pushed) == 1 and pushed[0] > int(Path(first.summary.pushed_to).name)

    args = ["--config", config.source, "--output-dir", str(checkouts[runner] / "out"), "--metadata", server.url()]
    assert main(["runs", "list", *args]) == 0
    listed = capsys.readouterr().out
    assert all(run.name in listed for run in runs) and listed.count("succeeded") == len(runs), listed
    assert f"pushed version {pushed[0]}" in listed
    assert main(["models", "list", *args]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    row = next(r for r in rows if r and r[0] == str(pushed[0]))
    assert row[-2:] == ["<-", "served"], rows


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


# `conveyor ui`, `predict` and `monitor` on the shared store: the pg_runs output, whose registry is only on the server.


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_ui_on_the_shared_store_lists_its_runs_and_pushed_versions(pg_runs, server, capsys):
    """`conveyor ui --metadata` on a free port: /runs and /models show what the registry functions read from
    the same server; then the SIGTERM handler the command installs stops it (called, not sent, so that no
    signal can reach pytest itself; in process, to spare a second TensorFlow import)."""
    import html
    import signal
    import urllib.error
    import urllib.request

    from registry.versions import versions
    from tests.servers import _free_port

    config, out, *_ = pg_runs
    port, pages, untouched = _free_port(), {}, signal.getsignal(signal.SIGTERM)

    def visit() -> None:
        try:
            for _ in range(600):
                try:
                    for page in ("runs", "models"):
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{page}", timeout=60) as answer:
                            pages[page] = (answer.status, answer.read().decode("utf-8"))
                    return
                except urllib.error.URLError:
                    time.sleep(0.1)
        finally:
            stop = signal.getsignal(signal.SIGTERM)
            if stop is not untouched:
                stop(signal.SIGTERM, None)

    visitor = threading.Thread(target=visit, daemon=True)
    visitor.start()
    args = ["--config", config.source, "--output-dir", str(out), "--metadata", server.url()]
    try:
        code = main(["ui", *args, "--port", str(port)])
    finally:
        signal.signal(signal.SIGTERM, untouched)
    visitor.join(60)
    said = capsys.readouterr().out
    assert code == 0 and f"conveyor ui: http://127.0.0.1:{port}/runs" in said and "conveyor ui: stopped" in said
    assert {page: status for page, (status, _) in pages.items()} == {"runs": 200, "models": 200}
    store = open_store(config.output.store)
    names = [run.name for run in pipeline_runs(store, config.name)]
    assert len(names) >= 2 and all(f">{html.escape(name)}</a>" in pages["runs"][1] for name in names)
    pushed = sorted(r.version for r in versions(config.output.store, config.name, config.serving_model_dir))
    assert pushed == list_versions(config.serving_model_dir)
    assert all(f'<a href="/models/{v}">{v}</a>' in pages["models"][1] for v in pushed)


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_predict_on_the_shared_store_names_the_run_that_pushed_the_version(pg_runs, server, tmp_path, capsys):
    config, out, first, _ = pg_runs
    version = Path(first.summary.pushed_to).name
    table = write_csv(tmp_path / "rows.csv", *sample_taxi_rows(50, seed=5))
    args = ["--config", config.source, "--output-dir", str(out), "--metadata", server.url(), "--data", str(table)]
    assert main(["predict", *args, "--version", version, "--output", str(tmp_path / "scored")]) == 0
    said = capsys.readouterr().out
    assert re.search(r"^  scored +50$", said, re.M) and re.search(r"^  rejected +0$", said, re.M), said
    assert f"by run {first.summary.run_id} ({server.url()})" in said, said


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_monitor_on_the_shared_store_finds_training_statistics_through_its_lineage(pg_runs, server, tmp_path, capsys):
    """120 training-like rows sent to a ModelServer (what `conveyor serve` runs) over the pg_runs output, all
    logged; the monitor finds the version's training statistics through the server's lineage: clean."""
    import tensorflow_data_validation as tfdv

    from components.examples import to_example
    from serving.request_log import RequestLog
    from serving.servable import SERVING_ENVIRONMENT
    from serving.server import ModelServer
    from tests.serving.test_monitor import _rows, _send

    config, out, first, _ = pg_runs
    version_dir = Path(first.summary.pushed_to)
    schema = tfdv.load_schema_text(str(version_dir / "assets.extra" / "schema.pbtxt"))
    not_served = {f.name for f in schema.feature if SERVING_ENVIRONMENT in f.not_in_environment}
    rows = _rows(Path(config.data_root) / "span-1", not_served)[:120]
    logs = tmp_path / "request_logs"
    with ModelServer(config.output.serving_root, port=0, grpc_port=0, request_log=RequestLog(logs, 1.0)) as serving:
        _send(serving, config.model_name, [to_example(r, schema).SerializeToString() for r in rows])
    args = ["--config", config.source, "--output-dir", str(out), "--metadata", server.url(), "--log-dir", str(logs)]
    code = main(["monitor", *args, "--json"])
    said, err = capsys.readouterr()
    assert code == 0, said + err
    result = json.loads(said)
    assert result["verdict"] == "clean" and result["findings"] == [] and result["version"] == int(version_dir.name)
    assert result["sampling"]["examples"] == 120
    # The server also holds runs copied from elsewhere (test_metadata_copy_...): the pushing run is named by its id.
    store = open_store(config.output.store)
    pushing = next(run for run in pipeline_runs(store, config.name) if run.name == first.summary.run_id)
    statistics = run_executions(store, pushing, config.name)["StatisticsGen"].output("statistics").uri
    assert result["training_statistics"].startswith(f"run {pushing.name}: {statistics}")
