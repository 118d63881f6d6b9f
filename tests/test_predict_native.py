"""`mtlgen predict` end to end on a registered cohort stored LPS, anisotropic, int16: outputs in
the last visit's own scan space (or on the model grid), one patient at a date, refusals, and
Dice in native space against Dice on the model grid."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from bench.native_dice import dice_pairs
from mtlgen.cli import app
from mtlgen.config import SynthConfig, load_config
from mtlgen.models.mtl_net import MultiTaskNet
from mtlgen.register.run import register_source
from mtlgen.registry.series import load_series
from mtlgen.synth.cohort import write_cohort

TINY = {"max_context": 2, "features": [4, 8, 16], "time_dim": 8, "heads": 2}
EPOCH = 1_700_000_000  # SOURCE_DATE_EPOCH: prediction.json's generated_at is pinned


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """(params file, series, checkpoint): 2 patients, LPS, 1.5 x 1.5 x 3 mm, int16, registered
    onto a 4 mm model grid; a tiny untrained multi-task checkpoint."""
    root = tmp_path_factory.mktemp("native")
    cohort = root / "bids"
    synth = SynthConfig(
        patients=2,
        visits_min=3,
        visits_max=3,
        spacing_mm=(1.5, 1.5, 3.0),
        orientation="LPS",
        dtype="int16",
        workers=1,
    )
    write_cohort(synth, 3, cohort, progress=False)
    tree = {
        "registry": {
            "url": f"sqlite:///{root / 'registry.sqlite'}",
            "key_file": str(root / "pseudonym.key"),
            "allowed_roots": [str(root)],
        },
        "preprocess": {
            "out_dir": str(root / "processed"),
            "spacing_mm": 4.0,
            "shape": [40, 48, 40],
            "align_iterations": 20,
        },
        "predict": {"out_dir": str(root / "predictions")},
    }
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(tree))
    params = load_config(params_file)
    register_source(cohort, params, progress=False)
    torch.manual_seed(0)
    MultiTaskNet(**TINY).save_pretrained(root / "model")
    return params_file, load_series(params.registry.url), root / "model"


def _predict(params_file: Path, *args: str):
    return CliRunner().invoke(app, ["-p", str(params_file), "predict", *args])


def test_native_outputs_lie_on_the_last_visits_source_grid(registered, tmp_path, monkeypatch):
    params_file, series, model = registered
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))
    result = _predict(params_file, "--checkpoint", str(model), "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    for patient in series:
        last = patient.visits[-1]
        source = nib.load(last.source.path)
        folder = tmp_path / patient.patient / (last.date + timedelta(days=180)).isoformat()
        names = {p.name for p in folder.iterdir()}
        assert {"T1w.nii.gz", "label.nii.gz", "montage.png", "prediction.json"} <= names
        for name, dtype in (("T1w", "float32"), ("label", "uint8")):
            img = nib.load(folder / f"{name}.nii.gz")
            assert np.allclose(img.affine, source.affine, atol=1e-4)
            assert img.shape == source.shape[:3] and img.get_data_dtype() == np.dtype(dtype)
            assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        record = json.loads((folder / "prediction.json").read_text())
        assert record["space"] == "native" and record["model"] == {"checkpoint": str(model)}
        assert record["target_date"] == folder.name and record["days_ahead"] == 180
        assert len(record["params_sha256"]) == 64
        assert record["generated_at"] == "2023-11-14T22:13:20+00:00"
        for key in ("seed", "sampler", "steps", "n_samples", "volume_samples_ml", "status_probs"):
            assert record[key] is None  # not a generative predictor
        assert {"core_volume_ml", "core_volume_low_ml", "status", "visits"} <= set(record)
    assert len((tmp_path / "predictions.tsv").read_text().splitlines()) == 1 + len(series)


def test_model_space_keeps_the_model_grid_and_one_patient_takes_a_date(registered, tmp_path):
    params_file, series, model = registered
    patient = series[0]
    first, second = patient.visits[0], patient.visits[1]
    between = first.date + (second.date - first.date) / 2
    args = ["--checkpoint", str(model), "--out", str(tmp_path), "--patient", patient.patient]
    result = _predict(params_file, *args, "--at", between.isoformat(), "--space", "model")
    assert result.exit_code == 0, result.output
    folder = tmp_path / patient.patient / between.isoformat()
    label = nib.load(folder / "label.nii.gz")
    processed = nib.load(first.images["T1w"])
    assert np.allclose(label.affine, processed.affine) and label.shape == (40, 48, 40)
    record = json.loads((folder / "prediction.json").read_text())
    assert [v["visit"] for v in record["visits"]] == [first.visit, second.visit]  # around the gap
    assert record["space"] == "model" and not (tmp_path / "predictions.tsv").exists()
    result = _predict(params_file, *args, "--at", "+30")
    assert result.exit_code == 0, result.output
    assert (tmp_path / patient.patient / str(patient.visits[-1].date + timedelta(30))).is_dir()


def test_predict_refuses_what_it_cannot_answer(registered, tmp_path):
    params_file, series, model = registered
    patient = series[0]
    one = ["--checkpoint", str(model), "--out", str(tmp_path), "--patient", patient.patient]
    day_before = (patient.visits[0].date - timedelta(days=1)).isoformat()
    cases = {
        "no-one-here": (["--patient", "no-one-here"], "--patient no-one-here: no such patient"),
        "malformed": (["--at", "2024-13-45"], "expected YYYY-MM-DD or +DAYS"),
        "before": (["--at", day_before], "is not after the first visit"),
        "on a visit": (["--at", patient.visits[1].date.isoformat()], "exists at day"),
    }
    for name, (extra, message) in cases.items():
        args = one + extra if name != "no-one-here" else one[:4] + extra
        result = _predict(params_file, *args)
        assert result.exit_code == 2 and message in result.output, (name, result.output)
    result = _predict(params_file, "--checkpoint", str(model), "--at", "+30")
    assert result.exit_code == 2 and "--at needs --patient" in result.output
    deep = tmp_path / "deep"
    MultiTaskNet(**{**TINY, "features": [4, 8, 16, 32, 64]}).save_pretrained(deep)
    result = _predict(params_file, "--checkpoint", str(deep), "--out", str(tmp_path))
    assert result.exit_code == 2 and "must be a multiple of 16" in result.output
    assert "[40, 48, 40]" in result.output


def test_a_missing_source_scan_is_named_by_patient_and_visit(registered, tmp_path):
    params_file, series, model = registered
    patient = series[1]
    source = patient.visits[-1].source.path
    hidden = source.with_name(source.name + ".away")
    source.rename(hidden)
    try:
        args = ["--checkpoint", str(model), "--out", str(tmp_path), "--patient", patient.patient]
        result = _predict(params_file, *args)
        assert result.exit_code == 2
        assert f"patient {patient.patient} visit {patient.visits[-1].visit}" in result.output
        assert "--space model" in result.output and str(source.parent) not in result.output
        assert _predict(params_file, *args, "--space", "model").exit_code == 0
    finally:
        hidden.rename(source)


def test_dice_in_native_space_matches_dice_on_the_model_grid(report_cohort):
    """The small cohort (2 mm sources) on the default 3 mm model grid: copy-last's Dice against
    each follow-up's true label, on the model grid and on the follow-up's own source grid."""
    params, _ = report_cohort
    cases = dice_pairs(params.registry.url)
    assert len(cases) >= 6
    gaps = [abs(c["dice_native"] - c["dice_model"]) for c in cases]
    assert np.mean(gaps) < 0.03, cases
