"""Code that runs inside pipeline components, referenced by dotted path from the DAG (and the compiled
Kubeflow spec): preprocessing.preprocessing_fn, model.run_fn, warm_start.WarmStartModelStrategy,
example_gen.CsvExampleGen, data_gate/ (DataGate), pusher/ (SafePusher); signatures.py is what the exported
model answers (predict, classify or regress, transform). features.py and examples.py are
the helpers they share; request_logs.py reads TF Serving's request logs back into examples and
statistics (for the data gate and `conveyor monitor`).
May import pipeline.config (the typed config) and the libraries; nothing else of the project, so a
component's image needs no more than this package and the config.
"""
