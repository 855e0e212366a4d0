"""The data engineers' room: the curated schemas (<dataset>/schema.pbtxt, reviewed like code; see README.md)
and the tools that guard and change them: check.py (`conveyor data check`, and the run's input checks),
review.py (`conveyor schema diff/approve`), draft.py (`conveyor init`).
May import components/ (the data gate's anomaly wording) and pipeline.config; never the CLI.
"""
