"""Prefect flows: thin wrappers over mtlgen library functions (docs/orchestration.md)."""
