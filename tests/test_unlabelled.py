"""Unlabelled data end to end: a manifest without a label column registers, training refuses
with the reason, and a model trained elsewhere segments every visit of an unlabelled patient and
forecasts from those segmentations."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from mtlgen.config import load_config
from mtlgen.data.splits import Split
from mtlgen.inference.followup import RunInfo, predict_followup
from mtlgen.inference.model import load_predictor
from mtlgen.io.series import PatientSeries, VisitVolumes
from mtlgen.models.mtl_net import MultiTaskNet
from mtlgen.progression import lesion_volumes_ml
from mtlgen.register.run import register_source
from mtlgen.registry.db import session_scope
from mtlgen.registry.models import Label
from mtlgen.registry.series import load_series
from mtlgen.train.loop import train_model


def _without_labels(series: PatientSeries) -> PatientSeries:
    return PatientSeries(
        series.patient, tuple(VisitVolumes(v.visit, v.days, v.images) for v in series.visits)
    )


def test_a_manifest_without_labels_registers_and_training_refuses_it(
    tmp_path, motion_cohort, register_params, manifest_rows
):
    rows = manifest_rows(motion_cohort, {"001", "002", "003"})
    manifest = tmp_path / "scans.csv"
    with manifest.open("w", newline="") as fh:
        fields = [k for k in rows[0] if k != "label"]  # no label column at all
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    params = register_params(tmp_path)
    result = register_source(manifest, params, progress=False)
    assert result.rejected == [] and result.registered == len(rows)
    with session_scope(params.registry.url) as s:
        assert s.scalar(select(func.count()).select_from(Label)) == 0
    series = load_series(params.registry.url)
    assert len(series) == 3 and all(v.label is None for s in series for v in s.visits)

    split = Split(0, tuple(s.patient for s in series[:2]), (), (series[2].patient,))
    with pytest.raises(ValueError, match=r"none of the 2 training patients has a labelled visit"):
        train_model(load_config(None, ["train.progress=false"]), series, split, tmp_path / "m")


def test_predict_segments_every_unlabelled_visit_and_forecasts_from_them(tmp_path, tiny_series):
    torch.manual_seed(0)
    kwargs = {"max_context": 2, "features": [4, 8, 16], "time_dim": 8, "heads": 2}
    MultiTaskNet(**kwargs).save_pretrained(tmp_path / "model")  # trained elsewhere
    predictor = load_predictor(tmp_path / "model")
    patient = _without_labels(tiny_series[0])
    run = RunInfo({"model_name": "m", "version": "1"}, space="model")
    target = patient.visits[-1].days + 120
    row = predict_followup(predictor, patient, target, tmp_path / "out", run)
    folder = tmp_path / "out" / row["folder"]
    assert np.isfinite(row["core_volume_ml"]) and row["status"] in {
        "progressive",
        "stable",
        "responding",
    }
    record = json.loads((folder / "prediction.json").read_text())
    assert [v["visit"] for v in record["visits"]] == [v.visit for v in patient.visits]
    for visit in record["visits"]:
        assert visit["source"] == "model"
        seg = nib.load(folder / "visits" / f"{visit['visit']}.nii.gz")
        label = np.asarray(seg.dataobj)
        assert seg.get_data_dtype() == np.uint8 and label.shape == (16, 16, 16)
        assert set(np.unique(label)) <= {0, 1, 2}
        core, lesion = lesion_volumes_ml(label, 0.064)
        assert visit["core_ml"] == pytest.approx(core, abs=1e-4)
        assert visit["lesion_ml"] == pytest.approx(lesion, abs=1e-4)


def test_labelled_visits_report_their_label_and_are_not_segmented(tmp_path, tiny_series):
    torch.manual_seed(0)
    MultiTaskNet(max_context=2, features=[4, 8, 16], time_dim=8, heads=2).save_pretrained(
        tmp_path / "model"
    )
    patient = tiny_series[1]
    run = RunInfo({"model_name": "m"}, space="model")
    target = patient.visits[-1].days + 60
    row = predict_followup(load_predictor(tmp_path / "model"), patient, target, tmp_path, run)
    folder = tmp_path / row["folder"]
    record = json.loads((folder / "prediction.json").read_text())
    assert {v["source"] for v in record["visits"]} == {"label"}
    assert not (folder / "visits").exists()
    first = np.asarray(nib.load(patient.visits[0].label).dataobj)
    assert record["visits"][0]["core_ml"] == pytest.approx(lesion_volumes_ml(first, 0.064)[0])
