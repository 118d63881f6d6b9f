"""A prediction's files, in the patient's own scan space (``native``) or on the model grid.

``native`` writes onto the grid of a visit's reference source scan (its affine, shape and
orientation), mapped back with the visit's ``to_baseline`` (``mtlgen.preprocess.native``);
``model`` keeps the model grid (canonical RAS, isotropic, aligned to the baseline). Files:
``<contrast>.nii.gz`` (float32; a generative predictor's sample mean), ``<contrast>_std.nii.gz``
(the samples' voxel-wise standard deviation, when there are samples; computed on the model grid,
then mapped), ``label.nii.gz`` (uint8) and ``lesion_prob.nii.gz`` (float32, when present).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from mtlgen.ids import check_token
from mtlgen.inference.prediction import Prediction
from mtlgen.io.nifti import save_nifti
from mtlgen.io.series import VisitVolumes, source_geometry
from mtlgen.preprocess.grid import Grid
from mtlgen.preprocess.native import image_to_source, label_to_source, prob_to_source

Space = Literal["native", "model"]
SPACES = ("native", "model")
STD = "_std"  # <contrast>_std.nii.gz: the samples' voxel-wise standard deviation


@dataclass(frozen=True)
class OutputGrid:
    """Where a prediction's volumes go: ``target`` (shape and affine written), from the model
    grid (``model_affine``) through ``to_baseline`` (None: the model grid itself)."""

    space: Space
    target: Grid
    model_affine: np.ndarray
    to_baseline: np.ndarray | None = None

    def image(self, volume: np.ndarray) -> np.ndarray:
        if self.to_baseline is None:
            return np.asarray(volume, dtype=np.float32)
        return image_to_source(volume, self.model_affine, self.target, self.to_baseline)

    def prob(self, volume: np.ndarray) -> np.ndarray:
        if self.to_baseline is None:
            return np.clip(np.asarray(volume, dtype=np.float32), 0.0, 1.0)
        return prob_to_source(volume, self.model_affine, self.target, self.to_baseline)

    def label(self, volume: np.ndarray) -> np.ndarray:
        if self.to_baseline is None:
            return np.asarray(volume, dtype=np.uint8)
        return label_to_source(volume, self.model_affine, self.target, self.to_baseline)


def output_grid(
    space: Space, visit: VisitVolumes, patient: str, model_affine: np.ndarray, model_shape
) -> OutputGrid:
    """The grid of ``visit``'s source scan (``native``; its file is read now and must exist)
    or the model grid (``model``)."""
    if space not in SPACES:
        raise ValueError(f"predict.space: expected one of {list(SPACES)}, got {space!r}")
    model = Grid(tuple(int(n) for n in model_shape), np.asarray(model_affine, dtype=np.float64))
    if space == "model":
        return OutputGrid("model", model, model.affine)
    shape, affine, to_baseline = source_geometry(visit, patient)
    return OutputGrid("native", Grid(shape, affine), model.affine, to_baseline)


def std_file(image: Path) -> Path:
    """The ``<contrast>_std.nii.gz`` beside a predicted ``<contrast>.nii.gz``."""
    return image.with_name(image.name.removesuffix(".nii.gz") + f"{STD}.nii.gz")


def image_files(folder: Path) -> list[Path]:
    """The predicted image (sample mean) per contrast that ``write_prediction`` wrote into
    ``folder``, by name."""
    return [
        path
        for path in sorted(Path(folder).glob("*.nii.gz"))
        if path.name not in {"label.nii.gz", "lesion_prob.nii.gz"}
        and not path.name.endswith(f"{STD}.nii.gz")
    ]


def write_prediction(pred: Prediction, grid: OutputGrid, folder: Path) -> dict[str, np.ndarray]:
    """Write ``pred``'s volumes on ``grid`` into ``folder`` as ``<name>.nii.gz``; return
    name -> the volume written."""
    volumes = {}
    for contrast, image in pred.images.items():
        name = check_token(contrast, "contrast")
        volumes[name] = grid.image(image)
        if pred.samples is not None and contrast in pred.samples:
            std = np.asarray(pred.samples[contrast], dtype=np.float32).std(axis=0)
            volumes[f"{name}{STD}"] = grid.image(std)
    volumes["label"] = grid.label(pred.label)
    if pred.lesion_prob is not None:
        volumes["lesion_prob"] = grid.prob(pred.lesion_prob)
    for name, volume in volumes.items():
        save_nifti(folder / f"{name}.nii.gz", volume, grid.target.affine)
    return volumes
