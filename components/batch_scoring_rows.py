"""Batch scoring's input side: CSV files cut into chunks of whole records, each typed by a version's schema
into serialized tf.Examples a whole chunk at a time, or row by row where a chunk holds a row to reject.

A chunk closes at a line end where the count of `"` since the header is even, as TFX's CSV reading
closes records (components/example_gen_csv.py). The fast path (pyarrow's CSV reader, Arrow casts, the
columnar tf.Example encoder) takes a chunk only when it can vouch that every row is good and that each value
is the one `components.examples.to_example` gives: plain decimal spellings, required values present,
finite floats where the schema forbids NaN. Any other chunk is typed row by row by the same rules as
one request, which also names each rejected row's line and reason.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

import apache_beam as beam
import numpy as np

from components.example_gen_encode import FLOAT, INT, STRING, examples_bytes

NAMESPACE = "conveyor.predict"
REJECTED = "rejected"
# About 35,000 taxi rows: the model scores a row faster in larger batches, and each element costs Beam's
# and Python's overhead once.
CHUNK_BYTES = 4 << 20
# Integers whose `int(float(v))` (to_example's conversion) is the integer itself.
_EXACT_INT = 2**53


# Spellings whose value Arrow's cast gives exactly as to_example's int(float(v)) and float(v) do: plain
# decimal integers, and decimals with a point or an exponent.
_INT_RE = r"^-?[0-9]{1,18}$"
_FLOAT_RE = r"^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"


class Chunk(NamedTuple):
    """Whole CSV records of one file; `line` is the file line its first record starts on (the header is 1)."""

    file: str
    line: int
    header: tuple[str, ...]
    data: bytes


class Batch(NamedTuple):
    """Good rows of one chunk: the `--keep` columns' cells (one list per column) and serialized tf.Examples."""

    kept: list[list[str]]
    examples: list[bytes]


def _lines(data: bytes) -> int:
    """Lines as Python's csv counts them (newline=""): a line ends at \\n, \\r or \\r\\n."""
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


def _record_ends(data: bytes) -> np.ndarray:
    """Offsets just after each line end in `data` (which starts a record) where the count of `"` is even."""
    arr = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(arr == ord("\n"))
    quotes = np.flatnonzero(arr == ord('"'))
    return newlines[np.searchsorted(quotes, newlines) % 2 == 0] + 1


def _cells(chunk: Chunk) -> Optional[list]:
    """The chunk's cells, one Arrow string array per column, split at every `,` and line end; None where Python's
    csv might split records or fields otherwise (quotes, NUL, a lone carriage return, an empty line), where a
    record's field count differs from the header's, or where the bytes are not UTF-8.

    The split is numpy's over the whole chunk, the columns are Arrow views taken from one array of every field:
    pyarrow's CSV reader would do the same, but each of its calls walks the whole heap on Python 3.10 (its
    SignalStopHandler's gc.get_referrers), about 80 ms a chunk once TensorFlow is loaded.
    """
    import pyarrow as pa

    data = chunk.data
    if b'"' in data or b"\x00" in data or b"\n\n" in data or data.startswith(b"\n"):
        return None
    if b"\r" in data:
        if data.count(b"\r") != data.count(b"\r\n"):
            return None
        data = data.replace(b"\r\n", b"\n")
    if not data.endswith(b"\n"):
        data += b"\n"
    width = len(chunk.header)
    arr = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero((arr == ord(",")) | (arr == ord("\n")))
    rows = len(ends) // width
    if len(ends) != rows * width or not rows:
        return None
    kinds = arr[ends].reshape(rows, width)
    if not (kinds[:, -1] == ord("\n")).all() or (width > 1 and (kinds[:, :-1] != ord(",")).any()):
        return None
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    # Python's csv refuses longer fields: the row-by-row path rejects those rows.
    if int((ends - starts).max()) > csv.field_size_limit():
        return None
    # One array of 2 elements per field: the field, then its delimiter; a column takes every other field.
    bounds = np.empty(2 * len(ends) + 1, np.int32)
    bounds[0:-1:2], bounds[1:-1:2], bounds[-1] = starts, ends, len(data)
    fields = pa.Array.from_buffers(pa.string(), 2 * len(ends), [None, pa.py_buffer(bounds), pa.py_buffer(data)])
    try:
        fields.validate(full=True)
    except pa.ArrowInvalid:
        return None
    every = np.arange(0, 2 * len(ends), 2 * width)
    return [fields.take(pa.array(every + 2 * i)) for i in range(width)]


@functools.cache
def _encoder():
    from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

    return RecordBatchToExamplesEncoder()


def read_chunks(file_name: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
    """The file's records after its header, about `chunk_bytes` at a time, each chunk ending at a record's end."""
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(file_name) as raw:
        first = raw.readline()
        header = tuple(next(csv.reader(io.StringIO(first.decode("utf-8"), newline=""))))
        line, carry = 1 + _lines(first), b""
        while True:
            block = raw.read(chunk_bytes)
            if not block:
                if carry:
                    yield Chunk(file_name, line, header, carry)
                return
            data = carry + block
            starts = _record_ends(data)
            if not len(starts):
                carry = data
                continue
            cut = int(starts[-1])
            yield Chunk(file_name, line, header, data[:cut])
            line += _lines(data[:cut])
            carry = data[cut:]


@dataclass
class ToExamples:
    """A chunk to one Batch of its good rows, and a rejected (file, line, reason) for each other row."""

    target: Any
    keep: tuple[str, ...]
    _features: list = field(init=False, default_factory=list)
    _finite: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self):
        self._features = [f for f in self.target.schema.feature if f.name in self.target.features]
        self._finite = frozenset(
            f.name
            for f in self._features
            if f.HasField("float_domain") and (f.float_domain.disallow_nan or f.float_domain.disallow_inf)
        )

    def __call__(self, chunk: Chunk):
        from apache_beam.metrics import Metrics

        batch = self._fast(chunk)
        if batch is None:
            batch = yield from self._row_by_row(chunk)
        Metrics.counter(NAMESPACE, "rows_in").inc(len(batch.examples) + self._rejected)
        if batch.examples:
            yield batch

    def _fast(self, chunk: Chunk) -> Optional[Batch]:
        """The chunk's Batch when every row is good and typed exactly as to_example types it; else None."""
        import pyarrow as pa
        import pyarrow.compute as pc
        from tensorflow_metadata.proto.v0 import schema_pb2

        self._rejected = 0
        cells = _cells(chunk)
        if cells is None:
            return None
        index = {name: i for i, name in enumerate(chunk.header)}
        features = {}
        for feature in self._features:
            column = cells[index[feature.name]]
            present = pc.greater(pc.binary_length(column), 0)
            if feature.name in self.target.required and not pc.all(present).as_py():
                return None
            mask = present.to_numpy(zero_copy_only=False)
            if feature.type == schema_pb2.BYTES:
                features[feature.name] = (STRING, column, mask)
                continue
            is_int = feature.type == schema_pb2.INT
            values = column.filter(present)
            if not pc.all(pc.match_substring_regex(values, _INT_RE if is_int else _FLOAT_RE)).as_py():
                return None
            try:
                numbers = pc.cast(values, pa.int64() if is_int else pa.float64()).to_numpy(zero_copy_only=False)
            except pa.ArrowInvalid:
                return None
            if is_int and np.any(np.abs(numbers) >= _EXACT_INT):
                return None
            if not is_int and feature.name in self._finite and not np.isfinite(numbers).all():
                return None
            # Where a cell is empty the value is ignored: the feature is an empty list, as to_example leaves it.
            full = np.zeros(len(mask), numbers.dtype)
            full[mask] = numbers
            features[feature.name] = (INT if is_int else FLOAT, full, mask)
        kept = [cells[index[k]].to_pylist() for k in self.keep]
        if not len(cells[0]):
            return Batch(kept, [])
        # float64 to float32 (the encoder's) rounds as a tf.train.FloatList does with a Python float.
        return Batch(kept, examples_bytes(features))

    def _row_by_row(self, chunk: Chunk):
        """Each record typed by to_example; rejected ones yielded as tagged outputs. Returns the good rows' Batch."""
        header = list(chunk.header)
        kept: list[list[str]] = [[] for _ in self.keep]
        examples = []
        reader = csv.reader(io.StringIO(chunk.data.decode("utf-8"), newline=""))
        while True:
            line = chunk.line + reader.line_num
            try:
                fields = next(reader)
            except StopIteration:
                return Batch(kept, examples)
            except csv.Error as err:
                # An unparseable record: reported as a row so the counts still add up.
                fields = [f"\0{err}"]
            if not fields:
                continue
            values, result = self._typed(header, fields)
            if isinstance(result, str):
                self._rejected += 1
                yield beam.pvalue.TaggedOutput(REJECTED, (chunk.file, line, result))
                continue
            examples.append(result)
            for column, name in zip(kept, self.keep, strict=True):
                column.append(values[name])

    def _typed(self, header: list[str], fields: list[str]) -> tuple[dict, bytes | str]:
        """(the row's values, its serialized tf.Example) or (values, why the row is rejected)."""
        from components.examples import to_example

        if len(fields) == 1 and fields[0].startswith("\0"):
            return {}, f"unparseable CSV: {fields[0][1:]}"
        if len(fields) != len(header):
            return {}, f"{len(fields)} fields where the header has {len(header)}"
        values = dict(zip(header, fields, strict=True))
        missing = sorted(f for f in self.target.required if values.get(f, "") == "")
        if missing:
            return values, f"feature '{missing[0]}': no value, and model '{self.target.model}' requires one"
        skip = {f.name for f in self.target.schema.feature} - self.target.features
        try:
            example = to_example(values, self.target.schema, skip=skip)
        except ValueError as err:
            return values, str(err)
        for name in self._finite & set(example.features.feature):
            if any(not math.isfinite(v) for v in example.features.feature[name].float_list.value):
                return values, f"feature '{name}': {values[name]!r} is NaN or infinite, which the schema forbids"
        return values, example.SerializeToString()
