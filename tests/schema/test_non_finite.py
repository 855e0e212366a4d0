"""NaN and infinity are data errors: the curated and drafted schemas forbid them, `data check` counts them
and finds their lines, `schema diff` says so and `schema approve` allows them for one feature only."""

import re

import pytest
from tensorflow_metadata.proto.v0 import schema_pb2

from cli.main import main
from schema.review import read_schema
from tests.conftest import PROJECT_ROOT, TAXI_CONFIG, project_with_schema_copy, sample_taxi_rows, write_csv
from tests.synthetic import dataset


def _broken_drop(path, rows=300):
    """300 taxi rows as the issue's user had them: every 7th trip_miles inf, every 10th tips NaN."""
    header, body = sample_taxi_rows(rows, seed=3)
    miles, tips = header.index("trip_miles"), header.index("tips")
    for n, row in enumerate(body):
        if n % 7 == 0:
            row[miles] = "inf" if n % 2 else "-Infinity"
        if n % 10 == 0:
            row[tips] = "NaN"
    return write_csv(path, header, body)


@pytest.mark.parametrize("dataset_name", ["taxi", "penguins"])
def test_curated_schemas_forbid_nan_and_infinity_in_every_float_feature(dataset_name):
    _, schema = read_schema(PROJECT_ROOT / "schema" / dataset_name / "schema.pbtxt")
    floats = [f for f in schema.feature if f.type == schema_pb2.FLOAT]
    assert floats
    for f in floats:
        assert f.float_domain.disallow_nan and f.float_domain.disallow_inf, f.name


@pytest.mark.parametrize("dataset_name", ["taxi", "penguins"])
def test_bundled_data_passes_the_stricter_schemas(dataset_name, capsys):
    config = PROJECT_ROOT / "configs" / f"{dataset_name}.yaml"
    data = PROJECT_ROOT / "data" / dataset_name
    path = sorted(data.glob("span-*"))[-1] if dataset_name == "taxi" else data
    assert main(["data", "check", str(path), "--config", str(config)]) == 0, capsys.readouterr().err


def test_data_check_counts_nan_and_infinity_and_names_the_lines(tmp_path, capsys):
    drop = _broken_drop(tmp_path / "drop" / "data.csv")
    assert main(["data", "check", str(drop), "--config", str(TAXI_CONFIG)]) == 1
    err = capsys.readouterr().err
    miles = next(line for line in err.splitlines() if "trip_miles:" in line)
    tips = next(line for line in err.splitlines() if "tips:" in line)
    # 300 rows: rows 0, 7, 14, ... (43) have an infinite trip_miles, rows 0, 10, ... (30) a NaN tips;
    # row n is on line n + 2 of the file (after the header).
    assert "Float feature has Inf values" in miles and "(0 NaN and 43 infinite of 300 values)" in miles
    assert "first at data.csv line(s) 2, 9, 16, 23, 30" in miles
    assert "Float feature has NaN values" in tips and "(30 NaN and 0 infinite of 300 values)" in tips
    assert "first at data.csv line(s) 2, 12, 22, 32, 42" in tips
    assert "NaN and infinity are data errors" in err


@pytest.fixture
def project(tmp_path):
    """A config whose curated schema is a copy in tmp_path, and the broken drop as its data root."""
    data = tmp_path / "data"
    _broken_drop(data / "drop.csv")
    config, schema = project_with_schema_copy(tmp_path, data)
    return config, schema, data


def test_schema_diff_explains_and_approve_allows_them_for_one_feature_only(project, tmp_path, capsys):
    config, schema, data = project
    report = tmp_path / "report"
    assert main(["schema", "diff", "--config", str(config), "--report-dir", str(report)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"tips: data has 30 NaN value\(s\), which the schema forbids .*approving allows them", out)
    assert "trip_miles: data has 43 infinite value(s), which the schema forbids" in out
    assert "| `tips` | data has 30 NaN value(s), which the schema forbids" in (report / "schema_diff.md").read_text()

    assert main(["schema", "approve", "--config", str(config), "--feature", "tips"]) == 0
    _, approved = read_schema(schema)
    tips = next(f for f in approved.feature if f.name == "tips")
    miles = next(f for f in approved.feature if f.name == "trip_miles")
    assert (tips.float_domain.disallow_nan, tips.float_domain.disallow_inf) == (False, True)
    assert (miles.float_domain.disallow_nan, miles.float_domain.disallow_inf) == (True, True)
    capsys.readouterr()
    assert main(["data", "check", str(data), "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "trip_miles:" in err and "tips:" not in err


def test_init_forbids_them_where_the_data_has_none_and_allows_them_where_it_has(tmp_path):
    header, rows = dataset("regression")  # x1, x2 and the label are floats
    x2 = header.index("x2")
    for n, row in enumerate(rows):
        if n % 4 == 0:
            row[x2] = "nan"
    write_csv(tmp_path / "data" / "rows.csv", header, rows)
    assert main(["init", "--data", str(tmp_path / "data"), "--label", "label", "--out-dir", str(tmp_path)]) == 0
    _, drafted = read_schema(tmp_path / "schema" / "data" / "schema.pbtxt")
    domains = {f.name: (f.float_domain.disallow_nan, f.float_domain.disallow_inf) for f in drafted.feature}
    assert domains["x2"] == (False, True)
    assert domains["x1"] == (True, True) and domains["label"] == (True, True)


def test_init_says_why_it_changed_the_name(tmp_path, capsys):
    write_csv(tmp_path / "data" / "rows.csv", *dataset("binary"))
    args = ["init", "--data", str(tmp_path / "data"), "--label", "label", "--out-dir", str(tmp_path)]
    assert main([*args, "--name", "ho_cancer"]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    assert notes == [
        "note: --name 'ho_cancer' is used as 'ho-cancer': pipeline and model names are lower-case letters, "
        "digits and '-' (Kubeflow Pipelines requires it; config key 'name')"
    ]
    assert (tmp_path / "configs" / "ho-cancer.yaml").is_file()
    assert main([*args, "--name", "ho-cancer-2"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_a_column_that_becomes_float_on_approval_forbids_nan_and_infinity(tmp_path, capsys):
    header, rows = sample_taxi_rows(200, seed=4)
    i = header.index("trip_seconds")
    for n, row in enumerate(rows):
        row[i] = f"{float(row[i]) + 0.5}" if n % 2 else row[i]  # an integer column starts carrying fractions
    data = tmp_path / "data"
    write_csv(data / "drop.csv", header, rows)
    config, schema = project_with_schema_copy(tmp_path, data)
    _, before = read_schema(schema)
    assert next(f for f in before.feature if f.name == "trip_seconds").type == schema_pb2.INT
    assert main(["schema", "approve", "--config", str(config), "--feature", "trip_seconds"]) == 0
    _, after = read_schema(schema)
    seconds = next(f for f in after.feature if f.name == "trip_seconds")
    assert seconds.type == schema_pb2.FLOAT
    assert seconds.float_domain.disallow_nan and seconds.float_domain.disallow_inf
