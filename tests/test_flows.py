"""Prefect flows on a real (temporary) Prefect server and a real SQLite registry.

One temporary Prefect API per test session (``prefect_test_harness``); each test registers a
copy of a 3-patient, 4 mm cohort into its own registry.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import pytest
import yaml

from mtlgen.config import load_config
from mtlgen.registry.series import load_series

pytestmark = pytest.mark.integration  # every test here talks to a (temporary) Prefect server


@pytest.fixture(scope="session")
def prefect_api():
    """A temporary Prefect server with its own database for this test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def write_params(root: Path, source: Path, **flows) -> Path:
    """A params.yaml whose registry, key and outputs live under ``root`` (small, fast grid)."""
    tree = {
        "registry": {
            "url": f"sqlite:///{root / 'registry.sqlite'}",
            "key_file": str(root / "pseudonym.key"),
        },
        "preprocess": {
            "out_dir": str(root / "processed"),
            "spacing_mm": 4.0,
            "shape": [40, 48, 40],
            "align_iterations": 20,
        },
        "flows": {"source": str(source), "retry_delay_s": 0.5, **flows},
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    load_config(path)  # the file must be valid before a flow reads it
    return path


@pytest.fixture
def cohort(tmp_path, motion_cohort) -> Path:
    """A private copy of the 3-patient cohort that a test may damage."""
    return Path(shutil.copytree(motion_cohort, tmp_path / "bids"))


def task_runs(flow_run_id) -> dict[str, object]:
    """Task run name -> task run of one flow run, read back from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name: r for r in runs}


def artifact_rows(key: str) -> list[dict]:
    """The rows of the latest table artifact ``key``."""
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


def test_corrupt_patient_fails_alone(prefect_api, tmp_path, cohort):
    from flows.register import register_scan_series

    bad = sorted((cohort / "sub-002").rglob("*_T1w.nii.gz"))[1]
    bad.write_bytes(b"this is not an image")
    params = write_params(tmp_path, cohort)

    state = register_scan_series(params_file=str(params), return_state=True)

    assert state.is_failed() and not state.is_crashed()
    assert state.message.startswith("some patients failed: 3 patients:")
    assert "1 patient(s) failed" in state.message
    assert "not a NIfTI or DICOM file" in state.message
    assert "sub-002" not in state.message and str(cohort) not in state.message
    outcomes = state.result(raise_on_failure=False)
    by_status = {o.status: o for o in outcomes}
    assert [o.status for o in outcomes].count("registered") == 2
    failed = by_status["rejected"]
    runs = task_runs(state.state_details.flow_run_id)
    assert len(runs) == 3
    failed_run = runs[f"register-{failed.patient}"]
    assert failed_run.state.is_failed() and failed_run.run_count == 1  # a rejection: no retry
    assert "not a NIfTI or DICOM file" in failed_run.state.message
    assert all(r.state.is_completed() for n, r in runs.items() if n != failed_run.name)
    # the others are registered; the corrupt patient keeps its valid visits
    series = {p.patient: p for p in load_series(f"sqlite:///{tmp_path / 'registry.sqlite'}")}
    assert len(series) == 3
    assert failed.registered > 0 and failed.rejected[0][1] == "T1w"
    rows = {r["patient"]: r for r in artifact_rows("registration-summary")}
    assert rows[failed.patient]["status"] == "rejected"
    assert "not a NIfTI" in rows[failed.patient]["reason"]
    assert sorted(r["status"] for r in rows.values()) == ["registered", "registered", "rejected"]


class RestoreOnRetry(logging.Handler):
    """Puts the real file back when Prefect announces the first retry (a transient fault)."""

    def __init__(self, link: Path, real: Path) -> None:
        super().__init__()
        self.link, self.real, self.retries = link, real, []

    def emit(self, record: logging.LogRecord) -> None:
        if "Retry 1/" in record.getMessage():
            self.retries.append(record.getMessage())
            self.link.unlink()
            self.real.rename(self.link)


def test_transient_io_error_is_retried(prefect_api, tmp_path, cohort):
    from flows.register import register_scan_series

    # a real I/O fault: the file is briefly a symlink loop (ELOOP) until the first retry
    target = sorted((cohort / "sub-001").rglob("*_FLAIR.nii.gz"))[0]
    aside = target.with_name("aside.bin")
    target.rename(aside)
    os.symlink(target.name, target)
    with pytest.raises(OSError) as loop:
        target.open("rb")
    assert loop.value.errno == errno.ELOOP
    handler = RestoreOnRetry(target, aside)
    logger = logging.getLogger("prefect.task_runs")
    logger.addHandler(handler)
    try:
        params = write_params(tmp_path, cohort, retries=2)
        state = register_scan_series(params_file=str(params), return_state=True)
    finally:
        logger.removeHandler(handler)

    assert state.is_completed(), state.message
    assert len(handler.retries) == 1 and "OSError" in handler.retries[0]
    assert str(cohort) not in handler.retries[0]  # the retried error is redacted
    runs = task_runs(state.state_details.flow_run_id)
    assert sorted(r.run_count for r in runs.values()) == [1, 1, 2]
    outcomes = state.result()
    assert all(o.status == "registered" and not o.rejected for o in outcomes)

    # a second run of the same source registers nothing new
    again = register_scan_series(params_file=str(params), return_state=True)
    assert again.is_completed()
    assert [o.status for o in again.result()] == ["unchanged"] * 3
    assert sum(o.unchanged for o in again.result()) == sum(o.registered for o in outcomes)


def pipeline_params(root: Path, source: Path) -> Path:
    """Settings for a tiny but real pipeline: 1-epoch training of a small network, MLflow in a
    SQLite file under ``root``, predictions for every follow-up due within 10 years."""
    path = write_params(root, source, predict_out_dir=str(root / "predictions"))
    tree = yaml.safe_load(path.read_text())
    tree["flows"]["predict_window_days"] = 3650
    tree |= {
        "data": {
            "split_file": str(root / "split.json"),
            "val_fraction": 0.3,
            "test_fraction": 0.3,
            "augment": False,
        },
        "model": {"features": [4, 8]},
        "train": {
            "out_dir": str(root / "model"),
            "epochs": 1,
            "affinity_batches": 0,
            "progress": False,
            "device": "cpu",
        },
        "tracking": {
            "uri": f"sqlite:///{root / 'mlflow.db'}",
            "artifact_root": str(root / "mlruns"),
        },
        "evaluate": {"out_dir": str(root / "evaluation"), "device": "cpu"},
        "report": {"out_dir": str(root / "reports")},
        "generative": {  # a tiny generator: 2 steps of 2 cubes, 2 samples of 2 DDIM steps
            "out_dir": str(root / "generative"),
            "crop": 8,
            "channels": [8, 8],
            "train_timesteps": 50,
            "steps": 2,
            "n_samples": 2,
            "epochs": 1,
            "steps_per_epoch": 2,
            "batch_size": 2,
            "spread_cases": 2,
        },
    }
    path.write_text(yaml.safe_dump(tree))
    load_config(path)
    return path


def markdown_artifact(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return artifact.data


def test_report_step_builds_pages_and_links_the_index(prefect_api, tmp_path, cohort):
    from prefect import flow

    from flows.register import register_scan_series
    from flows.report import report_task

    params = write_params(tmp_path, cohort)
    register_scan_series(params_file=str(params))
    overrides = [
        f"report.out_dir={tmp_path / 'html'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",  # no model registered: no champion
    ]

    @flow
    def reports() -> dict:
        return report_task(str(params), overrides)

    first, second = reports(), reports()
    index = (tmp_path / "html" / "index.html").resolve()
    assert first == {"index": str(index), "built": 3, "unchanged": 0}
    assert second["built"] == 0 and second["unchanged"] == 3
    artifact = markdown_artifact("patient-reports")
    assert f"[Cohort index]({index.as_uri()})" in artifact and "no model" in artifact
    assert "sub-00" not in index.read_text()


@pytest.mark.slow  # about 110 s on 2 shared cores: one real (tiny) training, evaluation, promotion
def test_second_pipeline_run_trains_nothing(prefect_api, tmp_path, cohort):
    import json
    import time
    from datetime import date

    import mlflow

    from flows.pipeline import longitudinal_pipeline

    params = pipeline_params(tmp_path, cohort)
    first = longitudinal_pipeline(params_file=str(params), as_of=date(2021, 1, 1))
    assert first["retrain"] and first["retrain_reason"] == "no champion yet"
    assert first["new_visits"] == sum(1 for _ in cohort.glob("sub-*/ses-*"))
    assert first["trained"]["promoted"] and first["trained"]["version"] == "1"
    assert Path(first["trained"]["metrics"]).is_file()
    generator = first["trained"]["generator"]  # trained on the new champion, then judged
    assert generator["model_name"] == "mtlgen-mtl-generative" and generator["promoted"]
    assert (
        Path(generator["metrics"])
        == tmp_path / "evaluation" / "mtlgen-mtl-generative" / "metrics.json"
    )
    assert (Path(generator["checkpoint"]) / "base" / "model.safetensors").is_file()
    assert first["predicted"] == 3
    predictions = sorted((tmp_path / "predictions").glob("*/*-*-*/prediction.json"))
    assert len(predictions) == 3
    assert "data:image/png;base64," in markdown_artifact("follow-up-predictions")
    assert first["reports"]["built"] == 3  # the last step: pages with the new champion
    assert "patient reports**: [cohort index](file://" in markdown_artifact("pipeline-summary")
    report_index = Path(first["reports"]["index"]).read_text()
    assert "3 patients: " in report_index and "sub-00" not in report_index

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs_before = len(client.search_runs(client.search_experiments()[0].experiment_id.split()))
    start = time.perf_counter()
    second = longitudinal_pipeline(params_file=str(params), as_of=date(2021, 1, 1))
    print(f"second pipeline run: {time.perf_counter() - start:.1f} s")
    assert not second["retrain"] and second["trained"] is None
    assert (second["new_visits"], second["retrain_reason"]) == (0, "0 new visits < 8")
    assert second["registration"].startswith("3 patients: 0 files registered")
    assert len(client.search_model_versions("name='mtlgen-mtl'")) == 1
    runs_after = len(client.search_runs(client.search_experiments()[0].experiment_id.split()))
    assert runs_after == runs_before  # no train, evaluate or promote run
    assert "retraining**: no (0 new visits < 8)" in markdown_artifact("pipeline-summary")

    # one new visit of an existing patient (same split): with a threshold of 1 it retrains from
    # scratch on the new data (not resuming the finished training), a new version is judged
    add_visit(cohort, "sub-001", "ses-90", days_after_last=120)
    third = longitudinal_pipeline(
        params_file=str(params),
        as_of=date(2021, 1, 1),
        overrides=["flows.retrain_min_new_visits=1"],
    )
    assert third["retrain"] and third["new_visits"] == 1
    assert third["trained"]["version"] == "2"
    assert len(client.search_model_versions("name='mtlgen-mtl'")) == 2
    assert len(client.search_model_versions("name='mtlgen-mtl-generative'")) == 2
    run = client.get_run(third["trained"]["run_id"])
    assert run.data.metrics  # this training run logged its epochs
    visits = Path(client.download_artifacts(run.info.run_id, "train_visits.json", str(tmp_path)))
    assert [v for _, v in json.loads(visits.read_text()) if v == "90"] == ["90"]


def add_visit(bids: Path, subject: str, session: str, days_after_last: int) -> None:
    """Copy a subject's last visit (images + label) as a new, later visit."""
    from datetime import datetime, timedelta

    table = bids / subject / f"{subject}_sessions.tsv"
    rows = table.read_text().splitlines()
    last_session, last_time = rows[-1].split("\t")
    when = datetime.fromisoformat(last_time) + timedelta(days=days_after_last)
    table.write_text("\n".join([*rows, f"{session}\t{when.isoformat()}"]) + "\n")
    for folder in (bids / subject, bids / "derivatives" / "labels" / subject):
        src = folder / last_session
        dst = folder / session
        shutil.copytree(src, dst)
        for f in dst.rglob("*.nii.gz"):
            f.rename(f.with_name(f.name.replace(last_session, session)))


@pytest.mark.slow  # a Dask LocalCluster of 2 worker processes: about 30 s
def test_register_on_an_existing_dask_cluster(prefect_api, tmp_path, cohort):
    from distributed import Client, LocalCluster

    from flows.register import register_scan_series

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        params = write_params(
            tmp_path, cohort, task_runner="dask", dask_address=cluster.scheduler_address
        )
        outcomes = register_scan_series(params_file=str(params))
        finished = client.run_on_scheduler(
            lambda dask_scheduler: sum(
                1 for t in dask_scheduler.transition_log if t[2] in ("memory", "erred")
            )
        )
    assert [o.status for o in outcomes] == ["registered"] * 3
    assert finished >= 3  # the patient tasks ran on the cluster's workers
    assert len(load_series(f"sqlite:///{tmp_path / 'registry.sqlite'}")) == 3
