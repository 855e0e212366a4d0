"""Conveyor's CsvExampleGen executor against TFX's own, both run for real on the same files: the
bundled taxi trips and awkward CSVs, compared example by example per split; where TFX cannot read
a file, both fail the same way; multi-processing and in-memory Beam give the same record counts."""

import collections
import os
from pathlib import Path

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

from components.example_gen import Executor
from components.examples import record_compression
from tests.conftest import sample_taxi_rows, write_csv

LONG = "y" * 100_000  # under Python csv's 131,072-character field limit, which TFX's reader has


class SmallRanges(Executor):
    """Ranges of a few hundred bytes, so range edges fall inside records and quoted line breaks."""

    chunk_bytes = 300


class SomeRanges(Executor):
    """About a dozen ranges of the 2,000 taxi trips: work for both of two workers."""

    chunk_bytes = 20_000


def _run(executor_class, input_base: Path, out: Path, input_config=None, beam_args=()):
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
    context = base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=list(beam_args), tmp_dir=str(out) + "-tmp")
    executor_class(context).Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties)
    return examples


def _records(examples) -> dict[str, list[bytes]]:
    """Each split's records as written."""
    out = {}
    for split in artifact_utils.decode_split_names(examples.split_names):
        uri = artifact_utils.get_split_uri([examples], split)
        files = sorted(str(p) for p in Path(uri).iterdir() if not p.name.startswith("."))
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
    path = _write_bytes(tmp_path / "in" / "data.csv", data)
    with pytest.raises(Exception, match=message.split()[0]):
        _stock_reads(path)
    with pytest.raises(Exception, match=message):
        _run(SmallRanges, tmp_path / "in", tmp_path / "ours")


def _statistics_counts(examples, out: Path, beam_args) -> dict[str, int]:
    statistics = standard_artifacts.ExampleStatistics()
    statistics.uri = str(out)
    context = base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=list(beam_args), tmp_dir=str(out) + "-tmp")
    statistics_executor.Executor(context).Do(
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
    """tensorflow/data-validation#247: records silently dropped in multi-processing mode. Here
    ExampleGen (in a dozen ranges, so both workers get some) and StatisticsGen run once
    in-memory and once with two worker processes."""
    root, _, _ = taxi
    counts = {}
    for mode in ("in_memory", "multi_processing"):
        args = [f"--direct_running_mode={mode}", "--direct_num_workers=2"]
        examples = _run(SomeRanges, root / "data", tmp_path / mode / "examples", beam_args=args)
        records = _records(examples)
        counts[mode] = (
            {s: len(r) for s, r in records.items()},
            _statistics_counts(examples, tmp_path / mode / "statistics", args),
            _canonical(records),
        )
    assert counts["in_memory"] == counts["multi_processing"]
    assert counts["in_memory"][0] == counts["in_memory"][1]
    assert sum(counts["in_memory"][0].values()) == 2000
