"""mtlgen: longitudinal, generative multi-task learning for medical images."""

__version__ = "0.1.0"
