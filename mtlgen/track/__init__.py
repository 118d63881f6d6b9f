"""Experiment tracking and the model registry (MLflow), plus data/environment provenance.

MLflow is imported inside functions only: ``import mtlgen.track`` stays cheap.
"""
