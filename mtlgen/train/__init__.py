"""Training of the multi-task and single-task models (``train_model``)."""
