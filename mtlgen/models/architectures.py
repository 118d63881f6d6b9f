"""Imports every module that registers an architecture (``checkpoint.register_architecture``)."""

import mtlgen.models.mtl_net  # noqa: F401
