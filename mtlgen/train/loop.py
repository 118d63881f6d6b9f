"""``train_model``: one loop for the multi-task model and its single-task baselines.

Seeded and deterministic on CPU (data order, augmentation and mask dropout are keyed by
(seed, epoch, sample)), resumable from ``<out>/last`` after a crash, early-stopped on the
validation loss, data-parallel under torchrun (``DistributedDataParallel`` and a
``DistributedSampler``), CUDA with bfloat16 autocast when available. Writes into ``out_dir``:

- ``best/`` and ``last/``: checkpoints (``mtlgen.train.checkpoints``); ``last/`` also holds
  ``train_state.safetensors`` (weights, optimizer, loss weighting, counters) to resume.
- the records of ``mtlgen.train.records``: history, task affinity, ``train_result.json``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mtlgen.config import Params
from mtlgen.data.splits import Split
from mtlgen.io.atomic import write_text_atomic
from mtlgen.io.series import PatientSeries
from mtlgen.losses.weighting import LossWeighting
from mtlgen.train.checkpoints import save_checkpoint
from mtlgen.train.distributed import (
    Processes,
    data_parallel,
    replica_difference,
    start_processes,
)
from mtlgen.train.objective import TrainingObjective
from mtlgen.train.records import TrainResult, write_affinity, write_history
from mtlgen.train.setup import build_data, build_model, fingerprint, model_kwargs, resolve_tasks
from mtlgen.train.state import load_train_state, read_loop, save_train_state
from mtlgen.train.stopping import record_validation
from mtlgen.train.trainer import EpochStats, Trainer

log = logging.getLogger(__name__)


class TrainLogger(Protocol):
    """What ``train_model`` reports to (e.g. an MLflow-backed logger)."""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: Path | str) -> None: ...


def _fresh_loop(fingerprint_: str) -> dict[str, Any]:
    """The counters of a run that has not trained yet (saved with every ``last/`` state)."""
    return {
        "fingerprint": fingerprint_,
        "epoch": 0,
        "best": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "bar": math.inf,  # what the next epoch must beat to count as progress
        "history": [],
        "affinity": [],
        "train_time_s": 0.0,
        "affinity_time_s": 0.0,
        "stopped": False,
    }


def _start_or_resume(
    last_dir: Path,
    fingerprint_: str,
    objective: TrainingObjective,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    resume: bool,
) -> dict[str, Any]:
    """Resume from ``last_dir`` when it was trained with the same settings, else start."""
    saved = read_loop(last_dir) if resume else None
    if saved is None:
        return _fresh_loop(fingerprint_)
    if saved.get("fingerprint") != fingerprint_:
        log.warning("%s was trained with other settings; starting afresh", last_dir)
        return _fresh_loop(fingerprint_)
    modules = {"model": objective.net, "weighting": objective.weighting}
    state, _ = load_train_state(last_dir, modules, optimizer, device)
    log.info("resuming %s from epoch %d", last_dir, state["epoch"])
    return {"affinity_time_s": 0.0, **state}


def _record_epoch(
    loop: dict[str, Any],
    stats: EpochStats,
    val: dict[str, float],
    weights,
    t_epoch: float,
    min_improvement: float,
) -> bool:
    """Update the counters and the history with one epoch (early stopping included); return
    whether it improved on the best validation loss."""
    epoch = loop["epoch"] + 1
    loop["epoch"] = epoch
    loop["train_time_s"] += time.perf_counter() - t_epoch
    loop["affinity_time_s"] += stats.affinity_s
    improved = val["val_loss"] < loop["best"] - 1e-6
    if improved:
        loop.update(best=val["val_loss"], best_epoch=epoch, best_val=val)
    record_validation(loop, val["val_loss"], min_improvement)
    row = {
        "epoch": epoch,
        **{f"train_loss_{t}": v for t, v in stats.means.items()},
        **{f"weight_{t}": w for t, w in zip(stats.means, weights, strict=True)},
        **val,
        "epoch_time_s": time.perf_counter() - t_epoch,
        "train_time_s": loop["train_time_s"],
        "affinity_time_s": stats.affinity_s,
    }
    loop["history"].append(row)
    if stats.cosines:
        loop["affinity"].append((sum(stats.cosines) / len(stats.cosines)).tolist())
    return improved


def _save_epoch(
    out_dir: Path,
    trainer: Trainer,
    loop: dict[str, Any],
    meta: dict[str, Any],
    val: dict[str, float],
    improved: bool,
    logger: TrainLogger | None,
) -> None:
    """Checkpoints (best when improved, last always), resumable state, history, metrics."""
    net, weighting = trainer.objective.net, trainer.objective.weighting
    epoch_meta = {**meta, "epoch": loop["epoch"], "val": val}
    if improved:
        save_checkpoint(out_dir / "best", net, epoch_meta)
    save_checkpoint(out_dir / "last", net, epoch_meta)
    modules = {"model": net, "weighting": weighting}
    save_train_state(out_dir / "last", modules, trainer.optimizer, loop)
    write_history(loop["history"], out_dir)
    if logger is not None:
        row = loop["history"][-1]
        logger.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, loop["epoch"])


def _finish(
    out_dir: Path,
    trainer: Trainer,
    loop: dict[str, Any],
    procs: Processes,
    t_start: float,
    logger: TrainLogger | None,
) -> TrainResult:
    """The run's result; the main process writes the records and logs them."""
    net = trainer.objective.net
    replica_diff = replica_difference(net) if procs.world > 1 else None
    history_csv, history_json = out_dir / "history.csv", out_dir / "history.json"
    affinity_json = affinity_png = None
    if procs.main:
        history_csv, history_json = write_history(loop["history"], out_dir)
        if loop["affinity"]:
            affinity_json, affinity_png = write_affinity(
                [np.array(m) for m in loop["affinity"]], trainer.shared_tasks, out_dir
            )
    result = TrainResult(
        checkpoint_dir=out_dir / "best",
        last_dir=out_dir / "last",
        tasks=trainer.tasks,
        wall_time_s=time.perf_counter() - t_start,
        total_train_time_s=loop["train_time_s"],
        affinity_time_s=loop["affinity_time_s"],
        epochs_run=loop["epoch"],
        best_epoch=loop["best_epoch"],
        best_val=loop.get("best_val", {}),
        history_csv=history_csv,
        history_json=history_json,
        affinity_json=affinity_json,
        affinity_png=affinity_png,
        world_size=procs.world,
        replica_max_abs_diff=replica_diff,
    )
    if procs.main:
        path = write_text_atomic(out_dir / "train_result.json", result.to_json())
        for artifact in (path, history_csv, affinity_json, affinity_png):
            if logger is not None and artifact is not None:
                logger.log_artifact(artifact)
    return result


def train_model(
    params: Params,
    series: Sequence[PatientSeries],
    split: Split,
    out_dir: Path | str | None = None,
    task: str = "all",
    logger: TrainLogger | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train the multi-task model (``task="all"``) or a single-task baseline on ``split.train``,
    early-stopping on ``split.val``. Resumes from ``out_dir/last`` when its settings match."""
    t_start = time.perf_counter()
    tasks, cfg = resolve_tasks(task), params.train
    if cfg.pcgrad and params.model.sharing == "soft" and len(tasks) > 1:
        raise ValueError("train.pcgrad needs shared parameters; model.sharing 'soft' has none")
    out_dir = Path(out_dir or cfg.out_dir)
    procs = start_processes(cfg.device, cfg.threads)
    data = build_data(params, series, split, tasks, procs)
    net, growth_prior = build_model(params, tasks, data.train_series)
    weighting = LossWeighting(tasks, cfg.weighting, cfg.task_weights, cfg.dwa_temperature)
    objective = TrainingObjective(
        net.to(procs.device),
        weighting.to(procs.device),
        tasks,
        cfg.image_gradient_weight,
        cfg.image_lesion_weight,
        amp=cfg.amp and procs.device.type == "cuda",
    )
    optimizer = torch.optim.AdamW(objective.trainable(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loop = _start_or_resume(
        out_dir / "last",
        fingerprint(params, tasks, split),
        objective,
        optimizer,
        procs.device,
        resume,
    )
    trainer = Trainer(
        objective, data_parallel(objective, procs), optimizer, cfg, procs, params.seed
    )
    meta = {
        "split_sha256": split.sha256(),
        "seed": params.seed,
        "weighting": cfg.weighting,
        "pcgrad": cfg.pcgrad,
        "growth_prior": growth_prior,
    }
    if logger is not None and procs.main:
        kwargs = model_kwargs(params, tasks)
        logger.log_params(
            {
                "tasks": ",".join(tasks),
                **{f"model.{k}": v for k, v in kwargs.items() if k != "tasks"},
                **{f"train.{k}": v for k, v in cfg.model_dump(mode="json").items()},
            }
        )
    while loop["epoch"] < cfg.epochs and not loop["stopped"]:
        t_epoch = time.perf_counter()
        data.set_epoch(loop["epoch"])
        stats = trainer.train_epoch(data.train, loop["epoch"])
        weighting.end_epoch(stats.means)
        val = trainer.validate(data.val)
        weights = weighting.weights().detach().cpu().tolist()
        improved = _record_epoch(loop, stats, val, weights, t_epoch, cfg.min_improvement)
        loop["stopped"] = loop["bad_epochs"] >= cfg.patience
        if procs.main:
            _save_epoch(out_dir, trainer, loop, meta, val, improved, logger)
        log.info(
            "epoch %d: train %s | val_loss %.4f%s",
            loop["epoch"],
            " ".join(f"{t}={v:.4f}" for t, v in stats.means.items()),
            val["val_loss"],
            " (best)" if improved else "",
        )
    return _finish(out_dir, trainer, loop, procs, t_start, logger)
