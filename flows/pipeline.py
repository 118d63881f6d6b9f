"""``longitudinal_pipeline``: register new scans -> retrain if enough new visits arrived since
the champion was trained -> evaluate -> promote -> predict due follow-ups -> patient reports.

A run with nothing new registers nothing, trains nothing and only predicts. If some patients
failed registration the pipeline still goes on with the others and ends Failed, naming them.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from flows.predict import predict_follow_ups
from flows.register import register_scan_series
from flows.report import report_task
from flows.runtime import load_params
from flows.train import train_evaluate_promote
from mtlgen.orchestration.register_report import PatientOutcome, summary_line
from mtlgen.orchestration.retraining import (
    RetrainDecision,
    champion_training_visits,
    retrain_decision,
    visit_keys,
)

ARTIFACT_KEY = "pipeline-summary"


@task(name="retrain-decision")
def retrain_task(params_file: str, overrides: list[str]) -> tuple[RetrainDecision, bool]:
    """Compare the registry's visits with those the champion was trained on, and check that this
    version of mtlgen can load the champion; also say whether there is a usable champion."""
    from mtlgen.registry.series import load_series
    from mtlgen.track.versions import CHAMPION, loading_problem

    params = load_params(params_file, overrides)
    current = visit_keys(load_series(params.registry.url, params.registry.sqlite_timeout_s))
    trained = champion_training_visits(params.tracking)
    problem = loading_problem(params.tracking, CHAMPION) if trained is not None else None
    decision = retrain_decision(current, trained, params.flows.retrain_min_new_visits, problem)
    return decision, trained is not None and problem is None


@flow(name="longitudinal-pipeline")
def longitudinal_pipeline(
    source: str | None = None,
    as_of: date | None = None,
    params_file: str = "params.yaml",
    overrides: list[str] | None = None,
) -> dict:
    """Register ``source`` (default ``flows.source``), retrain when due, predict follow-ups due
    around ``as_of`` (default today), then rebuild the patient reports that changed. Settings:
    ``params_file`` + ``overrides``."""
    logger = get_run_logger()
    overrides = list(overrides or [])
    registration = register_scan_series(source, params_file, overrides, return_state=True)
    outcomes = registration.result(raise_on_failure=False)
    if not isinstance(outcomes, list):  # the flow itself broke (e.g. an unreadable source)
        raise RuntimeError(f"registration failed: {registration.message}")
    decision, has_champion = retrain_task(params_file, overrides)
    logger.info("retrain: %s (%s)", decision.retrain, decision.reason)
    trained = train_evaluate_promote(params_file, overrides) if decision.retrain else None
    predictions = []
    if has_champion or (trained is not None and trained["promoted"]):
        predictions = predict_follow_ups(as_of=as_of, params_file=params_file, overrides=overrides)
    else:
        logger.info("no champion model yet: nothing to predict with")
    reports = report_task(params_file, overrides)
    summary = {
        "registration": summary_line(outcomes),
        "retrain": decision.retrain,
        "retrain_reason": decision.reason,
        "new_visits": decision.new_visits,
        "trained": trained,
        "predicted": len(predictions),
        "reports": reports,
    }
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=_markdown(summary), description="pipeline")
    failed = [
        o for o in outcomes if isinstance(o, PatientOutcome) and o.status in ("rejected", "error")
    ]
    if failed:
        return Failed(
            message=f"some patients failed registration: {summary['registration']}", data=summary
        )
    return summary


def _markdown(summary: dict) -> str:
    trained = summary["trained"]
    lines = [
        "# Longitudinal pipeline",
        "",
        f"- **registration**: {summary['registration']}",
        f"- **retraining**: {'yes' if summary['retrain'] else 'no'} ({summary['retrain_reason']})",
    ]
    if trained:
        verdict = "promoted to champion" if trained["promoted"] else "not promoted"
        lines.append(
            f"- **candidate** {trained['model_name']} v{trained['version']}: {verdict} "
            f"({trained['reason']}); metrics: `{trained['metrics']}`"
        )
    lines.append(f"- **follow-up predictions**: {summary['predicted']}")
    reports = summary["reports"]
    lines.append(
        f"- **patient reports**: [cohort index]({Path(reports['index']).as_uri()}) "
        f"({reports['built']} pages built, {reports['unchanged']} unchanged)"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.pipeline``: one pipeline run (on Prefect's temporary local server unless
    PREFECT_API_URL points at a server); exit 0 if Completed, 1 otherwise."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m flows.pipeline",
        description="Register new scans, retrain if enough new visits arrived since the champion "
        "was trained, evaluate, promote, predict the follow-ups that are due, and rebuild the "
        "patient reports that changed.",
    )
    parser.add_argument("--source", help="BIDS folder, CSV manifest or DICOM folder [flows.source]")
    parser.add_argument("--as-of", type=date.fromisoformat, help="date for due follow-ups [today]")
    parser.add_argument("-p", "--params", default="params.yaml", help="settings file [params.yaml]")
    parser.add_argument(
        "-S",
        "--set",
        action="append",
        default=[],
        help="override a setting, e.g. -S train.epochs=3",
    )
    args = parser.parse_args(argv)
    state = longitudinal_pipeline(args.source, args.as_of, args.params, args.set, return_state=True)
    print(f"longitudinal-pipeline: {state.name}" + (f" ({state.message})" if state.message else ""))
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    raise SystemExit(main())
