"""Model cards: one self-contained HTML page (and Markdown) per pushed version, in its assets.extra/.

The card holds the version's full record (registry.record), the evaluation charts by task
(binary: ROC and precision-recall curves, the confusion matrix at the decision threshold, a
calibration plot; multiclass: the confusion matrix; regression: predicted versus actual and the
residuals), per-slice bars of the headline metric with the threshold drawn in, and permutation
feature importance on the evaluation split. Charts are static PNGs (matplotlib) embedded in the
HTML, so it opens offline. TF Serving ignores assets.extra/, so writing the card never touches what it serves.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

CARD_DIR = "assets.extra"
HTML_NAME = "model_card.html"
MD_NAME = "model_card.md"
DECISION_THRESHOLD = 0.5
SAMPLE_SIZE = 5000  # evaluation examples behind the charts and permutation importance
TOP_FEATURES = 10


@dataclass
class Scored:
    labels: np.ndarray
    scores: np.ndarray


def eval_sample(examples_uri: str, size: int = SAMPLE_SIZE) -> tuple[list[bytes], int]:
    """(a fixed sample of at most `size` evaluation examples, how many the evaluation split holds).

    The sample is the `size` examples of smallest 64-bit fingerprint (TensorFlow's FarmHash of the
    serialized example), in fingerprint order: a uniform sample over the whole split that is the
    same whatever order the files are read in, and the same for every version trained on the same
    data, so cards compare. The first examples of the split would come from the start of the data
    only (ExampleGen writes each range of a file to its own files).
    """
    import tensorflow as tf

    from components.examples import record_compression

    files = sorted(tf.io.gfile.glob(os.path.join(examples_uri, "Split-eval", "*")))
    kept: list[tuple[int, bytes]] = []  # (fingerprint, record), the `size` smallest so far
    total = 0
    for batch in tf.data.TFRecordDataset(files, compression_type=record_compression(files)).batch(16384):
        total += int(batch.shape[0])
        hashes = tf.strings.to_hash_bucket_fast(batch, 2**63 - 1)
        if len(kept) >= size:  # only what could enter the sample leaves TensorFlow
            below = hashes < kept[-1][0]
            batch, hashes = tf.boolean_mask(batch, below), tf.boolean_mask(hashes, below)
        kept = sorted(kept + list(zip(hashes.numpy().tolist(), batch.numpy().tolist(), strict=True)))[:size]
    return [record for _, record in kept], total


def sample_sentence(labelled: int, sampled: int, total: int) -> str:
    """What the card's charts and permutation importance were computed on, in the card's words."""
    if sampled < total:
        where = f"a fixed sample of {sampled:,} of the {total:,} evaluation examples"
        where += " (the same for every version on the same data)"
    else:
        where = f"all {total:,} evaluation examples"
    if labelled < sampled:
        where += f", {labelled:,} of them with a label"
    return (
        f"The curves, the headline figure and permutation importance are computed on {where}; "
        "the metrics by slice are TFMA's, on the whole evaluation split."
    )


def _labels(model, records: list[bytes], label: str, task: str = "binary") -> np.ndarray:
    """The transformed label per example (class index, or the value for regression), computed by
    the model's own transform_features signature; NaN where an example has no usable label."""
    import tensorflow as tf

    from components.features import TRANSFORM_SIGNATURE, transformed_label

    transform = model.signatures[TRANSFORM_SIGNATURE]
    out = []
    for start in range(0, len(records), 1024):
        batch = tf.constant(records[start : start + 1024])
        out.append(transform(examples=batch)[transformed_label(label)].numpy().reshape(-1).astype(float))
    labels = np.concatenate(out) if out else np.array([])
    present = np.array([label in tf.train.Example.FromString(r).features.feature for r in records], dtype=bool)
    keep = present if task == "regression" else present & (labels >= 0)
    return np.where(keep, labels, np.nan)


def _score(serve, records: list[bytes], task: str = "binary") -> np.ndarray:
    """binary: P(positive) per example; multiclass: [N, K] class probabilities; regression: values."""
    import tensorflow as tf

    from components.features import PREDICTION_KEY

    scores = []
    for start in range(0, len(records), 1024):
        batch = tf.constant(records[start : start + 1024])
        value = serve(examples=batch)[PREDICTION_KEY[task]].numpy()
        scores.append(value if task == "multiclass" else value.reshape(-1))
    return np.concatenate(scores) if scores else np.array([])


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False and true positive rates over every threshold, and the area under the curve."""
    order = np.argsort(-scores, kind="mergesort")
    y = labels[order]
    tps = np.concatenate([[0], np.cumsum(y)])
    fps = np.concatenate([[0], np.cumsum(1 - y)])
    tpr = tps / max(tps[-1], 1)
    fpr = fps / max(fps[-1], 1)
    return fpr, tpr, float(np.trapz(tpr, fpr))


def pr_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="mergesort")
    y = labels[order]
    tps = np.cumsum(y)
    predicted = np.arange(1, len(y) + 1)
    return tps / max(y.sum(), 1), tps / predicted


def confusion(labels: np.ndarray, scores: np.ndarray, threshold: float = DECISION_THRESHOLD) -> np.ndarray:
    """[[TN, FP], [FN, TP]] at the decision threshold."""
    predicted = (scores >= threshold).astype(int)
    actual = labels.astype(int)
    return np.array([[np.sum((actual == a) & (predicted == p)) for p in (0, 1)] for a in (0, 1)])


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == labels.astype(int))) if len(labels) else float("nan")


def rmse(labels: np.ndarray, values: np.ndarray) -> float:
    return float(np.sqrt(np.mean((values - labels) ** 2))) if len(labels) else float("nan")


@dataclass(frozen=True)
class Headline:
    """The one number a card leads with, per task, and how permutation importance reads it."""

    name: str
    tfma_name: str
    higher_is_better: bool

    def score(self, labels: np.ndarray, predictions: np.ndarray) -> float:
        if self.name == "AUC":
            return roc_curve(labels, predictions)[2]
        if self.name == "accuracy":
            return accuracy(labels, predictions)
        return rmse(labels, predictions)

    def loss(self, base: float, shuffled: float) -> float:
        """How much worse shuffling made it (positive = the feature matters)."""
        return base - shuffled if self.higher_is_better else shuffled - base


HEADLINES = {
    "binary": Headline("AUC", "auc", True),
    "multiclass": Headline("accuracy", "sparse_categorical_accuracy", True),
    "regression": Headline("RMSE", "root_mean_squared_error", False),
}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _feature_entries(record: bytes) -> dict[str, bytes]:
    """An example's features, each serialized on its own as a one-entry `Features` message.

    Protocol buffers merge concatenated messages, so joining any choice of these entries gives the
    serialized `Features` of an example with exactly those features.
    """
    import tensorflow as tf

    features = tf.train.Example.FromString(record).features.feature
    return {name: tf.train.Features(feature={name: value}).SerializeToString() for name, value in features.items()}


def _example(entries) -> bytes:
    """A serialized tf.Example from `_feature_entries` pieces (field 1: its `Features`)."""
    body = b"".join(entries)
    return b"\x0a" + _varint(len(body)) + body


def permutation_importance(
    serve, records: list[bytes], labels: np.ndarray, features: list[str], task: str = "binary", seed: int = 0
):
    """How much the headline metric worsens when one feature's values are shuffled across the
    evaluation examples, per feature, most important first.

    Shuffled examples are put together from each example's serialized features: the same examples
    as copying and editing each tf.Example, without a protobuf copy per example and feature (that
    took 2-3 s of each card for the taxi model).
    """
    headline = HEADLINES[task]
    base = headline.score(labels, _score(serve, records, task))
    entries = [_feature_entries(r) for r in records]
    rng = np.random.default_rng(seed)
    drops = {}
    for name in features:
        permutation = rng.permutation(len(entries))
        shuffled = [
            _example([v for k, v in own.items() if k != name] + [entries[donor].get(name, b"")])
            for own, donor in zip(entries, permutation, strict=True)
        ]
        drops[name] = headline.loss(base, headline.score(labels, _score(serve, shuffled, task)))
    return base, dict(sorted(drops.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------------------------------------
# Charts


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _matrix_chart(matrix: np.ndarray, names: list[str], title: str) -> bytes:
    import matplotlib.pyplot as plt

    size = max(3.4, 0.6 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 0.4, size))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{v:,}", ha="center", va="center", color="black")
    ticks = list(range(len(names)))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=names, yticklabels=names, xlabel="predicted", ylabel="actual")
    ax.set_title(title)
    return _png(fig)


def _binary_charts(labels: np.ndarray, scores: np.ndarray, classes: tuple[str, ...]) -> dict[str, bytes]:
    import matplotlib.pyplot as plt

    out = {}
    fpr, tpr, auc = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(fpr, tpr, label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    ax.legend(loc="lower right")
    out["ROC curve"] = _png(fig)

    recall, precision = pr_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot(recall, precision)
    ax.axhline(labels.mean(), linestyle="--", color="grey", linewidth=1, label=f"base rate {labels.mean():.2f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    out["Precision-recall curve"] = _png(fig)

    out["Confusion matrix"] = _matrix_chart(
        confusion(labels, scores), list(classes), f"Confusion matrix at {DECISION_THRESHOLD}"
    )

    bins = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(scores, bins) - 1, 0, 9)
    mean_score = [scores[which == b].mean() if np.any(which == b) else np.nan for b in range(10)]
    positive_rate = [labels[which == b].mean() if np.any(which == b) else np.nan for b in range(10)]
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax.plot(mean_score, positive_rate, "o-")
    ax.set(xlabel="mean predicted probability", ylabel="observed positive rate", title="Calibration")
    out["Calibration"] = _png(fig)
    return out


def _multiclass_charts(labels: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...]) -> dict[str, bytes]:
    k = len(classes)
    predicted = np.argmax(probabilities, axis=1)
    actual = labels.astype(int)
    matrix = np.array([[np.sum((actual == a) & (predicted == p)) for p in range(k)] for a in range(k)])
    return {"Confusion matrix": _matrix_chart(matrix, list(classes), "Confusion matrix (most probable class)")}


def _regression_charts(labels: np.ndarray, values: np.ndarray) -> dict[str, bytes]:
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.scatter(labels, values, s=8, alpha=0.5)
    low, high = float(np.min([labels.min(), values.min()])), float(np.max([labels.max(), values.max()]))
    ax.plot([low, high], [low, high], "--", color="grey", linewidth=1)
    ax.set(xlabel="actual", ylabel="predicted", title="Predicted versus actual")
    out["Predicted versus actual"] = _png(fig)

    residuals = values - labels
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.hist(residuals, bins=30, color="#4a7fb5")
    ax.axvline(0, color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel="predicted - actual", ylabel="examples", title=f"Residuals (RMSE {rmse(labels, values):.4g})")
    out["Residuals"] = _png(fig)
    return out


def charts(
    scored: Scored,
    slices: dict,
    thresholds: dict[str, float],
    importance: dict[str, float],
    task: str = "binary",
    classes: tuple[str, ...] = ("0", "1"),
    counts: Optional[dict[str, dict[str, int]]] = None,
    undefined: Optional[dict[str, dict[str, str]]] = None,
) -> dict[str, bytes]:
    """PNG images by title: the task's evaluation charts, per-slice headline metric bars with the
    threshold drawn in (each slice with its example count; a slice whose metric is undefined labelled
    with the reason instead of an empty bar), and permutation importance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, scores = scored.labels, scored.scores
    if task == "multiclass":
        out = _multiclass_charts(labels, scores, classes)
    elif task == "regression":
        out = _regression_charts(labels, scores)
    else:
        out = _binary_charts(labels, scores, classes)

    headline = HEADLINES[task]
    counts, undefined = counts or {}, undefined or {}
    for feature, values in slices.items():
        names = list(values)[:20]
        why = {n: undefined.get(feature, {}).get(n) or ("undefined" if math.isnan(values[n]) else None) for n in names}
        shown = [f"{n} (n={counts[feature][n]:,})" if n in counts.get(feature, {}) else n for n in names]
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1.2))
        ax.barh(shown, [0.0 if why[n] else values[n] for n in names], color="#4a7fb5")
        for row, n in enumerate(names):
            if why[n]:
                ax.text(0.01, row, why[n], va="center", fontsize=8, color="#666", transform=ax.get_yaxis_transform())
        bound = thresholds.get(headline.tfma_name)
        if bound is not None:
            ax.axvline(bound, color="crimson", linestyle="--", label=f"threshold {bound}")
            ax.legend(loc="lower right")
        ax.invert_yaxis()
        ax.set(xlabel=headline.name, title=f"{headline.name} by {feature}")
        if headline.higher_is_better:
            ax.set_xlim(0, 1)
        out[f"{headline.name} by {feature}"] = _png(fig)

    if importance:
        names = list(importance)[:TOP_FEATURES]
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1.2))
        ax.barh(names, [importance[n] for n in names], color="#5b9a68")
        ax.invert_yaxis()
        what = "lost" if headline.higher_is_better else "added"
        ax.set(
            xlabel=f"{headline.name} {what} when the feature is shuffled",
            title="Permutation importance (evaluation split)",
        )
        out["Permutation importance"] = _png(fig)
    return out


# ---------------------------------------------------------------------------------------------
# The card


def _slice_metric(metrics_by_slice: dict, metric: str) -> dict[str, dict[str, float]]:
    """{feature: {value: the candidate's metric on that slice}} from TFMA's per-slice metrics."""
    out: dict[str, dict[str, float]] = {}
    for where, metrics in metrics_by_slice.items():
        if where == "Overall" or ":" not in where or metric not in metrics:
            continue
        feature, value = where.split(":", 1)
        if "candidate" in metrics[metric]:
            out.setdefault(feature, {})[value] = metrics[metric]["candidate"]
    return {f: dict(sorted(v.items(), key=lambda kv: _natural(kv[0]))) for f, v in out.items()}


def _slice_counts(metrics_by_slice: dict) -> dict[str, dict[str, int]]:
    """{feature: {value: evaluation examples in that slice}}, from TFMA's example_count."""
    out: dict[str, dict[str, int]] = {}
    for where, metrics in metrics_by_slice.items():
        if where != "Overall" and ":" in where and "candidate" in metrics.get("example_count", {}):
            feature, value = where.split(":", 1)
            out.setdefault(feature, {})[value] = int(metrics["example_count"]["candidate"])
    return out


def _slice_value(example, feature: str) -> Optional[str]:
    """A feature's value in a tf.Example, as TFMA names its slice ("Cash", "12")."""
    f = example.features.feature.get(feature)
    if f is None:
        return None
    for kind in ("bytes_list", "int64_list", "float_list"):
        values = getattr(f, kind).value
        if values:
            value = values[0]
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return None


def one_class_slices(records: list[bytes], labels: np.ndarray, features: list[str]) -> dict[str, dict[str, str]]:
    """{feature: {value: reason}} for the slices whose evaluation examples (the card's sample) hold one
    class only: AUC is undefined there (TFMA reports 0 for it)."""
    import tensorflow as tf

    classes: dict[tuple[str, str], set] = {}
    for record, label in zip(records, labels, strict=True):
        example = tf.train.Example.FromString(record)
        for feature in features:
            value = _slice_value(example, feature)
            if value is not None:
                classes.setdefault((feature, value), set()).add(float(label))
    out: dict[str, dict[str, str]] = {}
    for (feature, value), seen in classes.items():
        if len(seen) == 1:
            out.setdefault(feature, {})[value] = "undefined: one class only"
    return out


def _natural(value: str) -> tuple:
    """Numbers in numeric order (hour 2 before hour 10), before text in text order."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _trained_with(record, config) -> tuple:
    """(label, features, task, classes) as the Trainer that made this version recorded them in ML
    Metadata (its custom_config), so a card regenerated after the config file changed still
    describes this model; the config only for a version with no Trainer on record."""
    from pipeline.config import features_from_component_config, task_from_component_config
    from registry.record import exec_property

    trainer = record.executions.get("Trainer")
    custom = json.loads(exec_property(trainer, "custom_config") or "{}") if trainer is not None else {}
    if not custom.get("features"):
        return config.label, config.features, config.task, config.classes
    label, features = features_from_component_config(custom)
    task, classes = task_from_component_config(custom)
    return label, features, task, classes


def write_card(record, config, version_dir: Optional[str] = None) -> tuple[Path, Path]:
    """Writes model_card.html (self-contained) and model_card.md into the version's assets.extra/.

    Args:
      record: a registry.versions.VersionRecord with its executions.
      config: the PipelineConfig (the model's name, the evaluation's slices; label and features for a
        version with no Trainer on record).
      version_dir: where the version lives (default: the recorded push destination).

    Returns:
      (html path, markdown path).
    """
    slices = tuple(sorted({f for cols in config.evaluation.slices for f in cols}))
    return render_card(record, config.model_name, slices, _trained_with(record, config), version_dir)


def render_card(
    record, model_name: str, slice_features: tuple[str, ...], trained_with: tuple, version_dir: Optional[str] = None
) -> tuple[Path, Path]:
    """write_card from what the card needs alone, as the pipeline's ModelCardGen has it (registry.card_gen).

    Args:
      record: a registry.versions.VersionRecord with its executions.
      model_name: the served model's name.
      slice_features: the features the evaluation is sliced by.
      trained_with: (label, features, task, classes) of the model.
      version_dir: where the version lives (default: the recorded push destination).

    Returns:
      (html path, markdown path).
    """
    import tensorflow as tf

    from registry.record import describe, metrics_by_slice, thresholds

    version_dir = Path(version_dir or record.destination)
    ex = record.executions
    lines = describe(record, model_name)
    label, features, task, classes = trained_with
    headline = HEADLINES[task]
    records, total = eval_sample(ex["CsvExampleGen"].output("examples").uri)
    model = tf.saved_model.load(str(version_dir))
    labels = _labels(model, records, label, task)
    keep = ~np.isnan(labels)
    sampled = len(records)
    records = [r for r, k in zip(records, keep, strict=True) if k]
    labels = labels[keep]
    sample = sample_sentence(len(labels), sampled, total)
    serve = model.signatures["serving_default"]
    scores = _score(serve, records, task)
    base, importance = permutation_importance(serve, records, labels, [f.name for f in features], task)
    evaluator = ex.get("Evaluator")
    by_slice = metrics_by_slice(evaluator.output("evaluation").uri) if evaluator else {}
    bounds = {
        t["metric"]: float(t["bound"].split()[1])
        for t in (thresholds(evaluator) if evaluator else [])
        if t["kind"] == "value" and t["bound"][:3] in (">= ", "<= ")
    }
    slices = _slice_metric(by_slice, headline.tfma_name)
    undefined = {}
    if task == "binary":  # AUC needs both classes in a slice
        undefined = one_class_slices(records, labels, list(slice_features))
    counts = _slice_counts(by_slice)
    images = charts(Scored(labels, scores), slices, bounds, importance, task, classes, counts, undefined)
    what = "lost" if headline.higher_is_better else "added"
    label = f"<code>{html.escape(label)}</code>"
    if task == "binary":
        described = f"Binary classification of {label} (positive class {html.escape(classes[-1])}; "
        described += f"decision threshold {DECISION_THRESHOLD})"
    elif task == "multiclass":
        described = f"Multiclass classification of {label} into {html.escape(', '.join(classes))}"
    else:
        described = f"Regression of {label}"

    out_dir = version_dir / CARD_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"Model card: {model_name} version {record.version}"
    body = "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{html.escape(t)}</figcaption></figure>"
        for t, png in images.items()
    )
    importance_rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{v:+.4f}</td></tr>" for n, v in list(importance.items())[:TOP_FEATURES]
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }}
pre {{ background: #f6f8fa; padding: 1em; overflow-x: auto; font-size: 12px; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }}
figcaption {{ font-size: 12px; color: #555; text-align: center; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{described}; {headline.name} {base:.4f}.</p>
<p>{html.escape(sample)}</p>
<h2>Evaluation</h2>
{body}
<h2>Permutation importance (top {TOP_FEATURES})</h2>
<table><tr><th>feature</th><th>{headline.name} {what} when shuffled</th></tr>{importance_rows}</table>
<h2>Record</h2>
<pre>{html.escape(chr(10).join(lines))}</pre>
</body></html>
"""
    image_dir = out_dir / "model_card_images"
    image_dir.mkdir(exist_ok=True)
    md = [f"# {title}", "", f"{headline.name} {base:.4f}.", "", sample, ""]
    for t, png in images.items():
        name = t.lower().replace(" ", "_").replace(":", "") + ".png"
        _atomic_write(image_dir / name, png)
        md += [f"![{t}](model_card_images/{name})", ""]
    md += ["## Permutation importance", "", f"| feature | {headline.name} {what} |", "|---|---:|"]
    md += [f"| {n} | {v:+.4f} |" for n, v in list(importance.items())[:TOP_FEATURES]]
    md += ["", "## Record", "", "```", *lines, "```", ""]
    html_path, md_path = out_dir / HTML_NAME, out_dir / MD_NAME
    _atomic_write(html_path, page.encode("utf-8"))
    _atomic_write(md_path, "\n".join(md).encode("utf-8"))
    return html_path, md_path


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
