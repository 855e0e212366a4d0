"""Model cards: one self-contained HTML page (and Markdown) per pushed version, in its assets.extra/.

The card holds the version's full record (pipeline.model_record), the evaluation charts (ROC and
precision-recall curves, the confusion matrix at the decision threshold, a calibration plot,
per-slice metric bars with the threshold drawn in) and permutation feature importance on the
evaluation split. Charts are static PNGs (matplotlib) embedded in the HTML, so it opens offline.
TF Serving ignores assets.extra/, so writing the card never touches what it serves.
"""

from __future__ import annotations

import base64
import html
import io
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
MAX_EXAMPLES = 5000
TOP_FEATURES = 10


@dataclass
class Scored:
    labels: np.ndarray
    scores: np.ndarray


def _eval_examples(examples_uri: str, limit: int = MAX_EXAMPLES) -> list[bytes]:
    import tensorflow as tf

    files = tf.io.gfile.glob(os.path.join(examples_uri, "Split-eval", "*"))
    return list(tf.data.TFRecordDataset(files, compression_type="GZIP").take(limit).as_numpy_iterator())


def _labels(records: list[bytes], label: str) -> np.ndarray:
    import tensorflow as tf

    out = []
    for raw in records:
        feature = tf.train.Example.FromString(raw).features.feature.get(label)
        values = list(feature.int64_list.value or feature.float_list.value) if feature else []
        out.append(float(values[0]) if values else np.nan)
    return np.array(out)


def _score(serve, records: list[bytes]) -> np.ndarray:
    import tensorflow as tf

    scores = []
    for start in range(0, len(records), 1024):
        batch = tf.constant(records[start : start + 1024])
        scores.append(serve(examples=batch)["probabilities"].numpy().reshape(-1))
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


def permutation_importance(serve, records: list[bytes], labels: np.ndarray, features: list[str], seed: int = 0):
    """AUC lost when one feature's values are shuffled across the evaluation examples, per feature."""
    import tensorflow as tf

    _, _, base_auc = roc_curve(labels, _score(serve, records))
    parsed = [tf.train.Example.FromString(r) for r in records]
    rng = np.random.default_rng(seed)
    drops = {}
    for name in features:
        permutation = rng.permutation(len(parsed))
        shuffled = []
        for i, example in enumerate(parsed):
            copy = tf.train.Example()
            copy.CopyFrom(example)
            donor = parsed[permutation[i]].features.feature
            if name in donor:
                copy.features.feature[name].CopyFrom(donor[name])
            elif name in copy.features.feature:
                del copy.features.feature[name]
            shuffled.append(copy.SerializeToString())
        _, _, auc = roc_curve(labels, _score(serve, shuffled))
        drops[name] = base_auc - auc
    return base_auc, dict(sorted(drops.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------------------------------------
# Charts


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def charts(
    scored: Scored, slices: dict, thresholds: dict[str, float], importance: dict[str, float]
) -> dict[str, bytes]:
    """PNG images by title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    labels, scores = scored.labels, scored.scores
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

    matrix = confusion(labels, scores)
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, f"{v:,}", ha="center", va="center", color="black")
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["0", "1"],
        yticklabels=["0", "1"],
        xlabel="predicted",
        ylabel="actual",
    )
    ax.set_title(f"Confusion matrix at {DECISION_THRESHOLD}")
    out["Confusion matrix"] = _png(fig)

    bins = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(scores, bins) - 1, 0, 9)
    mean_score = [scores[which == b].mean() if np.any(which == b) else np.nan for b in range(10)]
    positive_rate = [labels[which == b].mean() if np.any(which == b) else np.nan for b in range(10)]
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax.plot(mean_score, positive_rate, "o-")
    ax.set(xlabel="mean predicted probability", ylabel="observed positive rate", title="Calibration")
    out["Calibration"] = _png(fig)

    for feature, values in slices.items():
        names = list(values)[:20]
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1.2))
        ax.barh(names, [values[n] for n in names], color="#4a7fb5")
        if "auc" in thresholds:
            ax.axvline(thresholds["auc"], color="crimson", linestyle="--", label=f"threshold {thresholds['auc']}")
            ax.legend(loc="lower right")
        ax.invert_yaxis()
        ax.set(xlabel="AUC", title=f"AUC by {feature}", xlim=(0, 1))
        out[f"AUC by {feature}"] = _png(fig)

    if importance:
        names = list(importance)[:TOP_FEATURES]
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1.2))
        ax.barh(names, [importance[n] for n in names], color="#5b9a68")
        ax.invert_yaxis()
        ax.set(xlabel="AUC lost when the feature is shuffled", title="Permutation importance (evaluation split)")
        out["Permutation importance"] = _png(fig)
    return out


# ---------------------------------------------------------------------------------------------
# The card


def _slice_auc(metrics_by_slice: dict) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for where, metrics in metrics_by_slice.items():
        if where == "Overall" or ":" not in where or "auc" not in metrics:
            continue
        feature, value = where.split(":", 1)
        if "candidate" in metrics["auc"]:
            out.setdefault(feature, {})[value] = metrics["auc"]["candidate"]
    return {f: dict(sorted(v.items(), key=lambda kv: kv[0])) for f, v in out.items()}


def write_card(record, config, version_dir: Optional[str] = None) -> tuple[Path, Path]:
    """Writes model_card.html (self-contained) and model_card.md into the version's assets.extra/.

    Args:
      record: a pipeline.registry.VersionRecord with its executions.
      config: the PipelineConfig (label and features).
      version_dir: where the version lives (default: the recorded push destination).

    Returns:
      (html path, markdown path).
    """
    import tensorflow as tf

    from pipeline.model_record import describe, metrics_by_slice, thresholds

    version_dir = Path(version_dir or record.destination)
    ex = record.executions
    lines = describe(record, config)
    records = _eval_examples(ex["CsvExampleGen"].output("examples").uri)
    labels = _labels(records, config.label)
    keep = ~np.isnan(labels)
    records = [r for r, k in zip(records, keep, strict=True) if k]
    labels = labels[keep]
    serve = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    scores = _score(serve, records)
    base_auc, importance = permutation_importance(serve, records, labels, [f.name for f in config.features])
    evaluator = ex.get("Evaluator")
    by_slice = metrics_by_slice(evaluator.output("evaluation").uri) if evaluator else {}
    bounds = {
        t["metric"]: float(t["bound"].split()[1])
        for t in (thresholds(evaluator) if evaluator else [])
        if t["kind"] == "value" and t["bound"].startswith(">= ")
    }
    images = charts(Scored(labels, scores), _slice_auc(by_slice), bounds, importance)

    out_dir = version_dir / CARD_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"Model card: {config.model_name} version {record.version}"
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
<p>Binary classification of <code>{html.escape(config.label)}</code>; {len(labels):,} evaluation examples;
AUC {base_auc:.4f}; decision threshold {DECISION_THRESHOLD}.</p>
<h2>Evaluation</h2>
{body}
<h2>Permutation importance (top {TOP_FEATURES})</h2>
<table><tr><th>feature</th><th>AUC lost when shuffled</th></tr>{importance_rows}</table>
<h2>Record</h2>
<pre>{html.escape(chr(10).join(lines))}</pre>
</body></html>
"""
    image_dir = out_dir / "model_card_images"
    image_dir.mkdir(exist_ok=True)
    md = [f"# {title}", "", f"AUC {base_auc:.4f} on {len(labels):,} evaluation examples.", ""]
    for t, png in images.items():
        name = t.lower().replace(" ", "_").replace(":", "") + ".png"
        _atomic_write(image_dir / name, png)
        md += [f"![{t}](model_card_images/{name})", ""]
    md += ["## Permutation importance", "", "| feature | AUC lost |", "|---|---:|"]
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
