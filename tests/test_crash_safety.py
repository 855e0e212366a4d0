"""Crash safety: a run SIGKILLed in the middle of Transform, of Trainer and of the pusher loses nothing.

Each kill is real: the run is a separate process group, killed as soon as its log says the component
started. The next run completes, reuses what had finished, and the serving directory never holds a
partial or duplicate version.
"""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from components.pusher.publish import list_versions
from registry.lineage import open_store, pipeline_runs, run_executions
from tests.conftest import SMALL_FEATURES, TAXI_CONFIG, sample_taxi_rows, write_csv

pytestmark = pytest.mark.e2e


def _config_file(tmp_path: Path) -> Path:
    raw = yaml.safe_load(TAXI_CONFIG.read_text())
    raw["data"]["root"] = str(TAXI_CONFIG.parent / raw["data"]["root"])
    raw["schema"] = str(TAXI_CONFIG.parent / raw["schema"])
    raw["training"] = {"train_steps": 20, "eval_steps": 3}
    raw["features"] = [dataclasses.asdict(f) for f in SMALL_FEATURES]
    raw["evaluation"]["thresholds"] = [{"metric": "AUC", "lower_bound": 0.1}]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(args, output: Path, kill_at=None, timeout=600):
    """Runs `conveyor run`; with kill_at, SIGKILLs its process group once that component starts."""
    logs = output / "logs"
    before = set(logs.glob("*.log")) if logs.exists() else set()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while kill_at and time.monotonic() < deadline and proc.poll() is None:
        new = set(logs.glob("*.log")) - before if logs.exists() else set()
        if any(f"Component {kill_at} is running." in p.read_text(errors="replace") for p in new):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -signal.SIGKILL, ""
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=max(1, deadline - time.monotonic()))
    return proc.returncode, out.decode(errors="replace")


def _assert_clean_serving_dir(model_dir: Path):
    for version in list_versions(model_dir):
        assert (model_dir / str(version) / "saved_model.pb").is_file()
        assert (model_dir / str(version) / "variables" / "variables.index").is_file()


def test_runs_killed_in_transform_trainer_and_pusher_lose_nothing(tmp_path):
    data = tmp_path / "data"
    write_csv(data / "data.csv", *sample_taxi_rows(200, seed=9))
    output = tmp_path / "out"
    args = ["--config", str(_config_file(tmp_path)), "--data-root", str(data), "--output-dir", str(output)]
    model_dir = output / "serving_model" / "taxi"

    for component in ("Transform", "Trainer", "SafePusher"):
        code, _ = _run(args, output, kill_at=component)
        assert code == -signal.SIGKILL, f"the run ended before {component} started"
        _assert_clean_serving_dir(model_dir)
        assert list_versions(model_dir) == []

    code, out = _run(args, output)
    assert code == 0, out
    assert "pushed: " in out
    versions = list_versions(model_dir)
    assert len(versions) == 1
    _assert_clean_serving_dir(model_dir)

    store = open_store(str(output / "metadata.sqlite"))
    runs = pipeline_runs(store, "taxi")
    assert len(runs) == 4
    last = run_executions(store, runs[-1], "taxi")
    # Everything that finished before a kill is reused. The third run's Trainer and Evaluator had
    # finished (and blessed its model) before the kill in the pusher: the warm-start resolver sees
    # that this run repeats that one, so both come from cache and only the pusher runs again.
    cached = {n for n, e in last.items() if e.state == "cached"}
    assert {"CsvExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator"} <= cached
    assert last["SafePusher"].state == "complete"
    # Each killed process released the output lock (runs 2 to 4 could start) and left it free.
    assert "in use by" not in out


def test_a_run_started_while_another_runs_is_refused_and_metadata_stays_whole(tmp_path):
    data = tmp_path / "data"
    write_csv(data / "data.csv", *sample_taxi_rows(200, seed=4))
    output = tmp_path / "out"
    args = ["--config", str(_config_file(tmp_path)), "--data-root", str(data), "--output-dir", str(output)]
    first = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "run", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    lock = output / ".conveyor.lock"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (lock.exists() and f"pid {first.pid}" in lock.read_text()):
        time.sleep(0.2)
    assert first.poll() is None, "the first run should still be running"
    second = subprocess.run([sys.executable, "-m", "cli.main", "run", *args], capture_output=True, text=True)
    assert second.returncode == 2
    assert f"is in use by conveyor run (pid {first.pid}" in second.stderr
    assert "pass another --output-dir" in second.stderr
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out.decode(errors="replace")
    store = open_store(str(output / "metadata.sqlite"))
    (run,) = pipeline_runs(store, "taxi")
    executions = run_executions(store, run, "taxi")
    assert {"Trainer", "Evaluator", "SafePusher"} <= {n for n, e in executions.items() if e.state == "complete"}
    assert len(list_versions(output / "serving_model" / "taxi")) == 1
