"""Per-task losses of the multi-task network's outputs against a batch.

- ``seg`` / ``future_seg``: Dice + cross-entropy (foreground Dice, batch-wise) on masks.
- ``progression``: Huber loss on log(1 + volume) (core and whole lesion) + status cross-entropy.
- ``image``: L1 over the contrasts the target has, plus an image-gradient L1 term, plus the L1
  inside the (dilated) target or reference lesion, where the change worth predicting is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from mtlgen.models.priors import dilate

_DICE_CE = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice + CE of logits [N, 3, *S] against integer labels [N, *S]."""
    return _DICE_CE(logits.float(), target[:, None])


def image_gradient_l1(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Mean L1 between finite differences along every spatial axis (weight: [B, C, 1...])."""
    total = pred.new_zeros(())
    for axis in range(2, pred.dim()):
        dp, dt = pred.diff(dim=axis), target.diff(dim=axis)
        total = total + ((dp - dt).abs() * weight).mean()
    return total / (pred.dim() - 2)


def lesion_region(batch: dict[str, torch.Tensor], dilation: int = 2) -> torch.Tensor:
    """[B, 1, *S] float: target or reference-visit lesion, dilated by ``dilation`` voxels."""
    masks, ref = batch["masks"], batch["ref_slot"]
    ref_mask = masks[torch.arange(masks.shape[0], device=masks.device), ref]
    region = ((batch["target_mask"] > 0) | (ref_mask > 0)).float()[:, None]
    return dilate(region, dilation)


def task_losses(
    out: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    tasks: Sequence[str],
    image_gradient_weight: float = 0.5,
    image_lesion_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Unweighted loss of every task in ``tasks`` (scalars)."""
    losses: dict[str, torch.Tensor] = {}
    if "seg" in tasks:  # the visits the network segmented (mask hidden from its input)
        decoded = out["seg_decoded"]
        keep = batch["mask_present"][decoded]  # of those, the ones with a true mask
        losses["seg"] = (
            mask_loss(out["seg_logits"][keep], batch["masks"][decoded][keep])
            if keep.any()
            else out["seg_logits"].new_zeros(())
        )
    if "future_seg" in tasks:
        losses["future_seg"] = mask_loss(out["future_logits"], batch["target_mask"])
    if "progression" in tasks:
        volume = F.huber_loss(out["log_volume"].float(), batch["target_volume"].log1p(), delta=0.5)
        status = F.cross_entropy(out["status_logits"].float(), batch["status"])
        losses["progression"] = volume + 0.5 * status
    if "image" in tasks:
        pred, target = out["image"].float(), batch["target_image"]
        weight = batch["target_present"].reshape(*target.shape[:2], *([1] * (target.dim() - 2)))
        scale = weight.mean().clamp_min(1e-6)
        error = (pred - target).abs() * weight
        grad = image_gradient_l1(pred, target, weight) / scale
        losses["image"] = error.mean() / scale + image_gradient_weight * grad
        if image_lesion_weight > 0:  # where the lesion is or was: the change worth predicting
            region = lesion_region(batch)
            inside = (error * region).sum() / (region.sum() * weight.sum(1).mean()).clamp_min(1)
            losses["image"] = losses["image"] + image_lesion_weight * inside
    return losses
