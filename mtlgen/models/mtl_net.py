"""The spatio-temporal multi-task network.

Context visits (contrasts + presence flags + mask one-hot where a mask is given) pass a
trunk (``mtlgen.models.sharing``) that fuses them over time at the target date. Each head
corrects a closed-form prior (``mtlgen.models.priors``), so the network starts from what a
careful reader would guess and learns what the data add:

- ``seg``: segments every context visit whose mask is not given, seeing the given mask of the
  visit nearest in time (if any); its soft volume feeds the progression head and its lesion
  map guides the other heads.
- ``progression``: the least-squares line of core and whole-lesion volume over the context
  visits read at the target date, moved (in log-volume) towards a Gompertz forecast by a
  weight fitted on the training patients' volume trajectories before training
  (``set_growth_prior``, ``priors.fit_growth_prior``; zero, i.e. linear extrapolation, until
  then); the forecast never leaves the range of the linear, reference and Gompertz volumes,
  so it cannot run away. The growth prior is fixed, not trained: weights
  trained by gradient moved away from the fit and forecast held-out patients worse (demo
  split: core MAE 1.95 mL trained vs 1.75 mL fitted, docs/model.md). It reads no trunk
  features; the trunk reaches it through the segmentation of context visits that have no
  mask. Status logits are a soft version of the volumetric rule, so status cross-entropy
  trains the segmentation's volumes too.
- ``future_seg``: decodes the target mask from the fused features, the reference mask and the
  predicted log-volume change; its label (``future_label``) is that map sized to the
  progression head's volumes (``priors.sized_label``), or to the volumes a batch gives as
  ``future_volume_ml`` [B, 2] (core, whole lesion; ml): the follow-up a given lesion size
  would show.
- ``image``: the reference image, averaged with the other context visits where their labels
  agree with it (scan noise and intensity drift averaged down), changed where the reference
  label becomes the future label, each class taking the intensity it has on the patient's
  reference scan, plus a learned residual gated to the (dilated) region where the lesion is
  or will be. Training composes the image exactly as prediction does (from the sized label),
  so the residual learns to mend what will be answered.

Under hard sharing ``future_seg`` and ``image`` read one target-time decoder and one head whose
output rows are split between them (one forward and backward pass at full resolution for both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from mtlgen.models.blocks import Decoder, PointwiseHead
from mtlgen.models.hub import LocalHubMixin
from mtlgen.models.labels import class_channels, class_labels
from mtlgen.models.priors import (
    class_mean_change,
    dilate,
    extrapolated_log_volume,
    gompertz_weights,
    mask_logits,
    nearest_given_mask,
    prior_probs,
    sized_label,
    stable_tissue_mean,
)
from mtlgen.models.sharing import build_trunk

TASKS = ("seg", "future_seg", "progression", "image")
VOLUME_EPS_ML = 0.05
DEFAULT_LOG_CAPACITY = math.log(100.0)  # ml; the Gompertz weight is 0 until a cohort fit


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


class MultiTaskNet(nn.Module, LocalHubMixin, library_name="mtlgen"):
    """Spatio-temporal multi-task network; ``tasks`` may be all four or a single one.

    ``contrasts`` names the input channels in order (e.g. T1w, FLAIR). ``save_pretrained`` /
    ``from_pretrained`` (``mtlgen.models.hub``) store and rebuild it from a checkpoint folder.
    """

    def __init__(
        self,
        tasks: Sequence[str] = TASKS,
        contrasts: Sequence[str] = ("T1w", "FLAIR"),
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
        if not contrasts or len(set(contrasts)) != len(contrasts):
            raise ValueError(f"contrasts {list(contrasts)}: expected distinct names")
        self.tasks = tuple(t for t in TASKS if t in tasks)
        self.contrasts = tuple(contrasts)
        n_contrasts = len(self.contrasts)
        self.spatial_dims, self.n_contrasts, self.max_context = (
            spatial_dims,
            n_contrasts,
            max_context,
        )
        self.sharing = sharing
        self.increase, self.decrease = increase, decrease
        self.thresholds = (math.log1p(increase), math.log1p(-decrease))
        # the tasks that read trunk features (progression works on the volume trajectory)
        self.feature_tasks = tuple(t for t in self.tasks if t != "progression")
        self.trunk = (
            build_trunk(
                sharing,
                self.feature_tasks,
                spatial_dims=spatial_dims,
                in_channels=2 * n_contrasts + 3,
                features=list(features),
                time_dim=time_dim,
                heads=heads,
                **({"penalty": soft_penalty, "lam": soft_lambda} if sharing == "soft" else {}),
            )
            if self.feature_tasks
            else None
        )
        self._build_heads(list(features), n_contrasts, sharing)
        if spatial_dims == 3:  # channels-last 3-D convolutions: ~2x faster on CPU (oneDNN)
            self.to(memory_format=torch.channels_last_3d)

    def _build_heads(self, f: list[int], n_contrasts: int, sharing: str) -> None:
        """The segmentation decoder and head, the target-time decoders and heads, and the
        image and progression parameters of the tasks this network has."""
        dims = self.spatial_dims
        if "seg" in self.tasks:
            self.seg_decoder = Decoder(dims, f)
            self.seg_head = PointwiseHead(dims, f[0], 3, extra_channels=(3,))
            self.seg_prior_weight = nn.Parameter(torch.ones(()))  # of the mask prior's logits
        # target-time decoders and heads: under hard sharing future_seg and image read the same
        # features, so they share one decoder and one head (its hidden layer too; only the
        # output rows are per task); else one of each per task
        target = [t for t in ("future_seg", "image") if t in self.tasks]
        self.target_of = {t: "shared" if sharing == "hard" else t for t in target}
        widths = {"future_seg": 3, "image": 2 * n_contrasts}  # image: residual and gate
        self.target_rows: dict[str, tuple[int, int]] = {}
        rows_of: dict[str, int] = {}
        for t in target:
            start = rows_of.get(self.target_of[t], 0)
            self.target_rows[t] = (start, start + widths[t])
            rows_of[self.target_of[t]] = start + widths[t]
        self.target_decoders = nn.ModuleDict({key: Decoder(dims, f) for key in rows_of})
        self.target_heads = nn.ModuleDict(
            {
                key: PointwiseHead(dims, f[0], rows, extra_channels=(3, 1))
                for key, rows in rows_of.items()
            }
        )
        if "future_seg" in self.tasks:
            self.future_prior_weight = nn.Parameter(torch.ones(()))
        if "image" in self.tasks:
            start, _ = self.target_rows["image"]
            with torch.no_grad():  # the residual starts at zero: the image starts at its prior
                self.target_heads[self.target_of["image"]].out[start : start + n_contrasts].zero_()
            # class intensities (ring, core, edema) for a reference scan without a lesion
            self.class_intensity = nn.Parameter(torch.full((3, n_contrasts), 0.5))
            # point spread (voxels) of the label change in the image, learned
            self.log_blur = nn.Parameter(torch.tensor(math.log(0.75)))
        if "progression" in self.tasks:
            # [core, whole lesion] x towards [the log-linear fit, the reference volume, the
            # Gompertz fit], and the Gompertz fit's carrying capacities (ml)
            self.register_buffer("growth_weights", torch.zeros(2, 3))
            self.register_buffer("log_capacity", torch.full((2,), DEFAULT_LOG_CAPACITY))
            self.log_tau = nn.Parameter(torch.tensor(math.log(0.25)))

    def set_growth_prior(self, capacity: torch.Tensor, gompertz_weight: torch.Tensor) -> None:
        """Set the progression head's growth prior to a cohort's fit
        (``priors.fit_growth_prior``): carrying capacities [2] ml and weights [2] in [0, 1)
        towards the Gompertz forecast."""
        with torch.no_grad():
            self.log_capacity.copy_(capacity.log())
            self.growth_weights.copy_(gompertz_weights(gompertz_weight))

    def blur(self) -> torch.Tensor:
        """Point spread (voxels) of a label change in the image (``class_mean_change``)."""
        return self.log_blur.exp().clamp(0.3, 2.0)

    def penalty(self) -> torch.Tensor:
        return self.trunk.penalty() if self.trunk is not None else torch.zeros(())

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images, present = batch["images"], batch["contrast_present"]
        b, k = images.shape[:2]
        ones = (1,) * (images.dim() - 3)
        given = batch["mask_input"] & batch["visit_valid"]
        onehot = class_channels(batch["masks"], 2)  # [B, K, 3, *S]
        years, valid, ref = batch["years"], batch["visit_valid"], batch["ref_slot"]
        feats = self._trunk_features(batch, onehot, given) if self.trunk is not None else {}
        out: dict[str, torch.Tensor] = {}

        # context lesion maps for the other heads: every mask the data has (hidden ones too: the
        # heads learn from true structure, as at prediction time), else the segmentation
        known = batch["mask_present"] & valid
        probs = onehot * known.float().reshape(b, k, 1, *ones)
        if "seg" in self.tasks:  # decode the visits whose mask is not given
            probs = self._segment(feats, batch, onehot, given, known, probs, out)
        ref_probs = _gather(probs, ref)
        vox = batch["voxel_ml"].reshape(b, 1)
        core = probs[:, :, 1].flatten(2).sum(-1) * vox
        lesion = (probs[:, :, 1] + probs[:, :, 2]).flatten(2).sum(-1) * vox
        volumes = torch.stack([core, lesion], dim=-1)  # [B, K, 2] in ml
        ref_core = _gather(core, ref)
        delta = torch.zeros(b, device=images.device, dtype=images.dtype)
        if "progression" in self.tasks:
            delta = self._progression(volumes, years, valid, ref, ref_core, out)
        # detached: the mask and image losses condition on the forecast but do not move it
        delta_channel = delta.detach().reshape(b, 1, *ones)  # a per-sample constant
        heads = _TargetHeads(self, feats, ref, [ref_probs, delta_channel], images.shape[3:])

        # hard labels: the reference's, and the future one the model answers (sized to the
        # predicted volumes); the image is composed from them in training as at prediction
        ref_label = class_labels(ref_probs)  # the given mask, else the segmentation, else none
        out["ref_label"] = ref_label
        future_label, future_probs = ref_label, ref_probs  # no future_seg head: no change
        if "future_seg" in self.tasks:
            future_label, future_probs = self._future(heads, batch, ref_probs, ref_label, vox, out)
        if "image" in self.tasks:
            fallback = reference_image(images, present, ref)
            base = stable_tissue_mean(
                images, present, probs.detach(), ref_probs.detach(), valid, fallback
            )
            expected = class_mean_change(
                base,
                class_channels(ref_label, 1),
                class_channels(future_label, 1),
                self.class_intensity,
                self.blur(),
            )
            residual, gate = heads.output("image").chunk(2, dim=1)
            region = dilate(torch.maximum(1 - ref_probs[:, :1], 1 - future_probs[:, :1]), 2)
            out["image"] = expected + region * torch.sigmoid(gate) * residual
        return out

    def _trunk_features(
        self, batch: dict[str, torch.Tensor], onehot: torch.Tensor, given: torch.Tensor
    ) -> dict:
        """Every context visit's input channels (contrasts, presence flags, the given masks and
        a given-mask flag) through the trunk: per-task features, fused at the target date."""
        images, present = batch["images"], batch["contrast_present"]
        b, k = images.shape[:2]
        spatial = images.shape[3:]
        ones = (1,) * len(spatial)
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
        if self.spatial_dims == 3:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.trunk(x, batch["years"], batch["visit_valid"], batch["ref_slot"])

    def _segment(
        self,
        feats: dict,
        batch: dict[str, torch.Tensor],
        onehot: torch.Tensor,
        given: torch.Tensor,
        known: torch.Tensor,
        probs: torch.Tensor,
        out: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Segment the visits whose mask is not given (``seg_logits``, ``seg_decoded``); return
        the context lesion maps with the segmentation where the data have no mask."""
        images, valid = batch["images"], batch["visit_valid"]
        b, k = images.shape[:2]
        spatial = images.shape[3:]
        hidden = (valid & ~given).flatten()
        decoded = images.new_zeros(0, 3, *spatial)
        if hidden.any():
            f = [v[hidden] for v in feats["seg"].visits]
            prior = nearest_given_mask(onehot, batch["years"], given, hidden.reshape(b, k))
            decoded = self.seg_head(self.seg_decoder(f[-1], f[:-1]), [prior], spatial)
            has_prior = prior[:, 2:3]
            decoded = decoded + self.seg_prior_weight * has_prior * mask_logits(prior_probs(prior))
            # the segmentation stands in only where the data have no mask: only there do
            # the other heads' losses reach it (and the full-size maps need a gradient)
            unknown = ~known.flatten()[hidden]
            if unknown.any():
                rows = hidden.nonzero()[:, 0][unknown]
                seg_probs = decoded[unknown].softmax(dim=1).float()
                probs = probs.flatten(0, 1).index_put((rows,), seg_probs).view_as(probs)
        # logits of the decoded visits only, in [B, K] order: [n decoded, 3, *S]
        out["seg_logits"], out["seg_decoded"] = decoded, hidden.reshape(b, k)
        return probs

    def _progression(
        self,
        volumes: torch.Tensor,
        years: torch.Tensor,
        valid: torch.Tensor,
        ref: torch.Tensor,
        ref_core: torch.Tensor,
        out: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """The volume forecast (``log_volume``) and status logits; return the forecast change
        of log core volume from the reference visit."""
        capacity = self.log_capacity.float().exp()
        log_volume = extrapolated_log_volume(
            volumes, years, valid, ref, self.growth_weights, capacity
        )
        out["log_volume"] = log_volume
        ratio = torch.log(log_volume[:, 0].expm1() + VOLUME_EPS_ML) - torch.log(
            ref_core + VOLUME_EPS_ML
        )
        tau = self.log_tau.exp().clamp(0.05, 5.0)
        up, down = self.thresholds
        out["status_logits"] = torch.stack(
            [(ratio - up) / tau, torch.zeros_like(ratio), (down - ratio) / tau], dim=1
        )
        return log_volume[:, 0] - ref_core.log1p()

    def _future(
        self,
        heads: _TargetHeads,
        batch: dict[str, torch.Tensor],
        ref_probs: torch.Tensor,
        ref_label: torch.Tensor,
        vox: torch.Tensor,
        out: dict[str, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The future mask's logits (``future_logits``) and, where something reads it, its
        label sized to the given or forecast volumes (``future_label``); return that label
        (the reference's when unread) and the future class probabilities."""
        logits = heads.output("future_seg") + self.future_prior_weight * mask_logits(ref_probs)
        out["future_logits"] = logits
        future_probs = logits.softmax(dim=1)
        if "image" not in self.tasks and self.training:  # nothing reads the label
            return ref_label, future_probs
        sizes = batch.get("future_volume_ml")  # a given future volume, else the forecast
        if sizes is None and "progression" in self.tasks:
            sizes = out["log_volume"].detach().expm1()
        future_label = (
            sized_label(future_probs, sizes, vox[:, 0], ref_label)
            if sizes is not None
            else class_labels(future_probs)
        )
        out["future_label"] = future_label
        return future_label, future_probs


class _TargetHeads:
    """The target-time decoders and heads of one forward pass, each run once: ``output(task)``
    is that task's rows of its (possibly shared) head."""

    def __init__(
        self,
        net: MultiTaskNet,
        feats: dict,
        ref: torch.Tensor,
        extras: list[torch.Tensor],
        spatial: Sequence[int],
    ) -> None:
        self.net, self.feats, self.ref, self.extras, self.spatial = net, feats, ref, extras, spatial
        self.outputs: dict[str, torch.Tensor] = {}

    def output(self, task: str) -> torch.Tensor:
        key = self.net.target_of[task]
        if key not in self.outputs:
            tf = self.feats[task]
            b, k = self.ref.shape[0], tf.visits[0].shape[0] // self.ref.shape[0]
            skips = [_gather(v.reshape(b, k, *v.shape[1:]), self.ref) for v in tf.visits[:-1]]
            decoded = self.net.target_decoders[key](tf.fused, skips)
            self.outputs[key] = self.net.target_heads[key](decoded, self.extras, self.spatial)
        start, stop = self.net.target_rows[task]
        return self.outputs[key][:, start:stop]
