"""Everything cluster-specific: `conveyor compile` (kubeflow_runner.py, an entry point on top of
pipeline/), the image's Dockerfile, and the deploy docs (README.md). May import pipeline/; no room
imports it but the CLI.
"""
