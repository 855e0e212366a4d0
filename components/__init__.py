"""Code that runs inside pipeline components, referenced by dotted path from the DAG (and the compiled
Kubeflow spec): preprocessing.preprocessing_fn, model.run_fn, warm_start.WarmStartModelStrategy,
example_gen.CsvExampleGen, data_gate/ (DataGate), pusher/ (SafePusher); signatures.py is what the exported
model answers (predict, classify or regress, transform). features.py and examples.py are
the helpers they share; request_logs.py reads TF Serving's request logs back into examples and
statistics (for the data gate and `conveyor monitor`). cluster_state.py keeps the compiled pipeline's
records (latest blessed model, previous statistics) in the artifact store; batch_scoring*.py and
batch_predict.py score tables for `conveyor predict` and the BatchPredict stage; example_gen_csv.py and
example_gen_encode.py are CsvExampleGen's reader and encoder.
May import pipeline.config and its section parsers (the typed config) and the libraries; nothing else of
the project, so a component's image needs no more than this package and the config.
"""
