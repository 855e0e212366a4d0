"""The library fixes in pipeline/speedups.py and components/model.py: each still reaches the code it
targets in the pinned versions, and pipelines compute the same with them."""

import inspect
import logging

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from pipeline import speedups


def test_the_in_memory_worker_still_reads_its_cache_size_from_the_constant_we_set():
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    speedups.apply()
    speedups.apply()
    assert worker_handlers.STATE_CACHE_SIZE_MB == 0
    assert "StateCache(STATE_CACHE_SIZE_MB" in inspect.getsource(worker_handlers.EmbeddedWorkerHandler)


def test_side_inputs_are_still_right_without_the_cache():
    speedups.apply()
    options = beam.options.pipeline_options.PipelineOptions(
        ["--direct_running_mode=in_memory", speedups.NO_SIDE_INPUT_CACHE_ARG]
    )
    with beam.Pipeline(options=options) as p:
        total = p | "side" >> beam.Create([1, 2, 3]) | beam.CombineGlobally(sum)
        vocabulary = p | "vocab" >> beam.Create(["a", "b"])
        out = (
            p
            | beam.Create(range(1000))
            | beam.Reshuffle()
            | beam.Map(
                lambda x, t, v: x * t + len(v), t=beam.pvalue.AsSingleton(total), v=beam.pvalue.AsList(vocabulary)
            )
        )
        assert_that(out, equal_to([x * 6 + 2 for x in range(1000)]))


def test_pickling_no_longer_clears_every_loggers_cache_but_tracing_still_works():
    import dill._dill
    from apache_beam.internal import pickler

    speedups.apply()
    sentinel = logging.getLogger("conveyor.test.sentinel")
    sentinel.isEnabledFor(logging.INFO)  # fills the logger's level cache
    assert sentinel._cache
    assert pickler.loads(pickler.dumps(lambda x: x + 1))(1) == 2
    assert sentinel._cache, "a Beam pickle cleared the logging caches"

    dill._dill._trace(True)
    assert dill._dill.log.level == logging.INFO
    dill._dill._trace(False)
    assert dill._dill.log.level == logging.WARN


def test_autograph_leaves_tf_keras_alone_but_still_converts_our_code():
    from tensorflow.python.autograph.impl import conversion
    from tf_keras.src.engine import base_layer

    from components.model import keep_autograph_out_of_keras

    keep_autograph_out_of_keras()
    keep_autograph_out_of_keras()
    assert conversion.is_allowlisted(base_layer.Layer.__call__)
    assert not conversion.is_allowlisted(test_autograph_leaves_tf_keras_alone_but_still_converts_our_code)
