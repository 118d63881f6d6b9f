"""An MLflow run that fails fast and never stays RUNNING.

``tracked_run`` checks that the tracking store answers *before* any training time is spent
(an unreachable server raises ``TrackingUnavailable`` naming the URI within
``tracking.connect_timeout_s``), and ends the run FAILED on an exception (KILLED on Ctrl-C).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse
from urllib.request import urlopen

from mtlgen.config import TrackingConfig
from mtlgen.track.logger import MlflowLogger

log = logging.getLogger(__name__)


class TrackingUnavailable(RuntimeError):
    """The tracking store named in params.yaml (tracking.uri) cannot be reached."""


def check_reachable(cfg: TrackingConfig) -> None:
    """Raise ``TrackingUnavailable`` unless ``cfg.uri`` answers within ``connect_timeout_s``."""
    uri, scheme = cfg.uri, urlparse(cfg.uri).scheme
    if scheme in ("http", "https"):
        try:
            with urlopen(f"{uri.rstrip('/')}/health", timeout=cfg.connect_timeout_s) as reply:
                if reply.status != 200:
                    raise TrackingUnavailable(
                        f"tracking.uri {uri}: /health answered {reply.status}"
                    )
        except (URLError, OSError) as exc:
            raise TrackingUnavailable(
                f"tracking.uri {uri}: no MLflow server answered within "
                f"{cfg.connect_timeout_s:g} s ({exc}); start it or set tracking.uri in params.yaml"
            ) from None
    elif scheme == "sqlite":
        db = Path(uri.removeprefix("sqlite:///"))
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingUnavailable(
                f"tracking.uri {uri}: cannot create {db.parent} ({exc})"
            ) from None
    elif scheme in ("postgresql", "mysql", "mssql") or "+" in scheme:
        import sqlalchemy

        args = (
            {"connect_timeout": int(max(1, cfg.connect_timeout_s))} if "postgres" in scheme else {}
        )
        try:
            engine = sqlalchemy.create_engine(uri, connect_args=args)
            with engine.connect():
                pass
        except Exception as exc:  # any driver error means: not reachable
            raise TrackingUnavailable(
                f"tracking.uri {uri}: database not reachable ({exc})"
            ) from None
    elif scheme not in ("", "file"):
        raise TrackingUnavailable(
            f"tracking.uri {uri}: unsupported scheme {scheme!r}; expected sqlite:///, "
            "http(s)://, postgresql:// or a folder"
        )


def connect(cfg: TrackingConfig) -> str:
    """Check the store, point MLflow at it and return the experiment id (created if new)."""
    import mlflow

    check_reachable(cfg)
    mlflow.set_tracking_uri(cfg.uri)
    mlflow.set_registry_uri(cfg.uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if urlparse(cfg.uri).scheme not in ("http", "https"):
        location = cfg.artifact_root.resolve().as_uri()
    return client.create_experiment(cfg.experiment, artifact_location=location)


@contextmanager
def tracked_run(
    cfg: TrackingConfig,
    run_name: str,
    tags: Mapping[str, str] | None = None,
    forbidden: Iterable[str] = (),
) -> Iterator[MlflowLogger]:
    """Open a run in ``cfg.experiment``; yield its logger; end FINISHED, FAILED or KILLED.

    The run is also MLflow's active run, so ``mlflow.pyfunc.log_model`` logs into it.
    """
    import mlflow

    experiment_id = connect(cfg)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {}))
    run_id = run.info.run_id
    log.info("MLflow run %s (%s) in %s at %s", run_name, run_id, cfg.experiment, cfg.uri)
    try:
        yield MlflowLogger(run_id, forbidden)
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        log.warning("MLflow run %s marked KILLED", run_id)
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        log.error("MLflow run %s marked FAILED", run_id)
        raise
    mlflow.end_run("FINISHED")
