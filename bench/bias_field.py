"""How much of copy-last's image error is the bias field that differs between two scans?

Reads a registry registered *without* the bias-field match (``-S
preprocess.intensity_bias_sigma_mm=0``), then applies ``mtlgen.preprocess.intensity.
match_bias_field`` to every stored follow-up against its baseline, as registration does, for
each ``--sigmas`` value (mm; 0 = as registered). For every labelled visit whose previous visit is
labelled it scores copy-last (the previous visit's image as the forecast) against the visit, per
contrast, over:

- ``brain`` (``evaluate.brain_fraction`` / ``brain_sigma_vox`` of the truth, as evaluate does),
- ``near`` (the previous visit's lesion grown by ``evaluate.near_mm``, within the brain),
- ``changed`` (the voxels whose label changes: the lesion's own change, which a bias-field match
  must leave alone),

and the normal-tissue drift of each patient (median of the head 9 mm clear of any of its lesions,
per visit, relative to the baseline; the largest over visits and contrasts). Prints each figure
and its ratio to sigma 0's, measured in the same run.

    .venv/bin/mtlgen -S preprocess.intensity_bias_sigma_mm=0 \\
        -S registry.url=sqlite:////tmp/nobias/registry.sqlite \\
        -S preprocess.out_dir=/tmp/nobias/processed register data/raw/demo
    .venv/bin/python bench/bias_field.py --registry sqlite:////tmp/nobias/registry.sqlite
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from scipy import ndimage

from mtlgen.config import load_config
from mtlgen.evaluate.metrics import brain_region, near_region, region_mae
from mtlgen.io.series import PatientSeries, VisitArrays, load_visit
from mtlgen.preprocess.intensity import foreground, match_bias_field
from mtlgen.progression import voxel_spacing_mm
from mtlgen.registry.series import load_series

REGIONS = ("brain", "near", "changed")


def _matched(visits: list[VisitArrays], sigma_mm: float) -> list[dict[str, np.ndarray]]:
    """Each visit's images, follow-ups matched to the baseline's bias field (sigma 0: as read)."""
    base = visits[0]
    spacing = voxel_spacing_mm(base.affine)
    out = [dict(base.images)]
    for visit in visits[1:]:
        images = {}
        for contrast, image in visit.images.items():
            reference = base.images.get(contrast)
            if sigma_mm <= 0 or reference is None:
                images[contrast] = image
                continue
            head = foreground(image, image > 0) & foreground(reference, reference > 0)
            images[contrast] = match_bias_field(image, reference, head, sigma_mm, spacing)[0]
        out.append(images)
    return out


def _drift(visits: list[VisitArrays], images: list[dict[str, np.ndarray]]) -> float:
    """The largest normal-tissue drift from the baseline over a patient's visits and contrasts."""
    labels = [v.label for v in visits if v.label is not None]
    if not labels:
        return float("nan")
    lesion = np.any([label > 0 for label in labels], axis=0)
    normal = ~ndimage.binary_dilation(lesion, iterations=3)
    worst = 0.0
    for contrast, reference in images[0].items():
        head = ndimage.binary_erosion(reference > 0.3, iterations=2) & normal
        level = float(np.median(reference[head]))
        for later in images[1:]:
            if contrast in later:
                worst = max(worst, abs(float(np.median(later[contrast][head])) / level - 1))
    return worst


def _score(series: PatientSeries, sigmas: list[float], evaluate) -> dict[float, dict[str, list]]:
    """Per sigma: copy-last's MAE per region (one entry per case and contrast) and the drift."""
    visits = [load_visit(v) for v in series.visits]
    spacing = voxel_spacing_mm(visits[0].affine)
    out: dict[float, dict[str, list]] = {}
    for sigma in sigmas:
        images = _matched(visits, sigma)
        scores = out.setdefault(sigma, {region: [] for region in (*REGIONS, "drift")})
        scores["drift"].append(_drift(visits, images))
        for j in range(1, len(visits)):
            before, after = visits[j - 1].label, visits[j].label
            if before is None or after is None:
                continue
            for contrast, truth in images[j].items():
                if contrast not in images[j - 1]:
                    continue
                brain = brain_region(truth, evaluate.brain_fraction, evaluate.brain_sigma_vox)
                near = near_region(before, spacing, evaluate.near_mm, brain)
                regions = {"brain": brain, "near": near, "changed": before != after}
                for name, region in regions.items():
                    if region is not None and region.any():
                        scores[name].append(region_mae(images[j - 1][contrast], truth, region))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--registry", required=True, help="registry URL (registered with sigma 0)")
    parser.add_argument("-p", "--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 9.0, 15.0, 30.0])
    args = parser.parse_args()
    evaluate = load_config(args.params).evaluate
    sigmas = sorted({0.0, *args.sigmas})
    totals: dict[float, dict[str, list]] = {s: {r: [] for r in (*REGIONS, "drift")} for s in sigmas}
    for series in load_series(args.registry):
        for sigma, scores in _score(series, sigmas, evaluate).items():
            for name, values in scores.items():
                totals[sigma][name].extend(values)
    base = {name: statistics.fmean(totals[0.0][name]) for name in REGIONS}
    print(
        f"copy-last image MAE between consecutive labelled visits ({len(totals[0.0]['brain'])} "
        "case-contrasts), ratio to no bias-field match; normal-tissue drift (max per patient)"
    )
    for sigma in sigmas:
        parts = []
        for name in REGIONS:
            value = statistics.fmean(totals[sigma][name])
            parts.append(f"{name} {value:.4f} ({value / base[name]:.3f}x)")
        drift = [d for d in totals[sigma]["drift"] if d == d]
        parts.append(f"drift mean {statistics.fmean(drift):.4f} max {max(drift):.4f}")
        print(f"sigma {sigma:5.1f} mm: " + "  ".join(parts))


if __name__ == "__main__":
    main()
