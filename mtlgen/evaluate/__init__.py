"""Evaluation of predictors (models and baselines) on held-out patients."""
