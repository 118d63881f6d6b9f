"""The spatio-temporal multi-task network.

Context visits (contrasts + presence flags + mask one-hot where a mask is given) pass a
trunk (``mtlgen.models.sharing``) that fuses them over time at the target date. Task heads
share the problem's structure:

- ``seg``: segments every context visit whose mask is not given; its soft volume feeds the
  progression head and its lesion map guides the other heads.
- ``progression``: the log-volume trajectory through the two context visits nearest the
  target plus a learned correction (zero at start), giving core and whole-lesion volume at
  the target; status logits are a soft version of the volumetric rule, so status
  cross-entropy trains the volume.
- ``future_seg``: decodes the target mask from the fused features, the reference mask and
  the predicted log-volume change; at inference it is sized by the predicted volumes.
- ``image``: reference image + residual, gated by a learned gate and by the (dilated) region
  where the lesion is or will be, so that change is zero elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtlgen.models.blocks import Decoder
from mtlgen.models.checkpoint import register_architecture
from mtlgen.models.sharing import build_trunk

TASKS = ("seg", "future_seg", "progression", "image")
VOLUME_EPS_ML = 0.05
MAX_LOG_VOLUME = math.log1p(1000.0)


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, K, ...], index [B] -> [B, ...]."""
    return x[torch.arange(x.shape[0], device=x.device), index]


def reference_image(images: torch.Tensor, present: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per contrast, the latest context image at or before the reference slot (else the nearest
    later one): the copy-last image. images [B, K, C, *S], present [B, K, C] -> [B, C, *S]."""
    b, k = present.shape[:2]
    slot = torch.arange(k, device=images.device)[None, :, None]
    before = slot <= ref[:, None, None]
    score = present * torch.where(before, k + slot, k - slot)
    pick = score.argmax(dim=1)  # [B, C]
    idx = pick.reshape(b, 1, -1, *([1] * (images.dim() - 3))).expand(b, 1, *images.shape[2:])
    return images.gather(1, idx)[:, 0]


def trajectory_prior(
    log_vol: torch.Tensor, years: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Log-volume at the target (t = 0) on the line through the two valid visits nearest in
    time (inter- or extrapolation); a single visit gives a constant. [B, K, V] -> [B, V]."""
    dist = years.abs().masked_fill(~valid, float("inf"))
    order = dist.argsort(dim=1)
    y1, t1 = _gather(log_vol, order[:, 0]), _gather(years, order[:, 0])
    if years.shape[1] < 2:
        return y1
    y2, t2 = _gather(log_vol, order[:, 1]), _gather(years, order[:, 1])
    two = _gather(valid, order[:, 1]) & ((t2 - t1).abs() > 1e-3)
    slope = torch.where(two[:, None], (y2 - y1) / (t2 - t1).masked_fill(~two, 1.0)[:, None], 0.0)
    return (y1 - t1[:, None] * slope).clamp(0.0, MAX_LOG_VOLUME)


@register_architecture("mtl_net")
class MultiTaskNet(nn.Module):
    """Spatio-temporal multi-task network; ``tasks`` may be all four or a single one."""

    def __init__(
        self,
        tasks: Sequence[str] = TASKS,
        n_contrasts: int = 2,
        max_context: int = 3,
        spatial_dims: int = 3,
        features: Sequence[int] = (8, 16, 32, 64),
        time_dim: int = 32,
        heads: int = 2,
        sharing: str = "hard",
        soft_penalty: str = "l2",
        soft_lambda: float = 1e-3,
        increase: float = 0.25,
        decrease: float = 0.25,
    ) -> None:
        super().__init__()
        unknown = set(tasks) - set(TASKS)
        if unknown or not tasks:
            raise ValueError(f"tasks {list(tasks)}: expected a non-empty subset of {TASKS}")
        self.tasks = tuple(t for t in TASKS if t in tasks)
        self.spatial_dims, self.n_contrasts, self.max_context = (
            spatial_dims,
            n_contrasts,
            max_context,
        )
        self.increase, self.decrease = increase, decrease
        self.thresholds = (math.log1p(increase), math.log1p(-decrease))
        self.trunk = build_trunk(
            sharing,
            self.tasks,
            spatial_dims=spatial_dims,
            in_channels=2 * n_contrasts + 3,
            features=list(features),
            time_dim=time_dim,
            heads=heads,
            **({"penalty": soft_penalty, "lam": soft_lambda} if sharing == "soft" else {}),
        )
        f = list(features)
        if "seg" in self.tasks:
            self.seg_decoder = Decoder(spatial_dims, f, 3)
        if "future_seg" in self.tasks:
            self.future_decoder = Decoder(spatial_dims, f, 3, extra_channels=4)
        if "image" in self.tasks:
            self.image_decoder = Decoder(spatial_dims, f, 2 * n_contrasts, extra_channels=7)
        if "progression" in self.tasks:
            width = 4 * max_context + f[-1] + 2
            self.progression_mlp = nn.Sequential(
                nn.Linear(width, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2)
            )
            nn.init.zeros_(self.progression_mlp[-1].weight)
            nn.init.zeros_(self.progression_mlp[-1].bias)
            self.log_tau = nn.Parameter(torch.tensor(math.log(0.25)))

    def penalty(self) -> torch.Tensor:
        return self.trunk.penalty()

    def _pool(self, x: torch.Tensor, size: int) -> torch.Tensor:
        pool = F.max_pool3d if self.spatial_dims == 3 else F.max_pool2d
        return pool(x, size, stride=1, padding=size // 2)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images, present = batch["images"], batch["contrast_present"]
        b, k = images.shape[:2]
        spatial = images.shape[3:]
        ones = (1,) * len(spatial)
        given = batch["mask_input"] & batch["visit_valid"]
        onehot = F.one_hot(batch["masks"], 3).movedim(-1, 2).float()  # [B, K, 3, *S]
        gflag = given.float().reshape(b, k, 1, *ones)
        x = torch.cat(
            [
                images,
                present.reshape(b, k, -1, *ones).expand(-1, -1, -1, *spatial),
                onehot[:, :, 1:] * gflag,
                gflag.expand(-1, -1, 1, *spatial),
            ],
            dim=2,
        ).flatten(0, 1)
        years, valid, ref = batch["years"], batch["visit_valid"], batch["ref_slot"]
        feats = self.trunk(x, years, valid, ref)
        out: dict[str, torch.Tensor] = {}

        # context lesion maps for the other heads: every mask the data has (hidden ones too: the
        # heads learn from true structure, as at prediction time), else the segmentation
        known = (batch["mask_present"] & valid).float().reshape(b, k, 1, *ones)
        probs = onehot * known
        if "seg" in self.tasks:  # decode the visits whose mask is not given
            hidden = (valid & ~given).flatten()
            full = images.new_zeros(b * k, 3, *spatial)
            if hidden.any():
                f = [v[hidden] for v in feats["seg"].visits]
                decoded = self.seg_decoder(f[-1], f[:-1], None, spatial)
                full = full.index_put((hidden.nonzero()[:, 0],), decoded.to(full.dtype))
            logits = full.reshape(b, k, 3, *spatial)
            out["seg_logits"], out["seg_decoded"] = logits, hidden.reshape(b, k)
            probs = torch.where(known.bool(), probs, logits.softmax(dim=2).float())
            probs = probs * valid.reshape(b, k, 1, *ones)
        ref_probs = _gather(probs, ref)
        vox = batch["voxel_ml"].reshape(b, 1)
        core = probs[:, :, 1].flatten(2).sum(-1) * vox
        lesion = (probs[:, :, 1] + probs[:, :, 2]).flatten(2).sum(-1) * vox
        log_vol = torch.stack([core, lesion], dim=-1).log1p()  # [B, K, 2]
        ref_core = _gather(core, ref)

        delta = torch.zeros(b, device=images.device, dtype=images.dtype)
        if "progression" in self.tasks:
            fused = feats["progression"].fused
            prior = trajectory_prior(log_vol, years, valid)
            inputs = torch.cat(
                [
                    log_vol.flatten(1),
                    years,
                    valid.float(),
                    fused.flatten(2).mean(-1).float(),
                    prior,
                ],
                dim=1,
            )
            with torch.autocast(images.device.type, enabled=False):
                correction = self.progression_mlp(inputs.float())
            log_volume = (prior + correction).clamp(0.0, MAX_LOG_VOLUME)
            out["log_volume"] = log_volume
            ratio = torch.log(log_volume[:, 0].expm1() + VOLUME_EPS_ML) - torch.log(
                ref_core + VOLUME_EPS_ML
            )
            tau = self.log_tau.exp().clamp(0.05, 5.0)
            up, down = self.thresholds
            out["status_logits"] = torch.stack(
                [(ratio - up) / tau, torch.zeros_like(ratio), (down - ratio) / tau], dim=1
            )
            delta = log_volume[:, 0] - ref_core.log1p()
        delta_map = delta.reshape(b, 1, *ones).expand(b, 1, *spatial)

        def ref_skips(task: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
            tf = feats[task]
            skips = [_gather(v.reshape(b, k, *v.shape[1:]), ref) for v in tf.visits[:-1]]
            return tf.fused, skips

        future_probs = torch.zeros_like(ref_probs)
        if "future_seg" in self.tasks:
            fused, skips = ref_skips("future_seg")
            logits = self.future_decoder(
                fused, skips, torch.cat([ref_probs, delta_map], dim=1), spatial
            )
            out["future_logits"] = logits
            future_probs = logits.softmax(dim=1)
        if "image" in self.tasks:
            fused, skips = ref_skips("image")
            extra = torch.cat([ref_probs, future_probs, delta_map], dim=1)
            residual, gate = self.image_decoder(fused, skips, extra, spatial).chunk(2, dim=1)
            region = torch.maximum(1 - ref_probs[:, :1], 1 - future_probs[:, :1])
            if "future_seg" not in self.tasks:
                region = 1 - ref_probs[:, :1]
            region = self._pool(region, 5)
            base = reference_image(images, present, ref)
            out["image"] = base + region * torch.sigmoid(gate) * residual
            out["change_region"] = region
        return out
