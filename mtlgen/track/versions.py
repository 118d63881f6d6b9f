"""Model versions in MLflow's model registry: log a checkpoint as a pyfunc model, alias it, load
it back by alias or version. (``mtlgen.registry`` is the patient registry; this is about models.)

Aliases: ``candidate`` (the latest registered version) and ``champion`` (set only by the promotion
rule in ``mtlgen.track.promotion``).
"""

from __future__ import annotations

import logging
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from mtlgen.config import Params, TrackingConfig
from mtlgen.ids import check_token
from mtlgen.inference.generative import BASE, is_generator, load_generator
from mtlgen.models.hub import CONFIG, WEIGHTS
from mtlgen.models.mtl_net import MultiTaskNet
from mtlgen.track.run import connect

log = logging.getLogger(__name__)

CANDIDATE, CHAMPION = "candidate", "champion"
LOADER = "mtlgen.track.pyfunc"


def _requirements() -> list[str]:
    reqs = []
    for name in ("torch", "safetensors", "numpy", "mlflow", "mtlgen"):
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs


def register_checkpoint(
    checkpoint_dir: Path | str, model_name: str, tags: dict[str, str] | None = None
) -> str:
    """Log ``checkpoint_dir`` as a pyfunc model in the active run, register it under
    ``model_name``, alias it ``candidate`` and return the new version (as a string)."""
    import mlflow

    checkpoint_dir = Path(checkpoint_dir)
    for name in (WEIGHTS, CONFIG):
        if not (checkpoint_dir / name).is_file():
            raise FileNotFoundError(f"{checkpoint_dir / name}: checkpoint file missing")
    if mlflow.active_run() is None:
        raise RuntimeError("register_checkpoint needs an active MLflow run (use tracked_run)")
    info = mlflow.pyfunc.log_model(
        name="model",
        loader_module=LOADER,
        data_path=str(checkpoint_dir),
        pip_requirements=_requirements(),
        registered_model_name=model_name,
    )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in (tags or {}).items():
        client.set_model_version_tag(model_name, version, key, str(value))
    client.set_registered_model_alias(model_name, CANDIDATE, version)
    log.info("registered %s version %s as %s", model_name, version, CANDIDATE)
    return version


def model_uri(model_name: str, ref: str) -> str:
    """``"3"`` -> ``models:/name/3`` (a version); ``"champion"`` -> ``models:/name@champion``."""
    if re.fullmatch(r"[1-9][0-9]*", ref):
        return f"models:/{model_name}/{ref}"
    return f"models:/{model_name}@{check_token(ref, 'model alias')}"


def resolve_version(cfg: TrackingConfig, ref: str, model_name: str | None = None) -> str:
    """The version number that ``ref`` (a version or an alias) names; a clear error if none."""
    from mlflow.exceptions import MlflowException

    name = model_name or cfg.model_name
    connect(cfg)
    import mlflow

    client = mlflow.MlflowClient()
    try:
        if re.fullmatch(r"[1-9][0-9]*", ref):
            return str(client.get_model_version(name, ref).version)
        return str(client.get_model_version_by_alias(name, check_token(ref, "model alias")).version)
    except MlflowException:
        raise LookupError(
            f"model {name!r} has no version or alias {ref!r} in {cfg.uri}; "
            "train and register a model first, or name an existing version"
        ) from None


def load_model(cfg: TrackingConfig, ref: str = CHAMPION, model_name: str | None = None) -> Any:
    """The registered model ``ref`` (alias or version) as an MLflow ``PyFuncModel``."""
    import mlflow

    version = resolve_version(cfg, ref, model_name)
    return mlflow.pyfunc.load_model(model_uri(model_name or cfg.model_name, version))


def download_checkpoint(
    cfg: TrackingConfig, dst: Path | str, ref: str = CHAMPION, model_name: str | None = None
) -> tuple[Path, str]:
    """Download registered model ``ref`` into ``dst``; return its checkpoint folder
    (``model.safetensors`` + ``config.json``, ready for ``MultiTaskNet.from_pretrained`` or
    ``load_predictor``)
    and the version that ``ref`` resolved to."""
    import mlflow

    version = resolve_version(cfg, ref, model_name)
    uri = model_uri(model_name or cfg.model_name, version)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    if flavor.get("loader_module") != LOADER:
        raise ValueError(f"{uri}: not an mtlgen checkpoint (loader {flavor.get('loader_module')})")
    return local / flavor["data"], version


def download_forecaster(params: Params, dst: Path | str) -> tuple[Path, dict[str, str]]:
    """The checkpoint ``predict`` uses: ``predict.model`` (alias or version) of the generator
    (``<tracking.model_name>-generative``, whose checkpoint holds its base) when
    ``predict.generative`` and it has that version, else of the multi-task model; with the
    model name, version and requested reference."""
    ref, name = params.predict.model, params.tracking.model_name
    if params.predict.generative:
        generator = f"{name}-generative"
        try:
            folder, version = download_checkpoint(params.tracking, dst, ref, generator)
            return folder, {"model_name": generator, "version": version, "requested": ref}
        except LookupError:
            log.warning("%s has no version %r: predicting with %s", generator, ref, name)
    folder, version = download_checkpoint(params.tracking, dst, ref)
    return folder, {"model_name": name, "version": version, "requested": ref}


def checkpoint_problem(checkpoint_dir: Path | str) -> str | None:
    """Why the checkpoint cannot be loaded by this version of mtlgen (its weights or settings do
    not fit the current network), or None when it loads."""
    try:
        if is_generator(checkpoint_dir):
            load_generator(Path(checkpoint_dir))
            return checkpoint_problem(Path(checkpoint_dir) / BASE)
        MultiTaskNet.from_pretrained(checkpoint_dir)  # local
    except ValueError as exc:
        return str(exc)
    return None


def loading_problem(cfg: TrackingConfig, ref: str, model_name: str | None = None) -> str | None:
    """``checkpoint_problem`` of registered model ``ref`` (alias or version)."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, version = download_checkpoint(cfg, tmp, ref, model_name)
        problem = checkpoint_problem(checkpoint)
        name = f"{model_name or cfg.model_name} v{version}"
        return None if problem is None else problem.replace(str(checkpoint), name)
