"""Checkpoint -> ``Predictor`` (the protocol of ``mtlgen.evaluate.predictor``).

A multi-task checkpoint answers every field from its heads: the future mask is the
future-segmentation head's map sized by the progression head's volumes (the top-N most likely
core voxels, then the top-M lesion voxels); the image is the image head's base (the reference
image averaged with the context visits whose labels agree) changed where that mask differs from
the reference mask (``mtlgen.models.priors.class_mean_change``) plus the
image head's learned residual; volume and status come from the progression head (status by
the volumetric rule against the reference visit).

A single-task checkpoint answers its own task and falls back to copy-last for the others
(the latest context visit at or before the target: its image per contrast, its mask and
core volume); its ``name`` says so, e.g. ``single-image-copy-last``.

When the target is a context visit whose mask is not given (segmenting the current scan), a
model with the ``seg`` head answers mask and volume from that head.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from mtlgen.data.dataset import encode_context, lesion_volumes_ml, reference_slot, voxel_ml
from mtlgen.data.series import VisitArrays
from mtlgen.evaluate.predictor import Prediction
from mtlgen.models.checkpoint import load_checkpoint
from mtlgen.models.mtl_net import TASKS, MultiTaskNet, reference_image
from mtlgen.models.priors import class_mean_change
from mtlgen.progression import progression_status


def _top(score: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of the ``count`` highest-scoring voxels."""
    mask = np.zeros(score.size, bool)
    if count > 0:
        mask[np.argsort(-score.ravel(), kind="stable")[:count]] = True
    return mask.reshape(score.shape)


def shape_mask(
    probs: np.ndarray,
    core_ml: float,
    lesion_ml: float,
    vox_ml: float,
    reference: np.ndarray | None = None,
    sigma_vox: float = 1.5,
) -> np.ndarray:
    """Label map sized to the given volumes (uint8) from class probabilities [3, *S].

    With a ``reference`` label (the last observed mask), voxels are ranked first by being in
    the reference lesion, then by nearness to it (Gaussian-smoothed mask), then by the
    predicted probability: a growing lesion keeps its shape and grows at its border, a
    shrinking one keeps its most likely part.
    """
    core_score, lesion_score = probs[1].copy(), probs[1] + probs[2]
    if reference is not None:
        for score, mask in ((core_score, reference == 1), (lesion_score, reference > 0)):
            near = gaussian_filter(mask.astype(np.float32), sigma_vox)
            score += 2.0 * mask + near
    core = _top(core_score, round(core_ml / vox_ml))
    lesion_score = np.where(core, np.inf, lesion_score)
    lesion = _top(lesion_score, round(max(lesion_ml, core_ml) / vox_ml))
    label = np.zeros(probs.shape[1:], np.uint8)
    label[lesion] = 2
    label[core] = 1
    return label


class ModelPredictor:
    """Predicts a target visit with a trained ``MultiTaskNet``."""

    def __init__(self, model: MultiTaskNet, meta: dict, device: str = "cpu") -> None:
        if model.spatial_dims != 3:
            raise ValueError("the predictor answers whole volumes: it needs a spatial_dims=3 model")
        self.model = model.to(device).eval()
        self.device = device
        self.contrasts: list[str] = list(meta["contrasts"])
        tasks = model.tasks
        self.name = (
            f"mtl-{meta.get('sharing', 'hard')}"
            if tasks == TASKS
            else f"single-{tasks[0]}-copy-last"
        )

    @torch.no_grad()
    def predict(self, context: Sequence[VisitArrays], target_days: float) -> Prediction:
        context = list(context)[-self.model.max_context :]
        batch = encode_context(context, target_days, self.contrasts, self.model.max_context)
        batch = {k: v[None].to(self.device) for k, v in batch.items()}
        out = self.model(batch)
        tasks = self.model.tasks
        ref = context[reference_slot([v.days for v in context], target_days)]
        vox = voxel_ml(ref.affine)

        if ref.label is not None:
            ref_label = ref.label
        elif "seg" in tasks:
            slot = int(batch["ref_slot"][0])
            ref_label = out["seg_logits"][0, slot].argmax(0).cpu().numpy().astype(np.uint8)
        else:
            ref_label = np.zeros(tuple(batch["images"].shape[3:]), np.uint8)
        ref_core, _ = lesion_volumes_ml(ref_label, vox)

        volumes = None
        if "progression" in tasks:
            volumes = out["log_volume"][0].float().expm1().clamp_min(0).cpu().tolist()
        current = ref.label is None and ref.days == target_days and "seg" in tasks
        if current:
            label = ref_label.copy()
            volumes = list(lesion_volumes_ml(label, vox))
        elif "future_seg" in tasks:
            probs = out["future_logits"][0].float().softmax(0).cpu().numpy()
            label = (
                shape_mask(probs, volumes[0], volumes[1], vox, ref_label)
                if volumes is not None
                else probs.argmax(0).astype(np.uint8)
            )
        else:
            label = ref_label.copy()
        pred_images = self._images(batch, out, ref_label, label, current)[0].float().cpu().numpy()
        seen = batch["contrast_present"][0].any(dim=0).cpu().numpy()
        images = {c: pred_images[i] for i, c in enumerate(self.contrasts) if seen[i]}
        core_ml = volumes[0] if volumes is not None else lesion_volumes_ml(label, vox)[0]
        status = progression_status(ref_core, core_ml, self.model.increase, self.model.decrease)
        return Prediction(images=images, label=label, core_volume_ml=float(core_ml), status=status)

    def _images(
        self,
        batch: dict[str, torch.Tensor],
        out: dict[str, torch.Tensor],
        ref_label: np.ndarray,
        label: np.ndarray,
        current: bool,
    ) -> torch.Tensor:
        """Predicted images [1, C, *S]: copy-last without an image head; with a future mask, the
        label-driven change recomputed from the final (volume-sized) mask plus the learned
        residual, so image and mask agree; else the image head's output."""
        tasks = self.model.tasks
        if "image" not in tasks:
            return reference_image(batch["images"], batch["contrast_present"], batch["ref_slot"])
        if "future_seg" not in tasks or current:
            return out["image"]

        def onehot(x: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(x.astype(np.int64)).to(self.device)
            return F.one_hot(t, 3).movedim(-1, 0)[None].float()

        changed = class_mean_change(
            out["image_base"],
            onehot(ref_label),
            onehot(label),
            self.model.class_intensity,
            self.model.blur(),
        )
        return changed + out["image_residual"]


def load_predictor(checkpoint_dir: Path | str, device: str = "cpu") -> ModelPredictor:
    """Predictor of a checkpoint written by ``train_model`` (its ``best/`` or ``last/`` folder)."""
    model, config = load_checkpoint(checkpoint_dir, map_location=device)
    if not isinstance(model, MultiTaskNet):
        raise ValueError(f"{checkpoint_dir}: not a mtl_net checkpoint ({config['architecture']})")
    meta = {**config.get("meta", {}), **config["init"]}
    if "contrasts" not in meta:
        raise ValueError(f"{checkpoint_dir}/config.json: meta.contrasts missing")
    return ModelPredictor(model, meta, device)
