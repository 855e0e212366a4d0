"""Batch scoring on Beam: CSV rows typed by a pushed version's schema, scored through Beam's RunInference a
chunk of records at a time, and written with every row accounted for as scored or rejected.

Shared by `conveyor predict` (serving/batch_predict.py) and the pipeline's BatchPredict stage
(components/batch_predict.py). The version's `classification` or `regression` signature is run (the one whose
TF Serving method name says so); rows are typed by the curated schema in `assets.extra/`, and the columns the
model reads are read from the signature's own ParseExample op, so a table is checked against the model rather
than against a config.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, RunInference

from components.batch_scoring_rows import NAMESPACE, REJECTED, ToExamples, read_chunks
from components.pusher.publish import SCHEMA_FILE, TRAINING_RECORD

FORMATS = ("csv", "tfrecord", "parquet")
PREDICTIONS, SUMMARY = "predictions", "summary.json"
REJECTED_HEADER = ("file", "line", "reason")
PROGRESS_SECONDS = 2.0
# TF Serving's method name of each signature batch scoring runs.
SIGNATURE_METHODS = {"classification": "tensorflow/serving/classify", "regression": "tensorflow/serving/regress"}


class PredictError(ValueError):
    """Input batch prediction cannot use (a path, a model, a version, a label, a header); one line for a person."""


@dataclass(frozen=True)
class Target:
    """The version to score with and what it reads and answers."""

    model: str
    version: int
    path: Path
    signature: str
    # "binary", "multiclass" or "regression"; classes in the model's order (binary: [negative, positive]).
    task: str
    classes: tuple[str, ...]
    schema: Any
    # The columns the model parses: `required` ones fail the parse when a row has no value for them.
    required: frozenset[str]
    optional: frozenset[str]

    @property
    def features(self) -> frozenset[str]:
        return self.required | self.optional

    def output_columns(self) -> list[str]:
        """The model's outputs by name, as the output rows carry them after the kept columns."""
        if self.task == "regression":
            return ["value"]
        if self.task == "binary":
            return ["probability", "class"]
        return [*(f"score_{c}" for c in self.classes), "class"]


def _parsed_features(saved_model_pb: Path, signature: str) -> tuple[frozenset[str], frozenset[str]]:
    """(required, optional) feature names the signature's ParseExampleV2 op reads: dense keys without a default
    fail the parse when missing, sparse keys may be absent. Empty sets when the graph holds no such op."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import tensor_util

    saved = saved_model_pb2.SavedModel.FromString(saved_model_pb.read_bytes())
    graph = next(g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags)
    library = {f.signature.name: f for f in graph.graph_def.library.function}
    nodes = {n.name: n for n in graph.graph_def.node}
    pending = [nodes[t.name.split(":")[0]] for t in graph.signature_def[signature].outputs.values()]
    functions = [a.func.name for n in pending for a in n.attr.values() if a.func.name]
    seen: set[str] = set()
    required: set[str] = set()
    optional: set[str] = set()
    while functions:
        name = functions.pop()
        if name in seen or name not in library:
            continue
        seen.add(name)
        body = library[name].node_def
        consts = {n.name: tensor_util.MakeNdarray(n.attr["value"].tensor) for n in body if n.op == "Const"}
        for node in body:
            functions.extend(a.func.name for a in node.attr.values() if a.func.name)
            if node.op != "ParseExampleV2":
                continue
            # Inputs: serialized, names, sparse_keys, dense_keys, ragged_keys, then one default per dense key.
            inputs = [consts.get(i.split(":")[0]) for i in node.input if not i.startswith("^")]
            sparse, dense, defaults = inputs[2], inputs[3], inputs[5:]
            optional.update(k.decode() for k in sparse)
            for index, key in enumerate(dense):
                default = defaults[index] if index < len(defaults) else None
                (optional if default is not None and default.size else required).add(key.decode())
    return frozenset(required), frozenset(optional - required)


def load_target(model: str, version: int, path: Path, served: Optional[Callable[[Any], set[str]]] = None) -> Target:
    """What batch prediction needs of a version directory, read without loading the model.

    Args:
      model: the model's name.
      version: the version number.
      path: the version directory.
      served: the schema's served features, for a model whose parse spec cannot be read (None: refuse it).

    Returns:
      The target.

    Raises:
      PredictError: the version has no classification or regression signature, or no schema, or (without
        `served`) no readable parse spec.
    """
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_metadata.proto.v0 import schema_pb2

    saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    methods = {k: v.method_name for g in saved.meta_graphs for k, v in g.signature_def.items()}
    signature = next((s for s, method in SIGNATURE_METHODS.items() if methods.get(s) == method), None)
    if signature is None:
        raise PredictError(f"{path} has no classification or regression signature with TF Serving's method name")
    schema_file = path / "assets.extra" / SCHEMA_FILE
    if not schema_file.is_file():
        raise PredictError(f"{path} carries no assets.extra/{SCHEMA_FILE} to type raw CSV values with")
    schema = text_format.Parse(schema_file.read_text(encoding="utf-8"), schema_pb2.Schema())
    required, optional = _parsed_features(path / "saved_model.pb", signature)
    if not required | optional:
        if served is None:
            raise PredictError(f"{path}: cannot read which features its {signature} signature parses")
        # A model whose parse spec cannot be read: every feature the schema serves is its input.
        optional = frozenset(served(schema))
    record = path / TRAINING_RECORD
    facts = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    classes = tuple(str(c) for c in facts.get("classes", ()))
    if signature == "regression":
        task = "regression"
    else:
        if not classes:
            raise PredictError(f"{path} has no {TRAINING_RECORD} naming its classes")
        task = "binary" if len(classes) == 2 else "multiclass"
    return Target(model, version, path, signature, task, classes, schema, required, optional)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _Model:
    """A loaded version's scoring signature (the loaded object is kept: the signature dies with it)."""

    def __init__(self, path: str, signature: str):
        import tensorflow as tf

        self._loaded = tf.saved_model.load(path)
        self.call = self._loaded.signatures[signature]
        self.input = next(iter(self.call.structured_input_signature[1]))


class _ChunkHandler(ModelHandler):
    """Beam's RunInference over Batches: one signature call per chunk of rows, answers as numpy arrays."""

    def __init__(self, target: Target):
        super().__init__()
        self._path, self._signature = str(target.path), target.signature

    def load_model(self) -> _Model:
        return _Model(self._path, self._signature)

    def run_inference(self, batch, model, inference_args=None):
        import tensorflow as tf

        for kept, examples in batch:
            outputs = model.call(**{model.input: tf.constant(examples)})
            yield kept, {name: value.numpy() for name, value in outputs.items()}

    def get_num_bytes(self, batch) -> int:
        return sum(len(e) for _, examples in batch for e in examples)

    def batch_elements_kwargs(self):
        # Each element already is a batch: a chunk of rows.
        return {"min_batch_size": 1, "max_batch_size": 1}


@dataclass
class _ToColumns:
    """One chunk's answers to output columns: the kept columns, then the model's outputs by name."""

    target: Target
    keep: tuple[str, ...]

    def __call__(self, scored) -> dict[str, list]:
        kept, outputs = scored
        columns: dict[str, list] = dict(zip(self.keep, kept, strict=True))
        if self.target.task == "regression":
            (values,) = outputs.values()
            columns["value"] = values.reshape(len(values), -1)[:, 0].astype(np.float64).tolist()
            return columns
        scores = outputs["scores"]
        labels = outputs["classes"].astype(object) if "classes" in outputs else None
        if labels is None:
            labels = np.broadcast_to(np.array([c.encode() for c in self.target.classes], object), scores.shape)
        if len(labels) and (labels == labels[0]).all():
            # The usual case: every row lists the classes in one order, so a class's score is one column.
            order = [_text(v) for v in labels[0]]
            columns.update(self._by_column(scores, order))
            return columns
        labels = np.vectorize(_text, otypes=[object])(labels)

        def score_of(name: str) -> list[float]:
            # Exactly one label per row matches: the sum adds zeros to that score.
            return np.where(labels == name, scores, 0).sum(axis=1).astype(np.float64).tolist()

        if self.target.task == "binary":
            columns["probability"] = score_of(self.target.classes[1])
        else:
            columns.update({f"score_{c}": score_of(c) for c in self.target.classes})
        columns["class"] = labels[np.arange(len(scores)), scores.argmax(axis=1)].tolist()
        return columns

    def _by_column(self, scores: np.ndarray, order: list[str]) -> dict[str, list]:
        """The output columns when every row's labels are `order`."""
        if self.target.task == "binary":
            found = {"probability": scores[:, order.index(self.target.classes[1])].astype(np.float64).tolist()}
        else:
            found = {f"score_{c}": scores[:, order.index(c)].astype(np.float64).tolist() for c in self.target.classes}
        found["class"] = np.array(order, object)[scores.argmax(axis=1)].tolist()
        return found


class _Progress(beam.DoFn):
    """Counts scored rows and says how many so far, every few seconds (per worker: each counts its own)."""

    def __init__(self, out=None):
        self._out = out
        self._scored = beam.metrics.Metrics.counter(NAMESPACE, "scored")

    def setup(self):
        self._count, self._start, self._said = 0, 0.0, 0.0

    def process(self, columns):
        rows = len(next(iter(columns.values())))
        self._scored.inc(rows)
        now = time.monotonic()
        if not self._count:
            # From the first rows, not from setup: loading the model is not scoring.
            self._start = self._said = now
        self._count += rows
        if now - self._said >= PROGRESS_SECONDS:
            self._said = now
            rate = self._count / max(now - self._start, 1e-9)
            print(f"  scored {self._count:,} rows ({rate:,.0f} rows/s)", file=self._out or sys.stderr, flush=True)
        yield columns


def _csv_line(values: Sequence[Any]) -> str:
    buf = io.StringIO()
    # repr of a Python float round-trips, so the file holds the model's float32 answers exactly.
    csv.writer(buf, lineterminator="").writerow([repr(v) if isinstance(v, float) else v for v in values])
    return buf.getvalue()


def _csv_lines(columns: dict[str, list], names: list[str]) -> str:
    """One chunk's rows as CSV lines (no last line end). Where no cell needs quoting, Arrow joins the cells and
    spells the floats (shortest round-trip spellings, as repr's); otherwise Python's csv writes them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cells = []
    for name in names:
        values = columns[name]
        if _floats(values):
            cells.append(pc.cast(pa.array(values, pa.float64()), pa.string()))
            continue
        text = pa.array(values, pa.string())
        if len(text) and pc.any(pc.match_substring_regex(text, '[,"\r\n]')).as_py():
            return _python_csv_lines(columns, names)
        cells.append(text)
    rows = pc.binary_join_element_wise(*cells, ",")
    # Each row joined with an empty string by a line end: the array's data buffer is then the text itself.
    lines = pc.binary_join_element_wise(rows, pa.array([""] * len(rows), pa.string()), "\n")
    offsets = np.frombuffer(lines.buffers()[1], np.int32)[lines.offset : lines.offset + len(lines) + 1]
    return lines.buffers()[2].to_pybytes()[offsets[0] : offsets[-1] - 1].decode("utf-8")


def _python_csv_lines(columns: dict[str, list], names: list[str]) -> str:
    buf = io.StringIO()
    # repr of a Python float round-trips, so the file holds the model's float32 answers exactly.
    cells = [[repr(v) for v in columns[n]] if _floats(columns[n]) else columns[n] for n in names]
    csv.writer(buf, lineterminator="\n").writerows(zip(*cells, strict=True))
    return buf.getvalue()[:-1]


def _floats(values: list) -> bool:
    return bool(values) and isinstance(values[0], float)


def _tf_examples(columns: dict[str, list]) -> list[bytes]:
    import pyarrow as pa

    from components.batch_scoring_rows import _encoder

    lists = []
    for values in columns.values():
        flat = pa.array(values, pa.float32() if _floats(values) else pa.binary())
        lists.append(pa.ListArray.from_arrays(pa.array(np.arange(len(values) + 1, dtype=np.int32)), flat))
    return _encoder().encode(pa.RecordBatch.from_arrays(lists, list(columns)))


def _write(columns: beam.PCollection, fmt: str, prefix: str, names: list[str], keep: Sequence[str]) -> None:
    """Writes the scored rows as `<prefix>-SSSSS-of-NNNNN.<fmt>`."""
    if fmt == "csv":
        lines = columns | "CsvLines" >> beam.Map(_csv_lines, names)
        lines | "WriteCsv" >> beam.io.WriteToText(prefix, file_name_suffix=".csv", header=_csv_line(names))
    elif fmt == "tfrecord":
        (
            columns
            | "Examples" >> beam.FlatMap(_tf_examples)
            | "WriteTFRecord" >> beam.io.WriteToTFRecord(prefix, file_name_suffix=".tfrecord")
        )
    else:
        import pyarrow as pa

        kept = set(keep)
        schema = pa.schema([(c, pa.string() if c in kept or c == "class" else pa.float64()) for c in names])
        tables = columns | "Tables" >> beam.Map(lambda c: pa.Table.from_pydict({n: c[n] for n in names}, schema=schema))
        tables | "WriteParquet" >> beam.io.WriteToParquetBatched(prefix, schema, file_name_suffix=".parquet")


def build_pipeline(
    pipeline: beam.Pipeline,
    files: Sequence[str],
    target: Target,
    keep: Sequence[str],
    out_dir: str,
    fmt: str,
    spread: bool = True,
    progress=None,
) -> None:
    """Adds the scoring to `pipeline`: read in chunks, type by the schema, RunInference, write; rejected rows
    to their own file.

    Args:
      pipeline: the Beam pipeline to extend.
      files: the CSV files (their headers already checked).
      target: the version to score with.
      keep: input columns copied into each output row.
      out_dir: the directory the files go to.
      fmt: one of FORMATS.
      spread: redistribute chunks after reading (a Reshuffle), so workers other than a file's reader score
        them; the in-memory DirectRunner has one worker and gains nothing from it.
      progress: where progress lines go (default: stderr).
    """
    keep = tuple(keep)
    chunks = pipeline | "Files" >> beam.Create(list(files)) | "Read" >> beam.FlatMap(read_chunks)
    if spread:
        chunks = chunks | "Spread" >> beam.Reshuffle()
    typed = chunks | "Type" >> beam.FlatMap(ToExamples(target, keep)).with_outputs(REJECTED, main="examples")
    columns = (
        typed.examples
        | "RunInference" >> RunInference(_ChunkHandler(target))
        | "Columns" >> beam.Map(_ToColumns(target, keep))
        | "Progress" >> beam.ParDo(_Progress(progress))
    )
    _write(columns, fmt, os.path.join(out_dir, PREDICTIONS), [*keep, *target.output_columns()], keep)
    rejected = beam.metrics.Metrics.counter(NAMESPACE, "rejected")

    def rejected_line(row):
        rejected.inc()
        return _csv_line(row)

    (
        typed[REJECTED]
        | "RejectedLines" >> beam.Map(rejected_line)
        | "WriteRejected"
        >> beam.io.WriteToText(
            os.path.join(out_dir, REJECTED), file_name_suffix=".csv", header=_csv_line(REJECTED_HEADER)
        )
    )


@dataclass(frozen=True)
class Summary:
    """What a batch prediction did: the three counts, the time, and the files it wrote."""

    model: str
    version: int
    rows_in: int
    scored: int
    rejected: int
    seconds: float
    output: str
    predictions: tuple[str, ...]
    rejected_files: tuple[str, ...]

    @property
    def balanced(self) -> bool:
        """Every row read was either scored or rejected."""
        return self.rows_in == self.scored + self.rejected

    @property
    def rows_per_second(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0


def _counters(result) -> dict[str, int]:
    from apache_beam.metrics.metric import MetricsFilter

    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    counts: dict[str, int] = {}
    for metric in found:
        value = metric.committed if metric.committed is not None else metric.attempted
        counts[metric.key.metric.name] = counts.get(metric.key.metric.name, 0) + int(value or 0)
    return counts


def input_files(data: str | Path) -> list[str]:
    """The CSV files to score: the file given, a directory's *.csv, or the newest span-<N>/ under a data root.

    Raises:
      PredictError: the path does not exist or holds no CSV file.
    """
    path = Path(data)
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        raise PredictError(f"--data {data} does not exist")
    files = sorted(str(p) for p in path.glob("*.csv") if p.is_file())
    if not files:
        spans = sorted(
            (p for p in path.glob("span-*") if p.is_dir() and p.name[5:].isdigit()), key=lambda p: int(p.name[5:])
        )
        if spans:
            files = sorted(str(p) for p in spans[-1].glob("*.csv") if p.is_file())
    if not files:
        raise PredictError(f"--data {data} holds no *.csv file (nor a span-<N>/ directory of them)")
    return files


def check_headers(files: Sequence[str], target: Target, keep: Sequence[str]) -> None:
    """Every file's header names every column the model reads and every `--keep` column.

    Raises:
      PredictError: a file is unreadable, empty, or its header lacks a column (the first one missing is named).
    """
    for name in files:
        try:
            with open(name, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise PredictError(f"cannot read {name}: {err}") from None
        if not header:
            raise PredictError(f"{name} is empty: no header row")
        missing = sorted(target.features - set(header))
        if missing:
            raise PredictError(f"{name}: the header lacks '{missing[0]}', a feature model '{target.model}' reads")
        absent = [k for k in keep if k not in header]
        if absent:
            raise PredictError(f"{name}: the header lacks '{absent[0]}', named by --keep")


def check_output(output: str | Path) -> Path:
    """The output directory, refused if it already holds files (a finished run's output is never overwritten).

    Raises:
      PredictError: it exists and is not an empty directory.
    """
    path = Path(output)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise PredictError(f"--output {path} already exists; remove it or choose another directory")
    return path


def predict(
    target: Target,
    files: Sequence[str],
    output: str | Path,
    fmt: str = "csv",
    keep: Sequence[str] = (),
    beam_args: Sequence[str] = (),
    progress=None,
    pipeline: Optional[beam.Pipeline] = None,
) -> Summary:
    """Scores `files` with `target` on Beam into `output`, which appears only once complete.

    The files are written into a hidden `.<name>.partial-<id>` directory beside `output` and renamed to it
    when the pipeline has finished, so a killed run leaves no directory that looks finished.

    Args:
      target: the version (see `load_target`).
      files: CSV files whose headers `check_headers` accepted.
      output: the directory to create; must not exist or be empty.
      fmt: one of FORMATS.
      keep: input columns copied into each output row.
      beam_args: Beam pipeline arguments, passed through unchanged.
      progress: where progress lines go (default: stderr).
      pipeline: the Beam pipeline to run in (a TFX component's), instead of one built from `beam_args`.

    Returns:
      The summary; `summary.json` in `output` holds the same.

    Raises:
      PredictError: `output` is taken.
      Exception: whatever the Beam runner raises; the partial directory is removed first.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    final = check_output(output).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    direct_in_memory = not any(a.startswith("--runner") for a in beam_args) and any(
        a == "--direct_running_mode=in_memory" for a in beam_args
    )
    start = time.monotonic()
    try:
        pipeline = pipeline or beam.Pipeline(options=PipelineOptions(list(beam_args)))
        build_pipeline(pipeline, files, target, keep, str(partial), fmt, spread=not direct_in_memory, progress=progress)
        result = pipeline.run()
        result.wait_until_finish()
        seconds = time.monotonic() - start
        counts = _counters(result)
        summary = Summary(
            model=target.model,
            version=target.version,
            rows_in=counts.get("rows_in", 0),
            scored=counts.get("scored", 0),
            rejected=counts.get("rejected", 0),
            seconds=seconds,
            output=str(final),
            predictions=tuple(sorted(str(final / p.name) for p in partial.glob(f"{PREDICTIONS}-*"))),
            rejected_files=tuple(sorted(str(final / p.name) for p in partial.glob(f"{REJECTED}-*"))),
        )
        fields = {k: getattr(summary, k) for k in summary.__dataclass_fields__}
        (partial / SUMMARY).write_text(json.dumps({**fields, "files": [str(f) for f in files]}, indent=1) + "\n")
        if final.is_dir():
            final.rmdir()
        os.rename(partial, final)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return summary
