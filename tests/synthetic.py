"""Small synthetic datasets of each task type, generated deterministically inside the tests.

Each has a learnable signal, a column with missing values, an integer category, a string
category and a high-cardinality string column (hashed), so `conveyor init` meets every kind.
"""

from __future__ import annotations

import random

HEADER = ["x1", "x2", "color", "weekday", "city", "label"]
COLORS = ("red", "green", "blue")


def _base(rng: random.Random) -> dict:
    return {
        "x1": rng.gauss(0, 1),
        "x2": rng.gauss(0, 1),
        "color": rng.choice(COLORS),
        "weekday": rng.randrange(7),
        "city": f"city-{rng.randrange(300):03d}",
    }


def _row(values: dict, label, rng: random.Random) -> list[str]:
    x1 = "" if rng.random() < 0.05 else f"{values['x1']:.4f}"  # 5% missing
    return [x1, f"{values['x2']:.4f}", values["color"], str(values["weekday"]), values["city"], str(label)]


def dataset(task: str, n: int = 320, seed: int = 11) -> tuple[list[str], list[list[str]]]:
    """binary: label yes/no; multiclass: label 0/1/2 (integers); regression: a value around 100."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        v = _base(rng)
        shift = {"red": 1.0, "green": 0.0, "blue": -1.0}[v["color"]]
        if task == "binary":
            label = "yes" if v["x1"] + shift + rng.gauss(0, 0.3) > 0.3 else "no"
        elif task == "multiclass":
            score = v["x1"] + 0.8 * shift
            label = 0 if score < -0.6 else (1 if score < 0.6 else 2)
        else:
            label = round(100 + 15 * v["x1"] - 8 * v["x2"] + 10 * shift + rng.gauss(0, 2), 3)
        rows.append(_row(v, label, rng))
    return HEADER, rows
