"""Tracked pipeline stages: what every train/evaluate run records besides its own numbers.

``stage_run`` opens a run (fail fast, FAILED on crash) that already holds the flattened settings,
the environment, the data version (git commit + DVC hashes of the stage's inputs) and the split
file's hash, and refuses anything that contains a source patient ID from the registry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from mtlgen.config import Params
from mtlgen.track.logger import MlflowLogger
from mtlgen.track.privacy import source_ids
from mtlgen.track.provenance import data_version, environment, file_sha256
from mtlgen.track.run import tracked_run


_PASSWORD = re.compile(r"(://[^:/@\s\"]+:)[^\s\"]*@")


def settings_without_secrets(params: Params) -> dict:
    """``params`` as JSON-able dict with URL passwords (``user:secret@host``) masked."""
    text = json.dumps(params.model_dump(mode="json"))
    return json.loads(_PASSWORD.sub(r"\1***@", text))


@contextmanager
def stage_run(
    params: Params, stage: str, inputs: Sequence[Path | str], split_file: Path | None = None
) -> Iterator[MlflowLogger]:
    """A tracked run named ``stage`` with settings, environment and data version logged."""
    forbidden = source_ids(params.registry.url, params.registry.sqlite_timeout_s)
    with tracked_run(params.tracking, stage, {"mtlgen.stage": stage}, forbidden) as run:
        run.log_params(settings_without_secrets(params))
        run.log_params({"env": environment()})
        version = data_version([str(p) for p in inputs])
        if split_file is not None:
            version["split_sha256"] = file_sha256(split_file)
        run.log_params({"data": version})
        run.set_tags({"mtlgen.git_commit": version["git.commit"]})
        yield run


def log_evaluation(run: MlflowLogger, out_dir: Path) -> dict[str, float]:
    """Log the mean of every metric in ``out_dir/metrics.json`` as
    ``<predictor>.<kind>.<metric>`` and the evaluation's files as artifacts."""
    metrics = json.loads((out_dir / "metrics.json").read_text())
    means = {
        f"{predictor}.{kind}.{name}": entry["mean"]
        for predictor, kinds in metrics["results"].items()
        for kind, block in kinds.items()
        for name, entry in block.items()
        if entry.get("mean") is not None
    }
    run.log_metrics(means)
    run.log_params({"evaluation": {"split_sha256": metrics["meta"]["split_sha256"]}})
    for path in sorted(out_dir.iterdir()):
        if path.is_file():
            run.log_artifact(path, "evaluation")
    return means
