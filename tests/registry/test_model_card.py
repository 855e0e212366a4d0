"""The model card of a pushed version: decodable chart images, the record, and a real browser render."""

import base64
import html
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from registry.model_card import SAMPLE_SIZE, confusion, eval_sample, pr_curve, roc_curve, sample_sentence

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_curves_on_known_scores():
    labels = np.array([1, 1, 0, 1, 0, 0], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    _, _, auc = roc_curve(labels, scores)
    assert auc == pytest.approx(8 / 9)  # one negative outranks one positive: 8 of 9 pairs right
    recall, precision = pr_curve(labels, scores)
    assert recall[-1] == 1.0 and precision[0] == 1.0
    assert confusion(labels, scores).tolist() == [[2, 1], [0, 3]]


def _write_split(root: Path, records: list[bytes], files: int) -> str:
    import tensorflow as tf

    split = root / "Split-eval"
    split.mkdir(parents=True)
    for i in range(files):
        with tf.io.TFRecordWriter(str(split / f"data-{i:02d}.tfrecord")) as w:
            for record in records[i::files]:
                w.write(record)
    return str(root)


def test_the_card_sample_is_the_smallest_fingerprints_whatever_the_file_order(tmp_path):
    """The card's sample spans the whole split (not its first file), and is the same however the
    examples are spread over files: the `size` smallest FarmHash fingerprints, in that order."""
    import tensorflow as tf

    records = [
        tf.train.Example(
            features=tf.train.Features(feature={"x": tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))})
        ).SerializeToString()
        for i in range(200)
    ]
    fingerprints = tf.strings.to_hash_bucket_fast(records, 2**63 - 1).numpy().tolist()
    expected = [r for _, r in sorted(zip(fingerprints, records, strict=True))][:30]
    one, total = eval_sample(_write_split(tmp_path / "a", records, 1), size=30)
    spread, total_spread = eval_sample(_write_split(tmp_path / "b", records[::-1], 7), size=30)
    assert total == total_spread == 200
    assert one == spread == expected
    picked = {tf.train.Example.FromString(r).features.feature["x"].int64_list.value[0] for r in one}
    assert max(picked) > 100, "drawn from the whole split, not its start"
    everything, _ = eval_sample(_write_split(tmp_path / "c", records, 3), size=500)
    assert sorted(everything) == sorted(records)
    assert SAMPLE_SIZE == 5000


def test_the_card_states_what_its_sample_is():
    assert "a fixed sample of 5,000 of the 100,000 evaluation examples" in sample_sentence(5000, 5000, 100000)
    assert "all 300 evaluation examples, 290 of them with a label" in sample_sentence(290, 300, 300)


@pytest.fixture(scope="module")
def card(two_runs):
    first = two_runs[0]
    assert first.summary.card and first.summary.card.endswith("model_card.html"), first.summary.card
    return Path(first.summary.card)


@pytest.mark.e2e
def test_card_is_in_assets_extra_with_decodable_charts_and_the_record(card, two_runs, e2e_config):
    _, versions, _, _ = two_runs
    assert card.parent.name == "assets.extra" and card.parent.parent.name == str(versions[0])
    page = card.read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    titles = [t for t, _ in images]
    for expected in (
        "ROC curve",
        "Precision-recall curve",
        "Confusion matrix",
        "Calibration",
        "Permutation importance",
    ):
        assert expected in titles
    assert any(t.startswith("AUC by ") for t in titles), "per-slice bars"
    for _, data in images:
        picture = Image.open(io.BytesIO(base64.b64decode(data)))
        assert picture.format == "PNG" and picture.size[0] > 200 and picture.size[1] > 100
    assert "git commit: " in page and "thresholds (overall slice)" in page
    evaluated = int(re.search(r"computed on all ([\d,]+) evaluation examples", page).group(1).replace(",", ""))
    assert evaluated == _eval_records(e2e_config), "the fixture's split is smaller than the sample: all of it"
    assert "<script" not in page and "http://" not in page and "https://" not in page, "opens offline"
    markdown = (card.parent / "model_card.md").read_text()
    assert "## Permutation importance" in markdown and "](model_card_images/roc_curve.png)" in markdown
    assert (card.parent / "model_card_images" / "roc_curve.png").is_file()


def _eval_records(config) -> int:
    """Examples in the first run's evaluation split, counted through TensorFlow's reader."""
    import tensorflow as tf

    from registry.lineage import open_store, pipeline_runs, run_executions

    store = open_store(config.output.store)
    run = pipeline_runs(store, config.name)[0]
    uri = run_executions(store, run, config.name)["CsvExampleGen"].output("examples").uri
    from components.examples import record_compression

    files = tf.io.gfile.glob(f"{uri}/Split-eval/*")
    return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type=record_compression(files)))


@pytest.mark.e2e
def test_the_pipeline_writes_the_card_and_records_its_provenance_in_ml_metadata(card, two_runs, e2e_config):
    """ModelCardGen, a pipeline component, wrote the card (not the runner after the run); the record in
    the card is the one `conveyor models show` prints from ML Metadata, and so is the provenance."""
    from registry.lineage import open_store, pipeline_runs, run_executions
    from registry.record import describe
    from registry.versions import versions

    first, pushed, second, _ = two_runs
    store = open_store(e2e_config.output.store)
    run = pipeline_runs(store, e2e_config.name)[0]
    card_gen = run_executions(store, run, e2e_config.name)["ModelCardGen"]
    assert card_gen.state == "complete"
    artifact = card_gen.output("model_card")
    assert artifact.custom_properties["card_html"].string_value == str(card)
    assert (Path(artifact.uri) / "model_card.html").read_bytes() == card.read_bytes()
    (record,) = [r for r in versions(e2e_config.output.store, e2e_config.name, e2e_config.serving_model_dir)]
    assert record.provenance["started_by"].endswith("(conveyor run)") and record.provenance["git_commit"]
    shown = describe(record, e2e_config.model_name)
    assert "  started by: " + record.provenance["started_by"] in shown
    # The card's record is the same, less what only ML Metadata knows (run id, push time, component times).
    in_card = card.read_text().split("<h2>Record</h2>")[1]
    only_metadata = ("  pushed at:", "  run:", "  components (", "    ", "  pipeline run:")
    for line in shown:
        if not line.startswith(only_metadata) or line.startswith(("    feature", "    label", "    train steps")):
            assert html.escape(line) in in_card, line
    # The cached re-run pushed nothing and wrote no card: its ModelCardGen came from the cache.
    assert second.summary.card is None and "ModelCardGen" in second.summary.cached


@pytest.mark.e2e
def test_card_renders_in_headless_chromium(card, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: `apt-get install chromium` (.ci/run installs it)")
    shot = tmp_path / "model_card.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1280,1800",
            f"--screenshot={shot}",
            card.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    picture = np.asarray(Image.open(shot).convert("L"))
    assert picture.shape == (1800, 1280)
    # A rendered page with charts: far from blank, with dark text and plot lines on light paper.
    assert picture.std() > 20 and (picture < 100).mean() > 0.005
    kept = Path(card.parent.parent.parent.parent.parent / "model_card_screenshot.png")
    shutil.copy(shot, kept)


@pytest.mark.e2e
def test_a_card_regenerated_from_another_config_still_describes_the_model_as_trained(two_runs, e2e_config, capsys):
    """`conveyor models card` with the full taxi config: the model was trained on five features
    (recorded in ML Metadata), and the card must say so, not list the config file's features."""
    from cli.main import main
    from tests.conftest import SMALL_FEATURES

    _, versions, _, _ = two_runs
    output_dir = str(Path(e2e_config.output.metadata_path).parent)
    assert main(["models", "card", str(versions[0]), "--config", e2e_config.source, "--output-dir", output_dir]) == 0
    html_path = Path(capsys.readouterr().out.split("model card: ", 1)[1].split("\n", 1)[0])
    rows = re.findall(r"<tr><td>([^<]+)</td><td>[-+]\d", html_path.read_text())
    assert rows and set(rows) <= {f.name for f in SMALL_FEATURES}, rows


def test_slices_with_numeric_values_are_drawn_in_numeric_order():
    from registry.model_card import _slice_metric

    by_slice = {
        "Overall": {"auc": {"candidate": 0.8}},
        "trip_start_hour:10": {"auc": {"candidate": 0.7}},
        "trip_start_hour:2": {"auc": {"candidate": 0.6}},
        "trip_start_hour:23": {"auc": {"candidate": 0.9}},
        "payment_type:Credit Card": {"auc": {"candidate": 0.5}},
        "payment_type:Cash": {"auc": {"candidate": 0.4}},
    }
    slices = _slice_metric(by_slice, "auc")
    assert list(slices["trip_start_hour"]) == ["2", "10", "23"]
    assert list(slices["payment_type"]) == ["Cash", "Credit Card"]


def test_shuffled_examples_are_the_examples_with_one_feature_swapped():
    """Permutation importance builds shuffled examples from serialized pieces; they must parse to
    exactly what editing the tf.Example protos would give, long values and missing ones included."""
    import tensorflow as tf

    from registry.model_card import _example, _feature_entries

    def example(**features):
        out = tf.train.Example()
        for name, value in features.items():
            feature = out.features.feature[name]
            if isinstance(value, bytes):
                feature.bytes_list.value.append(value)
            elif isinstance(value, float):
                feature.float_list.value.append(value)
            else:
                feature.int64_list.value.extend(value)
        return out

    own = example(company=b"x" * 300, fare=12.5, hours=list(range(100)))
    donor = example(company=b"Flash Cab", hours=[3])
    entries, donor_entries = _feature_entries(own.SerializeToString()), _feature_entries(donor.SerializeToString())
    assert tf.train.Example.FromString(_example(entries.values())) == own

    for name in ("company", "fare", "hours"):
        expected = tf.train.Example()
        expected.CopyFrom(own)
        if name in donor.features.feature:
            expected.features.feature[name].CopyFrom(donor.features.feature[name])
        else:
            del expected.features.feature[name]
        pieces = [v for k, v in entries.items() if k != name] + [donor_entries.get(name, b"")]
        assert tf.train.Example.FromString(_example(pieces)) == expected


@pytest.mark.e2e
def test_a_resolver_that_found_nothing_is_not_called_failed(card):
    page = card.read_text()
    line = next(line for line in page.splitlines() if "previous_statistics_resolver" in line)
    assert "nothing to compare with: first span" in line and "failed" not in line


def test_slices_with_one_class_are_named_undefined_and_every_slice_has_its_count():
    import tensorflow as tf

    from registry.model_card import Scored, _slice_counts, charts, one_class_slices

    def example(payment, hour):
        features = {
            "payment_type": tf.train.Feature(bytes_list=tf.train.BytesList(value=[payment.encode()])),
            "trip_start_hour": tf.train.Feature(int64_list=tf.train.Int64List(value=[hour])),
        }
        return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()

    records = [example("Cash", 1), example("Cash", 2), example("Credit Card", 1), example("Credit Card", 2)]
    labels = np.array([0.0, 0.0, 1.0, 0.0])
    undefined = one_class_slices(records, labels, ["payment_type", "trip_start_hour"])
    one_class = "undefined: one class only"
    assert undefined == {"payment_type": {"Cash": one_class}, "trip_start_hour": {"2": one_class}}
    by_slice = {
        "Overall": {"example_count": {"candidate": 4.0}, "auc": {"candidate": 0.7}},
        "payment_type:Cash": {"example_count": {"candidate": 2.0}, "auc": {"candidate": 0.0}},
        "payment_type:Credit Card": {"example_count": {"candidate": 2.0}, "auc": {"candidate": float("nan")}},
    }
    assert _slice_counts(by_slice) == {"payment_type": {"Cash": 2, "Credit Card": 2}}
    slices = {"payment_type": {"Cash": 0.0, "Credit Card": float("nan")}}
    scored = Scored(labels, np.array([0.1, 0.2, 0.9, 0.3]))
    images = charts(scored, slices, {"auc": 0.5}, {}, "binary", ("0", "1"), _slice_counts(by_slice), undefined)
    picture = Image.open(io.BytesIO(images["AUC by payment_type"]))
    assert picture.format == "PNG"
