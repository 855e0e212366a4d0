"""Serving: what happens to pushed models after the pipeline, speaking TensorFlow Serving's formats.

defaults.py (light defaults for the CLI), errors.py (a refused request), models.py (the versions
under a serving root, loaded and unloaded), json_tensors.py (TF Serving's JSON <-> tensors),
classify.py (Classify and Regress), rest.py (its REST API), server.py (ModelServer, the threads).
gRPC, request logs, batch prediction and monitoring belong here too.
May import components/ (the publisher's layout, tf.Example encoding) and pipeline.config; never the CLI.
"""
