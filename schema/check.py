"""`conveyor data check`: a new data drop against the curated schema in seconds, without the pipeline.

CSV files are read the way CsvExampleGen reads them (same type inference, same tf.Example
conversion), so the statistics and anomalies are the ones the pipeline's data gate would see.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

EXIT_CLEAN, EXIT_ANOMALIES, EXIT_UNREADABLE = 0, 1, 2
_SNIFF_DELIMITERS = (";", "\t", "|")
MAX_FIELD_BYTES = 10 * 1024 * 1024


class DataReadError(ValueError):
    """The input cannot be read as CSV; names the file, the line where possible, and what to do."""

    def __init__(self, path: Path | str, problem: str, line: Optional[int] = None):
        where = f"{path}, line {line}" if line else f"{path}"
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.line = line


@dataclass(frozen=True)
class CsvInput:
    """Readable CSV files sharing one header."""

    files: tuple[Path, ...]
    header: tuple[str, ...]
    rows: int


def _csv_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataReadError(path, "does not exist")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if not files:
        raise DataReadError(path, "holds no .csv files")
    return files


def _read_file(path: Path) -> tuple[list[str], int]:
    raw = path.read_bytes()
    if not raw.strip():
        raise DataReadError(path, "is empty; expected a header line and at least one row")
    if raw.startswith(codecs.BOM_UTF8):
        raise DataReadError(path, "starts with a byte-order mark (BOM); save it as UTF-8 without BOM", 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataReadError(path, f"is not UTF-8 (byte 0x{raw[err.start]:02x}); re-encode it as UTF-8", line) from None
    csv.field_size_limit(MAX_FIELD_BYTES)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except csv.Error as err:
        raise DataReadError(path, f"header cannot be parsed ({err})", 1) from None
    if len(header) == 1 and any(d in header[0] for d in _SNIFF_DELIMITERS):
        found = next(d for d in _SNIFF_DELIMITERS if d in header[0])
        raise DataReadError(path, f"uses {found!r} as delimiter; CSV input must be comma-separated", 1)
    if any(not name.strip() for name in header):
        raise DataReadError(path, "header has an empty column name", 1)
    # CsvExampleGen and TFDV read the header as one physical line split at commas, without quoting.
    awkward = sorted({name for name in header if any(c in name for c in ',"\r\n')})
    if awkward:
        raise DataReadError(
            path,
            f"header has column name(s) {awkward} with a comma, quote or line break; rename them "
            "(CsvExampleGen reads the header as one line split at commas)",
            1,
        )
    duplicates = sorted({n for n in header if header.count(n) > 1})
    if duplicates:
        raise DataReadError(path, f"header repeats column name(s) {', '.join(duplicates)}", 1)
    rows = 0
    try:
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DataReadError(path, f"has {len(row)} fields where the header has {len(header)}", reader.line_num)
            rows += 1
    except csv.Error as err:
        raise DataReadError(path, f"is not valid CSV ({err})", reader.line_num) from None
    if rows == 0:
        raise DataReadError(path, "has a header but no rows")
    return header, rows


def read_csv_input(path: str | Path) -> CsvInput:
    """Checks that a CSV file, or every CSV file in a directory, can be read, before Beam touches it.

    Raises:
      DataReadError: naming the file, the line where possible, and the problem.
    """
    files = _csv_files(Path(path))
    header, total = None, 0
    for file in files:
        this_header, rows = _read_file(file)
        if header is not None and this_header != header:
            raise DataReadError(file, f"has a different header from {files[0].name}", 1)
        header, total = this_header, total + rows
    return CsvInput(tuple(files), tuple(header), total)


def require_label(csv_input: CsvInput, label: str) -> None:
    """Training data must carry the label.

    Raises:
      DataReadError: naming the file and the missing column.
    """
    if label not in csv_input.header:
        raise DataReadError(
            csv_input.files[0], f"has no '{label}' column, the label the config trains on (config key 'label')", 1
        )


def check_labels(csv_input: CsvInput, label: str, task: str, classes: Sequence[str]) -> None:
    """Every training row has a label the task can learn from: one of `classes` for
    classification, a number for regression.

    Raises:
      DataReadError: naming the file, the line and the value, and what to do.
    """
    known = set(classes)
    for path, line, value in column_cells(csv_input, label):
        value = value.strip()
        if not value:
            raise DataReadError(path, f"has no value in the label column '{label}'", line)
        if task == "regression":
            try:
                float(value)
            except ValueError:
                problem = f"label '{label}' is {value!r}, not a number (config task: regression)"
                raise DataReadError(path, problem, line) from None
        elif value not in known and not _same_integer(value, known):
            raise DataReadError(
                path,
                f"label '{label}' is {value!r}, not one of the configured classes {sorted(known)}; "
                "fix the row, or add the class to `classes` in the config and approve the schema change",
                line,
            )


def column_cells(csv_input: CsvInput, column: str) -> Iterator[tuple[Path, int, str]]:
    """(file, line, cell) for every row of `column`, in file order (the line is where the row ends)."""
    for path in csv_input.files:
        reader = csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline=""))
        index = next(reader).index(column)
        for row in reader:
            if row:
                yield path, reader.line_num, row[index]


def _same_integer(value: str, known: set[str]) -> bool:
    """'1.0' is class '1' (an integer label written as a float)."""
    try:
        number = float(value)
    except ValueError:
        return False
    return number.is_integer() and str(int(number)) in known


def csv_statistics(csv_input: CsvInput, beam_args: Sequence[str] = ()):
    """TFDV statistics of the files, computed on Beam from the tf.Examples CsvExampleGen would make.

    Returns:
      A DatasetFeatureStatisticsList.
    """
    import apache_beam as beam
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions
    from tfx.components.example_gen.csv_example_gen.executor import _CsvToExample
    from tfx_bsl.coders import example_coder

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "stats.tfrecord")
        decoder = example_coder.ExamplesToRecordBatchDecoder()
        with beam.Pipeline(options=PipelineOptions(list(beam_args))) as p:
            examples = [
                p
                | f"Read{i}" >> _CsvToExample({"input_base": str(f.parent)}, f.name)
                | f"Serialize{i}" >> beam.Map(lambda e: e.SerializeToString())
                for i, f in enumerate(csv_input.files)
            ]
            _ = (
                examples
                | "Flatten" >> beam.Flatten()
                | "Batch" >> beam.BatchElements(min_batch_size=64, max_batch_size=4096)
                | "Decode" >> beam.Map(decoder.DecodeBatch)
                | "Statistics" >> tfdv.GenerateStatistics(tfdv.StatsOptions())
                | "Write" >> tfdv.WriteStatisticsToBinaryFile(out)
            )
        return tfdv.load_stats_binary(out)


def check(path: str | Path, schema_path: str, label: str, beam_args: Sequence[str] = ()) -> tuple[int, str]:
    """Validates a data drop against the curated schema.

    Data without the label column is checked as serving data (the SERVING environment).

    Returns:
      (exit code, message): 0 clean, 1 anomalies, 2 unreadable input.
    """
    import tensorflow_data_validation as tfdv

    from components.data_gate.anomalies import count_non_finite, from_proto, message

    try:
        csv_input = read_csv_input(path)
    except DataReadError as err:
        return EXIT_UNREADABLE, f"cannot read input: {err}"
    environment = "TRAINING" if label in csv_input.header else "SERVING"
    stats = csv_statistics(csv_input, beam_args)
    schema = tfdv.load_schema_text(schema_path)
    anomalies = from_proto(Path(path).name, tfdv.validate_statistics(stats, schema, environment=environment))
    anomalies = [_with_lines(a, csv_input) for a in count_non_finite(anomalies, lambda _: stats)]
    files = ", ".join(f.name for f in csv_input.files)
    kind = f"{environment} data" if environment == "TRAINING" else f"no '{label}' column, so SERVING data"
    if anomalies:
        return EXIT_ANOMALIES, message(anomalies, f"{path} ({csv_input.rows:,} rows; {kind})")
    return EXIT_CLEAN, f"{path}: {csv_input.rows:,} rows in {files} match the curated schema ({kind})"


def non_finite_lines(csv_input: CsvInput, column: str, limit: int = 5) -> list[tuple[Path, int]]:
    """The first `limit` (file, line) places where `column` holds NaN or infinity, as a float parser reads
    them ("nan", "inf", "-Infinity", ...)."""
    found: list[tuple[Path, int]] = []
    for path, line, cell in column_cells(csv_input, column):
        try:
            value = float(cell)
        except ValueError:
            continue
        if not math.isfinite(value):
            found.append((path, line))
            if len(found) == limit:
                break
    return found


def _with_lines(anomaly, csv_input: CsvInput):
    """A NaN/Inf anomaly with the first lines that hold such values, so the rows can be found."""
    if not anomaly.non_finite or anomaly.feature not in csv_input.header:
        return anomaly
    places = non_finite_lines(csv_input, anomaly.feature)
    if not places:
        return anomaly
    by_file: dict[Path, list[int]] = {}
    for file, line in places:
        by_file.setdefault(file, []).append(line)
    shown = "; ".join(f"{file.name} line(s) {', '.join(map(str, lines))}" for file, lines in by_file.items())
    return replace(anomaly, description=f"{anomaly.description}; first at {shown}")
