"""CSV files cut into byte ranges, each parsed into columns and typed exactly as TFX's CsvExampleGen does.

TFX reads a file line by line after its header and closes a record at the first line end where
the count of `"` since the header is even; each record then goes through Python's `csv` module
(tfx_bsl's csv_decoder). A byte range can therefore find its first record from the parity of the
quotes before it, which the ranges count in parallel first (`count_quotes`); `read_records` then
returns the whole records that start inside the range.

Parsing takes pyarrow's CSV reader when a range holds no `"`, no NUL and no carriage return
outside a CRLF: there both readers split fields and records the same way. Otherwise each record
goes through tfx_bsl's own CSV record reader, as TFX does. Types and values follow tfx_bsl's
`_InferValueType`, `int` and `float`: common spellings are classified and converted by Arrow,
everything else by those Python functions themselves.
"""

from __future__ import annotations

import csv
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from tfx_bsl.coders import csv_decoder

from components.example_gen_encode import FLOAT, INT, STRING, UNKNOWN

# Spellings whose class and value Arrow computes as Python does: plain decimal integers short
# enough for int64, and decimals with a point or an exponent (never integers, for `int` rejects them).
_INT_RE = r"^-?[0-9]{1,18}$"
_FLOAT_RE = r"^-?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$|^-?[0-9]+[eE][-+]?[0-9]+$"
_TAIL_BYTES = 1 << 20


class Chunk(NamedTuple):
    """A byte range of one CSV file; `header_end` is where the file's records begin."""

    path: str
    index: int
    start: int
    end: int
    header_end: int
    whole_file: bool


class ParsedChunk(NamedTuple):
    """The cells of a range's records: one Arrow string array per CSV column."""

    columns: list[pa.Array]
    rows: int


def plan_chunks(paths: list[str], chunk_bytes: int) -> list[Chunk]:
    """Cuts each file into ranges of about `chunk_bytes`; a compressed file stays one range.

    Args:
        paths: the split's CSV files, in TFX's glob order.
        chunk_bytes: the target size of a range.

    Returns:
        The ranges, numbered across all files.
    """
    chunks = []
    for path in paths:
        with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
            header_end = len(f.readline())
        compressed = CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED
        size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
        if compressed or size <= header_end:
            chunks.append(Chunk(path, len(chunks), 0, size, header_end, True))
            continue
        starts = range(header_end, size, chunk_bytes)
        for start in starts:
            chunks.append(Chunk(path, len(chunks), start, min(start + chunk_bytes, size), header_end, False))
    return chunks


def count_quotes(chunk: Chunk) -> tuple[int, int]:
    """(chunk index, number of `"` in its range): the parity the following ranges start from."""
    if chunk.whole_file:
        return chunk.index, 0
    with FileSystems.open(chunk.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.seek(chunk.start)
        return chunk.index, f.read(chunk.end - chunk.start).count(b'"')


def _record_starts(data: bytes, odd_before: bool) -> np.ndarray:
    """Offsets in `data` just after each line end that closes a record."""
    arr = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(arr == ord("\n"))
    quotes = np.flatnonzero(arr == ord('"'))
    closing = (np.searchsorted(quotes, newlines) + odd_before) % 2 == 0
    return newlines[closing] + 1


def read_records(chunk: Chunk, quotes_before: int) -> bytes:
    """The bytes of the whole records that start in the chunk's range.

    Args:
        chunk: the range.
        quotes_before: the number of `"` between the file's header and the range.

    Returns:
        Those records, back to back, as in the file.

    Raises:
        ValueError: the file ends inside a quoted field, as TFX reports it.
    """
    if chunk.whole_file:
        with FileSystems.open(chunk.path, compression_type=CompressionTypes.AUTO) as f:
            f.readline()
            data = f.read()
        if data.count(b'"') % 2:
            raise ValueError(f"Csv record had unbalanced quotes. File: {chunk.path}")
        return data
    with FileSystems.open(chunk.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.seek(chunk.start - 1)
        previous = f.read(1)
        data = f.read(chunk.end - chunk.start)
        odd = bool(quotes_before % 2)
        owned = chunk.start == chunk.header_end or (previous == b"\n" and not odd)
        starts = _record_starts(data, odd)
        first = 0 if owned else (int(starts[0]) if len(starts) else len(data))
        if first >= len(data):
            return b""
        odd = odd != bool(data.count(b'"') % 2)
        while True:
            tail = f.read(_TAIL_BYTES)
            if not tail:
                if odd:
                    raise ValueError(f"Csv record had unbalanced quotes. File: {chunk.path}")
                return data[first:]
            tail_starts = _record_starts(tail, odd)
            if len(tail_starts):
                return data[first:] + tail[: int(tail_starts[0])]
            data += tail
            odd = odd != bool(tail.count(b'"') % 2)


def _fast_path(data: bytes) -> bool:
    """Whether pyarrow splits these bytes into the same records and fields as Python's csv does."""
    return b'"' not in data and b"\x00" not in data and data.count(b"\r") == data.count(b"\r\n")


def parse_records(data: bytes, width: int) -> ParsedChunk:
    """Splits whole CSV records into cells.

    Args:
        data: records as `read_records` returns them.
        width: the number of columns in the header.

    Returns:
        One Arrow string array per column; blank lines are skipped, as TFX skips them.

    Raises:
        ValueError: a record's cell count differs from the header's, or a field is longer than
            Python's csv module allows (`csv.field_size_limit()`), as TFX fails on both.
    """
    names = [f"c{i}" for i in range(width)]
    if not data.strip(b"\r\n"):
        return ParsedChunk([pa.array([], pa.string()) for _ in names], 0)
    if _fast_path(data):
        try:
            # A BufferReader, not a Python file: for a Python file pyarrow walks the garbage
            # collector's referrers of its frame, 75 ms in a process that has loaded TensorFlow.
            table = pv.read_csv(
                pa.BufferReader(data),
                read_options=pv.ReadOptions(column_names=names),
                parse_options=pv.ParseOptions(delimiter=",", quote_char=False, ignore_empty_lines=True),
                convert_options=pv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False
                ),
            )
        except pa.ArrowInvalid as e:
            raise ValueError(f"Invalid CSV: {str(e).splitlines()[0]}") from None
        columns = [table.column(i).combine_chunks() for i in range(width)]
        limit = csv.field_size_limit()
        for column in columns:
            if len(column) and pc.max(pc.utf8_length(column)).as_py() > limit:
                raise ValueError(f"field larger than field limit ({limit})")
        return ParsedChunk(columns, table.num_rows)
    reader = csv_decoder._CSVRecordReader(",")  # noqa: SLF001  (the record reader TFX itself uses)
    rows = []
    ends = _record_starts(data, False)
    bounds = zip(np.concatenate([[0], ends]), np.concatenate([ends, [len(data)]]), strict=True)
    for start, end in bounds:
        if start == end:
            continue
        try:
            cells = reader.ReadLine(data[start:end].decode("utf-8"))
        except csv.Error as e:
            raise ValueError(f"Invalid CSV record: {e}") from None
        if not cells:
            continue
        if len(cells) != width:
            raise ValueError(f"Invalid CSV line: {cells}")
        rows.append(cells)
    if not rows:
        return ParsedChunk([pa.array([], pa.string()) for _ in names], 0)
    columns = [pa.array(list(cells), pa.binary()).cast(pa.string()) for cells in zip(*rows, strict=True)]
    return ParsedChunk(columns, len(rows))


def column_type(column: pa.Array) -> int:
    """The type tfx_bsl's ColumnTypeInferrer gives these cells: the widest of their values' types.

    Args:
        column: one column's cells.

    Returns:
        UNKNOWN (no value), INT, FLOAT or STRING.
    """
    values = column.filter(pc.greater(pc.binary_length(column), 0))
    if not len(values):
        return UNKNOWN
    if _plain_ints(values):
        return INT
    # Some value is not a short plain integer: the column is FLOAT if every value has one of the
    # two spellings, and otherwise Python decides on the others.
    if pc.all(pc.match_substring_regex(values, f"{_INT_RE}|{_FLOAT_RE}")).as_py():
        return FLOAT
    values = pc.unique(values)
    is_int = pc.match_substring_regex(values, _INT_RE)
    rest = values.filter(pc.invert(is_int))
    is_float = pc.match_substring_regex(rest, _FLOAT_RE)
    kind = max(INT if pc.any(is_int).as_py() else UNKNOWN, FLOAT if pc.any(is_float).as_py() else UNKNOWN)
    for value in rest.filter(pc.invert(is_float)).to_pylist():
        kind = max(kind, int(csv_decoder._InferValueType(value.encode("utf-8"))))  # noqa: SLF001
        if kind == STRING:
            break
    return kind


def _plain_ints(values: pa.Array) -> bool:
    """Whether every cell is an optional minus and 1-18 ASCII digits (`_INT_RE`), which Arrow's
    int64 parse and Python's `int` read as the same integers. Checked without a regex, which
    costs as much as the rest of the typing, and without trying Arrow's parse, as a failed one
    raises, and each pyarrow exception walks the garbage collector's referrers (75 ms here)."""
    minus = pc.count_substring(values, "-")
    single = pc.or_(pc.equal(minus, 0), pc.and_(pc.equal(minus, 1), pc.starts_with(values, "-")))
    digits = pc.ascii_is_decimal(pc.replace_substring(values, "-", ""))
    short = pc.less_equal(pc.subtract(pc.binary_length(values), minus), 18)
    return bool(pc.all(pc.and_(pc.and_(single, digits), short)).as_py())


def typed_values(column: pa.Array, kind: int) -> tuple[pa.Array | np.ndarray | None, np.ndarray]:
    """One column's values as TFX converts them (`int`, `float`, bytes), and which cells hold one.

    Args:
        column: the cells.
        kind: the column's type over the whole split.

    Returns:
        (int64 or float64 numpy values, or the Arrow cells for STRING, or None for UNKNOWN; and a
        bool per cell: not empty).
    """
    present = pc.greater(pc.binary_length(column), 0).to_numpy(zero_copy_only=False)
    if kind in (UNKNOWN, STRING):
        return (None if kind == UNKNOWN else column), present
    filled = pc.if_else(pa.array(present), column, "0")
    if kind == INT and _plain_ints(filled):
        return pc.cast(filled, pa.int64()).to_numpy(zero_copy_only=False), present
    if kind == FLOAT and pc.all(pc.match_substring_regex(filled, f"{_INT_RE}|{_FLOAT_RE}")).as_py():
        return pc.cast(filled, pa.float64()).to_numpy(zero_copy_only=False), present
    convert, dtype = (int, np.int64) if kind == INT else (float, np.float64)
    return np.array([convert(s.encode("utf-8")) for s in filled.to_pylist()], dtype), present
