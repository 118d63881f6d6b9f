"""The pipeline's last step: patient reports (a page per patient, the cohort index) with the
champion's forecast, and a markdown artifact ``patient-reports`` that links the index."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.runtime import load_params

ARTIFACT_KEY = "patient-reports"


@task(name="patient-reports", cache_policy=NO_CACHE)
def report_task(params_file: str, overrides: list[str]) -> dict:
    """``mtlgen report --all`` into ``report.out_dir`` with the champion (measured data only
    when there is none); only patients whose data or model changed are rebuilt."""
    from mtlgen.report.build import build_reports
    from mtlgen.report.model import report_model
    from mtlgen.track.versions import CHAMPION

    logger = get_run_logger()
    params = load_params(params_file, overrides)
    with report_model(params, None, CHAMPION) as model:
        result = build_reports(params, params.report.out_dir, None, model)
    index = result.index.resolve()
    logger.info(
        "reports (%s): %d built, %d unchanged -> %s",
        model.note,
        len(result.built),
        len(result.unchanged),
        index,
    )
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown=(
            "# Patient reports\n\n"
            f"[Cohort index]({index.as_uri()}) (`{index}`)\n\n"
            f"- model: {model.note}\n- pages built: {len(result.built)}, unchanged: "
            f"{len(result.unchanged)} ({result.seconds:.1f} s)\n"
        ),
        description="patient reports: the cohort index",
    )
    return {"index": str(index), "built": len(result.built), "unchanged": len(result.unchanged)}
