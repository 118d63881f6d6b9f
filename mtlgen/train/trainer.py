"""One optimisation step, one epoch and one validation pass of the training objective.

Task affinity (the cosine of task-loss gradients on the shared trunk) is measured on the first
``train.affinity_batches`` steps of every epoch; under ``train.pcgrad`` every step replaces the
trunk's gradient by the PCGrad merge of the weighted task gradients. Both need each trunk task's
gradient separately, taken with ``torch.autograd.grad`` before the backward pass of the total.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mtlgen.config import TrainConfig
from mtlgen.losses.affinity import gradient_cosine
from mtlgen.losses.pcgrad import pcgrad
from mtlgen.train.distributed import Processes, mean_over_processes
from mtlgen.train.objective import TrainingObjective


def seeded(*keys: int) -> torch.Generator:
    """A generator seeded by a hash of ``keys`` (e.g. seed, epoch, step)."""
    digest = hashlib.sha256(":".join(map(str, keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def _flat_grad(loss: torch.Tensor, params: Sequence[nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    return [p for p in params if not (id(p) in seen or seen.add(id(p)))]


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@dataclass
class EpochStats:
    """One epoch's mean training loss per task (over all processes), its affinity matrices and
    the seconds spent measuring affinity."""

    means: dict[str, float]
    cosines: list[np.ndarray] = field(default_factory=list)
    affinity_s: float = 0.0


class Trainer:
    """Steps ``objective`` (wrapped as ``model`` for data parallelism) with ``optimizer``."""

    def __init__(
        self,
        objective: TrainingObjective,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: TrainConfig,
        procs: Processes,
        seed: int,
    ) -> None:
        self.objective, self.model, self.optimizer = objective, model, optimizer
        self.cfg, self.procs, self.seed = cfg, procs, seed
        net = objective.net
        self.tasks = objective.tasks
        # affinity and gradient surgery act on the trunk, i.e. on the tasks that read it
        self.shared_tasks = net.feature_tasks
        self.pc_params = (
            _unique(net.trunk.affinity_parameters(self.shared_tasks[0]))
            if cfg.pcgrad and len(self.shared_tasks) > 1
            else []
        )
        shared = len(self.shared_tasks) > 1 and procs.main
        self.affinity_steps = cfg.affinity_batches if shared else 0
        self.trainable = objective.trainable()

    def _task_gradients(self, losses: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Each trunk task's loss gradient on the parameters it shares."""
        trunk = self.objective.net.trunk
        return [
            _flat_grad(losses[t], self.pc_params or trunk.affinity_parameters(t))
            for t in self.shared_tasks
        ]

    def _merge_pcgrad(self, grads: list[torch.Tensor], epoch: int, step: int) -> None:
        """Replace the trunk's gradient by the PCGrad merge of the weighted task gradients
        (averaged over processes: the backward pass averaged only what it computed)."""
        weighting = self.objective.weighting
        # a weighted term's gradient there is lambda_t times its loss's
        weight_of = dict(zip(weighting.tasks, weighting.weights().detach(), strict=True))
        grads = [weight_of[t] * g for t, g in zip(self.shared_tasks, grads, strict=True)]
        merged = pcgrad(grads, seeded(self.seed, epoch, step)).to(self.procs.device)
        if self.procs.world > 1:
            dist.all_reduce(merged)
            merged /= self.procs.world
        offset = 0
        for p in self.pc_params:
            p.grad.copy_(merged[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    def step(self, batch: dict[str, torch.Tensor], epoch: int, step: int, stats: EpochStats):
        """One optimisation step; returns the task losses and the total (detached)."""
        losses, total = self.model(_to(batch, self.procs.device))
        self.optimizer.zero_grad(set_to_none=True)
        grads = None
        if step < self.affinity_steps or self.pc_params:
            t_grads = time.perf_counter()
            grads = self._task_gradients(losses)
            if step < self.affinity_steps:
                stats.cosines.append(gradient_cosine(grads))
            if not self.pc_params:  # under pcgrad the step needs these gradients anyway
                stats.affinity_s += time.perf_counter() - t_grads
        total.backward()
        if self.pc_params:
            self._merge_pcgrad(grads, epoch, step)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.grad_clip)
        self.optimizer.step()
        return {t: float(losses[t].detach()) for t in self.tasks}, float(total.detach())

    def train_epoch(self, loader: DataLoader, epoch: int) -> EpochStats:
        """One pass over the training batches; mean task losses over every process."""
        stats = EpochStats(dict.fromkeys(self.tasks, 0.0))
        steps = len(loader)
        bar = tqdm(
            loader,
            total=steps,
            unit="step",
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            disable=not self.cfg.progress or not self.procs.main,
            leave=False,
        )
        self.objective.train()
        for step, batch in enumerate(bar):
            losses, total = self.step(batch, epoch, step, stats)
            for t in self.tasks:
                stats.means[t] += losses[t]
            bar.set_postfix(loss=f"{total:.3f}")
        packed = torch.tensor([stats.means[t] / steps for t in self.tasks], dtype=torch.float64)
        packed = mean_over_processes(packed, self.procs)
        stats.means = {t: float(v) for t, v in zip(self.tasks, packed, strict=True)}
        return stats

    @torch.no_grad()
    def validate(self, batches: Iterable) -> dict[str, float]:
        """Mean validation loss per task (``val_loss_<task>``) and their sum (``val_loss``)."""
        self.objective.eval()
        sums, n = dict.fromkeys(self.tasks, 0.0), 0
        for batch in batches:
            losses = self.objective.task_losses(_to(batch, self.procs.device))
            size = len(batch["ref_slot"])
            for t in self.tasks:
                sums[t] += float(losses[t]) * size
            n += size
        metrics = {f"val_loss_{t}": sums[t] / n for t in self.tasks}
        metrics["val_loss"] = sum(metrics.values())
        return metrics
