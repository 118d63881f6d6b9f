"""The pure rules behind the flows: flows settings, retraining threshold, next visit due, redaction
(cron syntax: tests/test_config.py)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from mtlgen.config import ConfigError, load_config
from mtlgen.io.series import PatientSeries, VisitVolumes
from mtlgen.io.source_types import PatientSource, ScanSource, VisitSource
from mtlgen.orchestration.followup import due_follow_ups, follow_up_at, next_visit_due
from mtlgen.orchestration.register_report import PatientOutcome, redact, summary_line
from mtlgen.orchestration.retraining import (
    load_visit_keys,
    retrain_decision,
    save_visit_keys,
    visit_keys,
)


def test_flows_settings_are_validated():
    cfg = load_config(None, ["flows.task_runner=dask", "flows.dask_address=tcp://127.0.0.1:8786"])
    assert cfg.flows.dask_address == "tcp://127.0.0.1:8786"
    for override, where in [
        ("flows.schedules.register='0 25 * * *'", "flows.schedules"),
        ("flows.schedules.nightly='0 2 * * *'", "flows.schedules.nightly"),
        ("flows.task_runner=ray", "flows.task_runner"),
        ("flows.dask_address=127.0.0.1:8786", "flows.dask_address"),
        ("flows.timezone=Mars/Olympus", "flows.timezone"),
        ("flows.retrain_min_new_visits=0", "flows.retrain_min_new_visits"),
        ("flows.retries=-1", "flows.retries"),
    ]:
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            load_config(None, [override])


def _series(visits: dict[str, list[str]]) -> list[PatientSeries]:
    return [
        PatientSeries(
            p, tuple(VisitVolumes(v, float(i), {"T1w": Path("x.nii.gz")}) for i, v in enumerate(vs))
        )
        for p, vs in visits.items()
    ]


def test_retrain_rule_counts_visits_the_champion_never_saw(tmp_path):
    trained = visit_keys(_series({"a": ["1", "2"], "b": ["1"]}))
    path = save_visit_keys(trained, tmp_path / "visits.json")
    assert load_visit_keys(path) == trained
    now = visit_keys(_series({"a": ["1", "2", "3"], "b": ["1", "2"], "c": ["1"]}))
    yes = retrain_decision(now, trained, threshold=3)
    assert (yes.retrain, yes.new_visits) == (True, 3)
    no = retrain_decision(now, trained, threshold=4)
    assert (no.retrain, no.new_visits, no.reason) == (False, 3, "3 new visits < 4")
    assert retrain_decision(trained, trained, 1).new_visits == 0
    first = retrain_decision(now, None, 100)
    assert first.retrain and first.reason == "no champion yet"
    assert not retrain_decision(set(), None, 1).retrain
    stale = retrain_decision(trained, trained, 100, champion_problem="weights do not fit")
    assert (stale.retrain, stale.new_visits) == (True, 0)
    assert stale.reason == "the champion cannot be loaded: weights do not fit"
    (tmp_path / "bad.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match=r"bad\.json: not a visit list"):
        load_visit_keys(tmp_path / "bad.json")


def test_next_visit_due_uses_the_median_interval():
    dates = [date(2024, 1, 1), date(2024, 3, 1), date(2024, 4, 30), date(2024, 12, 1)]
    # intervals 60, 60, 215 days -> median 60
    assert next_visit_due(dates, 90) == date(2025, 1, 30)
    assert next_visit_due([date(2024, 1, 1)], 90) == date(2024, 3, 31)
    with pytest.raises(ValueError):
        next_visit_due([], 90)


def test_due_follow_ups_within_the_window_either_side():
    patients = {
        "early": [date(2024, 1, 1), date(2024, 2, 1)],  # due 2024-03-03
        "late": [date(2024, 1, 1), date(2024, 4, 1)],  # due 2024-07-01
        "single": [date(2024, 1, 20)],  # due 2024-03-20 (default 60 days)
    }
    due = due_follow_ups(
        patients, as_of=date(2024, 3, 10), window_days=10, default_interval_days=60
    )
    assert [(f.patient, f.due) for f in due] == [
        ("early", date(2024, 3, 3)),
        ("single", date(2024, 3, 20)),
    ]
    assert due[0].target_days == 62.0 and due[0].last_visit == date(2024, 2, 1)
    assert due_follow_ups(patients, date(2024, 3, 10), 0, 60) == []
    explicit = follow_up_at("late", patients["late"], date(2024, 5, 1))
    assert explicit.target_days == 121.0
    with pytest.raises(ValueError, match="not after the last visit"):
        follow_up_at("late", patients["late"], date(2024, 4, 1))


def test_redaction_removes_source_paths_and_ids(tmp_path):
    image = tmp_path / "sub-0042" / "ses-01" / "anat" / "sub-0042_ses-01_T1w.nii.gz"
    src = PatientSource(
        "0042", (VisitSource("01", date(2024, 1, 1), (ScanSource("T1w", (image,)),)),)
    )
    text = redact(f"file not found: {image}; patient 0042 vs 00421", src, "p123")
    assert text == "file not found: <01/T1w file>; patient p123 vs 00421"
    outcomes = [
        PatientOutcome("p1", registered=3),
        PatientOutcome("p2", unchanged=2),
        PatientOutcome("p3", registered=1, rejected=(("02", "T1w", "bad"),)),
    ]
    assert [o.status for o in outcomes] == ["registered", "unchanged", "rejected"]
    assert summary_line(outcomes) == (
        "3 patients: 4 files registered, 2 unchanged, 1 rejected; "
        "1 patient(s) failed: p3 (02 T1w: bad)"
    )
