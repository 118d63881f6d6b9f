"""Register new scan series: one Prefect task per patient, run concurrently.

I/O errors (``OSError``) are retried with exponential backoff; validation rejections are not
(they are recorded in the registry and fail that patient's task with the reason). A table artifact
``registration-summary`` lists every patient as registered / unchanged / rejected / error. If any
patient failed the flow ends Failed with a message naming them, after all others have been
registered. Source patient ids never reach Prefect: tasks are named by pseudonym and reasons are
redacted.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.states import Failed, State

from flows.runtime import load_params, task_runner
from mtlgen.config import Params
from mtlgen.io.source_types import PatientSource
from mtlgen.io.sources import discover
from mtlgen.orchestration.register_report import (
    PatientOutcome,
    outcome_of,
    redact,
    summary_line,
    summary_rows,
)
from mtlgen.register.identity import patient_label
from mtlgen.register.run import register_patient
from mtlgen.registry.pseudonym import load_key

ARTIFACT_KEY = "registration-summary"


class PatientFailed(Exception):
    """A patient whose files were rejected (or whose registration failed); carries its outcome."""

    def __init__(self, outcome: PatientOutcome) -> None:
        super().__init__(f"patient {outcome.patient}: {outcome.reason}")
        self.outcome = outcome

    def __reduce__(self):  # picklable for Dask workers
        return (PatientFailed, (self.outcome,))


def retry_io_errors(task, task_run, state: State) -> bool:
    """Retry condition: only I/O errors are worth another attempt."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:
        return False
    return False


@task(name="register-patient", retry_condition_fn=retry_io_errors)
def register_patient_task(src: PatientSource, params: Params, label: str) -> PatientOutcome:
    """Register one patient; raise ``PatientFailed`` if any of its files was rejected."""
    try:
        result = register_patient(src, params)
    except OSError as exc:  # retried; the message must not carry source paths or ids
        raise OSError(exc.errno, redact(str(exc.strerror or exc), src, label)) from None
    except Exception as exc:
        raise PatientFailed(PatientOutcome(label, error=redact(repr(exc), src, label))) from None
    outcome = outcome_of(result, src, label)
    if outcome.rejected:
        raise PatientFailed(outcome)
    return outcome


def patient_labels(patients: list[PatientSource], params: Params) -> list[str]:
    """Each patient's pseudonym (``invalid-id-<hash>`` for a source id that is not a plain
    token, as the registry names it)."""
    key = load_key(params.registry.key_file)
    return [patient_label(src, key) for src in patients]


def _outcome(state: State, label: str) -> PatientOutcome:
    if state.is_completed():
        return state.result()
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, PatientFailed):
        return exc.outcome
    return PatientOutcome(label, error=state.message or repr(exc))


@flow(name="register-scan-series")
def register_scan_series(
    source: str | None = None,
    params_file: str = "params.yaml",
    overrides: list[str] | None = None,
) -> list[PatientOutcome] | State:
    """Discover patients in ``source`` (default: ``flows.source``) and register each in its own
    task; settings come from ``params_file`` and ``overrides`` (``key.path=value``)."""
    logger = get_run_logger()
    params = load_params(params_file, overrides)
    source_path = Path(source) if source else params.flows.source
    patients = discover(source_path)
    labels = patient_labels(patients, params)
    cfg = params.flows
    logger.info(
        "registering %d patients from %s (%s task runner, %d workers, %d retries for I/O errors)",
        len(patients),
        source_path,
        cfg.task_runner,
        cfg.workers,
        cfg.retries,
    )
    task_ = register_patient_task.with_options(
        retries=cfg.retries,
        retry_delay_seconds=[cfg.retry_delay_s * 2**i for i in range(cfg.retries)] or 0,
    )
    with task_runner(cfg) as runner:
        futures = [
            runner.submit(
                task_.with_options(task_run_name=f"register-{label}"),
                parameters={"src": src, "params": params, "label": label},
            )
            for src, label in zip(patients, labels, strict=True)
        ]
        for future in futures:
            future.wait()
        outcomes = [_outcome(f.state, label) for f, label in zip(futures, labels, strict=True)]
    line = summary_line(outcomes)
    create_table_artifact(
        key=ARTIFACT_KEY, table=summary_rows(outcomes), description=f"Registration: {line}"
    )
    logger.info("registration: %s", line)
    if any(o.status in ("rejected", "error") for o in outcomes):
        return Failed(message=f"some patients failed: {line}", data=outcomes)
    return outcomes
