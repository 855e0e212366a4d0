"""Shared test set-up: legacy Keras for TFX, tiny real data, and one end-to-end run for the session."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import csv  # noqa: E402
import io  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from components.pusher.publish import list_versions  # noqa: E402
from pipeline.config import (  # noqa: E402
    EvaluationConfig,
    FeatureConfig,
    ThresholdConfig,
    TrainingConfig,
    load_config,
)
from pipeline.runner import run_local  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TAXI_CONFIG = PROJECT_ROOT / "configs" / "taxi.yaml"
TAXI_CSVS = sorted((PROJECT_ROOT / "data" / "taxi").glob("span-*/data.csv"))


# One taxi feature of each kind: the end-to-end tests about spans and crashes need a model, not the
# whole feature set, which costs a third of each run's time in Transform, Trainer and Evaluator.
SMALL_FEATURES = (
    FeatureConfig("fare", "numeric"),
    FeatureConfig("trip_miles", "numeric"),
    FeatureConfig("payment_type", "categorical_string", top_k=10),
    FeatureConfig("trip_start_hour", "categorical_int", top_k=24),
    FeatureConfig("pickup_latitude", "bucketized", buckets=10),
)


def sample_taxi_rows(n: int, seed: int = 7) -> tuple[list[str], list[list[str]]]:
    """A deterministic sample of `n` rows of the bundled taxi data in which every column has a value
    somewhere, so the sample honours the curated schema (a column with no value at all is an anomaly)."""
    rows: list[list[str]] = []
    for path in TAXI_CSVS:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows.extend(reader)
    sample = random.Random(seed).sample(rows, n)
    for col in range(len(header)):
        if not any(r[col] for r in sample):
            sample[-1 - col] = next(r for r in rows if r[col])
    return header, sample


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_taxi_dir(tmp_path_factory) -> Path:
    """400 real taxi trips in a directory of their own."""
    header, rows = sample_taxi_rows(400)
    root = tmp_path_factory.mktemp("taxi_small")
    write_csv(root / "data.csv", header, rows)
    return root


@pytest.fixture(scope="session")
def e2e_config(small_taxi_dir, tmp_path_factory):
    """The taxi config on 400 rows, one feature of each kind, a small step budget and thresholds a
    tiny model can meet."""
    config = load_config(TAXI_CONFIG, output_dir=tmp_path_factory.mktemp("e2e"), data_root=small_taxi_dir)
    evaluation = EvaluationConfig(
        metrics=config.evaluation.metrics,
        thresholds=(
            ThresholdConfig("AUC", lower_bound=0.3, max_change=0.5),
            ThresholdConfig("BinaryAccuracy", lower_bound=0.3),
        ),
        slices=config.evaluation.slices,
    )
    return config.replace(
        training=TrainingConfig(train_steps=40, eval_steps=5), evaluation=evaluation, features=SMALL_FEATURES
    )


@pytest.fixture(scope="session")
def two_runs(e2e_config, tmp_path_factory):
    """Two real pipeline runs on the same data: the first pushes a model, the second is cached.

    Returns (first RunResult, versions after the first run, second RunResult, versions after it)."""
    log_dir = tmp_path_factory.mktemp("logs")
    first = run_local(e2e_config, io.StringIO(), log_dir)
    versions_after_first = list_versions(e2e_config.serving_model_dir)
    second = run_local(e2e_config, io.StringIO(), log_dir)
    return first, versions_after_first, second, list_versions(e2e_config.serving_model_dir)


def project_with_schema_copy(tmp_path: Path, data_root: Path) -> tuple[Path, Path]:
    """A taxi config whose curated schema is a copy in tmp_path (so a test may approve changes to it)
    and whose data root is `data_root`. Returns (config path, schema path)."""
    import shutil

    import yaml

    schema = tmp_path / "schema" / "schema.pbtxt"
    schema.parent.mkdir()
    shutil.copy(load_config(TAXI_CONFIG).schema_path, schema)
    raw = yaml.safe_load(TAXI_CONFIG.read_text())
    raw["data"]["root"] = str(data_root)
    raw["schema"] = str(schema)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config, schema


@pytest.fixture
def full_disk(tmp_path):
    """(directory, extra child arguments, the error a full write gives): a real 1 MiB tmpfs where
    this user may mount one (root, as in CI); elsewhere an ordinary directory written by a child
    process that may not grow a file past 1 MiB."""
    mount = tmp_path / "small_fs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        yield mount, [str(2**20)], "File too large"
        return
    yield mount, [], "No space left on device"
    subprocess.run(["umount", str(mount)], check=False)
