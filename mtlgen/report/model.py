"""The model a report shows: a local checkpoint, a registered version or alias (the champion by
default), or none."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mtlgen.config import Params
from mtlgen.inference.prediction import Predictor
from mtlgen.models.hub import WEIGHTS
from mtlgen.track.provenance import file_sha256


@contextmanager
def report_model(
    params: Params, checkpoint: Path | None, ref: str | None, use_model: bool = True
) -> Iterator[tuple[Predictor | None, dict[str, str] | None, str]]:
    """(predictor, its description, a note) for the report: ``checkpoint`` if given, else the
    registered model ``ref`` (default ``predict.model``); (None, None, why) with ``use_model``
    False or when the model registry has no such model. An unreachable tracking server raises
    ``TrackingUnavailable``."""
    from mtlgen.inference.model import load_predictor
    from mtlgen.track.versions import download_checkpoint

    if not use_model:
        yield None, None, "no model (--no-model)"
        return
    if checkpoint is not None:
        weights = file_sha256(checkpoint / WEIGHTS)[:12]
        model = {"checkpoint": checkpoint.name, "weights sha256": weights}
        yield load_predictor(checkpoint), model, f"checkpoint {checkpoint} ({weights})"
        return
    ref = ref or params.predict.model
    with tempfile.TemporaryDirectory(prefix="mtlgen-report-model-") as tmp:
        try:
            folder, version = download_checkpoint(params.tracking, tmp, ref)
        except LookupError as exc:
            yield None, None, f"no model ({exc})"
            return
        model = {"model_name": params.tracking.model_name, "version": version, "alias": ref}
        yield load_predictor(folder), model, f"{params.tracking.model_name} v{version} ({ref})"
