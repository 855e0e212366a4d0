"""Runs the pipeline on this machine with LocalDagRunner: progress on the terminal, full logs in a file."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO

from pipeline import speedups
from pipeline.config import PipelineConfig
from pipeline.metadata import MetadataUnavailable
from pipeline.store_lock import store_lock

_RUNNING = re.compile(r"^Component (\S+) is running\.$")
_FINISHED = re.compile(r"^Component (\S+) is finished\.$")
_CACHED = re.compile(r"^A cached execution \d+ is used\.$")


class ComponentFailed(RuntimeError):
    """A component raised; carries which one and the log that holds the full traceback."""

    def __init__(self, node_id: str, error: BaseException, log_path: Path):
        super().__init__(f"{node_id} failed: {error}")
        self.node_id = node_id
        self.error = error
        self.log_path = log_path


class RunLocked(RuntimeError):
    """Another run holds the output directory."""


@contextlib.contextmanager
def output_lock(output_dir: Path) -> Iterator[None]:
    """Holds `<output dir>/.conveyor.lock` for the run, so two runs never share ML Metadata and the
    serving directory at once. The lock is the kernel's (flock): a killed run releases it.

    Raises:
      RunLocked: another process holds it; says which and since when.
      OSError: the output directory cannot be created or written.
    """
    import fcntl

    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / ".conveyor.lock"
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunLocked(
                f"{output_dir} is in use by {holder}; wait for that run to finish or pass another --output-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"conveyor run (pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')})")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def registry_write_lock(config: PipelineConfig) -> Iterator[None]:
    """What a run holds while it writes the registry and the serving directory, for every other writer
    (`conveyor models rollback`, the UI's rollback): the output directory's lock, then, on a shared ML
    Metadata store, the store's lock for this pipeline (waiting `metadata.lock_wait` seconds).

    Raises:
      RunLocked: another process holds the output directory.
      StoreLocked: a run of this pipeline holds the shared store, from this or any other checkout.
      MetadataUnavailable: the shared store cannot be reached or locked.
    """
    # The output directory: where the local ML Metadata file would be (it is set with a shared store too).
    with output_lock(Path(config.output.metadata_path).parent):
        with store_lock(config.output.store, config.name, config.output.lock_wait):
            yield


class _Progress(logging.Handler):
    """Turns LocalDagRunner's log lines into one line per component with its wall time."""

    def __init__(self, out: TextIO):
        super().__init__(logging.INFO)
        self.out = out
        self.start = time.monotonic()
        self.current: Optional[str] = None
        self.current_start = 0.0
        self.cached = False
        self._guard = threading.Lock()
        self.tty = out.isatty()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return
        with self._guard:
            if m := _RUNNING.match(message):
                self.current, self.current_start, self.cached = m.group(1), time.monotonic(), False
                self._write(f"  {self.current} ...", end="")
            elif _CACHED.match(message):
                self.cached = True
            elif (m := _FINISHED.match(message)) and self.current:
                took = time.monotonic() - self.current_start
                note = "from cache" if self.cached else f"{took:.1f}s"
                self._write(f"\r  {self.current:<32} {note:>12}   [{time.monotonic() - self.start:6.1f}s]")
                self.current = None

    def tick(self) -> None:
        with self._guard:
            if self.current and self.tty:
                took = time.monotonic() - self.current_start
                self._write(f"\r  {self.current:<32} {took:>11.0f}s ...", end="")

    def _write(self, text: str, end: str = "\n") -> None:
        if not self.tty and end == "":
            return
        if not self.tty:
            text = text.lstrip("\r")
        self.out.write(text + end)
        self.out.flush()


@contextlib.contextmanager
def _logs_to_file(log_path: Path, progress_out: TextIO) -> Iterator[_Progress]:
    """Sends every library log line (Python, absl and C++ on fd 1/2) to the log file for the
    duration, and component progress to `progress_out`."""
    from absl import logging as absl_logging

    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    # The terminal stream keeps pointing at the terminal after fd 1/2 move to the log file.
    terminal = _reopen_terminal(progress_out, saved)
    log_file = open(log_path, "a", buffering=1, encoding="utf-8")
    os.dup2(log_file.fileno(), 1)
    os.dup2(log_file.fileno(), 2)
    root = logging.getLogger()
    old_level, old_handlers = root.level, list(root.handlers)
    for handler in old_handlers:
        root.removeHandler(handler)
    root.setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)
    file_handler = logging.StreamHandler(log_file)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file_handler)
    progress = _Progress(terminal)
    root.addHandler(progress)
    stop = threading.Event()

    def ticker() -> None:
        while not stop.wait(2.0):
            progress.tick()

    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join()
        root.removeHandler(progress)
        root.removeHandler(file_handler)
        for handler in old_handlers:
            root.addHandler(handler)
        root.setLevel(old_level)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        log_file.close()
        if terminal is not progress_out:
            terminal.close()


def _reopen_terminal(stream: TextIO, saved: tuple[int, int]) -> TextIO:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream
    if fd not in (1, 2):
        return stream
    return os.fdopen(os.dup(saved[fd - 1]), "w", buffering=1, encoding="utf-8")


@dataclass
class RunResult:
    summary: object
    log_path: Path


_DEPENDENCY_FLAGS = ("--extra_package", "--setup_file", "--requirements_file", "--sdk_container_image")


# Input size above which the DirectRunner fans out to one worker process per core. Measured on 2
# cores (benchmarks/scale.py, README Performance): at 100k taxi rows (12 MiB) the data stages ran
# 1.32x slower in multi-processing mode, the processes' start-up and pickling costing more than
# they save; at 1M rows (115 MiB) they ran 1.38x faster. The crossover lies between the two and
# was not measured more finely; beyond one machine the answer is a cluster runner anyway.
MULTI_PROCESSING_BYTES = 64 * 2**20


# Input size above which the Evaluator alone runs one worker process per core. Its work per row is
# TFMA's Python per example, slice and metric, so the processes pay for themselves far sooner than in
# the data stages: at 300k taxi rows (35 MiB, 100k evaluation rows) it ran 1.39x faster in
# multi-processing mode (benchmarks/evaluator.py, README Performance).
EVALUATOR_MULTI_PROCESSING_BYTES = 16 * 2**20


def _input_bytes(data_root: str) -> int:
    root = Path(data_root)
    if not root.is_dir():
        return 0
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def local_beam_args(args: tuple[str, ...], data_root: Optional[str] = None) -> tuple[str, ...]:
    """The Beam arguments for a run from this machine.

    - Running mode: unless the config names a runner or a DirectRunner mode, in-memory for small
      input and multi-processing with one worker per core above MULTI_PROCESSING_BYTES of data.
    - Dependencies: with no dependency flag, TFX builds and stages an sdist of itself before every
      Beam component (1.5 s each); the DirectRunner runs here and needs none, and a cluster runner
      needs this project's code, not TFX's. So unless a flag says otherwise, this project's
      setup.py is it.
    - Side-input cache: off in the DirectRunner's workers, unless set (pipeline/speedups.py).
    """
    flags = {a.split("=")[0] for a in args}
    out = tuple(args)
    if not flags & {"--runner", "--direct_running_mode", "--direct_num_workers"} and data_root is not None:
        if _input_bytes(data_root) > MULTI_PROCESSING_BYTES:
            out += ("--direct_running_mode=multi_processing", f"--direct_num_workers={os.cpu_count() or 1}")
        else:
            out += ("--direct_running_mode=in_memory", "--direct_num_workers=1")
    runner = next((a.split("=", 1)[1] for a in args if a.startswith("--runner=")), "DirectRunner")
    if runner in ("DirectRunner", "direct") and "--max_cache_memory_usage_mb" not in flags:
        out += (speedups.NO_SIDE_INPUT_CACHE_ARG,)
    setup_file = Path(__file__).resolve().parents[1] / "setup.py"
    if not flags & set(_DEPENDENCY_FLAGS) and setup_file.is_file():
        out += (f"--setup_file={setup_file}",)
    return out


def evaluator_beam_args(args: tuple[str, ...], data_root: Optional[str] = None) -> tuple[str, ...]:
    """The Evaluator's Beam arguments on top of local_beam_args(args, data_root), for the DirectRunner.

    Multi-processing with one worker per core above EVALUATOR_MULTI_PROCESSING_BYTES of input, unless
    the config chose a runner or a running mode; and in worker processes, TFMA's per-example fast path
    (pipeline/speedups_tfma.py, as a Beam plugin; the launcher process installs it itself).
    """
    flags = {a.split("=")[0] for a in args}
    runner = next((a.split("=", 1)[1] for a in args if a.startswith("--runner=")), "DirectRunner")
    if runner not in ("DirectRunner", "direct"):
        return ()
    out: tuple[str, ...] = ()
    chosen = flags & {"--direct_running_mode", "--direct_num_workers"}
    if not chosen and data_root is not None and _input_bytes(data_root) > EVALUATOR_MULTI_PROCESSING_BYTES:
        out += ("--direct_running_mode=multi_processing", f"--direct_num_workers={os.cpu_count() or 1}")
    return out + (speedups.TFMA_PLUGIN_ARG,)


def run_local(config: PipelineConfig, progress_out: TextIO, log_dir: Optional[Path] = None) -> RunResult:
    """Runs create_pipeline(config) with LocalDagRunner and summarises the run from ML Metadata.

    Args:
      config: the validated config; `config.output.metadata_path` must be set.
      progress_out: where component progress goes (the terminal).
      log_dir: where the full log goes; defaults to `<output>/logs`.

    Returns:
      The run summary and the log path.

    Raises:
      ComponentFailed: a component raised (the summary is not built).
      RunLocked: another run is using the same output directory.
      StoreLocked: another run of this pipeline holds the shared ML Metadata store.
      MetadataUnavailable: the shared store cannot be reached or locked.
    """
    output_dir = Path(config.output.metadata_path).parent
    log_dir = log_dir or output_dir / "logs"
    log_path = log_dir / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with (
        output_lock(output_dir),
        store_lock(config.output.store, config.name, config.output.lock_wait, progress_out),
        _logs_to_file(log_path, progress_out) as progress,
    ):
        from tfx.orchestration.local.local_dag_runner import LocalDagRunner

        from pipeline.pipeline import create_pipeline
        from registry.lineage import open_store, pipeline_runs, run_executions
        from registry.runs import record_provenance
        from registry.summary import summarize

        speedups.apply()
        from pipeline import speedups_tfma  # imports TFMA, which the Evaluator needs in this process anyway

        speedups_tfma.apply()
        pipeline = create_pipeline(
            config.replace(
                beam_args=local_beam_args(config.beam_args, config.data_root),
                evaluator_beam_args=evaluator_beam_args(config.beam_args, config.data_root),
            )
        )
        try:
            LocalDagRunner().run(pipeline)
        except Exception as err:  # noqa: BLE001 - any component error ends the run; it is re-raised with context
            logging.exception("pipeline run failed")
            if _is_metadata_error(err) and config.output.store.shared:
                # The shared store went away (or refused a write): say so, not ml_metadata's bare words.
                reason = " ".join(str(err).split())[:200]
                err = MetadataUnavailable(
                    f"lost ML Metadata at {config.output.store.shown} during the run ({reason}); the components "
                    "that finished are recorded, and the next run continues from the cache"
                )
            failed = ComponentFailed(progress.current or "pipeline", err, log_path)
            try:
                record_provenance(config.output.store, config.name, config.source or "", (failed.node_id, str(err)))
            except Exception as lost:  # noqa: BLE001 - the store is gone: the run's error still reaches the user
                if not (isinstance(lost, MetadataUnavailable) or _is_metadata_error(lost)):
                    raise
                logging.warning("provenance not recorded: %s", lost)
            raise failed from err
        record_provenance(config.output.store, config.name, config.source or "")
        store = open_store(config.output.store)
        run = pipeline_runs(store, config.name)[-1]
        summary = summarize(run.name, run_executions(store, run, config.name), store, config.name)
    return RunResult(summary, log_path)


def _is_metadata_error(err: BaseException) -> bool:
    """ml_metadata's own errors, and TFX's when it cannot connect (tfx/orchestration/metadata.py)."""
    from ml_metadata import errors

    if isinstance(err, errors.StatusError):
        return True
    return isinstance(err, RuntimeError) and "Failed to establish connection to Metadata storage" in str(err)
