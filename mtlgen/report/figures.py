"""The figures of a patient page: the volume trajectory and the slice montage (PNG files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlgen.progression import DAYS_PER_YEAR
from mtlgen.report.summary import PatientArrays, PatientSummary

_BANDS = (("progressive", "#f4c7c3"), ("stable", "#e8e8e8"), ("responding", "#c9e7cf"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def trajectory_png(summary: PatientSummary, out: Path) -> Path:
    """Lesion-core volume against time: measured points (hollow where the model segmented the
    visit), the linear and log-linear fits, the forecast with its interval, and the status
    bands at the due date relative to the last measured volume."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 3.6), dpi=100)
    done = [v for v in summary.visits if v.core_ml is not None]
    end = summary.due_days
    if done:
        last = done[-1]
        up, down = last.core_ml * (1 + summary.increase), last.core_ml * (1 - summary.decrease)
        f = summary.forecast
        forecast = [f.core_ml, f.high_ml or 0.0] if f is not None else []
        top = max([v.core_ml for v in done] + [up] + forecast) * 1.15 + 0.1
        x0 = last.days / DAYS_PER_YEAR
        x1 = end / DAYS_PER_YEAR
        for (name, colour), (lo, hi) in zip(
            _BANDS, ((up, top), (down, up), (0, down)), strict=True
        ):
            ax.fill_between([x0, x1 + 0.05], lo, hi, color=colour, lw=0, label=f"{name} band")
        years = np.linspace(done[0].days, end, 100)
        if summary.growth is not None:
            ax.plot(
                years / DAYS_PER_YEAR,
                summary.growth.linear_ml(years),
                "--",
                c="#555",
                lw=1,
                label="linear fit",
            )
            exp = summary.growth.exponential_ml(years)
            if exp is not None:
                ax.plot(
                    years / DAYS_PER_YEAR,
                    np.minimum(exp, top),
                    ":",
                    c="#1f5fa0",
                    lw=1.2,
                    label="log-linear fit",
                )
        for source, style in (("label", "o"), ("model", "s")):
            pts = [v for v in done if v.source == source]
            if pts:
                ax.plot(
                    [v.days / DAYS_PER_YEAR for v in pts],
                    [v.core_ml for v in pts],
                    style,
                    c="k",
                    mfc="k" if source == "label" else "w",
                    label="measured (label)" if source == "label" else "measured (model seg.)",
                )
        ax.set_ylim(0, top)
    f = summary.forecast
    if f is not None:
        x = f.target_days / DAYS_PER_YEAR
        low = f.core_ml - (f.low_ml if f.low_ml is not None else f.core_ml)
        high = (f.high_ml - f.core_ml) if f.high_ml is not None else 0
        ax.errorbar(
            [x],
            [f.core_ml],
            yerr=[[low], [high]],
            fmt="D",
            c="#c0392b",
            capsize=4,
            label=f"forecast ({f.level:.0%} interval)" if f.level else "forecast",
        )
    ax.axvline(end / DAYS_PER_YEAR, c="#888", lw=0.8)
    ax.set_xlabel("years since baseline")
    ax.set_ylabel("lesion core (mL)")
    ax.legend(fontsize=7, loc="upper left", ncol=2, frameon=False)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.14, top=0.97)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def lesion_slice(arrays: PatientArrays) -> int:
    """The axial slice with the most lesion over every outline (middle slice without one)."""
    labels = [*arrays.outlines.values()]
    if arrays.predicted_label is not None:
        labels.append(arrays.predicted_label)
    shape = arrays.visits[0].images[next(iter(arrays.visits[0].images))].shape
    area = np.zeros(shape[2])
    for label in labels:
        area += (label > 0).reshape(-1, shape[2]).sum(0)
    return int(area.argmax()) if area.max() > 0 else shape[2] // 2


def _panel(ax, image: np.ndarray | None, label: np.ndarray | None, z: int, text: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if image is None:
        ax.set_facecolor("#f3f3f3")
        ax.text(
            0.5,
            0.5,
            text,
            ha="center",
            va="center",
            fontsize=8,
            color="#a33",
            transform=ax.transAxes,
            wrap=True,
        )
        for side in ax.spines.values():
            side.set_linestyle((0, (3, 3)))
            side.set_color("#a33")
        return
    ax.imshow(_outlined(image, label, z), interpolation="nearest")
    for side in ax.spines.values():
        side.set_visible(False)


_UPSAMPLE = 3  # outlines are drawn at 3x the grid so that they stay thin
_OUTLINE = ((2, (1.0, 0.9, 0.0)), (1, (0.9, 0.05, 0.05)))  # edema yellow, core red


def _outlined(image: np.ndarray, label: np.ndarray | None, z: int) -> np.ndarray:
    """RGB of ``image``'s axial slice ``z`` (1st-99.5th percentile window), upsampled, with the
    border of each lesion class of ``label`` painted in."""
    from scipy.ndimage import binary_erosion

    sl = np.rot90(image[:, :, z])
    lo, hi = np.percentile(sl, [1, 99.5])
    grey = np.clip((sl - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    big = np.kron(grey, np.ones((_UPSAMPLE, _UPSAMPLE)))
    rgb = np.repeat(big[..., None], 3, axis=-1)
    if label is not None:
        lab = np.kron(np.rot90(label[:, :, z]), np.ones((_UPSAMPLE, _UPSAMPLE), np.uint8))
        for value, colour in _OUTLINE:
            mask = lab >= value if value == 2 else lab == value  # the whole lesion, then core
            border = mask & ~binary_erosion(mask, iterations=1)
            rgb[border] = colour
    return rgb


def montage_png(summary: PatientSummary, arrays: PatientArrays, out: Path) -> Path:
    """Rows: the patient's contrasts; columns: every visit on the baseline-aligned grid (same
    axial slice), then the predicted follow-up with its outline. A contrast a
    visit lacks is a labelled 'missing' panel; lesion core outlined red, edema yellow."""
    plt = _pyplot()
    z = lesion_slice(arrays)
    contrasts = summary.contrasts
    has_model = summary.forecast is not None
    cols = len(arrays.visits) + has_model
    fig, axes = plt.subplots(
        len(contrasts), cols, figsize=(1.6 * cols, 1.75 * len(contrasts)), dpi=90, squeeze=False
    )
    for j, visit in enumerate(arrays.visits):
        outline = arrays.outlines.get(visit.visit)
        source = next((v.source for v in summary.visits if v.key == visit.visit), None)
        axes[0, j].set_title(
            f"visit {visit.visit}\nday {visit.days:.0f}"
            + (" (model seg.)" if source == "model" else ""),
            fontsize=7,
        )
        for i, contrast in enumerate(contrasts):
            image = visit.images.get(contrast)
            _panel(axes[i, j], image, outline, z, f"{contrast}\nmissing")
            if j == 0:
                axes[i, j].set_ylabel(contrast, fontsize=8)
    if has_model:
        f = summary.forecast
        j = len(arrays.visits)
        axes[0, j].set_title(f"predicted\nday {f.target_days:.0f}", fontsize=7, color="#c0392b")
        for i, contrast in enumerate(contrasts):
            _panel(
                axes[i, j],
                arrays.predicted_images.get(contrast),
                arrays.predicted_label,
                z,
                f"{contrast}\nnot predicted",
            )
    fig.suptitle(f"axial slice {z} of the baseline-aligned grid", fontsize=8)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.01, top=0.8, wspace=0.04, hspace=0.04)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
