"""Torch dataset of longitudinal samples: up to K context visits and one target visit.

One item holds, for K context slots (left-aligned, padded; ``visit_valid`` marks real ones):
images of every contrast as channels (zeros where a contrast is missing, ``contrast_present``
says which), masks with ``mask_present`` / ``mask_input`` (a hidden mask is a target, not an
input), and time as years from the target (negative = before). Targets: the target image and
mask, lesion-core and whole-lesion volumes (ml) and the progression status relative to the
reference visit, the latest context visit before the target.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from monai.utils import convert_to_tensor
from torch.utils.data import Dataset

from mtlgen.config import DataConfig
from mtlgen.data.augment import sample_augmentation
from mtlgen.data.samples import SampleSpec, enumerate_samples
from mtlgen.io.series import PatientSeries, VisitArrays, load_visit
from mtlgen.progression import (
    DAYS_PER_YEAR,
    STATUSES,
    lesion_volumes_ml,
    progression_status,
    voxel_volume_ml,
)


def reference_slot(context_days: Sequence[float], target_days: float) -> int:
    """Index of the latest context visit before the target (the first one if none is)."""
    before = [i for i, d in enumerate(context_days) if d <= target_days]
    return before[-1] if before else 0


def lesion_slice(label: np.ndarray | None, depth: int) -> int:
    """Axial slice with the most lesion voxels (the middle slice without a lesion)."""
    if label is None or not (label > 0).any():
        return depth // 2
    return int((label > 0).sum(axis=(0, 1)).argmax())


def encode_context(
    visits: Sequence[VisitArrays],
    target_days: float,
    contrasts: Sequence[str],
    max_context: int,
    spatial_dims: int = 3,
) -> dict[str, torch.Tensor]:
    """Model inputs from context visits ordered by time (used by the dataset and the predictor)."""
    if not visits:
        raise ValueError("context needs at least one visit")
    if len(visits) > max_context:
        visits = visits[-max_context:]
    ref = reference_slot([v.days for v in visits], target_days)
    shape = next(iter(visits[0].images.values())).shape
    slice_z = lesion_slice(visits[ref].label, shape[2]) if spatial_dims == 2 else None
    grid = shape[:2] if spatial_dims == 2 else shape
    images = np.zeros((max_context, len(contrasts), *grid), np.float32)
    present = np.zeros((max_context, len(contrasts)), np.float32)
    masks = np.zeros((max_context, *grid), np.int64)
    mask_present = np.zeros(max_context, bool)
    valid = np.zeros(max_context, bool)
    years = np.zeros(max_context, np.float32)
    for k, visit in enumerate(visits):
        for c, name in enumerate(contrasts):
            if name in visit.images:
                image = visit.images[name]
                if image.shape != shape:
                    raise ValueError(
                        f"visit {visit.visit} contrast {name}: shape {image.shape} != {shape}"
                    )
                images[k, c] = image if slice_z is None else image[..., slice_z]
                present[k, c] = 1.0
        if visit.label is not None:
            masks[k] = visit.label if slice_z is None else visit.label[..., slice_z]
            mask_present[k] = True
        valid[k] = True
        years[k] = (visit.days - target_days) / DAYS_PER_YEAR
    if not present[: len(visits)].any(axis=0).all():
        missing = [n for c, n in enumerate(contrasts) if not present[:, c].any()]
        raise ValueError(f"no context visit has contrast(s) {missing}; expected one of {contrasts}")
    return {
        "images": torch.from_numpy(images),
        "contrast_present": torch.from_numpy(present),
        "masks": torch.from_numpy(masks),
        "mask_present": torch.from_numpy(mask_present),
        "mask_input": torch.from_numpy(mask_present.copy()),
        "visit_valid": torch.from_numpy(valid),
        "years": torch.from_numpy(years),
        "ref_slot": torch.tensor(ref),
        "voxel_ml": torch.tensor(voxel_volume_ml(visits[0].affine), dtype=torch.float32),
        "slice_z": torch.tensor(-1 if slice_z is None else slice_z),
    }


class LongitudinalDataset(Dataset):
    """All (context -> target) samples of ``series`` from ``enumerate_samples``.

    Visits are read once and cached. With ``mask_dropout`` > 0 each context mask is hidden with
    that probability, at least one per sample (the segmentation target), and every context mask
    of a ``cfg.unlabelled_fraction`` of the samples (as in a series that has no mask at all). Augmentation (only
    when ``train``) and mask dropout are drawn from a generator seeded by (seed, epoch, index):
    call ``set_epoch`` so a resumed run sees the same draws.
    """

    def __init__(
        self,
        series: Sequence[PatientSeries],
        cfg: DataConfig,
        increase: float,
        decrease: float,
        spatial_dims: int = 3,
        train: bool = False,
        seed: int = 0,
        mask_dropout: float | None = None,
    ) -> None:
        self.series = {s.patient: s for s in series}
        self.cfg, self.spatial_dims, self.train, self.seed = cfg, spatial_dims, train, seed
        self.increase, self.decrease = increase, decrease
        self.mask_dropout = cfg.mask_dropout if mask_dropout is None else mask_dropout
        self.samples: list[SampleSpec] = [
            spec
            for s in series
            for spec in enumerate_samples(s, cfg.max_context, cfg.reconstruction)
        ]
        self.augment = sample_augmentation(cfg, spatial_dims) if train and cfg.augment else None
        self.epoch = 0
        self._cache: dict[tuple[str, int], VisitArrays] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def _visit(self, patient: str, index: int) -> VisitArrays:
        key = (patient, index)
        if key not in self._cache:
            self._cache[key] = load_visit(self.series[patient].visits[index])
        return self._cache[key]

    def _rng(self, index: int) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.seed}:{self.epoch}:{index}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "big"))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        spec = self.samples[index]
        context = [self._visit(spec.patient, i) for i in spec.context]
        target = self._visit(spec.patient, spec.target)
        if target.label is None:
            raise ValueError(f"patient {spec.patient} visit {target.visit}: training needs a mask")
        item = encode_context(
            context, target.days, self.cfg.contrasts, self.cfg.max_context, self.spatial_dims
        )
        z = int(item["slice_z"])
        grid = item["images"].shape[2:]
        timage = np.zeros((len(self.cfg.contrasts), *grid), np.float32)
        tpresent = np.zeros(len(self.cfg.contrasts), np.float32)
        for c, name in enumerate(self.cfg.contrasts):
            if name in target.images:
                timage[c] = target.images[name] if z < 0 else target.images[name][..., z]
                tpresent[c] = 1.0
        tmask = target.label if z < 0 else target.label[..., z]
        rng = self._rng(index)
        if self.augment is not None:
            k, c = item["images"].shape[:2]
            self.augment.set_random_state(seed=int(rng.integers(2**31)))
            stacked = {
                "image": torch.cat(
                    [item["images"].reshape(k * c, *grid), torch.from_numpy(timage)]
                ),
                "mask": torch.cat(
                    [item["masks"], torch.from_numpy(tmask[None].astype(np.int64))]
                ).float(),
            }
            out = self.augment(stacked)
            images = convert_to_tensor(out["image"], track_meta=False).float()
            masks = convert_to_tensor(out["mask"], track_meta=False).round().long()
            item["images"] = (
                images[: k * c].reshape(k, c, *grid)
                * item["contrast_present"][(...,) + (None,) * len(grid)]
            )
            timage = images[k * c :].numpy() * tpresent[(...,) + (None,) * len(grid)]
            item["masks"], tmask = masks[:k], masks[k].numpy()
        if self.mask_dropout > 0:  # at least one hidden mask: the segmentation target
            maskable = (item["visit_valid"] & item["mask_present"]).numpy()
            hide = (rng.random(self.cfg.max_context) < self.mask_dropout) & maskable
            if rng.random() < self.cfg.unlabelled_fraction:  # a series with no mask at all
                hide = maskable.copy()
            if maskable.any() and not hide.any():
                hide[rng.choice(np.flatnonzero(maskable))] = True
            item["mask_input"] = item["mask_input"] & ~torch.from_numpy(hide)
        vox = float(item["voxel_ml"])
        ref = int(item["ref_slot"])
        ref_core = float((item["masks"][ref] == 1).sum()) * vox
        core, lesion = lesion_volumes_ml(np.asarray(tmask), vox)
        status = progression_status(ref_core, core, self.increase, self.decrease)
        item.update(
            target_image=torch.as_tensor(timage, dtype=torch.float32),
            target_present=torch.from_numpy(tpresent),
            target_mask=torch.as_tensor(np.asarray(tmask), dtype=torch.long),
            target_volume=torch.tensor([core, lesion], dtype=torch.float32),
            status=torch.tensor(STATUSES.index(status)),
            kind=torch.tensor(0 if spec.kind == "future" else 1),
        )
        return item
