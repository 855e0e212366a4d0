"""Typed CSV columns to serialized tf.Examples, whole columns at a time, and the split each goes to.

The bytes are the deterministic serialization of the tf.Example that TFX's CsvExampleGen builds
for the same row (features in name order; a missing value is an empty list of the column's type,
and a column with no value anywhere is a `tf.train.Feature()` with no kind). Those are also the
bytes TFX hashes to choose a row's split, so one encoding serves both. tfx_bsl's
RecordBatchToExamplesEncoder builds the same messages, but serializes them in its hash map's
order, which differs from message to message, so its bytes could not be hashed to TFX's splits.

The encoding is written out by hand over numpy arrays: the protobuf wire bytes of each column's
map entries (key, length-delimited Feature), laid side by side for all rows at once.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# The column types of tfx_bsl's csv_decoder.ColumnType, whose order is the inference's order.
UNKNOWN, INT, FLOAT, STRING = -1, 0, 1, 2


# String columns with a longer value are encoded in Python: the side-by-side layout below pads
# every row to the column's longest value.
_WIDE = 256
_VARINT_STEPS = np.array([1 << (7 * k) for k in range(1, 10)], np.uint64)


def _varint_lengths(values: np.ndarray) -> np.ndarray:
    """Bytes each unsigned value takes as a protobuf varint."""
    return np.searchsorted(_VARINT_STEPS, values.astype(np.uint64, copy=False), side="right") + 1


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | 0x80 if value else low)
        if not value:
            return bytes(out)


class _Rows:
    """Pieces of bytes for every row, laid side by side in one matrix with a validity mask: a row's
    bytes are the valid bytes of its pieces, in order. A row that lacks a piece (a missing value's
    other form) masks it out, so no row-by-row work is needed to concatenate."""

    def __init__(self, rows: int):
        self.rows = rows
        self.parts: list[tuple[np.ndarray, np.ndarray | None]] = []

    def const(self, data: bytes, where: np.ndarray | None = None) -> None:
        self.parts.append((np.frombuffer(data, np.uint8), where))

    def varint(self, values: np.ndarray, where: np.ndarray | None = None) -> None:
        """Each value as a protobuf varint (negative int64 as their 10-byte two's complement)."""
        values = np.ascontiguousarray(values).astype(np.int64, copy=False).view(np.uint64)
        lengths = _varint_lengths(values)
        width = int(lengths.max(initial=1))
        matrix = np.empty((self.rows, width), np.uint8)
        for k in range(width):
            low = ((values >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
            matrix[:, k] = low | ((lengths > k + 1).astype(np.uint8) << 7)
        valid = np.arange(width) < lengths[:, None]
        self.parts.append((matrix, valid if where is None else valid & where[:, None]))

    def strings(self, values: pa.Array, lengths: np.ndarray, where: np.ndarray) -> None:
        values = values.cast(pa.large_binary())
        width = int(lengths.max(initial=0))
        if not width:
            return
        offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset : values.offset + self.rows]
        data = np.frombuffer(values.buffers()[2], np.uint8)
        index = np.minimum(offsets[:, None] + np.arange(width), len(data) - 1)
        self.parts.append((data[index], (np.arange(width) < lengths[:, None]) & where[:, None]))

    def extend(self, other: _Rows) -> None:
        self.parts.extend(other.parts)

    def build(self) -> list[bytes]:
        width = sum(matrix.shape[-1] for matrix, _ in self.parts)
        # A few thousand rows at a time, so the block's matrix stays in cache while every piece
        # is written into it (a piece is a narrow column of a wide matrix).
        block = max(1, (2 << 20) // max(width, 1))
        matrix = np.empty((block, width), np.uint8)
        valid = np.empty((block, width), bool)
        out: list[bytes] = []
        for first in range(0, self.rows, block):
            n = min(block, self.rows - first)
            col = 0
            for part, where in self.parts:
                w = part.shape[-1]
                matrix[:n, col : col + w] = part if part.ndim == 1 else part[first : first + n]
                if where is None:
                    valid[:n, col : col + w] = True
                else:
                    rows = where[first : first + n]
                    valid[:n, col : col + w] = rows if rows.ndim == 2 else rows[:, None]
                col += w
            data = matrix[:n][valid[:n]].tobytes()
            ends = np.cumsum(valid[:n].sum(axis=1)).tolist()
            out.extend([data[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)])
        return out


def _is_wide(kind: int, values) -> bool:
    return kind == STRING and len(values) and pc.max(pc.binary_length(values)).as_py() > _WIDE


def _feature(kind: int, values, present: np.ndarray) -> tuple[_Rows, np.ndarray]:
    """One column's serialized tf.train.Feature per row, and its length."""
    rows = _Rows(len(present))
    absent = ~present
    if kind == UNKNOWN:
        return rows, np.zeros(len(present), np.int64)
    if kind == INT:
        ints = np.where(present, values, 0).astype(np.int64)
        lengths = _varint_lengths(ints.view(np.uint64))
        # Feature.int64_list (field 3) > Int64List.value (field 1, packed); both lengths fit one byte.
        rows.const(b"\x1a", present)
        rows.varint(lengths + 2, present)
        rows.const(b"\x0a", present)
        rows.varint(lengths, present)
        rows.varint(ints, present)
        rows.const(b"\x1a\x00", absent)
        return rows, np.where(present, 4 + lengths, 2)
    if kind == FLOAT:
        floats = np.where(present, values, 0).astype("<f4")
        # Feature.float_list (field 2) > FloatList.value (field 1, packed): 4 bytes per value.
        rows.const(b"\x12\x06\x0a\x04", present)
        rows.parts.append((floats.view(np.uint8).reshape(len(floats), 4), present))
        rows.const(b"\x12\x00", absent)
        return rows, np.where(present, 8, 2)
    lengths = pc.binary_length(values).to_numpy(zero_copy_only=False).astype(np.int64)
    inner = 1 + _varint_lengths(lengths) + lengths
    # Feature.bytes_list (field 1) > BytesList.value (field 1).
    rows.const(b"\x0a", present)
    rows.varint(inner, present)
    rows.const(b"\x0a", present)
    rows.varint(lengths, present)
    rows.strings(values, lengths, present)
    rows.const(b"\x0a\x00", absent)
    return rows, np.where(present, 1 + _varint_lengths(inner) + inner, 2)


def _wide_entries(head: bytes, values: pa.Array, present: np.ndarray) -> list[bytes]:
    """A wide string column's map entries, built row by row."""
    entries = []
    for value, has in zip(values.cast(pa.large_binary()).to_pylist(), present.tolist(), strict=True):
        if has:
            inner = b"\x0a" + _varint_bytes(len(value)) + value
            feature = b"\x0a" + _varint_bytes(len(inner)) + inner
        else:
            feature = b"\x0a\x00"
        body = head + _varint_bytes(len(feature)) + feature
        entries.append(b"\x0a" + _varint_bytes(len(body)) + body)
    return entries


def feature_bytes(kind: int, values, present: np.ndarray) -> list[bytes]:
    """Each row's serialized tf.train.Feature for one column.

    Args:
        kind: INT, FLOAT, STRING or UNKNOWN (no value in the whole split).
        values: int64 or float numpy values, or an Arrow string array; ignored where not present
            and for UNKNOWN.
        present: bool per row: the CSV cell was not empty.

    Returns:
        The Feature's wire bytes per row.
    """
    if kind == UNKNOWN:
        return [b""] * len(present)
    return _feature(kind, values, present)[0].build()


def examples_bytes(features: dict[str, tuple]) -> list[bytes]:
    """Serialized tf.Examples, row by row.

    Args:
        features: feature name to (kind, values, present) as `feature_bytes` takes them.

    Returns:
        The deterministic serialization of each row's tf.Example (map entries sorted by name).
    """
    rows = len(next(iter(features.values()))[2])
    segments: list = [_Rows(rows)]
    total = np.zeros(rows, np.int64)
    for name in sorted(features, key=lambda n: n.encode("utf-8")):
        kind, values, present = features[name]
        key = name.encode("utf-8")
        # Map entry: key (field 1), value (field 2, the Feature).
        head = b"\x0a" + _varint_bytes(len(key)) + key + b"\x12"
        if _is_wide(kind, values):
            segments.append(_wide_entries(head, values, present))
            total += [len(e) for e in segments[-1]]
            segments.append(_Rows(rows))
            continue
        feature, lengths = _feature(kind, values, present)
        entry = len(head) + _varint_lengths(lengths) + lengths
        segment = segments[-1]
        segment.const(b"\x0a")
        segment.varint(entry)
        segment.const(head)
        segment.varint(lengths)
        segment.extend(feature)
        total += 1 + _varint_lengths(entry) + entry
    # Example.features (field 1) > Features.feature (field 1, repeated map entries).
    prefix = _Rows(rows)
    prefix.const(b"\x0a")
    prefix.varint(total)
    segments[0].parts[:0] = prefix.parts
    built = [s.build() if isinstance(s, _Rows) else s for s in segments if not isinstance(s, _Rows) or s.parts]
    if len(built) == 1:
        return built[0]
    return [b"".join(parts) for parts in zip(*built, strict=True)]


def split_indices(keys: list[bytes], buckets: list[int]) -> np.ndarray:
    """The output split of each row, as TFX's ExampleGen picks it: sha256 of the key, taken as a
    big-endian integer modulo the total of the hash buckets, placed by the cumulative buckets.

    Args:
        keys: the bytes TFX hashes per row (the serialized example, or the partition feature).
        buckets: cumulative hash buckets per output split, as TFX builds them.

    Returns:
        The split's index per row.
    """
    total = buckets[-1]
    sha256 = hashlib.sha256
    digests = b"".join([sha256(k).digest() for k in keys])
    words = np.frombuffer(digests, ">u8").reshape(-1, 4).astype(np.uint64)
    if total < 1 << 16:
        # Horner over the four 64-bit words; every product stays below 2**32.
        step, bucket = np.uint64((1 << 64) % total), np.zeros(len(words), np.uint64)
        for i in range(4):
            bucket = (bucket * step + words[:, i] % np.uint64(total)) % np.uint64(total)
    else:
        bucket = np.array([int.from_bytes(digests[32 * i : 32 * i + 32], "big") % total for i in range(len(words))])
    return np.searchsorted(np.asarray(buckets), bucket.astype(np.int64), side="right")
