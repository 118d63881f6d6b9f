"""The flows package keeps Prefect's telemetry off unless the environment turns it on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_PRINT = (
    "import flows, os; "
    "print(os.environ['PREFECT_SERVER_ANALYTICS_ENABLED'], os.environ['DO_NOT_TRACK'])"
)


def _settings(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _PRINT],
        env=env,
        cwd=Path(__file__).resolve().parents[1],  # the repository root, where flows/ is
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_importing_flows_turns_prefect_telemetry_off_by_default():
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK")
    }
    assert _settings(env) == "false 1"


def test_a_users_own_telemetry_setting_is_kept():
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "true", "DO_NOT_TRACK": "0"}
    assert _settings(env) == "true 0"
