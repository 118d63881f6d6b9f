"""Structural priors the heads build on: each is a closed-form answer a learned head corrects.

- ``line_at_target``: least-squares line through the context visits' values over time, read
  at the target (t = 0): linear volume extrapolation (or interpolation) inside the network.
- ``gompertz_at_target``: Gompertz growth towards a carrying capacity K, fitted per case as
  the line of log(log K - log V) over time (the standard law of a growing tumour).
- ``extrapolated_log_volume``: that line read for the lesion volumes, moved in log-volume
  towards or away from the log-linear fit, the reference visit's volume and the Gompertz fit
  by given weights (zero weights: linear extrapolation), never beyond the linear, reference
  and Gompertz volumes; ``fit_growth_prior`` chooses K and the Gompertz weight on a cohort's
  volume trajectories.
- ``nearest_given_mask``: for every context visit, the given mask of the visit nearest in time
  (all visits sit on the baseline's grid, so it is where the lesion was a few months away).
- ``mask_logits``: a mask as logits, added to a mask head's output so that the head starts
  from that mask (copy-last for the future mask, the nearest labelled visit for segmentation).
- ``class_mean_change``: the image change implied by a change of labels, with each class's
  intensity measured on the patient's own reference scan (lesion core, edema, and the tissue
  ringing the lesion), so a voxel that becomes lesion takes the lesion's look and a voxel that
  stops being lesion takes its surroundings' look.
- ``sized_label``: the label map with given core and whole-lesion volumes that follows a mask
  head's probabilities and the reference lesion's shape (the future mask the model answers).
- ``stable_tissue_mean``: per voxel, the mean of the context visits' images where their label
  agrees with the reference visit's: the reference image with its scan noise and per-visit
  intensity drift averaged down (every visit sits on the baseline's grid).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MAX_LOG_VOLUME = math.log1p(1000.0)  # log(1 + ml): caps extrapolated volumes at 1 litre
BLUR_RADIUS = 2  # voxels: half-width of the ``gaussian_blur`` kernel


def _axis_padding(ndim: int, axis: int, radius: int) -> list[int]:
    """``F.pad`` widths that pad only ``axis`` of an ``ndim``-d tensor by ``radius`` each side."""
    pad = [0, 0] * (ndim - 2)
    pad[2 * (ndim - 1 - axis) : 2 * (ndim - 1 - axis) + 2] = [radius, radius]
    return pad


def dilate(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey-value dilation of [N, C, *S] by a (2 radius + 1) box, separable: along each axis,
    the maximum of 2 radius + 1 shifted copies: 0.04x the time of ``F.max_pool3d`` (stride 1) on
    a full-size map on 2 CPU cores, identical results (``bench/kernels.py``).
    It marks a region, it is no learning signal: the result carries no gradient."""
    x = x.detach()
    if radius <= 0:
        return x
    for axis in range(2, x.dim()):
        size = x.shape[axis]
        padded = F.pad(x, _axis_padding(x.dim(), axis, radius), value=float("-inf"))
        x = padded.narrow(axis, 0, size)
        for shift in range(1, 2 * radius + 1):
            x = torch.maximum(x, padded.narrow(axis, shift, size))
    return x


def line_at_target(values: torch.Tensor, years: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Least-squares line of ``values`` [B, K, V] over ``years`` [B, K] (valid [B, K] visits),
    evaluated at t = 0; one visit (or one distinct time) gives its mean. -> [B, V]."""
    w = valid.to(values.dtype)
    n = w.sum(dim=1, keepdim=True).clamp_min(1.0)
    t_mean = (w * years).sum(dim=1, keepdim=True) / n  # [B, 1]
    v_mean = (w[..., None] * values).sum(dim=1) / n  # [B, V]
    dt = (years - t_mean) * w
    spread = (dt * dt).sum(dim=1, keepdim=True)  # [B, 1]
    cov = (dt[..., None] * values).sum(dim=1)  # [B, V]
    slope = torch.where(spread > 1e-6, cov / spread.clamp_min(1e-6), torch.zeros_like(cov))
    return v_mean - slope * t_mean


def gompertz_at_target(
    volumes: torch.Tensor, years: torch.Tensor, valid: torch.Tensor, capacity: torch.Tensor
) -> torch.Tensor:
    """Gompertz extrapolation to t = 0 of ``volumes`` [B, K, V] (ml) over ``years`` [B, K]
    towards the carrying capacities ``capacity`` [V] (ml): V(t) = K exp(-exp(a + b t)), so
    log(log K - log V) is the least-squares line of the valid visits. Volumes are clamped to
    [1 ul, 0.97 K] (an empty lesion stays near empty). -> [B, V] ml."""
    log_k = capacity.log()
    v = volumes.clamp(min=1e-3).minimum(0.97 * capacity)
    z = line_at_target((log_k - v.log()).log(), years, valid)
    return torch.exp(log_k - z.exp())


def extrapolated_log_volume(
    volumes: torch.Tensor,
    years: torch.Tensor,
    valid: torch.Tensor,
    ref: torch.Tensor,
    weights: torch.Tensor,
    capacity: torch.Tensor,
) -> torch.Tensor:
    """log(1 + volume) at the target (t = 0): the least-squares line of ``volumes`` [B, K, V]
    (ml) over ``years`` [B, K] (valid [B, K] visits), moved in log-volume by ``weights`` [V, 3]
    towards the log-linear fit (column 0), the volume of slot ``ref`` [B] (column 1) and the
    Gompertz fit towards ``capacity`` [V] ml (column 2; the linear one for a case whose
    volumes reach the capacity). Zero weights give linear extrapolation. The result never
    leaves the range of the linear, reference and Gompertz volumes (the log-linear fit, which
    can run away, only pulls within it).
    -> [B, V] float32 in [0, MAX_LOG_VOLUME]."""
    linear = line_at_target(volumes, years, valid).clamp_min(0.0)
    # a case whose volumes reach the capacity is beyond what the cohort's capacity can tell
    # (a lesion larger than the training patients': its Gompertz forecast would hold it at
    # their capacity): its Gompertz candidate is the linear one
    seen = (volumes * valid[..., None].to(volumes.dtype)).amax(dim=1)
    gompertz = torch.where(
        seen < 0.97 * capacity, gompertz_at_target(volumes, years, valid, capacity), linear
    )
    candidates = torch.stack(  # [B, V, 4 extrapolations] in ml
        [
            linear,
            line_at_target(volumes.log1p(), years, valid).clamp(0.0, MAX_LOG_VOLUME).expm1(),
            volumes[torch.arange(volumes.shape[0], device=volumes.device), ref],
            gompertz,
        ],
        dim=-1,
    ).float()
    logs = candidates.log1p().clamp_max(MAX_LOG_VOLUME)
    moved = logs[..., 0] + (weights * (logs[..., 1:] - logs[..., :1])).sum(-1)
    bounded = logs[..., [0, 2, 3]]
    return moved.clamp(bounded.amin(-1), bounded.amax(-1))


GOMPERTZ_WEIGHTS = (0.25, 0.5, 0.75, 0.9, 0.95)  # tried by ``fit_growth_prior``


def gompertz_weights(weight: torch.Tensor) -> torch.Tensor:
    """``extrapolated_log_volume``'s weights [V, 3] that move the linear forecast towards the
    Gompertz fit by ``weight`` [V] (clamped to [0, 0.99]) and towards nothing else."""
    weights = torch.zeros(weight.shape[0], 3)
    weights[:, 2] = weight.clamp(0.0, 0.99)
    return weights


def fit_growth_prior(
    volumes: torch.Tensor,
    years: torch.Tensor,
    valid: torch.Tensor,
    ref: torch.Tensor,
    truth: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per volume type, the carrying capacity (ml) and the weight towards the Gompertz fit
    (0, i.e. linear extrapolation, or one of ``GOMPERTZ_WEIGHTS``) whose
    ``extrapolated_log_volume`` has the least mean absolute error against the true target
    volumes ``truth`` [N, V] (ml) of a cohort's cases (volumes [N, K, V] etc.). Capacities
    from 1.1x to ~64x the largest volume seen are tried. -> (capacity [V], weight [V])."""
    n_types = volumes.shape[-1]
    largest = volumes.flatten(0, 1).amax(0).clamp_min(1e-2)  # [V]
    factors = 1.1 * 2.0 ** (torch.arange(25, dtype=torch.float32) / 4)  # 1.1x .. ~64x

    def error(w: float, factor: float) -> torch.Tensor:
        weights = gompertz_weights(torch.full((n_types,), w))
        log_volume = extrapolated_log_volume(volumes, years, valid, ref, weights, largest * factor)
        return (log_volume.expm1() - truth).abs().mean(0)  # [V]

    # linear extrapolation (weight 0) unless a Gompertz fit does better
    best, capacity, weight = error(0.0, factors[-1]), largest * factors[-1], torch.zeros(n_types)
    for factor in factors:
        for w in GOMPERTZ_WEIGHTS:
            e = error(w, factor)
            better = e < best - 1e-9
            best = torch.where(better, e, best)
            capacity = torch.where(better, largest * factor, capacity)
            weight = torch.where(better, torch.tensor(w), weight)
    return capacity, weight


def nearest_given_mask(
    onehot: torch.Tensor, years: torch.Tensor, given: torch.Tensor, select: torch.Tensor
) -> torch.Tensor:
    """For each selected context visit, [core, whole lesion, has-prior] maps from the given mask
    of the nearest *other* visit in time (zeros where no other visit has one).

    onehot [B, K, 3, *S], years [B, K], given and select [B, K] -> [n selected, 3, *S], in
    [B, K] order.
    """
    k = years.shape[1]
    dist = (years[:, :, None] - years[:, None, :]).abs()
    eye = torch.eye(k, dtype=torch.bool, device=years.device)
    dist = dist.masked_fill(~given[:, None, :] | eye, float("inf"))
    rows, slots = select.nonzero(as_tuple=True)
    nearest = dist.argmin(dim=2)[rows, slots]
    has = torch.isfinite(dist.min(dim=2).values[rows, slots]).to(onehot.dtype)
    prior = onehot[rows, nearest]  # [n, 3, *S]
    flag = has.reshape(-1, 1, *([1] * (onehot.dim() - 3)))
    core, lesion = prior[:, 1:2], prior[:, 1:2] + prior[:, 2:3]
    return torch.cat([core, lesion, torch.ones_like(core)], dim=1) * flag


def mask_logits(probs: torch.Tensor, floor: float = 0.05) -> torch.Tensor:
    """Class probabilities [N, 3, *S] as logits, each probability floored at ``floor``."""
    return probs.clamp_min(floor).log()


def prior_probs(prior: torch.Tensor) -> torch.Tensor:
    """``nearest_given_mask`` channels [N, 3, *S] (core, lesion, has) -> class probabilities
    (background, core, edema) [N, 3, *S]."""
    core, lesion = prior[:, 0:1], prior[:, 1:2]
    return torch.cat([1.0 - lesion, core, lesion - core], dim=1)


def class_means(
    image: torch.Tensor, probs: torch.Tensor, fallback: torch.Tensor, ring_vox: int = 2
) -> torch.Tensor:
    """Mean intensity per class [B, 3, C] of ``image`` [B, C, *S] under ``probs`` [B, 3, *S]:
    class 0 is the tissue ringing the lesion (``ring_vox`` voxels wide; a region, no gradient
    flows through it), 1 core, 2 edema. Each mean is shrunk towards ``fallback`` [3, C] by one
    pseudo-voxel (a class the scan does not show takes the fallback)."""
    lesion = probs[:, 1:2] + probs[:, 2:3]
    ring = (dilate(lesion, ring_vox) - lesion.detach()).clamp_min(0.0)
    weights = torch.cat([ring, probs[:, 1:3]], dim=1).flatten(2)  # [B, 3, N]
    sums = torch.einsum("bkn,bcn->bkc", weights, image.flatten(2))
    return (sums + fallback) / (weights.sum(dim=2, keepdim=True) + 1.0)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = BLUR_RADIUS) -> torch.Tensor:
    """Separable Gaussian smoothing of [N, C, *S] with a (differentiable) ``sigma`` in voxels,
    as weighted sums of shifted copies; zero padding. Forward + backward (sigma's gradient
    included) 0.78x the time of MONAI's ``separable_filtering`` with the same kernel on 2 CPU
    cores, equal to 2e-7 (``bench/kernels.py``)."""
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma.to(x.dtype)) ** 2)
    kernel = kernel / kernel.sum()
    for axis in range(2, x.dim()):
        padded = F.pad(x, _axis_padding(x.dim(), axis, radius))
        size = x.shape[axis]
        x = sum(kernel[i] * padded.narrow(axis, i, size) for i in range(2 * radius + 1))
    return x


def bounding_box(mask: torch.Tensor | np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``mask`` (torch or numpy) grown by ``margin`` voxels on
    every side and clipped to the array; None if the mask is empty."""
    hits = torch.as_tensor(mask).nonzero()
    if len(hits) == 0:
        return None
    lo, hi = hits.min(dim=0).values - margin, hits.max(dim=0).values + margin + 1
    bounds = zip(lo.tolist(), hi.tolist(), mask.shape, strict=True)
    return tuple(slice(max(a, 0), min(b, n)) for a, b, n in bounds)


def class_mean_change(
    image: torch.Tensor,
    ref_probs: torch.Tensor,
    new_probs: torch.Tensor,
    fallback: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """``image`` with the intensity change its labels' change implies:
    image + sum_k blur(new_k - ref_k) * mean_k, means from ``class_means`` of the reference,
    the label change blurred by the scan's point spread (``sigma`` voxels: a resampled image's
    edges are partial volumes, its labels are not). Unchanged voxels keep their intensity.
    -> [B, C, *S]."""
    means = class_means(image, ref_probs, fallback)  # [B, 3, C]
    diff = new_probs - ref_probs
    changed = (diff != 0).any(dim=1)  # [B, *S]
    out = image.clone()
    for i in range(len(image)):
        # the change is zero where the labels do not change: blur only the bounding box of
        # the changed voxels grown by the blur radius (zero padding at its edge is then exact)
        box = bounding_box(changed[i], BLUR_RADIUS)
        if box is None:
            continue
        window = (slice(i, i + 1), slice(None), *box)
        # blurring is linear: blur the C-channel intensity change, not the 3 class changes
        change = torch.einsum("bk...,bkc->bc...", diff[window], means[i : i + 1])
        out[window] = out[window] + gaussian_blur(change, sigma, BLUR_RADIUS)
    return out


def _top(score: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the ``count`` highest-scoring entries of ``score``."""
    flat = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    if count > 0:
        flat[torch.topk(score.flatten(), min(count, score.numel()), sorted=False).indices] = True
    return flat.reshape(score.shape)


def _max_outside(x: torch.Tensor, box: tuple[slice, ...]) -> float:
    """Largest entry of ``x`` outside ``box`` (-inf if the box covers it all), read from the
    slabs around the box: no copy of ``x``."""
    best = -math.inf
    for axis, cut in enumerate(box):  # inside the box on the axes before, outside on this one
        for part in (slice(0, cut.start), slice(cut.stop, None)):
            slab = x[(*box[:axis], part)]
            if slab.numel():
                best = max(best, float(slab.max()))
    return best


def _ranked(scores: torch.Tensor, core_n: int, lesion_n: int) -> tuple[torch.Tensor, float, float]:
    """Labels (0 bg, 1 core, 2 edema) of ``scores`` [2, *S] (core, whole lesion): the top
    ``core_n`` of the core scores become core, the next lesion scores up to ``lesion_n``
    voxels edema; with the lowest score each of the two chose (inf if none)."""
    core = _top(scores[0], core_n)
    lesion = _top(scores[1].masked_fill(core, math.inf), lesion_n)
    edema = lesion & ~core

    def lowest(x: torch.Tensor, chosen: torch.Tensor) -> float:
        return float(x[chosen].min()) if chosen.any() else math.inf

    return 2 * lesion.long() - core.long(), lowest(scores[0], core), lowest(scores[1], edema)


def sized_label(
    probs: torch.Tensor,
    volumes_ml: torch.Tensor,
    voxel_ml: torch.Tensor,
    reference: torch.Tensor,
    sigma_vox: float = 1.5,
) -> torch.Tensor:
    """Label maps (0 bg, 1 core, 2 edema) sized to ``volumes_ml`` [B, 2] (core, whole lesion)
    from class probabilities ``probs`` [B, 3, *S], voxel volumes ``voxel_ml`` [B] and the
    reference labels ``reference`` [B, *S].

    Voxels are ranked first by being in the reference lesion, then by nearness to it (the
    reference mask smoothed by a Gaussian of ``sigma_vox``, cut at 2 sigma), then by
    probability: a growing lesion keeps its shape and grows at its border, a shrinking one
    keeps its most likely part. The top round(core / voxel) voxels become core, the next ones
    up to the whole-lesion volume edema. Ranked within the reference lesion's box grown by the
    Gaussian's reach when that is exact (the box's chosen voxels outrank every voxel outside
    it, which scores its probability only), else over the whole map. No gradient.
    -> [B, *S] int64."""
    probs = probs.detach().float()
    radius, sigma = math.ceil(2 * sigma_vox), torch.tensor(sigma_vox)
    label = torch.zeros_like(reference, dtype=torch.int64)
    for i in range(len(probs)):
        core_n = round(float(volumes_ml[i, 0]) / float(voxel_ml[i]))
        lesion_n = round(float(volumes_ml[i].max()) / float(voxel_ml[i]))
        p_core, p_lesion = probs[i, 1], probs[i, 1] + probs[i, 2]
        crop = bounding_box(reference[i] > 0, radius)  # the Gaussian reaches no further
        if crop is None:  # no reference lesion: the probabilities alone rank
            label[i] = _ranked(torch.stack([p_core, p_lesion]), core_n, lesion_n)[0]
            continue
        ref = reference[i][crop]
        masks = torch.stack([ref == 1, ref > 0]).float()  # [2, *crop]
        scores = torch.stack([p_core[crop], p_lesion[crop]]) + 2.0 * masks
        scores += gaussian_blur(masks[None], sigma, radius)[0]
        inside, core_low, edema_low = _ranked(scores, core_n, lesion_n)
        if (
            lesion_n <= inside.numel()
            and core_low >= _max_outside(p_core, crop)
            and edema_low >= _max_outside(p_lesion, crop)
        ):
            label[i][crop] = inside
            continue
        # the chosen voxels reach beyond the box: rank the whole map
        whole = torch.stack([p_core, p_lesion])
        whole[(slice(None), *crop)] = scores
        label[i] = _ranked(whole, core_n, lesion_n)[0]
    return label


def stable_tissue_mean(
    images: torch.Tensor,
    present: torch.Tensor,
    probs: torch.Tensor,
    ref_probs: torch.Tensor,
    valid: torch.Tensor,
    fallback: torch.Tensor,
) -> torch.Tensor:
    """Mean over the context visits of ``images`` [B, K, C, *S], each visit weighted per voxel by
    the probability that its label (``probs`` [B, K, 3, *S]) equals the reference visit's
    (``ref_probs`` [B, 3, *S]) and by whether it has the contrast (``present`` [B, K, C]) and is
    a visit (``valid`` [B, K]). Voxels no visit covers take ``fallback`` [B, C, *S].
    -> [B, C, *S]."""
    b, k = valid.shape
    ones = (1,) * (images.dim() - 3)
    agree = probs[:, :, 0] * ref_probs[:, None, 0]  # [B, K, *S]: sum over the classes
    for c in range(1, probs.shape[2]):
        agree.addcmul_(probs[:, :, c], ref_probs[:, None, c])
    seen = (present * valid[..., None]).to(images.dtype).reshape(b, k, -1, *ones)
    weight = agree[:, :, None] * seen
    total = weight.sum(dim=1)
    mean = (weight * images).sum(dim=1).div_(total.clamp_min(1e-6))
    return torch.where(total > 1e-3, mean, fallback)
