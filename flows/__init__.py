"""Prefect flows: thin wrappers over mtlgen library functions (docs/orchestration.md);
``flows.deployments`` lists them for scheduling (``python -m flows.deployments``).

Importing the package turns Prefect's anonymous usage telemetry off unless the environment
says otherwise: a hospital's pipeline sends nothing out (and offline, each attempt logs an
error). ``PREFECT_SERVER_ANALYTICS_ENABLED`` covers the server's heartbeat (the temporary
server inherits it), ``DO_NOT_TRACK`` the client's events.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
