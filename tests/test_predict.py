"""Follow-up predictions on disk: a folder per patient and target date, summary table."""

from __future__ import annotations

import json
import math
from datetime import date

import nibabel as nib
import numpy as np
import pytest

from mtlgen.inference.baselines import make_baseline
from mtlgen.inference.followup import RunInfo, interval_text, predict_followup, predict_followups
from mtlgen.inference.intervals import VolumeCalibration
from mtlgen.inference.target import BadTarget

MODEL = {"model_name": "copy-last", "version": "0"}
RUN = RunInfo(MODEL, space="model")  # the aligned fixture has no source scans


def test_predict_followups_writes_a_folder_per_patient_and_a_summary(tmp_path, aligned_series):
    predictor = make_baseline("linear", 0.25, 0.25)
    rows = predict_followups(predictor, aligned_series[:2], 90, tmp_path, RUN, progress=False)
    assert [r["patient"] for r in rows] == [s.patient for s in aligned_series[:2]]
    for series, row in zip(aligned_series[:2], rows, strict=True):
        target = series.visits[-1].days + 90
        folder = tmp_path / series.patient / f"day-{round(target)}"  # no dates: day-<N>
        assert row["folder"] == f"{series.patient}/day-{round(target)}"
        record = json.loads((folder / "prediction.json").read_text())
        assert record["target_days"] == target and record["model"] == MODEL
        assert record["space"] == "model" and record["seed"] is None
        assert (folder / "montage.png").read_bytes()[:4] == b"\x89PNG"
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


def test_predict_followup_reconstructs_a_gap_and_refuses_visits_and_the_past(
    tmp_path, aligned_series
):
    predictor = make_baseline("copy_last", 0.25, 0.25)
    series = aligned_series[0]
    first, second = series.visits[0].days, series.visits[1].days
    gap = (first + second) / 2
    row = predict_followup(predictor, series, gap, tmp_path, RUN)
    record = json.loads((tmp_path / row["folder"] / "prediction.json").read_text())
    assert row["status"] == "stable" and [v["visit"] for v in record["visits"]] == [
        series.visits[0].visit,
        series.visits[1].visit,
    ]  # a reconstruction: the visits before the target and the next one after it
    assert row["last_visit_days"] == first  # written on the grid of the visit before
    assert record["kind"] == "reconstruction"
    with pytest.raises(BadTarget, match=f"visit {series.visits[1].visit} exists"):
        predict_followup(predictor, series, second, tmp_path, RUN)
    with pytest.raises(BadTarget, match="not after the first visit"):
        predict_followup(predictor, series, first, tmp_path, RUN)
    with pytest.raises(ValueError, match="days_ahead must be > 0"):
        predict_followups(predictor, [series], 0, tmp_path, RUN, progress=False)


class _Calibrated:
    """A baseline carrying a volume calibration, as a loaded checkpoint does."""

    name = "calibrated"

    def __init__(self, calibration):
        self.model = make_baseline("copy_last", 0.25, 0.25)
        self.calibration = calibration

    def predict(self, context, target_days):
        return self.model.predict(context, target_days)


def test_a_calibrated_predictor_writes_the_volume_interval(tmp_path, aligned_series):
    calibration = VolumeCalibration(0.8, 180.0, {"future:2+": 0.5, "future": 0.3, "all": 0.3})
    rows = predict_followups(
        _Calibrated(calibration), aligned_series[:1], 360, tmp_path, RUN, progress=False
    )
    record = json.loads((tmp_path / rows[0]["folder"] / "prediction.json").read_text())
    half = 0.5 * 360 / 365.25  # several visits: the future:2+ radius, over 360 days
    assert record["core_volume_low_ml"] == pytest.approx(
        math.expm1(math.log1p(record["core_volume_ml"]) - half), abs=1e-4
    )
    assert record["core_volume_high_ml"] == pytest.approx(
        math.expm1(math.log1p(record["core_volume_ml"]) + half), abs=1e-4
    )
    assert record["interval_level"] == 0.8 and rows[0]["core_volume_low_ml"] > 0
    low, high = record["core_volume_low_ml"], record["core_volume_high_ml"]
    assert interval_text(record) == f"{low:.2f}-{high:.2f} ml (80%)"
    header = (tmp_path / "predictions.tsv").read_text().splitlines()[0].split("\t")
    assert {"core_volume_low_ml", "core_volume_high_ml", "interval_level"} <= set(header)
    plain = predict_followups(  # a predictor without a calibration: no interval, not a guess
        make_baseline("copy_last", 0.25, 0.25), aligned_series[:1], 360, tmp_path, RUN, False
    )
    assert plain[0]["core_volume_low_ml"] is None and plain[0]["interval_level"] is None
    assert interval_text(plain[0]) == ""


def test_a_checkpoints_calibration_travels_with_it(tmp_path):
    import torch

    from mtlgen.inference.model import load_predictor
    from mtlgen.models.mtl_net import MultiTaskNet

    torch.manual_seed(0)
    kwargs = {"max_context": 2, "features": [4, 8, 16], "time_dim": 8, "heads": 2}
    MultiTaskNet(**kwargs).save_pretrained(tmp_path)
    assert load_predictor(tmp_path).calibration is None
    calibration = VolumeCalibration(0.9, 90.0, {"all": 0.4}, {"all": 12})
    calibration.save(tmp_path)
    assert load_predictor(tmp_path).calibration == calibration


def test_a_generative_predictor_writes_std_maps_and_its_sampling_settings(tmp_path, tiny_series):
    import torch

    from flows.predict import _markdown, predict_task
    from mtlgen.generative.network import ResidualDenoiser
    from mtlgen.generative.volumes import VolumeSpread
    from mtlgen.inference.generative import GenerativePredictor, GeneratorSettings
    from mtlgen.orchestration.followup import FollowUp

    torch.manual_seed(0)
    denoiser = ResidualDenoiser(4, 14, channels=(8, 8), norm_num_groups=8)
    volumes = VolumeSpread.fit({"future:1": list(range(5))}, 30.0).to_dict()
    settings = GeneratorSettings(("T1w", "FLAIR"), 8, 0.1, 100, "ddim", 2, volumes=volumes)
    predictor = GenerativePredictor(make_baseline("linear", 0.25, 0.25), denoiser, settings, 3, 4)
    series = tiny_series[0]
    target = series.visits[-1].days + 60
    follow_up = FollowUp(series.patient, date(2024, 1, 1), date(2024, 3, 1), target)
    row = predict_task.fn(predictor, series, follow_up, str(tmp_path), RunInfo(MODEL, "model"))
    folder = tmp_path / series.patient / f"day-{round(target)}"
    record = json.loads((folder / "prediction.json").read_text())
    sampling = {k: record[k] for k in ("seed", "sampler", "steps", "n_samples")}
    assert sampling == {"seed": 4, "sampler": "ddim", "steps": 2, "n_samples": 3}
    for contrast in record["files"]:
        assert (folder / contrast).is_file()
    std = nib.load(folder / "FLAIR_std.nii.gz").get_fdata()
    assert std.max() > 0 and "FLAIR_std.nii.gz" in record["files"]
    assert row["thumbnail"] and row["thumbnail_std"]
    assert _markdown([{**row, "due": "-"}], {**MODEL}).count("data:image/png;base64,") == 2
