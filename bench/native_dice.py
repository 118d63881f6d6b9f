"""Dice on the model grid vs Dice in the patient's own scan space (native outputs).

For every follow-up visit with a label whose previous visit has one too: copy-last's predicted
label (``mtlgen.inference.baselines``) against the truth, once on the model grid (the
registry's processed label) and once on the follow-up's source grid (the predicted label mapped
there with ``mtlgen.preprocess.native.label_to_source`` and the visit's ``to_baseline``, against
the source label file). Prints each case and the mean and max |Dice_native - Dice_model|
(whole lesion: core and edema).

    .venv/bin/python bench/native_dice.py --registry data/registry.sqlite
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sqlalchemy import select

from mtlgen.evaluate.metrics import dice
from mtlgen.inference.baselines import make_baseline
from mtlgen.io.series import load_visit
from mtlgen.io.validate import read_volume
from mtlgen.preprocess.grid import Grid
from mtlgen.preprocess.native import label_to_source
from mtlgen.registry.db import session_scope
from mtlgen.registry.models import CURRENT, Label, Patient, Visit
from mtlgen.registry.series import load_series


def source_labels(url: str) -> dict[tuple[str, str], tuple[Path, np.ndarray]]:
    """(pseudonym, visit) -> (current label's source file, its to_baseline)."""
    with session_scope(url) as s:
        rows = s.execute(
            select(Patient.pseudonym, Visit.key, Label)
            .join(Visit, Visit.patient_id == Patient.id)
            .join(Label, Label.visit_id == Visit.id)
            .where(Label.status == CURRENT)
        ).all()
        return {
            (p, v): (Path(lb.source_path), np.asarray(json.loads(lb.result.to_baseline)))
            for p, v, lb in rows
            if lb.result is not None
        }


def dice_pairs(url: str) -> list[dict]:
    """Each follow-up case's Dice of copy-last on the model grid and in native space."""
    copy_last, labels, cases = make_baseline("copy_last", 0.25, 0.25), source_labels(url), []
    for patient in load_series(url):
        visits = [load_visit(v) for v in patient.visits]
        for i in range(1, len(visits)):
            truth, key = visits[i], (patient.patient, visits[i].visit)
            if truth.label is None or visits[i - 1].label is None or key not in labels:
                continue
            pred = copy_last.predict(visits[:i], truth.days).label
            source, to_baseline = labels[key]
            vol = read_volume((source,))
            grid = Grid(tuple(vol.data.shape), vol.affine)
            native = label_to_source(pred, truth.affine, grid, to_baseline)
            cases.append(
                {
                    "patient": patient.patient,
                    "visit": truth.visit,
                    "dice_model": dice(pred > 0, truth.label > 0),
                    "dice_native": dice(native > 0, vol.data > 0),
                }
            )
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", type=Path, default=Path("data/registry.sqlite"))
    args = parser.parse_args()
    cases = dice_pairs(f"sqlite:///{args.registry}")
    for c in cases:
        print(
            f"{c['patient'][:8]} {c['visit']:>10s}  model {c['dice_model']:.4f}  "
            f"native {c['dice_native']:.4f}"
        )
    gaps = np.abs([c["dice_native"] - c["dice_model"] for c in cases])
    print(
        f"{len(cases)} cases: mean |Dice_native - Dice_model| {gaps.mean():.4f}, "
        f"max {gaps.max():.4f}; mean Dice model {np.mean([c['dice_model'] for c in cases]):.4f}, "
        f"native {np.mean([c['dice_native'] for c in cases]):.4f}"
    )


if __name__ == "__main__":
    main()
