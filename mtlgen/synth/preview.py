"""A picture of one synthetic patient: visits side by side and the lesion-volume curve."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np

from mtlgen.ids import check_token
from mtlgen.io.atomic import write_atomic
from mtlgen.synth.cohort import GROUNDTRUTH_DIR, bids_paths
from mtlgen.synth.growth import GrowthLaw


def _canonical(path: Path) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj, dtype=np.float32)


def _axial_through_lesion(label: np.ndarray) -> int:
    core = np.argwhere(label == 1)
    return int(np.median(core[:, 2])) if len(core) else label.shape[2] // 2


def preview_patient(cohort_dir: Path, participant: str, out_png: Path) -> Path:
    """Write a PNG of ``participant`` (e.g. ``001``): T1w and FLAIR per visit with the lesion
    outline, and the measured core volume against the declared growth law."""
    participant = check_token(participant.removeprefix("sub-"), "participant")
    cohort_dir = Path(cohort_dir)
    truth = json.loads((cohort_dir / GROUNDTRUTH_DIR / "groundtruth.json").read_text())
    key = f"sub-{participant}"
    if key not in truth["patients"]:
        raise KeyError(f"{key}: not in {cohort_dir / GROUNDTRUTH_DIR / 'groundtruth.json'}")
    with open(cohort_dir / GROUNDTRUTH_DIR / "visits.tsv") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["participant_id"] == key]

    fig, axes = plt.subplots(3, len(rows), figsize=(2.4 * len(rows), 7.6), squeeze=False)
    for col, row in enumerate(rows):
        session = row["session_id"].removeprefix("ses-")
        anat, labels = bids_paths(cohort_dir, participant, session)
        stem = f"{key}_{row['session_id']}"
        label = _canonical(labels / f"{stem}_dseg.nii.gz")
        z = _axial_through_lesion(label)
        for r, contrast in enumerate(("T1w", "FLAIR")):
            ax = axes[r, col]
            ax.set_axis_off()
            path = anat / f"{stem}_{contrast}.nii.gz"
            if not path.exists():
                ax.text(
                    0.5, 0.5, f"no {contrast}", ha="center", va="center", transform=ax.transAxes
                )
                continue
            img = _canonical(path)[:, :, z].T
            ax.imshow(img, cmap="gray", origin="lower", vmin=0, vmax=np.percentile(img, 99.5))
            ax.contour((label[:, :, z] > 0).T, levels=[0.5], colors="yellow", linewidths=0.6)
            ax.contour((label[:, :, z] == 1).T, levels=[0.5], colors="red", linewidths=0.6)
            if r == 0:
                ax.set_title(f"day {row['days']}", fontsize=9)
            if col == 0:
                ax.text(
                    -0.05,
                    0.5,
                    contrast,
                    rotation=90,
                    ha="right",
                    va="center",
                    transform=ax.transAxes,
                )
        axes[2, col].remove()

    laws = [GrowthLaw(**lesion["growth_law"]) for lesion in truth["patients"][key]["lesions"]]
    days = np.array([float(r["days"]) for r in rows])
    curve_t = np.linspace(0, days.max() * 1.1 + 1, 200)
    ax = fig.add_subplot(3, 1, 3)
    courses = ", ".join(f"{law.law} {law.course}" for law in laws)
    declared = sum(law.volume(curve_t) for law in laws)
    ax.plot(curve_t, declared, color="gray", label=f"declared law ({courses})")
    ax.plot(days, [float(r["core_ml"]) for r in rows], "o", color="red", label="lesion core (mask)")
    ax.plot(
        days,
        [float(r["core_ml"]) + float(r["edema_ml"]) for r in rows],
        "s",
        color="orange",
        label="core + edema (mask)",
    )
    ax.set_xlabel("days since baseline")
    ax.set_ylabel("volume (mL)")
    ax.legend(fontsize=8)
    fig.suptitle(f"{key}: axial slice through the lesion (yellow: lesion+edema, red: core)")
    fig.tight_layout()
    write_atomic(out_png, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return Path(out_png)
