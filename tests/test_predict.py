"""Follow-up predictions on disk: one folder per patient (or per due date), summary table."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from mtlgen.evaluate.baselines import make_baseline
from mtlgen.predict import predict_followup, predict_followups

MODEL = {"model_name": "copy-last", "version": "0"}


def test_predict_followups_writes_a_folder_per_patient_and_a_summary(tmp_path, aligned_series):
    predictor = make_baseline("linear", 0.25, 0.25)
    rows = predict_followups(predictor, aligned_series[:2], 90, tmp_path, MODEL, progress=False)
    assert [r["patient"] for r in rows] == [s.patient for s in aligned_series[:2]]
    for series, row in zip(aligned_series[:2], rows, strict=True):
        folder = tmp_path / series.patient
        record = json.loads((folder / "prediction.json").read_text())
        assert record["target_days"] == series.visits[-1].days + 90 and record["model"] == MODEL
        label = nib.load(folder / "label.nii.gz")
        last = nib.load(series.visits[-1].label)
        assert np.allclose(label.affine, last.affine) and label.shape == last.shape
        assert {p.name for p in folder.glob("*.nii.gz")} >= {"label.nii.gz", "FLAIR.nii.gz"}
        assert row["core_volume_ml"] >= 0 and row["status"] in {
            "progressive",
            "stable",
            "responding",
        }
    table = (tmp_path / "predictions.tsv").read_text().splitlines()
    assert table[0].split("\t")[:2] == ["patient", "last_visit_days"] and len(table) == 3


def test_predict_followup_writes_into_the_given_folder_and_refuses_the_past(
    tmp_path, aligned_series
):
    predictor = make_baseline("copy_last", 0.25, 0.25)
    folder = tmp_path / aligned_series[0].patient / "2023-01-01"
    row = predict_followup(predictor, aligned_series[0], 30, folder, MODEL)
    assert (folder / "prediction.json").is_file() and row["status"] == "stable"
    with pytest.raises(ValueError, match="days_ahead must be > 0"):
        predict_followup(predictor, aligned_series[0], 0, folder, MODEL)
