"""`conveyor schema diff` / `approve` on real TFDV statistics: plain-words changes, minimal edits, a review log."""

import base64
import json

import pytest
from tensorflow_metadata.proto.v0 import statistics_pb2

from cli.main import main
from pipeline.config import load_config
from schema.check import EXIT_ANOMALIES, EXIT_CLEAN, check
from schema.review import diff, read_schema
from tests.conftest import TAXI_CONFIG, project_with_schema_copy, sample_taxi_rows, write_csv


@pytest.fixture
def project(tmp_path):
    """A config whose curated schema is a copy in tmp_path, and a data drop that breaks it: a new
    column and a new payment type."""
    header, rows = sample_taxi_rows(300, seed=5)
    i = header.index("payment_type")
    rows = [r[:i] + ["Crypto"] + r[i + 1 :] if n % 5 == 0 else r for n, r in enumerate(rows)]
    data = tmp_path / "data"
    write_csv(data / "drop.csv", header + ["surge_factor"], [r + [str(1 + n % 3)] for n, r in enumerate(rows)])
    config, schema = project_with_schema_copy(tmp_path, data)
    return config, schema, data


def test_diff_reports_each_change_in_plain_words_and_writes_reports(project, tmp_path, capsys):
    config, schema, data = project
    result, anomalies = diff(data, schema)
    lines = [c.line() for c in result.changes]
    assert any(line.startswith("surge_factor: feature added (INT") for line in lines)
    added = next(line for line in lines if line.startswith("payment_type: 1 categorical value(s) added"))
    assert "'Crypto' (60 rows)" in added
    assert any("surge_factor" in a for a in anomalies)

    assert main(["schema", "diff", "--config", str(config), "--report-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "surge_factor: feature added" in out
    md = (tmp_path / "r" / "schema_diff.md").read_text()
    assert "| `payment_type` |" in md
    page = (tmp_path / "r" / "schema_diff.html").read_text()
    assert "<svg" in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "Crypto" in page
    # TFDV's own Facets view of the same statistics, for when the web is at hand.
    facets = (tmp_path / "r" / "schema_diff_facets.html").read_text()
    encoded = facets.split('<facets-overview proto-input="', 1)[1].split('"', 1)[0]
    shown = statistics_pb2.DatasetFeatureStatisticsList.FromString(base64.b64decode(encoded))
    assert shown.datasets[0].num_examples == 300
    assert 'href="schema_diff_facets.html"' in page


def test_approve_some_then_all_then_diff_is_clean_and_data_passes(project):
    config, schema, data = project
    before_text = schema.read_text()
    header_before, before = read_schema(schema)
    assert check(data, str(schema), "big_tipper")[0] == EXIT_ANOMALIES
    pending = set(diff(data, schema)[0].features)
    assert {"surge_factor", "payment_type"} <= pending

    assert main(["schema", "approve", "--config", str(config), "--feature", "surge_factor"]) == 0
    remaining, _ = diff(data, schema)
    assert set(remaining.features) == pending - {"surge_factor"}

    assert main(["schema", "approve", "--config", str(config)]) == 0
    after_header, after = read_schema(schema)
    assert diff(data, schema)[0].changes == []
    code, message = check(data, str(schema), "big_tipper")
    assert code == EXIT_CLEAN, message

    # Deterministic and minimal: header kept, old features in their order, only the new one appended,
    # and what people set (environments, drift comparators) survives.
    assert after_header == header_before
    assert [f.name for f in after.feature] == [f.name for f in before.feature] + ["surge_factor"]
    untouched = [f for f in before.feature if f.name not in pending]
    assert untouched, "the sample leaves some features as they were"
    for f in untouched:
        assert next(g for g in after.feature if g.name == f.name) == f
    payment = next(f for f in after.feature if f.name == "payment_type")
    assert payment.drift_comparator.infinity_norm.threshold == pytest.approx(0.2)
    assert next(f for f in after.feature if f.name == "big_tipper").not_in_environment == ["SERVING"]
    added_lines = [line for line in schema.read_text().splitlines() if line not in before_text.splitlines()]
    assert any('"Crypto"' in line for line in added_lines)
    assert any('"surge_factor"' in line for line in added_lines)

    log = [json.loads(line) for line in (schema.parent / "reviews.jsonl").read_text().splitlines()]
    assert [entry["features"] for entry in log] == [["surge_factor"], sorted(pending - {"surge_factor"})]
    for entry in log:
        assert entry["approved_by"] and entry["approved_at"] and entry["rows"] == 300
        assert entry["data"] == str(data) and len(entry["statistics_sha256"]) == 64
        assert entry["schema_sha256_before"] != entry["schema_sha256_after"]


def test_approving_a_feature_without_changes_is_refused(project, capsys):
    config, schema, _ = project
    before = schema.read_text()
    assert main(["schema", "approve", "--config", str(config), "--feature", "fare"]) == 2
    assert "no pending change for feature(s) fare" in capsys.readouterr().err
    assert schema.read_text() == before


def test_diff_names_removed_type_presence_valency_values_gone_and_range_changes(tmp_path):
    """One data drop with every other kind of change, through real TFDV statistics and inference."""
    from schema.review import write_schema

    header_text, curated = read_schema(load_config(TAXI_CONFIG).schema_path)
    hour = next(f for f in curated.feature if f.name == "trip_start_hour")
    hour.int_domain.min, hour.int_domain.max = 0, 12  # a reviewed range the data will exceed
    schema = tmp_path / "schema.pbtxt"
    write_schema(schema, header_text, curated)

    header, rows = sample_taxi_rows(300, seed=11)
    col = {name: i for i, name in enumerate(header)}
    changed = []
    for n, r in enumerate(rows):
        r = list(r)
        r[col["payment_type"]] = "Cash"  # every other payment type is gone
        if n % 10 == 0:
            r[col["fare"]] = "n/a"  # FLOAT becomes BYTES
        if n % 4 == 0:
            r[col["trip_miles"]] = ""  # TFDV reads an empty field as no value: shape [1] no longer holds
        r[col["pickup_census_tract"]] = "17031081500"  # optional in the schema, now always present
        changed.append([v for i, v in enumerate(r) if i != col["company"]])  # the column is removed
    write_csv(tmp_path / "data" / "drop.csv", [h for h in header if h != "company"], changed)

    result, _ = diff(tmp_path / "data", schema)
    lines = {(c.feature, c.kind): c.line() for c in result.changes}
    assert lines[("company", "removed")] == "company: feature removed: the data has no such column"
    assert lines[("fare", "type")] == "fare: type changed from FLOAT to BYTES"
    assert lines[("pickup_census_tract", "presence")] == (
        "pickup_census_tract: presence changed from min_fraction 0, min_count 0 to min_fraction 1, min_count 1"
    )
    assert lines[("trip_miles", "valency")] == "trip_miles: valency changed from shape [1] to any number of values"
    gone = lines[("payment_type", "values_gone")]
    assert gone.startswith("payment_type: 6 categorical value(s) gone: ") and "'Credit Card'" in gone
    assert lines[("trip_start_hour", "range")].startswith(
        "trip_start_hour: numeric range changed: data spans [0, 23], schema allows [0, 12]"
    )
