"""The evaluation report: a markdown table, bar charts per metric, and a montage of one case."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from mtlgen.evaluate.cases import KINDS, CaseTruth
from mtlgen.evaluate.scores import METRICS
from mtlgen.inference.baselines import BASELINES
from mtlgen.inference.prediction import Prediction
from mtlgen.io.atomic import write_atomic, write_text_atomic


def _cell(entry: Mapping | None) -> str:
    if not entry or entry["mean"] is None:
        return "–"
    std = "" if entry["std"] is None else f" ± {entry['std']:.3g}"
    return f"{entry['mean']:.3g}{std}"


def _arrow(direction: str, level: float | None = None) -> str:
    """↑ higher is better, ↓ lower is better, ≈ nearer the interval level is better."""
    if direction == "level":
        return "≈" if level is None else f"≈{level:g}"
    return "↑" if direction == "max" else "↓"


def _best(values: dict[str, float | None], direction: str) -> str | None:
    """The best predictor by ``direction``; None for "level" metrics (coverage: a wider
    interval covers more and is not better for it) or without values."""
    defined = {k: v for k, v in values.items() if v is not None}
    if not defined or direction == "level":
        return None
    return (max if direction == "max" else min)(defined, key=defined.get)


def summary_markdown(metrics: dict) -> str:
    """Per case kind, a metric x predictor table (mean ± std over cases; best in bold), then
    each model's primary metrics against copy-last and the best baseline."""
    meta = metrics["meta"]
    lines = [
        "# Evaluation",
        "",
        f"Test patients: {len(meta['test_patients'])} (split seed {meta['split_seed']}); "
        f"cases: {meta['cases']}. Mean ± std over cases; status scores over all cases. "
        "Arrows: ↑ higher is better, ↓ lower is better, ≈ nearest the interval level is best.",
    ]
    for name, count in meta.get("fallbacks", {}).items():
        lines.append(
            f"`{name}` fell back to copy-last's volume on {count} case(s) "
            "(fewer than two usable context volumes)."
        )
    lines += _kind_tables(metrics)
    lines += _calibration_table(metrics)
    lines += _reliability_table(metrics)
    lines += _group_tables(metrics, "by_status", "true progression status")
    lines += _group_tables(metrics, "by_context", "context visits")
    lines += _seed_tables(metrics)
    lines += _primary_table(metrics)
    return "\n".join(lines) + "\n"


def _kind_tables(metrics: dict) -> list[str]:
    """Per case kind, every metric of every predictor; the best of each row in bold."""
    results, meta = metrics["results"], metrics["meta"]
    names, level = meta["predictors"], meta.get("interval_level")
    lines: list[str] = []
    for kind in KINDS:
        if not any(kind in results.get(n, {}) for n in names):
            continue
        lines += ["", f"## {kind}", "", "| metric | " + " | ".join(names) + " |"]
        lines.append("|---" * (len(names) + 1) + "|")
        for metric, direction in METRICS.items():
            entries = {n: results.get(n, {}).get(kind, {}).get(metric) for n in names}
            means = {n: e["mean"] if e else None for n, e in entries.items()}
            best = _best(means, direction)
            top = means[best] if best else None
            cells = [
                f"**{_cell(e)}**"
                if top is not None and means[n] == top and len(names) > 1
                else _cell(e)
                for n, e in entries.items()
            ]
            lines.append(f"| {metric} {_arrow(direction, level)} | " + " | ".join(cells) + " |")
    return lines


def _seed_tables(metrics: dict) -> list[str]:
    """Per case kind, each model trained with several seeds: mean ± std over the seeds."""
    groups, level = metrics.get("seed_groups", {}), metrics["meta"].get("interval_level")
    lines: list[str] = []
    for kind in KINDS:
        present = [g for g in groups if kind in groups[g]]
        if not present:
            continue
        lines += [
            "",
            f"## {kind}, across training seeds (mean ± std over seeds of the case means)",
            "",
            "| metric | "
            + " | ".join(f"{g} (×{groups[g][kind]['dice_lesion']['n']})" for g in present)
            + " |",
            "|---" * (len(present) + 1) + "|",
        ]
        for metric, direction in METRICS.items():
            cells = [_cell(groups[g][kind][metric]) for g in present]
            lines.append(f"| {metric} {_arrow(direction, level)} | " + " | ".join(cells) + " |")
    return lines


def _primary_table(metrics: dict) -> list[str]:
    """Each model's primary metrics against copy-last and the best baseline."""
    results, meta = metrics["results"], metrics["meta"]
    models = [n for n in meta["predictors"] if n not in BASELINES]
    baselines = [n for n in meta["predictors"] if n in BASELINES]
    if not (models and baselines):
        return []
    lines = [
        "",
        "## Primary metrics: models against baselines",
        "",
        "| model | metric | model | copy_last | best baseline | ratio to best baseline |",
        "|---|---|---|---|---|---|",
    ]
    for model in models:
        for primary in meta["primary_metrics"]:
            kind, metric = primary["metric"].split(".", 1)

            def mean(name: str, kind: str = kind, metric: str = metric) -> float | None:
                entry = results.get(name, {}).get(kind, {}).get(metric)
                return entry["mean"] if entry else None

            best = _best({b: mean(b) for b in baselines}, primary["direction"])
            value, ref = mean(model), mean(best) if best else None
            ratio = f"{value / ref:.3f}" if value is not None and ref else "–"
            copy = mean("copy_last")
            lines.append(
                f"| {model} | {primary['metric']} ({primary['direction']}) | "
                f"{'–' if value is None else f'{value:.4g}'} | "
                f"{'–' if copy is None else f'{copy:.4g}'} | "
                f"{best or '–'}: {'–' if ref is None else f'{ref:.4g}'} | {ratio} |"
            )
    return lines


# the metrics that read differently on a lesion that changed and on one that did not, and on a
# forecast from one visit and from a trajectory
GROUP_METRICS = (
    "dice_lesion",
    "volume_abs_error_ml",
    "volume_interval_coverage",
    "volume_interval_width_ml",
    "image_mae_brain",
    "image_mae_near",
    "image_mae_change",
    "status_accuracy",
)


def _calibration_table(metrics: dict) -> list[str]:
    """Each predictor's interval radius (log-volume per year) per calibration group, with the
    number of validation cases it came from."""
    calibration = metrics.get("calibration", {})
    if not calibration:
        return []
    names = [n for n in metrics["meta"]["predictors"] if n in calibration]
    present = {k for n in names for k in calibration[n]["radius_per_year"]}
    order = [g for kind in KINDS for g in (f"{kind}:1", f"{kind}:2+", kind)] + ["all"]
    keys = [k for k in order if k in present]
    lines = [
        "",
        "## Volume intervals",
        "",
        "Split conformal (`mtlgen.inference.intervals`): an interval is "
        "expm1(log1p(predicted mL) ± radius × max(horizon, min_days) in years). Radius per "
        "group (calibration cases); – where too few cases give no finite radius (the case "
        "borrows its kind's, then the pooled one). A trained model's calibration is its "
        "checkpoint's (validation and cross-fitted training cases); the others' are the "
        f"{len(metrics['meta']['calibration_patients'])} validation patients' cases.",
        "",
        "| group | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for key in keys:
        cells = []
        for name in names:
            radius = calibration[name]["radius_per_year"].get(key)
            n = calibration[name]["cases"].get(key, 0)
            cells.append(f"{'–' if radius is None else f'{radius:.3g}'} ({n})")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def _reliability_table(metrics: dict) -> list[str]:
    """Per predictor that gives a probability of growth (not only 0 or 1): predicted vs
    observed frequency of progression per probability bin, and the Brier score of each."""
    table = metrics.get("reliability", {})
    if not table:
        return []
    lines = [
        "",
        "## Probability of growth: reliability",
        "",
        "Brier score of P(progressive) (a deterministic predictor says 0 or 1): "
        + ", ".join(f"`{n}` {r['brier']:.3f} ({r['cases']} cases)" for n, r in table.items()),
    ]
    for name, record in table.items():
        if all(b["predicted"] in (0.0, 1.0) for b in record["bins"]):
            continue  # says only 0 or 1: its Brier score is all there is
        lines += ["", f"`{name}`:", "", "| P(progressive) | cases | predicted | observed |"]
        lines.append("|---|---|---|---|")
        lines += [
            f"| {b['low']:.1f}-{b['high']:.1f} | {b['cases']} | {b['predicted']:.2f} | "
            f"{b['observed']:.2f} |"
            for b in record["bins"]
        ]
    return lines


def _group_tables(metrics: dict, key: str, title: str) -> list[str]:
    """Per case kind, the key metrics per case group of metrics.json ``key`` (``by_status``:
    true progression status; ``by_context``: number of context visits)."""
    by_group, names = metrics.get(key, {}), metrics["meta"]["predictors"]
    lines: list[str] = []
    for kind in KINDS:
        # in the order metrics.json gives them (statuses in STATUSES order, visits ascending)
        groups = list(dict.fromkeys(g for n in names for g in by_group.get(n, {}).get(kind, {})))
        if not groups:
            continue
        lines += [
            "",
            f"## {kind}, by {title}",
            "",
            f"| {title} (cases) | metric | " + " | ".join(names) + " |",
            "|---" * (len(names) + 2) + "|",
        ]
        for group in groups:
            blocks = {n: by_group.get(n, {}).get(kind, {}).get(group, {}) for n in names}
            n_cases = max((e["n"] for b in blocks.values() for e in b.values()), default=0)
            for metric in GROUP_METRICS:
                arrow = _arrow(METRICS[metric], metrics["meta"].get("interval_level"))
                cells = [_cell(blocks[n].get(metric)) for n in names]
                lines.append(
                    f"| {group} ({n_cases}) | {metric} {arrow} | " + " | ".join(cells) + " |"
                )
    return lines


def plot_summary(metrics: dict, path: Path) -> Path:
    """Bar chart per metric: predictors side by side, one bar group per case kind, std whiskers."""
    results, names = metrics["results"], metrics["meta"]["predictors"]
    level = metrics["meta"].get("interval_level")
    kinds = [k for k in KINDS if any(k in results.get(n, {}) for n in names)]
    cols = 4
    rows = int(np.ceil(len(METRICS) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    width = 0.8 / max(len(names), 1)
    colors = plt.get_cmap("tab10")
    for ax, (metric, direction) in zip(axes.flat, METRICS.items(), strict=False):
        for i, name in enumerate(names):
            means, stds = [], []
            for kind in kinds:
                entry = results.get(name, {}).get(kind, {}).get(metric) or {}
                means.append(np.nan if entry.get("mean") is None else entry["mean"])
                stds.append(0.0 if entry.get("std") is None else entry["std"])
            x = np.arange(len(kinds)) + (i - (len(names) - 1) / 2) * width
            ax.bar(x, means, width, yerr=stds, capsize=2, label=name, color=colors(i % 10))
        ax.set_xticks(np.arange(len(kinds)), kinds)
        ax.set_title(f"{metric} {_arrow(direction, level)}", fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(METRICS) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=9)
    fig.suptitle("mtlgen evaluation on test patients (mean ± std over cases)")
    fig.tight_layout()
    return _save(fig, path)


def plot_montage(truth: CaseTruth, predictions: dict[str, Prediction], path: Path) -> Path:
    """One case, axial slice through the changing region: image, label and |error| per column
    (reference visit, truth, then each predictor)."""
    contrast = next(
        c for c in truth.target.images if all(c in p.images for p in predictions.values())
    )
    focus = truth.change if truth.change is not None and truth.change.any() else truth.brain
    z = round(float(np.argwhere(focus)[:, 2].mean()))
    true_image = truth.target.images[contrast]
    lo, hi = np.percentile(true_image[truth.brain], [1, 99.5])
    columns = [
        (
            f"last visit ({truth.reference.days:.0f} d)",
            truth.reference.images.get(contrast),
            truth.reference.label,
        ),
        (f"truth ({truth.target.days:.0f} d)", true_image, truth.target.label),
    ] + [(name, p.images[contrast], p.label) for name, p in predictions.items()]
    fig, axes = plt.subplots(3, len(columns), figsize=(2.3 * len(columns), 7.0), squeeze=False)
    err_max = max(float(np.abs(c[1] - true_image).max()) for c in columns if c[1] is not None)
    for j, (title, image, label) in enumerate(columns):
        img = image if image is not None else np.zeros_like(true_image)
        axes[0, j].imshow(np.rot90(img[:, :, z]), cmap="gray", vmin=lo, vmax=hi)
        axes[0, j].set_title(title, fontsize=8)
        axes[1, j].imshow(np.rot90(img[:, :, z]), cmap="gray", vmin=lo, vmax=hi)
        if label is not None:
            masked = np.ma.masked_equal(np.rot90(label[:, :, z]), 0)
            axes[1, j].imshow(masked, cmap="autumn", vmin=1, vmax=2, alpha=0.6)
        if truth.change is not None:
            axes[1, j].contour(
                np.rot90(truth.change[:, :, z]), levels=[0.5], colors="c", linewidths=0.6
            )
        if j == 1:
            axes[2, j].axis("off")
        else:
            err = axes[2, j].imshow(
                np.rot90(np.abs(img - true_image)[:, :, z]), cmap="magma", vmin=0, vmax=err_max
            )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel(contrast)
    axes[1, 0].set_ylabel("label (cyan: changing region)")
    axes[2, 0].set_ylabel("|prediction − truth|")
    fig.colorbar(err, ax=axes.ravel().tolist(), shrink=0.3)  # all rows keep one width
    fig.suptitle(f"{truth.case_id}", fontsize=9)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    try:
        return write_atomic(path, lambda p: fig.savefig(p, dpi=110))
    finally:
        plt.close(fig)


def write_report(
    metrics: dict, montage: tuple[CaseTruth, dict[str, Prediction]] | None, out_dir: Path
) -> list[Path]:
    """Write ``summary.md``, ``summary.png`` and (when there is a future case) ``montage.png``."""
    out_dir = Path(out_dir)
    paths = [
        write_text_atomic(out_dir / "summary.md", summary_markdown(metrics)),
        plot_summary(metrics, out_dir / "summary.png"),
    ]
    if montage is not None:
        paths.append(plot_montage(*montage, out_dir / "montage.png"))
    return paths
