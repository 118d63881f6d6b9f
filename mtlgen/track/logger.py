"""An MLflow-backed logger with the interface training accepts: params, metrics, artifacts.

Every name and text value passes a privacy check first: a run must never carry a source patient
ID (only registry pseudonyms), so the logger refuses any name or string that contains one of
``forbidden`` as a whole token (``001`` matches ``sub-001`` but not ``1001``; numbers are not
checked, so ``lr=0.001`` passes).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
BATCH = 100


class PrivacyError(ValueError):
    """Something about to be logged contains a source patient identifier."""


def _strings(value: Any) -> Iterator[str]:
    """The text inside ``value`` (strings, paths, keys; recursively), not its numbers."""
    if isinstance(value, str | Path):
        yield str(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _strings(item)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class MlflowLogger:
    """Logs into one MLflow run (by id), checking each name and value against ``forbidden``."""

    def __init__(self, run_id: str, forbidden: Iterable[str] = ()) -> None:
        from mlflow import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient()
        self._params: dict[str, str] = {}
        ids = sorted({f for f in forbidden if f}, key=len, reverse=True)
        alternatives = "|".join(re.escape(i) for i in ids)
        self._pattern = (
            re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])") if ids else None
        )

    def _check(self, *texts: str) -> None:
        if self._pattern is None:
            return
        for text in texts:
            if self._pattern.search(text):
                raise PrivacyError(
                    f"refusing to log a name or value of {len(text)} chars: it contains a source "
                    "patient ID; log registry pseudonyms only"
                )

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a (nested) dict as flattened ``section.key`` params.

        MLflow params are write-once: a key logged again with the same value is skipped; with
        another value it is skipped with a warning (a logging clash must not stop training).
        """
        from mlflow.entities import Param

        flat = flatten(params)
        for key, value in flat.items():
            self._check(key, *_strings(value))
        items = []
        for key, value in flat.items():
            text = str(value)[:MAX_PARAM_CHARS]
            if key in self._params:
                if self._params[key] != text:
                    log.warning("param %s already logged as %r; keeping it", key, self._params[key])
                continue
            self._params[key] = text
            items.append((key, text))
        for i in range(0, len(items), BATCH):
            batch = [Param(k, v) for k, v in items[i : i + BATCH]]
            self.client.log_batch(self.run_id, params=batch)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric (nested) metrics at ``step``; non-numeric leaves are an error."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = []
        for key, value in flatten(metrics).items():
            self._check(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                try:
                    value = float(value)  # numpy / torch scalars
                except (TypeError, ValueError):
                    raise TypeError(f"metric {key!r}: expected a number, got {value!r}") from None
            batch.append(Metric(key, float(value), now, step or 0))
        for i in range(0, len(batch), BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i : i + BATCH])

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Upload a file or folder; only its name (not its local path) enters the run."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: artifact not found")
        names = [p.name for p in path.rglob("*")] if path.is_dir() else []
        self._check(path.name, artifact_path or "", *names)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path or path.name)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Mapping[str, Any], name: str) -> None:
        """Write ``obj`` as a JSON (or YAML, by suffix) artifact ``name``."""
        self._check(name, *_strings(obj))
        self.client.log_dict(self.run_id, dict(obj), name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self._check(key, str(value))
            self.client.set_tag(self.run_id, key, str(value))
