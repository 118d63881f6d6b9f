"""The model a report shows: a local checkpoint, a registered version or alias (the champion by
default), or none. It is loaded only when a page needs it: an unchanged cohort loads no model."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mtlgen.config import Params
from mtlgen.inference.prediction import Predictor
from mtlgen.track.provenance import file_sha256


@dataclass
class ReportModel:
    """``described``: what identifies the model (its pages' fingerprints hold it), None without
    a model; ``note``: one line for people; ``folder``: its checkpoint."""

    described: dict[str, str] | None
    note: str
    folder: Path | None = None
    _loaded: Predictor | None = field(default=None, repr=False)

    def predictor(self) -> Predictor | None:
        """The checkpoint's predictor, loaded on first use; None without a model."""
        if self.folder is not None and self._loaded is None:
            from mtlgen.inference.model import load_predictor

            self._loaded = load_predictor(self.folder)
        return self._loaded


NO_MODEL = ReportModel(None, "no model")


@contextmanager
def report_model(
    params: Params, checkpoint: Path | None, ref: str | None, use_model: bool = True
) -> Iterator[ReportModel]:
    """The report's model: ``checkpoint`` if given, else the registered model ``ref`` (default
    ``predict.model``); none with ``use_model`` False or when the model registry has no such
    model (the note says why). An unreachable tracking server raises ``TrackingUnavailable``."""
    if not use_model:
        yield ReportModel(None, "no model (--no-model)")
        return
    if checkpoint is not None:
        from mtlgen.models.hub import WEIGHTS  # (imports torch)

        if not (checkpoint / WEIGHTS).is_file():
            raise FileNotFoundError(f"{checkpoint / WEIGHTS}: checkpoint file missing")
        weights = file_sha256(checkpoint / WEIGHTS)[:12]
        described = {"checkpoint": checkpoint.name, "weights sha256": weights}
        yield ReportModel(described, f"checkpoint {checkpoint} ({weights})", checkpoint)
        return
    from mtlgen.track.versions import download_checkpoint  # (imports MLflow)

    ref = ref or params.predict.model
    with tempfile.TemporaryDirectory(prefix="mtlgen-report-model-") as tmp:
        try:
            folder, version = download_checkpoint(params.tracking, tmp, ref)
        except LookupError as exc:
            yield ReportModel(None, f"no model ({exc})")
            return
        name = params.tracking.model_name
        described = {"model_name": name, "version": version, "alias": ref}
        yield ReportModel(described, f"{name} v{version} ({ref})", folder)
