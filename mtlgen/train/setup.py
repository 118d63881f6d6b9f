"""What a training run is built from: its tasks, the network (with the cohort's growth prior), the
datasets and their loaders, and the fingerprint that says whether a saved run can be resumed."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from mtlgen.config import Params
from mtlgen.data.dataset import LongitudinalDataset
from mtlgen.data.splits import Split
from mtlgen.data.trajectories import volume_trajectories
from mtlgen.io.series import PatientSeries
from mtlgen.models.mtl_net import TASKS, MultiTaskNet
from mtlgen.models.priors import fit_growth_prior
from mtlgen.train.distributed import Processes

log = logging.getLogger(__name__)


def resolve_tasks(task: str) -> tuple[str, ...]:
    """``all`` -> every task (the multi-task model); a task name -> that single task."""
    if task == "all":
        return TASKS
    if task not in TASKS:
        raise ValueError(f"task {task!r}: expected 'all' or one of {TASKS}")
    return (task,)


def model_kwargs(params: Params, tasks: Sequence[str]) -> dict[str, Any]:
    """Constructor arguments of ``MultiTaskNet`` from the settings (its checkpoint's config)."""
    m = params.model
    return {
        "tasks": list(tasks),
        "contrasts": list(params.data.contrasts),
        "max_context": params.data.max_context,
        "spatial_dims": m.spatial_dims,
        "features": list(m.features),
        "time_dim": m.time_dim,
        "heads": m.heads,
        "sharing": m.sharing if len(tasks) > 1 else "hard",
        "soft_penalty": m.soft_penalty,
        "soft_lambda": m.soft_lambda,
        "increase": params.progression.increase,
        "decrease": params.progression.decrease,
    }


def build_model(
    params: Params, tasks: Sequence[str], train_series: Sequence[PatientSeries]
) -> tuple[MultiTaskNet, dict[str, list[float]]]:
    """The network (seeded), its progression head started from the training patients' Gompertz
    fit when it has one; returns the model and that growth prior ({} without one)."""
    torch.manual_seed(params.seed)
    model = MultiTaskNet(**model_kwargs(params, tasks))
    if "progression" not in tasks:
        return model, {}
    cases = volume_trajectories(train_series, params.data.max_context)
    if not len(cases):
        return model, {}
    capacity, weight = fit_growth_prior(
        cases.volumes, cases.years, cases.valid, cases.ref, cases.truth
    )
    model.set_growth_prior(capacity, weight)
    prior = {"capacity_ml": capacity.tolist(), "weight": weight.tolist()}
    log.info(
        "growth prior from %d training cases: Gompertz weight %s towards capacity %s ml"
        " (core, whole lesion)",
        len(cases),
        [round(w, 2) for w in prior["weight"]],
        [round(c, 2) for c in prior["capacity_ml"]],
    )
    return model, prior


@dataclass(frozen=True)
class TrainingData:
    """The split's training and validation patients as datasets and loaders."""

    train_series: list[PatientSeries]
    train: DataLoader
    sampler: DistributedSampler  # call ``set_epoch`` before each epoch
    val: DataLoader

    def set_epoch(self, epoch: int) -> None:
        """Shuffle and augment for ``epoch`` (deterministic for a seed)."""
        self.sampler.set_epoch(epoch)
        self.train.dataset.set_epoch(epoch)


def split_series(
    series: Sequence[PatientSeries], split: Split
) -> tuple[list[PatientSeries], list[PatientSeries]]:
    """The series of the split's training and validation patients (the training patients when
    it has no validation ones); fails if a listed patient has no series or no training patient
    has a labelled visit."""
    by_id = {s.patient: s for s in series}
    missing = [p for p in (*split.train, *split.val) if p not in by_id]
    if missing:
        raise ValueError(f"split lists patients absent from the series: {missing[:5]}")
    train_series = [by_id[p] for p in split.train]
    val_series = [by_id[p] for p in split.val] or train_series
    if not train_series:
        raise ValueError("split has no training patients")
    if not any(v.label is not None for s in train_series for v in s.visits):
        raise ValueError(
            f"none of the {len(train_series)} training patients has a labelled visit: training "
            "needs lesion labels (BIDS derivatives/labels, or a manifest's 'label' column); to "
            "segment and forecast unlabelled patients, predict with a model trained elsewhere "
            "(mtlgen predict)"
        )
    return train_series, val_series


def build_data(
    params: Params,
    series: Sequence[PatientSeries],
    split: Split,
    tasks: Sequence[str],
    procs: Processes,
) -> TrainingData:
    """Datasets of the split's training patients (augmented, masks dropped out for ``seg``) and
    validation patients (the training patients when the split has none), and their loaders."""
    train_series, val_series = split_series(series, split)
    dropout = params.data.mask_dropout if "seg" in tasks else 0.0
    prog, dims, seed = params.progression, params.model.spatial_dims, params.seed
    train_ds, val_ds = (
        LongitudinalDataset(
            s, params.data, prog.increase, prog.decrease, dims, augment, seed, dropout
        )
        for s, augment in ((train_series, True), (val_series, False))
    )
    if len(train_ds) == 0:
        raise ValueError("training patients offer no samples (each needs >= 2 visits)")
    sampler = DistributedSampler(
        train_ds, num_replicas=procs.world, rank=procs.rank, shuffle=True, seed=seed
    )
    pin = procs.device.type == "cuda"
    batch = params.train.batch_size
    return TrainingData(
        train_series,
        DataLoader(train_ds, batch_size=batch, sampler=sampler, pin_memory=pin),
        sampler,
        DataLoader(val_ds, batch_size=batch, shuffle=False, pin_memory=pin),
    )


def fingerprint(params: Params, tasks: Sequence[str], split: Split) -> str:
    """What must match for a saved run to be resumed (not epochs, device or progress display)."""
    train = params.train.model_dump(
        mode="json",
        exclude={
            "out_dir",
            "epochs",
            "patience",
            "min_improvement",
            "device",
            "threads",
            "progress",
        },
    )
    blob = {
        "seed": params.seed,
        "data": params.data.model_dump(mode="json"),
        "model": params.model.model_dump(mode="json"),
        "progression": params.progression.model_dump(mode="json"),
        "train": train,
        "tasks": list(tasks),
        "split": split.sha256(),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()
