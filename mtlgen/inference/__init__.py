"""Inference: everything that answers a follow-up, for evaluation, prediction and the flows.

``prediction`` (what every predictor answers), ``model`` (a trained checkpoint as a predictor),
``baselines`` (copy-last, volume extrapolation), ``intervals`` (calibrated volume intervals) and
``followup`` (a patient's predicted visit written to disk).
"""
