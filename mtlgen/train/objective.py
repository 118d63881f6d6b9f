"""The training objective as one module: the network and its loss weighting.

``forward(batch)`` returns every task's unweighted loss and the weighted total (plus the soft-
sharing penalty). Network and weighting live in one ``nn.Module`` so that
``DistributedDataParallel`` averages the gradients of learned task weights (uncertainty
weighting) together with the network's.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn

from mtlgen.losses.tasks import task_losses
from mtlgen.losses.weighting import LossWeighting
from mtlgen.models.mtl_net import MultiTaskNet


class TrainingObjective(nn.Module):
    """``net`` and ``weighting`` with the task-loss settings; bfloat16 autocast on CUDA if
    ``amp``."""

    def __init__(
        self,
        net: MultiTaskNet,
        weighting: LossWeighting,
        tasks: Sequence[str],
        image_gradient_weight: float,
        image_lesion_weight: float,
        amp: bool = False,
    ) -> None:
        super().__init__()
        self.net, self.weighting = net, weighting
        self.tasks = tuple(tasks)
        self.image_gradient_weight = image_gradient_weight
        self.image_lesion_weight = image_lesion_weight
        self.amp = amp

    def task_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every task's unweighted loss (scalars)."""
        with torch.autocast("cuda", torch.bfloat16) if self.amp else nullcontext():
            out = self.net(batch)
        return task_losses(
            out, batch, self.tasks, self.image_gradient_weight, self.image_lesion_weight
        )

    def forward(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        losses = self.task_losses(batch)
        terms = self.weighting.terms(losses)
        total = sum(terms.values()) + self.net.penalty().to(losses[self.tasks[0]].device)
        return losses, total

    def trainable(self) -> list[nn.Parameter]:
        """The network's parameters, then the weighting's learned ones (the optimizer's order)."""
        learned = (p for p in self.weighting.parameters() if p.requires_grad)
        return [*self.net.parameters(), *learned]
