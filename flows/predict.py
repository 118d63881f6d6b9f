"""Predict follow-ups with the champion: future image, mask and lesion volume per patient.

By default for every patient whose next visit is due within ``flows.predict_window_days`` of
``as_of`` (today); or for the given ``patients`` (pseudonyms) at ``target_date`` (or their due
date). Each prediction is written to ``<flows.predict_out_dir>/<patient>/<due-date>/`` by
``mtlgen.inference.followup.predict_followup`` (as ``mtlgen predict`` writes it, in
``predict.space``, native by default), so a patient's predictions sit together, one folder per
due date; a markdown artifact ``follow-up-predictions`` shows the predicted mean's thumbnail and,
for a generative model, the standard deviation's, per patient.
"""

from __future__ import annotations

import base64
import tempfile
from datetime import date
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.runtime import load_params
from mtlgen.config import Params
from mtlgen.ids import check_token
from mtlgen.io.series import PatientSeries
from mtlgen.orchestration.followup import (
    FollowUp,
    due_follow_ups,
    follow_up_at,
    next_visit_due,
    visit_dates,
)

ARTIFACT_KEY = "follow-up-predictions"


def select_follow_ups(
    params: Params, patients: list[str] | None, target_date: date | None, as_of: date
) -> list[FollowUp]:
    """The follow-ups to predict: the named patients, or those due around ``as_of``."""
    cfg = params.flows
    dates = visit_dates(params.registry.url, params.registry.sqlite_timeout_s)
    if not patients:
        return due_follow_ups(dates, as_of, cfg.predict_window_days, cfg.follow_up_days)
    unknown = [p for p in patients if check_token(p, "patient") not in dates]
    if unknown:
        raise LookupError(f"patients {unknown} are not in the registry (with visit dates)")
    return [
        follow_up_at(p, dates[p], target_date or next_visit_due(dates[p], cfg.follow_up_days))
        for p in patients
    ]


@task(name="predict-follow-up", cache_policy=NO_CACHE)  # inputs hold a model: never hash it
def predict_task(predictor, series: PatientSeries, follow_up: FollowUp, out_root: str, run) -> dict:
    """Predict one patient's follow-up; return its summary row and PNG thumbnails (base64) of
    the predicted mean and, when the model gives samples, their standard deviation."""
    from mtlgen.inference.followup import predict_followup
    from mtlgen.inference.outputs import image_files, std_file
    from mtlgen.orchestration.thumbnail import thumbnail_png

    row = predict_followup(predictor, series, follow_up.target_days, out_root, run)
    folder = Path(out_root) / row["folder"]
    label = folder / "label.nii.gz"
    thumbnails = {"thumbnail": "", "thumbnail_std": ""}
    for image in image_files(folder)[:1]:
        std = std_file(image)
        thumbnails["thumbnail"] = base64.b64encode(thumbnail_png(image, label)).decode()
        if std.is_file():
            thumbnails["thumbnail_std"] = base64.b64encode(thumbnail_png(std, label)).decode()
    return {**row, "due": follow_up.due.isoformat(), "folder": str(folder), **thumbnails}


def _image(name: str, png: str) -> str:
    return f"![{name}](data:image/png;base64,{png})" if png else "–"


def _markdown(rows: list[dict], model: dict) -> str:
    from mtlgen.inference.followup import interval_text

    lines = [f"# Follow-up predictions ({model['model_name']} v{model['version']})", ""]
    lines += [
        "| patient | due | day | core volume (ml) | interval | status | predicted mean | std |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        interval = interval_text(r) or "–"
        lines.append(
            f"| {r['patient']} | {r['due']} | {r['target_days']:.0f} | {r['core_volume_ml']:.2f} | "
            f"{interval} | {r['status']} | {_image(r['patient'], r['thumbnail'])} | "
            f"{_image(r['patient'] + ' std', r['thumbnail_std'])} |"
        )
    return "\n".join(lines) + "\n"


@flow(name="predict-follow-ups")
def predict_follow_ups(
    patients: list[str] | None = None,
    target_date: date | None = None,
    as_of: date | None = None,
    params_file: str = "params.yaml",
    overrides: list[str] | None = None,
) -> list[dict]:
    """Predict follow-ups with the champion (see module doc); returns one row per patient."""
    from mtlgen.inference.followup import RunInfo
    from mtlgen.inference.model import load_predictor
    from mtlgen.orchestration.followup import prediction_data_version
    from mtlgen.registry.series import load_series
    from mtlgen.track.versions import download_forecaster

    logger = get_run_logger()
    params = load_params(params_file, overrides)
    as_of = as_of or date.today()
    follow_ups = select_follow_ups(params, patients, target_date, as_of)
    logger.info("%d follow-up(s) to predict (as of %s)", len(follow_ups), as_of)
    if not follow_ups:
        return []
    series = {
        s.patient: s for s in load_series(params.registry.url, params.registry.sqlite_timeout_s)
    }
    with tempfile.TemporaryDirectory(prefix="mtlgen-champion-") as tmp:
        folder, model = download_forecaster(params, tmp)
        predictor = load_predictor(folder, n_samples=params.predict.n_samples)
        run = RunInfo.from_params(params, model, prediction_data_version(params))
        futures = [
            predict_task.with_options(task_run_name=f"predict-{f.patient}").submit(
                predictor, series[f.patient], f, str(params.flows.predict_out_dir), run
            )
            for f in follow_ups
        ]
        rows = [f.result() for f in futures]
    create_markdown_artifact(
        key=ARTIFACT_KEY,
        markdown=_markdown(rows, model),
        description=f"{len(rows)} follow-up predictions",
    )
    return [{k: v for k, v in r.items() if not k.startswith("thumbnail")} for r in rows]
