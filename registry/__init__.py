"""The registry: what ML Metadata says about runs and pushed versions, in one place.

lineage.py reads the store (runs, executions, artifacts); runs.py and versions.py define a run and a
version (and rollback); summary.py and record.py put them into words; model_card.py draws a version's
card. The CLI, the local runner and (later) the UI read through these modules and keep no copy.
May import components/ (the pusher's publisher, feature helpers) and pipeline.config; never the CLI.
"""
