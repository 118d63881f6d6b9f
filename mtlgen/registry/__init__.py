"""The patient registry: every scan recorded with its hash, geometry, status and alignment."""
