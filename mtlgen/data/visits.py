"""Torch dataset of single labelled visits: the image-only segmenter's samples (a visit's
contrasts as channels, zeros where one is missing, and its label), with the same spatial
augmentation as the longitudinal samples."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from monai.utils import convert_to_tensor
from torch.utils.data import Dataset

from mtlgen.config import DataConfig
from mtlgen.data.augment import sample_augmentation
from mtlgen.io.series import PatientSeries, VisitArrays, load_visit


def visit_channels(visit: VisitArrays, contrasts: Sequence[str]) -> np.ndarray:
    """[C, *S] float32: the visit's images of ``contrasts`` in order, zeros where missing."""
    shape = next(iter(visit.images.values())).shape
    out = np.zeros((len(contrasts), *shape), np.float32)
    for c, name in enumerate(contrasts):
        if name in visit.images:
            out[c] = visit.images[name]
    return out


class VisitDataset(Dataset):
    """Every labelled visit of ``series``: ``image`` [C, *S] and ``label`` [*S] int64. Visits
    are read once and cached; augmentation (when ``train``) is drawn from a generator seeded by
    (seed, epoch, index): call ``set_epoch``."""

    def __init__(
        self,
        series: Sequence[PatientSeries],
        cfg: DataConfig,
        train: bool = False,
        seed: int = 0,
    ) -> None:
        self.visits = [v for s in series for v in s.visits if v.label is not None]
        self.cfg, self.seed, self.epoch = cfg, seed, 0
        self.augment = sample_augmentation(cfg, 3) if train and cfg.augment else None
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.visits)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index not in self._cache:
            arrays = load_visit(self.visits[index])
            self._cache[index] = (visit_channels(arrays, self.cfg.contrasts), arrays.label)
        image, label = self._cache[index]
        present = torch.from_numpy((image != 0).any(axis=tuple(range(1, image.ndim))))
        image_t, label_t = torch.from_numpy(image), torch.from_numpy(label.astype(np.int64))
        if self.augment is not None:
            digest = hashlib.sha256(f"{self.seed}:{self.epoch}:{index}".encode()).digest()
            self.augment.set_random_state(seed=int.from_bytes(digest[:4], "big"))
            out = self.augment({"image": image_t, "mask": label_t[None].float()})
            image_t = convert_to_tensor(out["image"], track_meta=False).float()
            image_t = image_t * present.reshape(-1, *([1] * label.ndim))  # missing stays zero
            label_t = convert_to_tensor(out["mask"], track_meta=False)[0].round().long()
        return {"image": image_t, "label": label_t}
