"""Two fixed costs in Apache Beam 2.61's local execution, removed for the runs this machine makes.

Both were found by profiling the taxi benchmark (README, Performance) and neither changes what a
pipeline computes:

- Side-input cache weighing. Beam's worker caches side inputs and weighs each one with
  `objsize`, which first walks the globals of every loaded module (with TensorFlow, thousands).
  Transform's analyzers hand their results on as side inputs, so this walk cost 5 of Transform's
  20 s on 15k rows. With the cache off, a side input is read from the runner's in-process state
  when it is used. In-memory runs take the worker's cache size from a module constant;
  multi-processing workers from `--max_cache_memory_usage_mb`, which `runner.local_beam_args`
  sets to 0.
- Pickler log level. Beam's dill pickler calls `dill._dill._trace(False)` around every pickle and
  unpickle, which calls `Logger.setLevel`; that clears the level cache of every logger in the
  process (about a thousand here). Same level, same behaviour, minus the clearing: 1-2 s per run.

`apply()` is idempotent and affects only this process (and the Beam workers it starts).
"""

from __future__ import annotations

import logging

NO_SIDE_INPUT_CACHE_ARG = "--max_cache_memory_usage_mb=0"
# DirectRunner worker processes import the module a --beam_plugins flag names before any work: this one
# installs TFMA's per-example fast path (pipeline/speedups_tfma.py) on import.
TFMA_PLUGIN_ARG = "--beam_plugins=pipeline.speedups_tfma"


def apply() -> None:
    """Removes both costs in this process."""
    import dill._dill
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    worker_handlers.STATE_CACHE_SIZE_MB = 0

    if not getattr(dill._dill._trace, "conveyor_unchanged_level", False):
        dill_log = dill._dill.log

        def _trace(boolean: bool) -> None:
            level = logging.INFO if boolean else logging.WARN
            if dill_log.level != level:
                dill_log.setLevel(level)

        _trace.conveyor_unchanged_level = True
        dill._dill._trace = _trace
