"""The registry: what ML Metadata says about runs and pushed versions, in one place.

lineage.py reads the store (runs, executions, artifacts); runs.py and versions.py define a run and a
version (and rollback); summary.py and record.py put them into words; model_card.py draws a version's
card. The CLI, the local runner and (later) the UI read through these modules and keep no copy.
May import components/ (the pusher's publisher, feature helpers) and pipeline.config; never the CLI.
"""


def __getattr__(name: str):
    # TFX's Kubeflow entrypoint imports a custom artifact class by its type name, `registry.ModelCard`
    # (tfx/orchestration/kubeflow/v2/container/kubeflow_v2_entrypoint_utils.py); imported on demand, so
    # that reading the registry does not import TFX.
    if name == "ModelCard":
        from registry.card_gen import ModelCard

        return ModelCard
    raise AttributeError(f"module 'registry' has no attribute {name!r}")
