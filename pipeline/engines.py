"""Which Beam runner a local run's data components use: the DirectRunner, or Apache Flink's embedded
cluster through Beam's FlinkRunner and its job server. Imports nothing of the project.

The job server is Beam's own Flink runner for the newest Flink that Beam 2.61 publishes a runner for
(`FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS`). Maven Central as these machines reach it serves
neither Beam's shaded job-server jar nor the runner at our SDK's 2.61.0, so `.ci/flink-jar` resolves
the runner module at RUNNER_VERSION with its dependencies into the cache below (never the work tree)
and writes a launcher jar that starts its FlinkJobServerDriver.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

BEAM_VERSION = "2.61.0"
FLINK_VERSION = "1.19"
RUNNER_ARTIFACT = f"beam-runners-flink-{FLINK_VERSION}"
# One minor release ahead of the Python SDK: the oldest the registry serves (see the module's doc).
RUNNER_VERSION = "2.62.0"
JOB_SERVER_COORDINATES = f"org.apache.beam:{RUNNER_ARTIFACT}:{RUNNER_VERSION}"
ENGINES = ("direct", "flink")
# LOOPBACK: the Python workers are this process's threads, so every module the run imports
# (components.*, this project's installed code) is there without staging or an image; the Flink
# cluster is the in-process one the job server starts (`[local]`) and stops with the job.
FLINK_ENVIRONMENT = "LOOPBACK"


class EngineUnavailable(RuntimeError):
    """The chosen engine cannot run here: Java or the job-server jar is missing."""


def cache_dir() -> Path:
    """Where `.ci/flink-jar` keeps the job server: $CONVEYOR_CACHE, else $XDG_CACHE_HOME/conveyor, else
    ~/.cache/conveyor (the same rule as the script)."""
    if os.environ.get("CONVEYOR_CACHE"):
        return Path(os.environ["CONVEYOR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "conveyor"


def job_server_jar() -> Path:
    """The cached job server's launcher jar (it may not exist yet); its jars lie in `lib/` beside it."""
    return cache_dir() / f"flink-job-server-{RUNNER_VERSION}" / "job-server.jar"


def java() -> str | None:
    """The `java` the job server will be started with, as Beam finds it: $JAVA_HOME/bin/java, else PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def flink_args(jar: Path, java_launcher: str = "java") -> tuple[str, ...]:
    """The Beam flags that run every Beam component of a run on Flink's embedded cluster.

    Beam starts the job server (a JVM that hosts the embedded Flink cluster) for each Beam
    component and stops it when this process exits; a `conveyor run` is one process.

    Args:
      jar: the job-server jar (`job_server_jar()` after `.ci/flink-jar`).
      java_launcher: the `java` to start it with; Beam's own default is the first on PATH, which
        would ignore JAVA_HOME.

    Returns:
      The flags, in the form `beam.args` in a config takes.
    """
    return (
        "--runner=FlinkRunner",
        "--flink_master=[local]",
        f"--flink_version={FLINK_VERSION}",
        f"--flink_job_server_jar={jar}",
        f"--job_server_java_launcher={java_launcher}",
        f"--environment_type={FLINK_ENVIRONMENT}",
    )


def engine_args(engine: str) -> tuple[str, ...]:
    """The Beam flags for `conveyor run --engine ENGINE`, after checking the engine can run here.

    Args:
      engine: one of ENGINES; "direct" adds nothing (the DirectRunner's mode is chosen by input size).

    Returns:
      Flags to append to the config's `beam.args`.

    Raises:
      EngineUnavailable: Java or the job-server jar is missing; the message says what to do.
      ValueError: an engine not in ENGINES.
    """
    if engine == "direct":
        return ()
    if engine != "flink":
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    launcher = java()
    if launcher is None:
        raise EngineUnavailable(
            "--engine flink needs Java 11 or newer: set JAVA_HOME or put `java` on PATH "
            "(apt-get install openjdk-17-jre-headless)"
        )
    jar = job_server_jar()
    if not jar.is_file():
        raise EngineUnavailable(f"--engine flink needs {JOB_SERVER_COORDINATES} at {jar}: run `make flink-jar` first")
    return flink_args(jar, launcher)
