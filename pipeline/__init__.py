"""The DAG and its local runner: `create_pipeline(config)` (pipeline.py), the typed config (config.py), the
local run (runner.py, speedups.py), and the ground every room stands on (config.py, environment.py,
metadata.py: where ML Metadata lives).

May import components/ (the DAG wires them), registry/ (the local run records provenance and writes the
model card) and schema/ (input checks). The ground imports nothing of the project but itself, so
any room may import them; nothing else here is imported by components/.
"""
