"""Guards that act before the pipeline starts: the output lock, unreadable input, the run input."""

import pytest

from cli.main import main
from cli.run import run_input
from pipeline.config import load_config
from pipeline.runner import RunLocked, output_lock
from tests.conftest import TAXI_CONFIG, sample_taxi_rows, write_csv


def test_a_second_run_on_the_same_output_directory_is_refused(tmp_path):
    with output_lock(tmp_path / "out"):
        with pytest.raises(RunLocked, match=r"in use by conveyor run \(pid \d+"):
            with output_lock(tmp_path / "out"):
                pass
    with output_lock(tmp_path / "out"):  # released when the first run ends
        pass


def test_run_refuses_unreadable_input_before_anything_runs(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "empty.csv").write_text("")
    code = main(["run", "--data-root", str(data), "--output-dir", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot read input" in err and "empty.csv" in err and "is empty" in err
    assert not (tmp_path / "out").exists()


def test_run_reads_the_newest_span_unless_told(tmp_path):
    config = load_config(TAXI_CONFIG)
    assert run_input(config).name == "span-3"
    assert run_input(load_config(TAXI_CONFIG, span=1)).name == "span-1"


def test_unknown_span_is_a_config_error(capsys):
    assert main(["run", "--span", "9", "--output-dir", "/tmp/never-written"]) == 2
    assert "span 9 not found" in capsys.readouterr().err


def test_run_refuses_training_data_without_the_label(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "d.csv").write_text("fare,company\n1.0,Flash\n")
    assert main(["run", "--data-root", str(data), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "d.csv, line 1: has no 'big_tipper' column" in err and "config key 'label'" in err


def test_run_refuses_a_label_value_never_seen_naming_file_line_and_value(tmp_path, capsys):
    header, rows = sample_taxi_rows(30, seed=2)
    label = header.index("big_tipper")
    rows[11][label] = "7"
    write_csv(tmp_path / "data" / "d.csv", header, rows)
    out = tmp_path / "out"
    assert main(["run", "--data-root", str(tmp_path / "data"), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "d.csv, line 13: label 'big_tipper' is '7', not one of the configured classes ['0', '1']" in err
    assert not out.exists(), "refused before anything ran"


def test_an_output_directory_that_cannot_be_written_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert main(["run", "--span", "1", "--output-dir", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert "error: [Errno 20] Not a directory" in err and str(blocker) in err
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("command", [["models", "list"], ["runs", "list"], ["models", "show", "1"]])
def test_registry_commands_before_any_run_say_so(tmp_path, capsys, command):
    assert main([*command, "--output-dir", str(tmp_path / "nothing")]) == 2
    assert "no ML Metadata at" in capsys.readouterr().err


def test_beam_running_mode_follows_input_size_unless_the_config_chooses(tmp_path, monkeypatch):
    import os

    from pipeline import runner

    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    small = runner.local_beam_args((), str(tmp_path))
    assert small[:2] == ("--direct_running_mode=in_memory", "--direct_num_workers=1")
    assert small[-1].startswith("--setup_file=") and small[-1].endswith("setup.py")
    monkeypatch.setattr(runner, "MULTI_PROCESSING_BYTES", 4)
    large = runner.local_beam_args((), str(tmp_path))
    assert large[:2] == ("--direct_running_mode=multi_processing", f"--direct_num_workers={os.cpu_count()}")
    assert "--max_cache_memory_usage_mb=0" in small and "--max_cache_memory_usage_mb=0" in large
    chosen = ("--direct_running_mode=in_memory", "--extra_package=dist/x.tar.gz", "--max_cache_memory_usage_mb=50")
    assert runner.local_beam_args(chosen, str(tmp_path)) == chosen
    flink = ("--runner=FlinkRunner",)
    assert runner.local_beam_args(flink, str(tmp_path)) == (*flink, small[-1])
