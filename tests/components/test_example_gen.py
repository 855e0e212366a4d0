"""Conveyor's CsvExampleGen executor against TFX's own, both run for real on the same files: the
bundled taxi trips and awkward CSVs, compared example by example per split; where TFX cannot read
a file, both fail the same way; multi-processing and in-memory Beam give the same record counts."""

import bisect
import collections
import csv
import hashlib
import os
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen.csv_example_gen import executor as stock_executor
from tfx.components.statistics_gen import executor as statistics_executor
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from components import example_gen_csv, example_gen_encode
from components.example_gen import Executor
from components.examples import record_compression
from pipeline.runner import local_beam_args
from tests.conftest import sample_taxi_rows, write_csv

LONG = "y" * 100_000  # under Python csv's 131,072-character field limit, which TFX's reader has


class SmallRanges(Executor):
    """Ranges of a few hundred bytes, so range edges fall inside records and quoted line breaks."""

    chunk_bytes = 300


class SomeRanges(Executor):
    """About a dozen ranges of the 2,000 taxi trips: work for both of two workers."""

    chunk_bytes = 20_000


def _context(out: Path, mode: str) -> base_beam_executor.BaseBeamExecutor.Context:
    """The Beam arguments of a local run (this project's setup.py, so TFX builds no sdist of itself)."""
    workers = 2 if mode == "multi_processing" else 1
    args = local_beam_args((f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"))
    return base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=list(args), tmp_dir=str(out) + "-tmp")


def _run(executor_class, input_base: Path, out: Path, input_config=None, mode="in_memory"):
    """Runs one ExampleGen executor's Do as TFX runs it; returns its examples artifact."""
    input_config = input_config or example_gen_pb2.Input(
        splits=[example_gen_pb2.Input.Split(name="single_split", pattern="*")]
    )
    output_config = (
        example_gen_pb2.Output()
        if len(input_config.splits) > 1
        else example_gen_utils.make_default_output_config(input_config)
    )
    examples = standard_artifacts.Examples()
    examples.uri = str(out)
    exec_properties = {
        standard_component_specs.INPUT_BASE_KEY: str(input_base),
        standard_component_specs.INPUT_CONFIG_KEY: proto_utils.proto_to_json(input_config),
        standard_component_specs.OUTPUT_CONFIG_KEY: proto_utils.proto_to_json(output_config),
        standard_component_specs.OUTPUT_DATA_FORMAT_KEY: example_gen_pb2.FORMAT_TF_EXAMPLE,
    }
    executor_class(_context(out, mode)).Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties)
    return examples


def _records(examples) -> dict[str, list[bytes]]:
    """Each split's records as written."""
    out = {}
    for split in artifact_utils.decode_split_names(examples.split_names):
        uri = artifact_utils.get_split_uri([examples], split)
        files = sorted(str(p) for p in Path(uri).iterdir())
        dataset = tf.data.TFRecordDataset(files, compression_type=record_compression(files)).batch(4096)
        out[split] = [r for batch in dataset for r in batch.numpy()]
    return out


def _canonical(records: dict[str, list[bytes]]) -> dict[str, collections.Counter]:
    """Per split, the multiset of examples, each serialized deterministically (TFX writes map
    entries in an order that changes between runs)."""
    return {
        split: collections.Counter(tf.train.Example.FromString(r).SerializeToString(deterministic=True) for r in rs)
        for split, rs in records.items()
    }


def _compare(tmp_path: Path, input_base: Path, ours_class=SmallRanges, input_config=None):
    stock = _run(stock_executor.Executor, input_base, tmp_path / "stock", input_config)
    ours = _run(ours_class, input_base, tmp_path / "ours", input_config)
    stock_records, our_records = _records(stock), _records(ours)
    assert ours.split_names == stock.split_names
    assert {s: len(r) for s, r in our_records.items()} == {s: len(r) for s, r in stock_records.items()}
    assert _canonical(our_records) == _canonical(stock_records)
    # Ours are already deterministic bytes: the very bytes TFX hashed to choose each split.
    assert _canonical(our_records) == {s: collections.Counter(r) for s, r in our_records.items()}
    for key in ("payload_format", "file_format"):
        assert ours.get_string_custom_property(key) == stock.get_string_custom_property(key)
    return ours, our_records


def _features(record: bytes) -> dict:
    example = tf.train.Example.FromString(record)
    return {
        name: (f.WhichOneof("kind"), list(getattr(f, f.WhichOneof("kind")).value) if f.WhichOneof("kind") else [])
        for name, f in example.features.feature.items()
    }


@pytest.fixture(scope="module")
def taxi(tmp_path_factory):
    """2,000 bundled taxi trips, through both executors in-memory: ours with the default ranges."""
    root = tmp_path_factory.mktemp("taxi")
    header, rows = sample_taxi_rows(2000)
    write_csv(root / "data" / "data.csv", header, rows)
    ours, records = _compare(root, root / "data", ours_class=Executor)
    return root, ours, records


def test_taxi_matches_stock_example_by_example_and_split_by_split(taxi):
    _, ours, records = taxi
    assert artifact_utils.decode_split_names(ours.split_names) == ["train", "eval"]
    assert sum(map(len, records.values())) == 2000
    assert 0.28 < len(records["eval"]) / 2000 < 0.39
    first = _features(records["train"][0])
    assert first["fare"][0] == "float_list" and first["trip_start_hour"][0] == "int64_list"
    assert first["payment_type"][0] == "bytes_list"


def _spelling(rng: random.Random) -> str:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 20)))
    return rng.choice(
        [
            digits,
            "-" + digits,
            digits[:9] + "." + digits[9:],
            "." + digits,
            digits[:3] + rng.choice("eE") + rng.choice(["", "+", "-"]) + digits[-2:],
            rng.choice(["nan", "-inf", " 12", "+5", "1_000", "0x1F", "12 ", "abc", "1e400", "\u0663", "-", "--1"]),
        ]
    )


def test_types_and_values_are_tfx_bsls_on_every_spelling():
    """Each cell alone and columns of them, against tfx_bsl's `_InferValueType` and Python's
    `int`/`float` (as float32, what a FloatList keeps)."""
    rng = random.Random(5)
    cells = [_spelling(rng) for _ in range(3000)]
    infer = stock_executor.csv_decoder._InferValueType  # noqa: SLF001
    for cell in cells[:150]:
        assert example_gen_csv.column_type(pa.array([cell, ""])) == int(infer(cell.encode())), cell
    for kind, convert in ((example_gen_encode.INT, int), (example_gen_encode.FLOAT, float)):
        column = [c for c in cells if int(infer(c.encode())) <= kind]
        assert example_gen_csv.column_type(pa.array(column)) == kind
        for subset in (column, [c for c in column if c.strip("-").isdigit() or "." in c]):
            values, present = example_gen_csv.typed_values(pa.array(subset), kind)
            expected = np.array([convert(c.encode()) for c in subset])
            if kind == example_gen_encode.FLOAT:
                values, expected = values.astype(np.float32), expected.astype(np.float32)
            np.testing.assert_array_equal(values, expected)
            assert present.all()


def test_encoded_examples_are_protobufs_deterministic_bytes_and_split_as_tfx_splits():
    rng = random.Random(3)
    n = 500
    ints = [rng.choice([0, -1, 127, 128, 2**63 - 1, -(2**63), rng.randint(-(10**12), 10**12)]) for _ in range(n)]
    floats = [rng.choice([0.1, -3.5, 1e39, float("inf"), rng.random()]) for _ in range(n)]
    short = [rng.choice(["", "x", "Credit Card", "\u00e9"]) for _ in range(n)]
    wide = [rng.choice(["", "z" * 300]) for _ in range(n)]
    present = [rng.random() < 0.8 for _ in range(n)]
    features = {
        "i": (example_gen_encode.INT, np.array(ints), np.array(present)),
        "f": (example_gen_encode.FLOAT, np.array(floats), ~np.array(present)),
        "s": (example_gen_encode.STRING, pa.array(short), np.array([bool(v) for v in short])),
        "w": (example_gen_encode.STRING, pa.array(wide), np.array([bool(v) for v in wide])),
        "u": (example_gen_encode.UNKNOWN, None, np.zeros(n, bool)),
        "k" * 200: (example_gen_encode.INT, np.array(ints), np.array(present)),
    }
    encoded = example_gen_encode.examples_bytes(features)
    for i in range(n):
        feature = {
            "i": tf.train.Feature(int64_list=tf.train.Int64List(value=[ints[i]] if present[i] else [])),
            "k" * 200: tf.train.Feature(int64_list=tf.train.Int64List(value=[ints[i]] if present[i] else [])),
            "f": tf.train.Feature(float_list=tf.train.FloatList(value=[] if present[i] else [floats[i]])),
            "s": tf.train.Feature(bytes_list=tf.train.BytesList(value=[short[i].encode()] if short[i] else [])),
            "w": tf.train.Feature(bytes_list=tf.train.BytesList(value=[wide[i].encode()] if wide[i] else [])),
            "u": tf.train.Feature(),
        }
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        assert encoded[i] == example.SerializeToString(deterministic=True)
    for buckets in ([2, 3], [7, 9, 100_000]):
        expected = [bisect.bisect(buckets, int(hashlib.sha256(e).hexdigest(), 16) % buckets[-1]) for e in encoded]
        assert example_gen_encode.split_indices(encoded, buckets).tolist() == expected


def _write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


QUOTED = (
    b"id,text,num,mixed,nothing,flt,tail\n"
    b'1,"hello, world",3,7,,1.5,x\n'
    b'2,"line\nbreak",4,8,,2.5,y\r\n'
    b'3,"a ""quote"" inside",,abc,,,z\n'
    b'4,"multi\r\nline\r\n",-5,9,,-0.0,\n'
    b"\n"
    b'5,"",6,,,1e5,w\n'
    b'6,"x" trailing,7,1,,.5,v\n'
    b"7,\xc3\xa9 \xc3\xbcn\xc3\xafcode,8,2,,nan,u\n"
    b'8,"' + LONG.encode() + b'",9,3,,inf,t\n'
    b'9,"ends, without newline",10,4,,7,s'
)

PLAIN = (
    b"a,b,c,d,e,f,g\r\n"
    b"1,x,1.5,12,,9223372036854775807,p\r\n"
    b"-2,,2,+5,,1,\n"
    b"\r\n"
    b"3,n/a,1e400, 7,,92233720368547758070,q\n"
    b"\n"
    b"4,z,-0,1_000,,-1,\xe2\x82\xac\r\n"
    b"5," + LONG.encode() + b",007,0,,2,r\n"
    b"6,w,.25,-3,,3,s\n"
)


def test_awkward_csvs_match_stock_each_split_typed_on_its_own(tmp_path):
    """Quoted commas, quotes and line breaks (CRLF inside and outside quotes), a quote closed
    mid-field, a blank line, empty fields, a column with no value, 100,000-character fields, a
    numeric column with a stray string, Python-only number spellings (' 7', '+5', '1_000', nan,
    inf, 1e400), an integer past int64, non-ASCII text, no final newline; ranges of 300 bytes."""
    _write_bytes(tmp_path / "in" / "quoted" / "data.csv", QUOTED)
    _write_bytes(tmp_path / "in" / "plain" / "data.csv", PLAIN)
    splits = example_gen_pb2.Input(
        splits=[
            example_gen_pb2.Input.Split(name="quoted", pattern="quoted/*"),
            example_gen_pb2.Input.Split(name="plain", pattern="plain/*"),
        ]
    )
    _, records = _compare(tmp_path, tmp_path / "in", input_config=splits)
    quoted = {_features(r)["id"][1][0]: _features(r) for r in records["quoted"]}
    assert sorted(quoted) == list(range(1, 10))
    assert quoted[2]["text"] == ("bytes_list", [b"line\nbreak"])
    assert quoted[4]["text"] == ("bytes_list", [b"multi\r\nline\r\n"])
    assert quoted[6]["text"] == ("bytes_list", [b"x trailing"])
    assert quoted[3]["mixed"] == ("bytes_list", [b"abc"]) and quoted[3]["num"] == ("int64_list", [])
    assert quoted[1]["nothing"] == (None, [])
    assert quoted[8]["text"][1][0] == LONG.encode()
    plain = {_features(r)["a"][1][0]: _features(r) for r in records["plain"]}
    assert plain[3]["d"] == ("int64_list", [7]) and plain[4]["d"] == ("int64_list", [1000])
    assert plain[3]["c"] == ("float_list", [float("inf")]) and plain[1]["b"] == ("bytes_list", [b"x"])
    assert plain[1]["f"] == ("bytes_list", [b"9223372036854775807"])


def _stock_reads(path: Path) -> None:
    """TFX's own reading of one file, without Beam: its record splitter, then its CSV parser."""
    parser = stock_executor.csv_decoder.ParseCSVLine(delimiter=",")
    parser.setup()
    for record in stock_executor._ReadCsvRecordsFromTextFile().process(str(path)):  # noqa: SLF001
        cells = next(iter(parser.process(record)))[0]
        if cells and len(cells) != 2:
            raise ValueError(f"Invalid CSV line: {cells}")


@pytest.mark.parametrize(
    "data,message",
    [
        (b'a,b\n1,"open\n2,3\n', "unbalanced quotes"),
        (b"a,b\n1,2,3\n", "Invalid CSV"),
        (b"a,b\n1," + b"y" * 131_073 + b"\n", "field larger than field limit"),
        (b'a,b\n1,"' + b"y" * 131_073 + b'"\n', "field larger than field limit"),
    ],
    ids=["unbalanced-quote", "extra-cell", "long-field", "long-quoted-field"],
)
def test_what_stock_cannot_read_fails_here_too(tmp_path, data, message):
    # Python's csv field limit is one per process; other code in a test process (schema/check.py) raises
    # it. Both readers obey the same limit: the test pins Python's default for the long-field cases.
    previous = csv.field_size_limit(131_072)
    try:
        _stock_and_ours_refuse(tmp_path, data, message)
    finally:
        csv.field_size_limit(previous)


def _stock_and_ours_refuse(tmp_path, data, message):
    path = _write_bytes(tmp_path / "in" / "data.csv", data)
    with pytest.raises(Exception, match=message.split()[0]):
        _stock_reads(path)
    with pytest.raises(Exception, match=message):
        _run(SmallRanges, tmp_path / "in", tmp_path / "ours")


def _statistics_counts(examples, out: Path, mode: str) -> dict[str, int]:
    """TFX's StatisticsGen over the examples: the number of examples it saw per split."""
    statistics = standard_artifacts.ExampleStatistics()
    statistics.uri = str(out)
    statistics_executor.Executor(_context(out, mode)).Do(
        {standard_component_specs.EXAMPLES_KEY: [examples]},
        {standard_component_specs.STATISTICS_KEY: [statistics]},
        {standard_component_specs.EXCLUDE_SPLITS_KEY: "[]"},
    )
    counts = {}
    for split in artifact_utils.decode_split_names(examples.split_names):
        path = os.path.join(artifact_utils.get_split_uri([statistics], split), statistics_executor.DEFAULT_FILE_NAME)
        counts[split] = tfdv.load_stats_binary(path).datasets[0].num_examples
    return counts


def test_multi_processing_and_in_memory_runs_count_the_same_records(taxi, tmp_path):
    """tensorflow/data-validation#247: records silently dropped in multi-processing mode. The
    taxi fixture's in-memory ExampleGen against one with two worker processes and a dozen
    ranges (so both workers get some), then TFX's StatisticsGen with two worker processes over
    the latter, which must count every record written."""
    root, _, in_memory_records = taxi
    examples = _run(SomeRanges, root / "data", tmp_path / "examples", mode="multi_processing")
    records = _records(examples)
    assert _canonical(records) == _canonical(in_memory_records)
    counts = {s: len(r) for s, r in records.items()}
    assert sum(counts.values()) == 2000
    # StatisticsGen in-memory is left out: it would count the same files' records again, and
    # each Beam run here costs seconds.
    assert _statistics_counts(examples, tmp_path / "multi", "multi_processing") == counts
