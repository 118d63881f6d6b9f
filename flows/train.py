"""Train, evaluate and promote the multi-task model, as tasks that pass paths and ids only.

split (patient-level, stable as patients are added) -> train (tracked in MLflow, registered as
``candidate``; the visits it saw are attached to its run) -> evaluate the candidate beside the
current champion and the baselines on the same test split -> promote by the versioning rule.
With ``flows.train_generator``, then the same for the diffusion generator: trained on the
forecasts of the multi-task champion (after that promotion), registered as
``<model_name>-generative``, evaluated beside its own champion into
``<evaluate.out_dir>/generative/`` and promoted by the same rule.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.runtime import load_params
from mtlgen.orchestration.retraining import (
    VISITS_ARTIFACT,
    load_visit_keys,
    record_training_visits,
    save_visit_keys,
    visit_keys,
)


@task(name="split")
def split_task(params_file: str, overrides: list[str]) -> str:
    """Assign the registry's patients to train/val/test; return the split file."""
    from mtlgen.data.splits import split_registry

    return str(split_registry(load_params(params_file, overrides))[1])


@task(name="train")
def train_task(params_file: str, overrides: list[str]) -> dict[str, str]:
    """Train and register a candidate; return its checkpoint folder, version and MLflow run."""
    from mtlgen.registry.series import load_series
    from mtlgen.track.stage import registered_version, train_and_register

    params = load_params(params_file, overrides)
    keys = visit_keys(load_series(params.registry.url, params.registry.sqlite_timeout_s))
    # resume an interrupted training only if it was on the same visits (new data: start afresh)
    record_file = params.train.out_dir / VISITS_ARTIFACT
    resume = record_file.is_file() and load_visit_keys(record_file) == keys
    save_visit_keys(keys, record_file)
    result, _ = train_and_register(params, resume=resume)
    record = registered_version(result.checkpoint_dir)
    if record is None:
        raise RuntimeError(f"{result.checkpoint_dir}: training registered no model version")
    record_training_visits(params.tracking, record["run_id"], keys)
    return {"checkpoint": str(result.checkpoint_dir), **record}


@task(name="train-generator")
def train_generator_task(params_file: str, overrides: list[str]) -> dict[str, str]:
    """Train and register a generator candidate on the multi-task champion's forecasts; return
    its checkpoint folder, version and MLflow run."""
    from mtlgen.track.stage import registered_version, train_and_register
    from mtlgen.track.versions import CHAMPION, download_checkpoint

    params = load_params(params_file, overrides)
    with tempfile.TemporaryDirectory(prefix="mtlgen-base-") as tmp:
        base, version = download_checkpoint(params.tracking, tmp, CHAMPION)
        get_run_logger().info("generator base: %s v%s", params.tracking.model_name, version)
        params.generative.base = base
        params.train.task = "generative"
        result, _ = train_and_register(params)
    record = registered_version(result.checkpoint_dir)
    if record is None:
        raise RuntimeError(f"{result.checkpoint_dir}: training registered no generator version")
    return {"checkpoint": str(result.checkpoint_dir), **record}


@task(name="evaluate")
def evaluate_task(
    params_file: str, overrides: list[str], candidate: str, model_name: str | None = None
) -> dict[str, str]:
    """Evaluate the candidate, the current champion of ``model_name`` (default
    ``tracking.model_name``; another one's evaluation goes to ``<evaluate.out_dir>/<name>``) and
    the baselines on the split's test patients; return the metrics file and the champion
    version it was compared with."""
    from mtlgen.track.stage import evaluate_tracked
    from mtlgen.track.versions import CHAMPION, checkpoint_problem, download_checkpoint

    params = load_params(params_file, overrides)
    if model_name is not None:
        params.evaluate.out_dir = params.evaluate.out_dir / model_name
    with tempfile.TemporaryDirectory(prefix="mtlgen-champion-") as tmp:
        checkpoints, champion = {"candidate": Path(candidate)}, ""
        with contextlib.suppress(LookupError):  # no champion yet
            path, version = download_checkpoint(params.tracking, tmp, CHAMPION, model_name)
            problem = checkpoint_problem(path)
            if problem is None:
                checkpoints["champion"], champion = path, version
            else:  # promotion replaces it (mtlgen.track.promotion)
                get_run_logger().warning("champion v%s not evaluated: %s", version, problem)
        params.evaluate.checkpoints = checkpoints  # validated on assignment
        evaluate_tracked(params, progress=False)
    return {"metrics": str(params.evaluate.out_dir / "metrics.json"), "champion": champion}


@task(name="promote")
def promote_task(
    params_file: str,
    overrides: list[str],
    metrics: str,
    candidate_version: str,
    champion: str,
    model_name: str | None = None,
    generator: bool = False,
) -> dict:
    """Apply the promotion rule (the ``generator``'s own with that flag) to the candidate of
    ``model_name`` (after recording the champion's numbers on the same split, so both sides are
    compared on equal terms)."""
    from mtlgen.track.promotion import promote_evaluated

    params = load_params(params_file, overrides)
    metrics_path = Path(metrics)
    if champion and champion != candidate_version:
        promote_evaluated(params, metrics_path, "champion", champion, model_name, generator)
    decision = promote_evaluated(
        params, metrics_path, "candidate", candidate_version, model_name, generator
    )
    return decision.to_dict()


def _promotion_artifact(decision: dict) -> None:
    verdict = "promoted to champion" if decision["promoted"] else "not promoted"
    rows = "\n".join(
        f"| {c['metric']} | {c['direction']} | {c['candidate']:.4f} | "
        f"{'-' if c['champion'] is None else format(c['champion'], '.4f')} | "
        f"{'ok' if c['ok'] else 'worse'} |"
        for c in decision["comparisons"]
    )
    create_markdown_artifact(
        key=re.sub(r"[^a-z0-9-]", "-", f"promotion-{decision['model_name']}".lower()),
        markdown=(
            f"# {decision['model_name']} v{decision['candidate_version']}: {verdict}\n\n"
            f"{decision['reason']}\n\n| metric | direction | candidate | champion | |\n"
            f"|---|---|---|---|---|\n{rows}\n"
        ),
        description=f"promotion of {decision['model_name']} v{decision['candidate_version']}",
    )
    get_run_logger().info(
        "%s v%s %s (%s)",
        decision["model_name"],
        decision["candidate_version"],
        verdict,
        decision["reason"],
    )


def _generator(params_file: str, overrides: list[str]) -> dict:
    """Train, evaluate and promote the generator on the multi-task champion's forecasts."""
    trained = train_generator_task(params_file, overrides)
    name = trained["model_name"]
    evaluated = evaluate_task(params_file, overrides, trained["checkpoint"], name)
    decision = promote_task(
        params_file,
        overrides,
        evaluated["metrics"],
        trained["version"],
        evaluated["champion"],
        name,
        generator=True,
    )
    _promotion_artifact(decision)
    return {**trained, "metrics": evaluated["metrics"], "promoted": decision["promoted"]}


@flow(name="train-evaluate-promote")
def train_evaluate_promote(
    params_file: str = "params.yaml", overrides: list[str] | None = None
) -> dict:
    """Split, train a candidate, evaluate it against the champion and promote it if no worse;
    then the generator (``flows.train_generator``, see module doc)."""
    overrides = list(overrides or [])
    split_file = split_task(params_file, overrides)
    trained = train_task(params_file, overrides, wait_for=[split_file])
    evaluated = evaluate_task(params_file, overrides, trained["checkpoint"])
    decision = promote_task(
        params_file, overrides, evaluated["metrics"], trained["version"], evaluated["champion"]
    )
    _promotion_artifact(decision)
    generator = None
    if load_params(params_file, overrides).flows.train_generator:
        generator = _generator(params_file, overrides)
    return {
        "split": split_file,
        **trained,
        "metrics": evaluated["metrics"],
        "promoted": decision["promoted"],
        "reason": decision["reason"],
        "generator": generator,
    }
