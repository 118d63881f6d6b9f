"""Imports every module that registers an architecture (``checkpoint.register_architecture``)."""
