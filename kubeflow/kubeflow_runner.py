"""Compiles the same create_pipeline(config) for Kubeflow Pipelines (KFP v2 YAML) with KubeflowV2DagRunner.

Usage: python kubeflow/kubeflow_runner.py [--config FILE] [--output FILE] [--image IMAGE] ...
(the same as `conveyor compile`).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Optional

from pipeline.config import SPAN_PATTERN, KubeflowConfig, OutputConfig, PipelineConfig

DEFAULT_OUTPUT = "output/kubeflow/pipeline.yaml"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Where kubeflow/Dockerfile installs the project inside the image.
CONTAINER_ROOT = "/conveyor"


def container_path(path: str) -> str:
    """The path a file of this project has inside the pipeline image.

    Raises:
      ValueError: the file is outside the project, so the image does not contain it.
    """
    try:
        relative = Path(path).resolve().relative_to(PROJECT_ROOT)
    except ValueError:
        raise ValueError(f"{path} is outside the project, so the pipeline image does not contain it") from None
    return f"{CONTAINER_ROOT}/{relative.as_posix()}"


def _compiled_from(source: Optional[str]) -> Optional[str]:
    """The config file as the run's provenance names it: its path in the image, or its name when the
    image does not hold it (the compiled file has every value of it)."""
    if not source:
        return source
    try:
        return container_path(source)
    except ValueError:
        return f"{Path(source).name} (compiled in; not in the image)"


def kfp_safe_name(name: str) -> str:
    """KFP pipeline and task names: lower-case letters, digits and '-', starting with a letter."""
    safe = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not safe or not safe[0].isalpha():
        safe = f"p-{safe}"
    return safe[:63]


def cluster_config(config: PipelineConfig, overrides: Optional[KubeflowConfig] = None) -> PipelineConfig:
    """The same config with the cluster's environment facts: paths, Beam args; no local ML Metadata.

    Args:
      config: the dataset config as `conveyor run` uses it.
      overrides: non-empty fields replace the config's `kubeflow:` section.

    Returns:
      The config create_pipeline compiles for the cluster.

    Raises:
      ValueError: a required cluster fact (pipeline root, data root, serving root, image) is unset,
        or the curated schema lies outside the project (and so outside the image).
    """
    facts = config.kubeflow
    if overrides is not None:
        facts = KubeflowConfig(
            **{
                name: getattr(overrides, name) or getattr(facts, name)
                for name in (
                    "pipeline_root",
                    "data_root",
                    "serving_root",
                    "image",
                    "beam_args",
                    "serving_pvc",
                    "data_layout",
                )
            }
        )
    if config.window > 1:
        raise ValueError(
            "data.window > 1 needs a span-range resolver, which open-source Kubeflow Pipelines cannot run "
            "(no resolver executors); compile with data.window: 1"
        )
    # Paths on this machine that the pods cannot read: refused, never compiled silently into the file.
    local_only = {
        "data.serving_root": config.serving_data_root or config.serving_request_logs,
        "predict.data_root": getattr(config.predict, "data_root", None),
    }
    for key, path in local_only.items():
        if path:
            raise ValueError(
                f"{key} is {path}, a path on this machine that the cluster's pods cannot read; "
                f"remove {key} from the config to compile for Kubeflow"
            )
    missing = [n for n in ("pipeline_root", "data_root", "serving_root", "image") if not getattr(facts, n)]
    if missing:
        flags = ", ".join(f"--{n.replace('_', '-')}" for n in missing)
        raise ValueError(
            f"kubeflow: {', '.join(missing)} not set; add them to the config's kubeflow: section or pass {flags}"
        )
    span_pattern = config.span_pattern
    if facts.data_layout:
        span_pattern = SPAN_PATTERN if facts.data_layout == "spans" else None
    return config.replace(
        name=kfp_safe_name(config.name),
        data_root=facts.data_root,
        span_pattern=span_pattern,
        span=None,  # a compiled pipeline reads the newest span on every run
        schema_path=container_path(config.schema_path),
        source=_compiled_from(config.source),
        output=OutputConfig(pipeline_root=facts.pipeline_root, serving_root=facts.serving_root, metadata_path=None),
        beam_args=facts.beam_args or config.beam_args,
        kubeflow=facts,
        # Open-source KFP runs no resolver executors: the latest blessed model and the previous
        # statistics come from records in the artifact store (components.cluster_state).
        resolve_from_metadata=False,
    )


def compile_pipeline(config: PipelineConfig, output_file: str | Path) -> Path:
    """Compiles create_pipeline(config) into a KFP v2 pipeline file (YAML when the name ends in .yaml).

    Args:
      config: a config from `cluster_config`.
      output_file: where the pipeline spec goes.

    Returns:
      The path written.

    Raises:
      NotRunnable: the file would break a rule of the open-source KFP backend (kubeflow/open_source_kfp.py).
    """
    from tfx import v1 as tfx
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    from kubeflow import open_source_kfp
    from pipeline.pipeline import create_pipeline

    output = Path(output_file)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        # Schema 2.1.0: the open-source KFP backend refuses anything else at upload ("KFP only supports
        # schema version 2.1.0", backend/src/apiserver/template/v2_template.go); TFX writes 2.0.0 by default.
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=config.kubeflow.image, use_pipeline_spec_2_1=True
        ),
        output_dir=str(output.parent),
        output_filename=output.name,
    )
    job = runner.run(create_pipeline(config), write_out=False)
    spec = open_source_kfp.adapt(job["pipelineSpec"])
    problems = open_source_kfp.check(spec)
    if problems:
        raise open_source_kfp.NotRunnable("; ".join(problems))
    output.parent.mkdir(parents=True, exist_ok=True)
    # TFX's own writer: the same layout (and leading comments) as KubeflowV2DagRunner's write_out.
    kubeflow_v2_dag_runner._write_pipeline_spec_to_file(
        job, f"This is converted from TFX pipeline from tfx-{tfx.__version__}.", str(output)
    )
    if config.kubeflow.serving_pvc:
        _mount_serving_volume(output, config.kubeflow.serving_pvc, config.output.serving_root)
    return output


# The node that writes into the serving root.
PUSHER = "SafePusher"
# Every node that reads or writes the serving root: the pusher, the model card it writes into the
# pushed version (registry.card_gen), and batch scoring with the pushed version.
SERVING_ROOT_NODES = (PUSHER, "ModelCardGen", "BatchPredict")


def _mount_serving_volume(path: Path, pvc: str, mount_path: str) -> None:
    """Adds KFP's Kubernetes platform spec to the pipeline file (a second YAML document, as the KFP
    SDK's kfp-kubernetes extension writes it): the pods of SERVING_ROOT_NODES mount the claim at the
    serving root."""
    import yaml

    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    tasks = spec["root"]["dag"]["tasks"]
    executors = {
        spec["components"][tasks[node]["componentRef"]["name"]]["executorLabel"]: {
            "pvcMount": [{"constant": pvc, "mountPath": mount_path}]
        }
        for node in SERVING_ROOT_NODES
        if node in tasks
    }
    platform = {"platforms": {"kubernetes": {"deploymentSpec": {"executors": executors}}}}
    with open(path, "a", encoding="utf-8") as f:
        f.write("---\n")
        yaml.safe_dump(platform, f, sort_keys=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.environment import DEFAULT_CONFIG

    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="dataset config (default: configs/taxi.yaml)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"pipeline file (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--image", default="", help="pipeline image (kubeflow.image)")
    parser.add_argument("--pipeline-root", default="", help="artifact root on the cluster (kubeflow.pipeline_root)")
    parser.add_argument("--data-root", default="", help="CSV data on the cluster (kubeflow.data_root)")
    parser.add_argument("--serving-root", default="", help="serving directory mounted in pods (kubeflow.serving_root)")
    parser.add_argument(
        "--serving-pvc", default="", help="PersistentVolumeClaim mounted at the serving root (kubeflow.serving_pvc)"
    )
    parser.add_argument(
        "--data-layout",
        default="",
        choices=("spans", "flat"),
        help="the cluster data root holds span-<N>/ directories, or CSVs directly (kubeflow.data_layout; "
        "default: as the local data root)",
    )
    parser.add_argument(
        "--beam-arg",
        action="append",
        default=[],
        dest="beam_args",
        help="a Beam flag for every Beam component, e.g. --beam-arg=--runner=FlinkRunner (repeatable)",
    )


def main(args: argparse.Namespace) -> int:
    """Runs `conveyor compile`; returns the exit code."""
    from pipeline.config import ConfigError, load_config

    try:
        config = load_config(args.config)
        overrides = KubeflowConfig(
            pipeline_root=args.pipeline_root,
            data_root=args.data_root,
            serving_root=args.serving_root,
            image=args.image,
            beam_args=tuple(args.beam_args),
            serving_pvc=args.serving_pvc,
            data_layout=args.data_layout,
        )
        config = cluster_config(config, overrides)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from kubeflow.open_source_kfp import NotRunnable

    try:
        path = compile_pipeline(config, args.output)
    except NotRunnable as err:
        print(f"error: the compiled pipeline would not run on open-source Kubeflow Pipelines: {err}", file=sys.stderr)
        return 2
    print(f"compiled pipeline '{config.name}' for Kubeflow Pipelines: {path}")
    print(f"  image {config.kubeflow.image}; Beam args {' '.join(config.beam_args) or '(none)'}")
    layout = f"newest {SPAN_PATTERN} per run" if config.span_pattern else "every CSV under it"
    print(f"  data {config.data_root}: {layout} (kubeflow.data_layout / --data-layout to change)")
    if config.kubeflow.serving_pvc:
        nodes = ", ".join(SERVING_ROOT_NODES[: 3 if config.predict is not None else 2])
        print(f"  {nodes} mount PersistentVolumeClaim {config.kubeflow.serving_pvc} at {config.output.serving_root}")
    else:
        print(f"  no volume mounted at {config.output.serving_root}: pass --serving-pvc (kubeflow/README.md, Serving)")
    return 0


if __name__ == "__main__":
    from pipeline.environment import prepare_environment

    prepare_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
