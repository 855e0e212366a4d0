"""Pre-push check: load a SavedModel in a fresh process and score a few raw examples.

Usage: python -m components.pusher.smoke MODEL_DIR EXAMPLES_FILE_PATTERN [N]
Exit 0 when every score is finite; otherwise exit 1 with one line on stderr saying why.
"""

import os
import sys


def check(model_dir: str, file_pattern: str, n: int = 8) -> str:
    """Scores up to `n` serialized examples through `serving_default`.

    Returns:
      A one-line description of what was checked.

    Raises:
      RuntimeError: the model cannot be loaded, has no serving_default, or returns NaN or Inf.
    """
    import numpy as np
    import tensorflow as tf

    from components.examples import record_compression

    files = tf.io.gfile.glob(file_pattern)
    if not files:
        raise RuntimeError(f"no evaluation examples match {file_pattern}")
    records = list(
        tf.data.TFRecordDataset(files, compression_type=record_compression(files)).take(n).as_numpy_iterator()
    )
    try:
        model = tf.saved_model.load(model_dir)
    except (OSError, ValueError, tf.errors.OpError) as err:
        raise RuntimeError(f"the model does not load: {err}") from None
    if "serving_default" not in model.signatures:
        raise RuntimeError("the model has no serving_default signature")
    outputs = model.signatures["serving_default"](examples=tf.constant(records))
    for name, value in outputs.items():
        array = value.numpy()
        if array.shape[0] != len(records):
            raise RuntimeError(f"output '{name}' has {array.shape[0]} rows for {len(records)} examples")
        if array.dtype.kind in "OSU":  # class names: present for every row is all there is to check
            continue
        if not np.all(np.isfinite(array)):
            raise RuntimeError(f"output '{name}' holds NaN or Inf for raw evaluation examples")
    return f"serving_default scored {len(records)} raw evaluation examples with finite outputs"


def main(argv: list[str]) -> int:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        print(check(argv[0], argv[1], int(argv[2]) if len(argv) > 2 else 8))
    except RuntimeError as err:
        print(str(err), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
