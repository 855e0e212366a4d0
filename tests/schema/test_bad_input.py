"""Every kind of bad input a data drop can bring: one clear message naming the file (and line), a
non-zero exit, never a bare traceback. The run refuses the same input before anything runs."""

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import load_config
from schema.check import EXIT_ANOMALIES, EXIT_UNREADABLE, MAX_FIELD_BYTES, check
from tests.conftest import TAXI_CONFIG, sample_taxi_rows

CONFIG = load_config(TAXI_CONFIG)
HEADER, ROWS = sample_taxi_rows(60, seed=21)


def _csv(header, rows) -> bytes:
    def cell(v):
        return f'"{v}"' if any(c in v for c in ',"\n') else v

    return ("\n".join(",".join(cell(v) for v in row) for row in [header, *rows]) + "\n").encode("utf-8")


def _replace(column, value_for_row):
    i = HEADER.index(column)
    return [r[:i] + [value_for_row(n, r[i])] + r[i + 1 :] for n, r in enumerate(ROWS)]


def _drop(column):
    i = HEADER.index(column)
    return HEADER[:i] + HEADER[i + 1 :], [r[:i] + r[i + 1 :] for r in ROWS]


FAULTS = {
    # name: (file bytes, expected exit code, words the message must hold)
    "empty file": (b"", EXIT_UNREADABLE, ["is empty"]),
    "header only": (_csv(HEADER, []), EXIT_UNREADABLE, ["has a header but no rows"]),
    # Found by the fuzz test below: CsvExampleGen skips the header as one physical line.
    "a comma in a quoted column name": (
        _csv(["fare, usd", *HEADER[1:]], ROWS),
        EXIT_UNREADABLE,
        ["line 1", "column name(s) ['fare, usd'] with a comma"],
    ),
    "a line break in a quoted column name": (
        _csv(["fare\nusd", *HEADER[1:]], ROWS),
        EXIT_UNREADABLE,
        ["line 1", "column name(s) ['fare\\nusd'] with a comma, quote or line break"],
    ),
    "wrong delimiter": (_csv(HEADER, ROWS).replace(b",", b";"), EXIT_UNREADABLE, ["uses ';' as delimiter", "line 1"]),
    "ragged rows": (_csv(HEADER, ROWS[:5] + [ROWS[5][:-3]] + ROWS[6:]), EXIT_UNREADABLE, ["line 7", "fields"]),
    "non-UTF-8 bytes": (_csv(HEADER, ROWS).replace(b"Cash", b"Ca\xe9sh", 1), EXIT_UNREADABLE, ["not UTF-8", "line "]),
    "a very large field": (
        _csv(HEADER, _replace("company", lambda n, v: "x" * (MAX_FIELD_BYTES + 10) if n == 3 else v)),
        EXIT_UNREADABLE,
        ["line 5", "field larger than field limit"],
    ),
    "duplicate column names": (
        _csv(HEADER[:-1] + ["fare"], ROWS),
        EXIT_UNREADABLE,
        ["repeats column name(s) fare", "line 1"],
    ),
    "byte-order mark": (b"\xef\xbb\xbf" + _csv(HEADER, ROWS), EXIT_UNREADABLE, ["byte-order mark", "line 1"]),
    "strings in a numeric column": (
        _csv(HEADER, _replace("trip_miles", lambda n, v: "far" if n % 5 == 0 else v)),
        EXIT_ANOMALIES,
        ["trip_miles", "type"],
    ),
    "the label column missing": (_csv(*_drop("big_tipper")), EXIT_ANOMALIES, ["big_tipper"]),
    "a label value never seen before": (
        _csv(HEADER, _replace("big_tipper", lambda n, v: "7" if n == 0 else v)),
        EXIT_ANOMALIES,
        ["big_tipper"],
    ),
    "an all-empty column": (_csv(HEADER, _replace("fare", lambda n, v: "")), EXIT_ANOMALIES, ["fare"]),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_each_fault_ends_in_one_clear_message(tmp_path, fault):
    content, expected, words = FAULTS[fault]
    path = tmp_path / "drop.csv"
    path.write_bytes(content)
    code, message = check(path, CONFIG.schema_path, CONFIG.label)
    assert code == expected, message
    assert str(path) in message or "drop.csv" in message
    for word in words:
        assert word in message
    assert "Traceback" not in message


def test_quoted_newlines_are_read_like_csv_example_gen_does(tmp_path):
    i = HEADER.index("company")
    rows = [r[:i] + ["Flash\nCab"] + r[i + 1 :] if n == 2 else r for n, r in enumerate(ROWS)]
    path = tmp_path / "drop.csv"
    path.write_bytes(_csv(HEADER, rows))
    code, message = check(path, CONFIG.schema_path, CONFIG.label)
    # The file reads fine (60 rows); the multi-line company name is simply a value the schema lacks.
    assert code == EXIT_ANOMALIES and "60 rows" in message
    assert "company: Unexpected string values" in message


_cells = st.text(alphabet=string.ascii_letters + string.digits + ' ,;"\n\t.-é', max_size=6)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.lists(st.sampled_from(HEADER + ["x", "", "fare"]), min_size=0, max_size=6),
    rows=st.lists(st.lists(_cells, min_size=0, max_size=7), max_size=6),
    raw_tail=st.binary(max_size=8),
)
def test_fuzzed_csvs_only_ever_end_in_0_1_or_2_with_a_message(tmp_path, header, rows, raw_tail):
    path = tmp_path / "fuzz.csv"
    body = "\n".join(",".join(r) for r in [header, *rows]).encode("utf-8") + raw_tail
    path.write_bytes(body)
    code, message = check(path, CONFIG.schema_path, CONFIG.label)
    assert code in (0, 1, 2)
    assert message.strip()


# Real taxi drops with a few cells, columns or bytes changed, so that most fuzzed files get past the
# CSV reader into TFDV and the schema check, where the subtler failures would be.
_mutation = st.one_of(
    st.tuples(st.just("cell"), st.integers(0, len(ROWS) - 1), st.integers(0, len(HEADER) - 1), _cells),
    st.tuples(st.just("drop_column"), st.integers(0, len(HEADER) - 1)),
    st.tuples(st.just("rename_column"), st.integers(0, len(HEADER) - 1), _cells),
    st.tuples(st.just("truncate"), st.integers(0, 4000)),
    st.tuples(st.just("bytes"), st.integers(0, 4000), st.binary(min_size=1, max_size=4)),
)


def _mutate(mutations) -> bytes:
    header, rows = list(HEADER), [list(r) for r in ROWS[:20]]
    tail_ops = []
    for m in mutations:
        if m[0] == "cell":
            rows[m[1] % len(rows)][m[2] % len(header)] = m[3]
        elif m[0] == "drop_column" and len(header) > 1:
            i = m[1] % len(header)
            header.pop(i)
            for r in rows:
                r.pop(i)
        elif m[0] == "rename_column":
            header[m[1] % len(header)] = m[2]
        else:
            tail_ops.append(m)
    body = _csv(header, rows)
    for m in tail_ops:
        body = body[: m[1]] if m[0] == "truncate" else body[: m[1]] + m[2] + body[m[1] :]
    return body


# A fixed set of 25 in the suite, so CI is repeatable; fuzz afresh with derandomize=False and more
# examples when changing the input checks (300 random ones passed on 2026-11-24).
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(_mutation, min_size=1, max_size=4))
def test_fuzzed_taxi_drops_through_the_cli_end_in_0_1_or_2_with_a_message(tmp_path, capsys, mutations):
    from cli.main import main

    path = tmp_path / "drop.csv"
    path.write_bytes(_mutate(mutations))
    code = main(["data", "check", str(path)])
    out, err = capsys.readouterr()
    assert code in (0, 1, 2)
    assert (out + err).strip()
    assert "Traceback" not in out + err
