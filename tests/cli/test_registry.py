"""`conveyor models list/show` and `conveyor runs list` over a real run's ML Metadata (read-only)."""

import subprocess
from pathlib import Path

import pytest

from cli.main import main
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.e2e


@pytest.fixture
def cli_args(e2e_config, two_runs):
    """The registry commands need the pipeline and model names (from the config) and the output dir."""
    return ["--config", e2e_config.source, "--output-dir", str(Path(e2e_config.output.metadata_path).parent)]


def test_models_list_shows_the_pushed_version_as_served(cli_args, two_runs, capsys):
    _, versions, _, _ = two_runs
    assert main(["models", "list", *cli_args]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith(str(versions[0])))
    assert "<- served" in row and "auc " in row and "400" not in row.split()[0]


def test_models_show_holds_provenance_data_metrics_and_thresholds(cli_args, two_runs, capsys):
    _, versions, _, _ = two_runs
    assert main(["models", "show", str(versions[0]), *cli_args]) == 0
    out = capsys.readouterr().out
    assert "git commit: " in out and "uncommitted changes: " in out and "user: " in out
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=PROJECT_ROOT).stdout
    assert head.strip() and f"git commit: {head.strip()}" in out
    assert "feature payment_type: categorical_string top_k=10 oov_buckets=1" in out
    assert "training data: " in out and "evaluation data: " in out and "(span 0, version 0)" in out
    assert "rows: eval " in out
    assert "schema: " in out and "sha256" in out
    assert "Overall: " in out and "auc " in out
    assert "auc value: >= 0.3: pass" in out
    assert "auc change vs baseline" in out
    assert "loss per epoch: " in out
    assert "cold start: no blessed model yet" in out
    assert "push destination: " in out and str(versions[0]) in out


def test_runs_list_shows_both_runs(cli_args, two_runs, capsys):
    assert main(["runs", "list", *cli_args]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) >= 2
    assert any("pushed version" in line for line in lines)
    assert any("inputs unchanged" in line and "was pushed by an earlier run" in line for line in lines)


def test_unknown_version_is_an_error(cli_args, capsys):
    assert main(["models", "show", "12345", *cli_args]) == 2
    assert "was never pushed" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["models", "list"], ["runs", "list"]])
def test_registry_commands_print_no_library_warnings(cli_args, command):
    """In a fresh process, as a user runs them: TensorFlow's deprecation block goes to the log file."""
    import os
    import sys

    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    done = subprocess.run(
        [sys.executable, "-m", "cli", *command, *cli_args], capture_output=True, text=True, env=env, cwd=PROJECT_ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "WARNING" not in done.stdout and "deprecated" not in done.stdout
    log = Path(cli_args[-1]) / "logs" / "registry.log"
    assert "tf_record_iterator" in log.read_text()
