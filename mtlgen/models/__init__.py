"""Spatio-temporal multi-task networks and their checkpoints."""
