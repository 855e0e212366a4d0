"""`conveyor data check` and drift, with real TFDV on small fixture CSVs made from the taxi data."""

import pytest

from cli.main import main
from components.data_gate.anomalies import drift
from pipeline.config import load_config
from schema.check import EXIT_ANOMALIES, EXIT_CLEAN, EXIT_UNREADABLE, check, csv_statistics, read_csv_input
from tests.conftest import TAXI_CONFIG, sample_taxi_rows, write_csv

CONFIG = load_config(TAXI_CONFIG)


@pytest.fixture(scope="module")
def taxi():
    return sample_taxi_rows(300, seed=11)


def _check(tmp_path, header, rows):
    path = write_csv(tmp_path / "drop.csv", header, rows)
    return check(path, CONFIG.schema_path, CONFIG.label)


def _column(header, name):
    return header.index(name)


def test_clean_data_passes(tmp_path, taxi):
    code, message = _check(tmp_path, *taxi)
    assert code == EXIT_CLEAN, message
    assert "300 rows" in message and "match the curated schema" in message


def test_a_new_column(tmp_path, taxi):
    header, rows = taxi
    code, message = _check(tmp_path, header + ["surge_factor"], [r + ["1.5"] for r in rows])
    assert code == EXIT_ANOMALIES
    assert "surge_factor: New column" in message
    assert "conveyor schema diff" in message


def test_a_missing_column(tmp_path, taxi):
    header, rows = taxi
    i = _column(header, "company")
    code, message = _check(tmp_path, header[:i] + header[i + 1 :], [r[:i] + r[i + 1 :] for r in rows])
    assert code == EXIT_ANOMALIES
    assert "company: Column dropped" in message


def test_a_string_in_a_numeric_column(tmp_path, taxi):
    header, rows = taxi
    i = _column(header, "fare")
    bad = [r[:i] + ["twelve dollars"] + r[i + 1 :] if n % 10 == 0 else r for n, r in enumerate(rows)]
    code, message = _check(tmp_path, header, bad)
    assert code == EXIT_ANOMALIES
    assert "fare:" in message and "type" in message.lower()


def test_unseen_categorical_values_beyond_the_allowed_fraction(tmp_path, taxi):
    header, rows = taxi
    i = _column(header, "payment_type")
    bad = [r[:i] + [f"Crypto {n % 3}"] + r[i + 1 :] if n % 4 == 0 else r for n, r in enumerate(rows)]
    code, message = _check(tmp_path, header, bad)
    assert code == EXIT_ANOMALIES
    assert "payment_type: Unexpected string values" in message
    assert "Crypto 0" in message


def test_serving_data_without_the_label_is_not_flagged(tmp_path, taxi):
    header, rows = taxi
    keep = [n for n, name in enumerate(header) if name not in ("big_tipper", "tips")]
    code, message = _check(tmp_path, [header[n] for n in keep], [[r[n] for n in keep] for r in rows])
    assert code == EXIT_CLEAN, message
    assert "no 'big_tipper' column, so SERVING data" in message


@pytest.mark.parametrize(
    "content, words",
    [
        ("", "is empty"),
        ("fare,company,big_tipper\n", "has a header but no rows"),
        ("fare;company;big_tipper\n1;a;0\n", "uses ';' as delimiter"),
        ("fare,company,big_tipper\n1,a,0\n2,b\n", "line 3: has 2 fields where the header has 3"),
    ],
)
def test_unreadable_input_exits_2_naming_the_file(tmp_path, content, words):
    path = tmp_path / "drop.csv"
    path.write_text(content)
    code, message = check(path, CONFIG.schema_path, CONFIG.label)
    assert code == EXIT_UNREADABLE
    assert str(path) in message and words in message


def test_cli_exit_codes(tmp_path, taxi, capsys):
    write_csv(tmp_path / "good" / "a.csv", *taxi)
    assert main(["data", "check", str(tmp_path / "good")]) == EXIT_CLEAN
    assert main(["data", "check", str(tmp_path / "nowhere")]) == EXIT_UNREADABLE
    assert "does not exist" in capsys.readouterr().err


def test_drift_beyond_the_threshold_is_flagged(tmp_path, taxi):
    header, rows = taxi
    i = _column(header, "payment_type")
    shifted = [r[:i] + ["Cash"] + r[i + 1 :] for r in rows]
    before = csv_statistics(read_csv_input(write_csv(tmp_path / "a" / "d.csv", header, rows)))
    after = csv_statistics(read_csv_input(write_csv(tmp_path / "b" / "d.csv", header, shifted)))
    import tensorflow_data_validation as tfdv

    schema = tfdv.load_schema_text(CONFIG.schema_path)
    found = drift(after, before, schema, "train")
    assert [a.feature for a in found] == ["payment_type"]
    assert "Linfty distance" in found[0].description
    assert drift(before, before, schema, "train") == []


def test_numeric_drift_beyond_the_jensen_shannon_threshold_is_flagged(tmp_path, taxi):
    import tensorflow_data_validation as tfdv

    header, rows = taxi
    i = _column(header, "fare")
    # Fares ten times higher: the distribution moves away from its old range entirely.
    pricier = [r[:i] + [f"{float(r[i]) * 10 + 500:.2f}"] + r[i + 1 :] for r in rows]
    before = csv_statistics(read_csv_input(write_csv(tmp_path / "a" / "d.csv", header, rows)))
    after = csv_statistics(read_csv_input(write_csv(tmp_path / "b" / "d.csv", header, pricier)))
    schema = tfdv.load_schema_text(CONFIG.schema_path)
    fare = next(f for f in schema.feature if f.name == "fare")
    assert fare.drift_comparator.HasField("jensen_shannon_divergence")
    found = drift(after, before, schema, "train")
    assert [a.feature for a in found] == ["fare"]
    assert "Jensen-Shannon" in found[0].description or "JSD" in found[0].description, found[0].description
    # Within the threshold: the same fares with a cent of noise do not count as drift.
    nudged = [r[:i] + [f"{float(r[i]) + 0.01:.2f}"] + r[i + 1 :] for r in rows]
    close = csv_statistics(read_csv_input(write_csv(tmp_path / "c" / "d.csv", header, nudged)))
    assert drift(close, before, schema, "train") == []


def test_training_serving_skew_is_flagged_and_serving_data_never_lacks_its_label(tmp_path, taxi):
    import tensorflow_data_validation as tfdv

    from components.data_gate.anomalies import skew

    header, rows = taxi
    keep = [n for n, name in enumerate(header) if name not in ("big_tipper", "tips")]
    serving_header = [header[n] for n in keep]
    i = serving_header.index("payment_type")
    serving_rows = [[r[n] for n in keep] for r in rows]
    skewed_rows = [r[:i] + ["Cash"] + r[i + 1 :] for r in serving_rows]
    training = csv_statistics(read_csv_input(write_csv(tmp_path / "t" / "d.csv", header, rows)))
    same = csv_statistics(read_csv_input(write_csv(tmp_path / "s" / "d.csv", serving_header, serving_rows)))
    skewed = csv_statistics(read_csv_input(write_csv(tmp_path / "k" / "d.csv", serving_header, skewed_rows)))
    schema = tfdv.load_schema_text(CONFIG.schema_path)
    assert skew(training, same, schema, "train") == []
    found = skew(training, skewed, schema, "train")
    assert [a.feature for a in found] == ["payment_type"]
    assert "Linfty distance between training and serving" in found[0].description


def test_serving_data_adds_serving_statistics_to_the_gate(tmp_path, taxi):
    from pipeline.pipeline import create_pipeline

    write_csv(tmp_path / "serving" / "d.csv", *taxi)
    config = CONFIG.replace(serving_data_root=str(tmp_path / "serving"))
    nodes = {n.id: n for n in create_pipeline(config).components}
    assert {"serving_example_gen", "serving_statistics_gen"} <= set(nodes)
    gate_inputs = nodes["DataGate"].inputs
    assert gate_inputs["serving_statistics"].producer_component_id == "serving_statistics_gen"
    assert "serving_example_gen" not in {n.id for n in create_pipeline(CONFIG).components}
