"""``train_model``: one loop for the multi-task model and its single-task baselines.

Seeded and deterministic on CPU (data order, augmentation and mask dropout are keyed by
(seed, epoch, sample)), resumable from ``<out>/last`` after a crash, early-stopped on the
validation loss, data-parallel under torchrun (gradients averaged over processes), CUDA with
bfloat16 autocast when available. Writes into ``out_dir``:

- ``best/`` and ``last/``: checkpoints (``model.safetensors`` + ``config.json``); ``last/`` also
  holds ``train_state.safetensors`` (weights, optimizer, loss weighting, counters) to resume.
- ``history.csv`` / ``history.json``: per-epoch losses, task weights, validation losses, times.
- ``affinity.json`` / ``affinity.png``: per-epoch task-gradient cosine matrix and heatmap.
- ``train_result.json``: the ``TrainResult`` below.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import default_collate
from tqdm import tqdm

from mtlgen.config import Params
from mtlgen.data.dataset import LongitudinalDataset
from mtlgen.data.splits import Split
from mtlgen.data.trajectories import volume_trajectories
from mtlgen.io.atomic import write_text_atomic
from mtlgen.io.series import PatientSeries
from mtlgen.losses.affinity import gradient_cosine, write_affinity
from mtlgen.losses.pcgrad import pcgrad
from mtlgen.losses.tasks import task_losses
from mtlgen.losses.weighting import LossWeighting
from mtlgen.models.mtl_net import TASKS, MultiTaskNet
from mtlgen.models.priors import fit_gompertz
from mtlgen.train.checkpoints import save_checkpoint
from mtlgen.train.state import load_train_state, read_loop, save_train_state

log = logging.getLogger(__name__)


class TrainLogger(Protocol):
    """What ``train_model`` reports to (e.g. an MLflow-backed logger)."""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: Path | str) -> None: ...


@dataclass(frozen=True)
class TrainResult:
    checkpoint_dir: Path  # best validation checkpoint
    last_dir: Path  # last epoch's checkpoint + resumable state
    tasks: tuple[str, ...]
    wall_time_s: float  # this call's training time (a resumed run counts its own part)
    total_train_time_s: float  # summed over all runs that built this model
    affinity_time_s: float  # the part of it spent measuring task affinity (extra backward passes)
    epochs_run: int
    best_epoch: int
    best_val: dict[str, float]
    history_csv: Path
    history_json: Path
    affinity_json: Path | None
    affinity_png: Path | None
    world_size: int = 1
    replica_max_abs_diff: float | None = None  # DDP: largest weight difference between processes

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


def resolve_tasks(task: str) -> tuple[str, ...]:
    if task == "all":
        return TASKS
    if task not in TASKS:
        raise ValueError(f"task {task!r}: expected 'all' or one of {TASKS}")
    return (task,)


def model_kwargs(params: Params, tasks: Sequence[str]) -> dict[str, Any]:
    """Constructor arguments of ``MultiTaskNet`` from the settings (stored in checkpoints)."""
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


def _fingerprint(params: Params, tasks: Sequence[str], split: Split) -> str:
    """What must match for ``last/`` to be resumed (not epochs, device or progress display)."""
    train = params.train.model_dump(
        mode="json", exclude={"out_dir", "epochs", "patience", "device", "threads", "progress"}
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


def _seeded(*keys: int) -> torch.Generator:
    digest = hashlib.sha256(":".join(map(str, keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def _batches(
    dataset: LongitudinalDataset, order: Sequence[int], batch_size: int
) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(order), batch_size):
        yield default_collate([dataset[i] for i in order[start : start + batch_size]])


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _flat_grad(loss: torch.Tensor, params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def _unique(params: Sequence[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    seen: set[int] = set()
    return [p for p in params if not (id(p) in seen or seen.add(id(p)))]


def _write_history(history: list[dict[str, float]], out_dir: Path) -> tuple[Path, Path]:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in history for k in row))
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(history)
    csv_path = write_text_atomic(out_dir / "history.csv", buf.getvalue())
    json_path = write_text_atomic(out_dir / "history.json", json.dumps(history, indent=1))
    return csv_path, json_path


def _replica_difference(model: torch.nn.Module) -> float:
    """Largest absolute difference of any weight between the data-parallel processes."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def _select_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


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
    tasks = resolve_tasks(task)
    cfg = params.train
    if cfg.pcgrad and params.model.sharing == "soft" and len(tasks) > 1:
        raise ValueError("train.pcgrad needs shared parameters; model.sharing 'soft' has none")
    out_dir = Path(out_dir or cfg.out_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = _select_device(cfg.device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    use_amp = cfg.amp and device.type == "cuda"

    by_id = {s.patient: s for s in series}
    missing = [p for p in (*split.train, *split.val) if p not in by_id]
    if missing:
        raise ValueError(f"split lists patients absent from the series: {missing[:5]}")
    train_series = [by_id[p] for p in split.train]
    val_series = [by_id[p] for p in split.val] or train_series
    if not train_series:
        raise ValueError("split has no training patients")
    dropout = params.data.mask_dropout if "seg" in tasks else 0.0
    prog = params.progression
    dims = params.model.spatial_dims
    train_ds = LongitudinalDataset(
        train_series, params.data, prog.increase, prog.decrease, dims, True, params.seed, dropout
    )
    val_ds = LongitudinalDataset(
        val_series, params.data, prog.increase, prog.decrease, dims, False, params.seed, dropout
    )
    if len(train_ds) == 0:
        raise ValueError("training patients offer no samples (each needs >= 2 visits)")

    torch.manual_seed(params.seed)
    kwargs = model_kwargs(params, tasks)
    model = MultiTaskNet(**kwargs)
    growth_prior: dict[str, list[float]] = {}
    if "progression" in tasks:
        cases = volume_trajectories(train_series, params.data.max_context)
        if len(cases):
            capacity, weight = fit_gompertz(
                cases.volumes, cases.years, cases.valid, cases.ref, cases.truth
            )
            model.set_growth_prior(capacity, weight)
            growth_prior = {"capacity_ml": capacity.tolist(), "weight": weight.tolist()}
            log.info(
                "growth prior from %d training cases: Gompertz weight %s towards capacity %s ml"
                " (core, whole lesion)",
                len(cases),
                [round(w, 2) for w in growth_prior["weight"]],
                [round(c, 2) for c in growth_prior["capacity_ml"]],
            )
    model = model.to(device)
    weighting = LossWeighting(tasks, cfg.weighting, cfg.task_weights, cfg.dwa_temperature).to(
        device
    )
    trainable = [*model.parameters(), *(p for p in weighting.parameters() if p.requires_grad)]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # task affinity and gradient surgery act on the trunk, i.e. on the tasks that read it
    shared_tasks = model.feature_tasks
    pc_params = (
        _unique(model.trunk.affinity_parameters(shared_tasks[0]))
        if cfg.pcgrad and len(shared_tasks) > 1
        else []
    )
    # task affinity: measured on the first affinity_batches training steps of every epoch
    affinity_steps = cfg.affinity_batches if len(shared_tasks) > 1 and rank == 0 else 0

    fingerprint = _fingerprint(params, tasks, split)
    last_dir, best_dir = out_dir / "last", out_dir / "best"
    loop: dict[str, Any] = {
        "fingerprint": fingerprint,
        "epoch": 0,
        "best": math.inf,
        "best_epoch": 0,
        "bad_epochs": 0,
        "history": [],
        "affinity": [],
        "train_time_s": 0.0,
        "affinity_time_s": 0.0,
        "stopped": False,
    }
    saved = read_loop(last_dir) if resume else None
    if saved is not None:
        if saved.get("fingerprint") == fingerprint:
            loop = {
                "affinity_time_s": 0.0,
                **load_train_state(last_dir, model, optimizer, weighting, device),
            }
            log.info("resuming %s from epoch %d", last_dir, loop["epoch"])
        else:
            log.warning("%s was trained with other settings; starting afresh", last_dir)
    meta = {
        "split_sha256": split.sha256(),
        "seed": params.seed,
        "weighting": cfg.weighting,
        "pcgrad": cfg.pcgrad,
        "growth_prior": growth_prior,
    }
    if logger is not None and rank == 0:
        logger.log_params(
            {
                "tasks": ",".join(tasks),
                **{f"model.{k}": v for k, v in kwargs.items() if k != "tasks"},
                **{f"train.{k}": v for k, v in cfg.model_dump(mode="json").items()},
            }
        )

    def forward_losses(batch):
        with torch.autocast("cuda", torch.bfloat16) if use_amp else nullcontext():
            out = model(batch)
        return task_losses(out, batch, tasks, cfg.image_gradient_weight, cfg.image_lesion_weight)

    @torch.no_grad()
    def validate() -> dict[str, float]:
        sums = dict.fromkeys(tasks, 0.0)
        n = 0
        for batch in _batches(val_ds, range(len(val_ds)), cfg.batch_size):
            losses = forward_losses(_to(batch, device))
            size = len(batch["ref_slot"])
            for t in tasks:
                sums[t] += float(losses[t]) * size
            n += size
        metrics = {f"val_loss_{t}": sums[t] / n for t in tasks}
        metrics["val_loss"] = sum(metrics.values())
        return metrics

    epochs_done = loop["epoch"]
    while loop["epoch"] < cfg.epochs and not loop["stopped"]:
        epoch = loop["epoch"]
        t_epoch = time.perf_counter()
        train_ds.set_epoch(epoch)
        order = torch.randperm(len(train_ds), generator=_seeded(params.seed, epoch)).tolist()
        if world > 1:
            order = (order * world)[: math.ceil(len(order) / world) * world][rank::world]
        sums = dict.fromkeys(tasks, 0.0)
        cosines: list[np.ndarray] = []
        affinity_s = 0.0
        steps = math.ceil(len(order) / cfg.batch_size)
        bar = tqdm(
            _batches(train_ds, order, cfg.batch_size),
            total=steps,
            unit="step",
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not cfg.progress or rank != 0,
            leave=False,
        )
        model.train()
        for step, batch in enumerate(bar):
            batch = _to(batch, device)
            losses = forward_losses(batch)
            terms = weighting.terms(losses)
            total = sum(terms.values()) + model.penalty().to(device)
            optimizer.zero_grad(set_to_none=True)
            if step < affinity_steps or pc_params:
                t_grads = time.perf_counter()
                # each trunk task's loss gradient on the parameters it shares, once per step
                grads = [
                    _flat_grad(losses[t], pc_params or model.trunk.affinity_parameters(t))
                    for t in shared_tasks
                ]
                if step < affinity_steps:
                    cosines.append(gradient_cosine(grads))
                if not pc_params:  # under pcgrad the step needs these gradients anyway
                    affinity_s += time.perf_counter() - t_grads
            if pc_params:
                # a weighted term's gradient there is lambda_t times its loss's
                weight_of = dict(zip(weighting.tasks, weighting.weights().detach(), strict=True))
                grads = [weight_of[t] * g for t, g in zip(shared_tasks, grads, strict=True)]
                total.backward()
                merged = pcgrad(grads, _seeded(params.seed, epoch, step)).to(device)
                offset = 0
                for p in pc_params:
                    p.grad.copy_(merged[offset : offset + p.numel()].view_as(p))
                    offset += p.numel()
            else:
                total.backward()
            if world > 1:
                for p in trainable:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    dist.all_reduce(p.grad)
                    p.grad /= world
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            for t in tasks:
                sums[t] += float(losses[t].detach())
            bar.set_postfix(loss=f"{float(total.detach()):.3f}")
        means = {t: sums[t] / steps for t in tasks}
        if world > 1:
            packed = torch.tensor([means[t] for t in tasks], dtype=torch.float64)
            dist.all_reduce(packed)
            means = {t: float(v) / world for t, v in zip(tasks, packed, strict=True)}
        weighting.end_epoch(means)
        model.eval()
        val = validate()
        loop["epoch"] = epoch + 1
        loop["train_time_s"] += time.perf_counter() - t_epoch
        loop["affinity_time_s"] += affinity_s
        improved = val["val_loss"] < loop["best"] - 1e-6
        if improved:
            loop.update(best=val["val_loss"], best_epoch=epoch + 1, bad_epochs=0, best_val=val)
        else:
            loop["bad_epochs"] += 1
            loop["stopped"] = loop["bad_epochs"] >= cfg.patience
        weights = weighting.weights().detach().cpu().tolist()
        row = {
            "epoch": epoch + 1,
            **{f"train_loss_{t}": v for t, v in means.items()},
            **{f"weight_{t}": w for t, w in zip(tasks, weights, strict=True)},
            **val,
            "epoch_time_s": time.perf_counter() - t_epoch,
            "train_time_s": loop["train_time_s"],
            "affinity_time_s": affinity_s,
        }
        loop["history"].append(row)
        if cosines:
            loop["affinity"].append((sum(cosines) / len(cosines)).tolist())
        if rank == 0:
            epoch_meta = {**meta, "epoch": epoch + 1, "val": val}
            if improved:
                save_checkpoint(best_dir, model, epoch_meta)
            save_checkpoint(last_dir, model, epoch_meta)
            save_train_state(last_dir, model, optimizer, weighting, loop)
            _write_history(loop["history"], out_dir)
            if logger is not None:
                logger.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, epoch + 1)
        log.info(
            "epoch %d: train %s | val_loss %.4f%s",
            epoch + 1,
            " ".join(f"{t}={v:.4f}" for t, v in means.items()),
            val["val_loss"],
            " (best)" if improved else "",
        )
        epochs_done = loop["epoch"]
    replica_diff = _replica_difference(model) if world > 1 else None
    history_csv, history_json = out_dir / "history.csv", out_dir / "history.json"
    affinity_json = affinity_png = None
    if rank == 0:
        history_csv, history_json = _write_history(loop["history"], out_dir)
        if loop["affinity"]:
            affinity_json, affinity_png = write_affinity(
                [np.array(m) for m in loop["affinity"]], shared_tasks, out_dir
            )
    result = TrainResult(
        checkpoint_dir=best_dir,
        last_dir=last_dir,
        tasks=tasks,
        wall_time_s=time.perf_counter() - t_start,
        total_train_time_s=loop["train_time_s"],
        affinity_time_s=loop["affinity_time_s"],
        epochs_run=epochs_done,
        best_epoch=loop["best_epoch"],
        best_val=loop.get("best_val", {}),
        history_csv=history_csv,
        history_json=history_json,
        affinity_json=affinity_json,
        affinity_png=affinity_png,
        world_size=world,
        replica_max_abs_diff=replica_diff,
    )
    if rank == 0:
        path = write_text_atomic(out_dir / "train_result.json", result.to_json())
        if logger is not None:
            for artifact in (path, history_csv, affinity_json, affinity_png):
                if artifact is not None:
                    logger.log_artifact(artifact)
    return result
