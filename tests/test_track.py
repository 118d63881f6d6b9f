"""MLflow tracking on the embedded store (SQLite + artifact folder): runs, logger, provenance,
registry, promotion rule and loading by alias."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from mtlgen.config import TrackingConfig
from mtlgen.data.dataset import encode_context
from mtlgen.data.splits import make_split, save_split
from mtlgen.io.series import VisitArrays
from mtlgen.models.mtl_net import MultiTaskNet
from mtlgen.track.logger import PrivacyError
from mtlgen.track.promotion import Rule, promote
from mtlgen.track.provenance import data_version, environment, file_sha256
from mtlgen.track.run import TrackingUnavailable, check_reachable, tracked_run
from mtlgen.track.versions import (
    CANDIDATE,
    CHAMPION,
    download_checkpoint,
    load_model,
    register_checkpoint,
)
from tests.support import free_port, stop_process_group, wait_until_ready

PRIMARY = Rule({"dice": "max", "volume_mae": "min"})  # no margins, means only


def tiny_net(seed: int) -> MultiTaskNet:
    """A real (small) segmentation network, seeded."""
    torch.manual_seed(seed)
    return MultiTaskNet(tasks=("seg",), features=(4, 8), time_dim=8, heads=2, max_context=2)


def make_checkpoint(directory: Path, seed: int) -> Path:
    tiny_net(seed).save_pretrained(directory)
    return directory


def tiny_batch() -> dict[str, np.ndarray]:
    """Two unlabelled 8^3 visits as the network's batch (arrays, as MLflow passes them)."""
    rng = np.random.default_rng(0)
    visits = [
        VisitArrays(
            f"v{i}",
            120.0 * i,
            {c: rng.random((8, 8, 8), dtype=np.float32) for c in ("T1w", "FLAIR")},
            None,
            np.diag([4.0, 4.0, 4.0, 1.0]),
        )
        for i in range(2)
    ]
    batch = encode_context(visits, 300.0, ["T1w", "FLAIR"], max_context=2)
    return {k: v[None].numpy() for k, v in batch.items()}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> TrackingConfig:
    root = tmp_path_factory.mktemp("mlflow")
    return TrackingConfig(
        uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_root=root / "artifacts",
        experiment="test",
        model_name="test-mtl",
    )


def test_unreachable_server_fails_fast_with_uri() -> None:
    cfg = TrackingConfig(uri=f"http://127.0.0.1:{free_port()}", connect_timeout_s=2)
    start = time.perf_counter()
    with (
        pytest.raises(TrackingUnavailable, match=r"http://127\.0\.0\.1:\d+"),
        tracked_run(cfg, "never"),
    ):
        pytest.fail("the body must not run")
    assert time.perf_counter() - start < 60  # not MLflow's minutes of retries


def test_crashed_run_is_marked_failed_and_clean_run_finished(store) -> None:
    with pytest.raises(RuntimeError, match="boom"), tracked_run(store, "crash") as run:
        crashed = run.run_id
        run.log_metrics({"loss": 1.0}, step=0)
        raise RuntimeError("boom")
    with tracked_run(store, "clean") as run:
        clean = run.run_id
    client = mlflow.MlflowClient()
    assert client.get_run(crashed).info.status == "FAILED"
    assert client.get_run(clean).info.status == "FINISHED"
    assert mlflow.active_run() is None


def test_logger_params_metrics_artifacts(store, tmp_path) -> None:
    montage = tmp_path / "montage.png"
    montage.write_bytes(b"\x89PNG fake bytes are fine for an artifact")
    with tracked_run(store, "log") as run:
        run.log_params({"train": {"epochs": 3, "lr": 1e-3}, "seed": 0})
        for epoch in range(3):
            run.log_metrics({"loss": {"seg": 1.0 / (epoch + 1), "total": 2.0 - epoch}}, step=epoch)
        run.log_metrics({"val.dice": np.float32(0.5)}, step=2)
        run.log_artifact(montage, "samples")
        with pytest.raises(TypeError, match="metric 'bad'"):
            run.log_metrics({"bad": "x"}, step=0)
    client = mlflow.MlflowClient()
    data = client.get_run(run.run_id).data
    assert data.params == {"train.epochs": "3", "train.lr": "0.001", "seed": "0"}
    history = client.get_metric_history(run.run_id, "loss.total")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 1.0), (2, 0.0)]
    assert data.metrics["val.dice"] == pytest.approx(0.5)
    assert [a.path for a in client.list_artifacts(run.run_id, "samples")] == ["samples/montage.png"]


def test_logger_refuses_source_patient_ids(store, tmp_path) -> None:
    leaky = tmp_path / "sub-HOSP1234_mask.png"
    leaky.write_bytes(b"x")
    with tracked_run(store, "privacy", forbidden={"HOSP1234"}) as run:
        with pytest.raises(PrivacyError, match="source patient ID"):
            run.log_params({"source": "/data/HOSP1234/scan.nii.gz"})
        with pytest.raises(PrivacyError):
            run.log_metrics({"dice.HOSP1234": 0.9})
        with pytest.raises(PrivacyError):
            run.log_artifact(leaky)
        run.log_params({"patient": "p0001"})
    assert mlflow.MlflowClient().get_run(run.run_id).data.params == {"patient": "p0001"}
    with tracked_run(store, "privacy-tokens", forbidden={"001"}) as run:
        run.log_params({"lr": 0.001, "patient": "p1001", "contrasts": ["T1w"]})  # no whole token
        with pytest.raises(PrivacyError):
            run.log_params({"source": "bids/sub-001/ses-01"})
        with pytest.raises(PrivacyError):
            run.log_params({"ids": ["002", "001"]})


def test_provenance_environment_and_data_version(tmp_path) -> None:
    env = environment()
    assert env["torch"] == torch.__version__.split("+")[0] or env["torch"] == torch.__version__
    assert env["mlflow"] == mlflow.__version__
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "dvc.lock").write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {
                    "register": {"outs": [{"path": "data/processed", "md5": "abc.dir"}]},
                    "split": {"outs": [{"path": "data/split.json", "md5": "def"}]},
                },
            }
        )
    )
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "dvc.lock"], check=True)
    subprocess.run([*git, "commit", "-qm", "lock"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    version = data_version(["data/processed/", "data/split.json", "data/other"], tmp_path)
    assert version == {
        "git.commit": head,
        "git.dirty": "False",
        "dvc.data/processed/": "abc.dir",
        "dvc.data/split.json": "def",
        "dvc.data/other": "untracked",
    }
    (tmp_path / "dvc.lock").write_text("stages: {}\n")
    assert data_version([], tmp_path)["git.dirty"] == "True"


def exercise_registry(store: TrackingConfig, tmp_path: Path) -> None:
    """First model becomes champion; a worse one stays candidate; an equal-or-better one wins;
    a model evaluated on another split is refused; champion loads back with identical output."""
    split = save_split(
        make_split([f"p{i:04d}" for i in range(10)], 0.2, 0.2, 0), tmp_path / "s.json"
    )
    sha = file_sha256(split)
    x = tiny_batch()
    outputs, versions = {}, []
    for seed in range(4):
        ckpt = make_checkpoint(tmp_path / f"ckpt{seed}", seed)
        with tracked_run(store, f"train-{seed}") as run:
            run.log_params({"seed": seed})
            versions.append(register_checkpoint(ckpt, store.model_name, {"seed": seed}))
        with torch.no_grad():
            batch = {k: torch.from_numpy(v) for k, v in x.items()}
            outputs[versions[-1]] = tiny_net(seed).eval()(batch)["seg_logits"].numpy()
    client = mlflow.MlflowClient()
    assert (
        str(client.get_model_version_by_alias(store.model_name, CANDIDATE).version) == versions[-1]
    )

    first = promote(store, {"dice": 0.80, "volume_mae": 0.30}, PRIMARY, sha, ref=versions[0])
    assert first.promoted and first.reason == "no champion yet"
    worse = promote(store, {"dice": 0.85, "volume_mae": 0.31}, PRIMARY, sha, ref=versions[1])
    assert not worse.promoted and "volume_mae" in worse.reason
    assert [(c.metric, c.ok) for c in worse.comparisons] == [("dice", True), ("volume_mae", False)]
    assert str(client.get_model_version_by_alias(store.model_name, CHAMPION).version) == versions[0]
    other_split = promote(store, {"dice": 0.99, "volume_mae": 0.01}, PRIMARY, "0" * 64, versions[2])
    assert not other_split.promoted and "another test split" in other_split.reason
    tie = promote(
        store, {"dice": 0.80, "volume_mae": 0.25, "extra": 1}, PRIMARY, sha, ref=versions[3]
    )
    assert tie.promoted and tie.champion_version == versions[0]
    assert str(client.get_model_version_by_alias(store.model_name, CHAMPION).version) == versions[3]

    # the decision and its numbers are logged: version tags and a promote run
    tags = client.get_model_version(store.model_name, versions[1]).tags
    assert tags["promotion.decision"] == "rejected" and float(tags["eval.volume_mae"]) == 0.31
    runs = mlflow.search_runs(
        experiment_names=[store.experiment],
        filter_string=f"params.candidate_version = '{versions[1]}'",
        output_format="list",
    )
    assert len(runs) == 1 and runs[0].data.metrics["champion.volume_mae"] == pytest.approx(0.30)
    decision = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=runs[0].info.run_id, artifact_path="promotion.json", dst_path=str(tmp_path)
            )
        ).read_text()
    )
    assert decision["promoted"] is False and decision["comparisons"][1]["candidate"] == 0.31

    with pytest.raises(KeyError, match="primary metric 'volume_mae' missing"):
        promote(store, {"dice": 0.9}, PRIMARY, sha, ref=versions[1])

    champion = load_model(store, CHAMPION)
    np.testing.assert_array_equal(champion.predict(x)["seg_logits"], outputs[versions[3]])
    by_version = load_model(store, versions[1]).predict(x)["seg_logits"]
    np.testing.assert_array_equal(by_version, outputs[versions[1]])
    ckpt_dir, version = download_checkpoint(store, tmp_path / "dl", CHAMPION)
    assert version == versions[3]
    assert {"config.json", "model.safetensors"} <= {p.name for p in ckpt_dir.iterdir()}
    assert json.loads((ckpt_dir / "config.json").read_text())["tasks"] == ["seg"]
    assert (
        MultiTaskNet.from_pretrained(ckpt_dir).state_dict().keys()
        == tiny_net(3).state_dict().keys()
    )
    with pytest.raises(LookupError, match="no version or alias 'nope'"):
        load_model(store, "nope")


def test_register_promote_and_load_by_alias(store, tmp_path) -> None:
    exercise_registry(store, tmp_path)


def test_champion_that_no_longer_loads_is_replaced_with_the_reason(store, tmp_path) -> None:
    """A champion trained by an older network cannot serve: a worse candidate replaces it."""
    from safetensors.torch import load_file, save_file

    cfg = store.model_copy(update={"model_name": "test-stale"})
    stale = make_checkpoint(tmp_path / "stale", 0)
    weights = load_file(str(stale / "model.safetensors"))
    weights["old_head.weight"] = weights.pop(sorted(weights)[0])  # the network has changed since
    save_file(weights, str(stale / "model.safetensors"))
    versions = []
    for ckpt in (stale, make_checkpoint(tmp_path / "fresh", 1)):
        with tracked_run(cfg, "train") as run:
            run.log_params({"seed": 0})
            versions.append(register_checkpoint(ckpt, cfg.model_name))
    assert promote(cfg, {"dice": 0.9, "volume_mae": 0.1}, PRIMARY, "a" * 64, versions[0]).promoted
    decision = promote(cfg, {"dice": 0.5, "volume_mae": 0.9}, PRIMARY, "a" * 64, versions[1])
    assert decision.promoted and decision.champion_version == versions[0]
    assert "no longer loads" in decision.reason and "retrain" in decision.reason
    assert f"test-stale v{versions[0]}" in decision.reason and str(tmp_path) not in decision.reason
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(cfg.model_name, CHAMPION).version) == versions[1]


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """A real `mlflow server` (SQLite backend, proxied artifacts) on 127.0.0.1 and a free port,
    in its own session so that its worker processes end with it."""
    port = free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination",
            str(root / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=(root / "server.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            check_reachable(TrackingConfig(uri=uri, connect_timeout_s=1))
        except TrackingUnavailable:
            return False
        return True

    try:
        wait_until_ready(proc, answers, 90, root / "server.log")
        yield uri
    finally:
        stop_process_group(proc)


@pytest.mark.slow
@pytest.mark.integration
def test_registry_against_real_mlflow_server(tmp_path) -> None:
    with mlflow_server(tmp_path) as uri:
        store = TrackingConfig(uri=uri, experiment="server-test", model_name="server-mtl")
        with pytest.raises(RuntimeError, match="boom"), tracked_run(store, "crash") as run:
            raise RuntimeError("boom")
        assert mlflow.MlflowClient().get_run(run.run_id).info.status == "FAILED"
        exercise_registry(store, tmp_path)
        artifact_uri = mlflow.MlflowClient().get_run(run.run_id).info.artifact_uri
        assert artifact_uri.startswith("mlflow-artifacts:")  # served by the server, not local


def test_stage_run_logs_settings_environment_data_version_and_evaluation(
    store, tmp_path, monkeypatch
) -> None:
    from mtlgen.config import Params
    from mtlgen.registry.db import session_scope
    from mtlgen.registry.models import Patient, PatientId
    from mtlgen.track.stage import log_evaluation, stage_run

    monkeypatch.chdir(tmp_path)  # outside any git repo and without dvc.lock
    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    with session_scope(url) as s:
        s.add(Patient(pseudonym="p0a1b2c3", baseline_visit="v0", reference="T1w", grid="{}"))
        s.flush()
        s.add(PatientId(pseudonym="p0a1b2c3", source_id="HOSP-77"))
    split = save_split(make_split(["p0a1b2c3", "p1", "p2"], 0.3, 0.3, 0), tmp_path / "split.json")
    params = Params.model_validate(
        {
            "tracking": store.model_dump(),
            "registry": {"url": url},
        }
    )
    out = tmp_path / "evaluation"
    out.mkdir()
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "meta": {"split_sha256": file_sha256(split)},
                "results": {
                    "mtl": {"future": {"dice_lesion": {"mean": 0.7, "std": 0.1, "n": 4}}},
                    "copy_last": {"future": {"dice_lesion": {"mean": None, "std": None, "n": 0}}},
                },
            }
        )
    )
    (out / "summary.md").write_text("# summary\n")
    with stage_run(params, "evaluate", ["data/processed"], split) as run:
        means = log_evaluation(run, out)
        with pytest.raises(PrivacyError):
            run.log_params({"note": "scan of HOSP-77"})
    assert means == {"mtl.future.dice_lesion": 0.7}
    got = mlflow.MlflowClient().get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["data.split_sha256"] == file_sha256(split)
    assert got.data.params["evaluation.split_sha256"] == file_sha256(split)
    assert got.data.params["data.dvc.data/processed"] == "untracked"
    assert got.data.params["env.torch"] == environment()["torch"]
    assert got.data.params["train.epochs"] == str(params.train.epochs)
    assert got.data.tags["mtlgen.stage"] == "evaluate"
    assert got.data.tags["mtlgen.git_commit"] == "unknown"
    assert got.data.metrics == {"mtl.future.dice_lesion": 0.7}
    names = [a.path for a in mlflow.MlflowClient().list_artifacts(run.run_id, "evaluation")]
    assert names == ["evaluation/metrics.json", "evaluation/summary.md"]


def test_settings_mask_url_passwords() -> None:
    from mtlgen.config import Params
    from mtlgen.track.stage import settings_without_secrets

    params = Params.model_validate(
        {"registry": {"url": "postgresql+psycopg2://bob:s3cr@t@127.0.0.1:5432/mtlgen"}}
    )
    assert settings_without_secrets(params)["registry"]["url"] == (
        "postgresql+psycopg2://bob:***@127.0.0.1:5432/mtlgen"
    )


def test_train_command_fails_fast_on_unreachable_tracking(tmp_path, monkeypatch) -> None:
    """`mtlgen train` stops before loading data or training: exit 2, the URI in the message."""
    from typer.testing import CliRunner

    from mtlgen.cli import app

    monkeypatch.chdir(tmp_path)  # no params.yaml, no registry, no split: nothing to train on
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.perf_counter()
    result = CliRunner().invoke(
        app, ["-S", f"tracking.uri={uri}", "-S", "tracking.connect_timeout_s=2", "train"]
    )
    assert result.exit_code == 2
    assert f"tracking.uri {uri}: no MLflow server answered" in result.output
    assert time.perf_counter() - start < 60  # not MLflow's minutes of retries
    assert not (tmp_path / "data").exists()


def test_predict_uses_the_generators_version_when_registered(tmp_path) -> None:
    """``download_forecaster``: the multi-task model while no generator is registered, the
    generator (a whole checkpoint: its base inside) once it has the requested alias."""
    from mtlgen.config import Params
    from mtlgen.generative.network import ResidualDenoiser
    from mtlgen.generative.volumes import VolumeSpread
    from mtlgen.inference.generative import GenerativePredictor, GeneratorSettings
    from mtlgen.inference.model import load_predictor
    from mtlgen.track.versions import download_forecaster

    store = TrackingConfig(
        uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_root=tmp_path / "artifacts",
        experiment="test",
        model_name="fc",
    )
    params = Params.model_validate(
        {"tracking": store.model_dump(), "predict": {"model": "candidate"}}
    )
    with tracked_run(store, "train-mtl"):
        register_checkpoint(make_checkpoint(tmp_path / "mtl", 0), "fc")
    folder, source = download_forecaster(params, tmp_path / "a")
    assert source == {"model_name": "fc", "version": "1", "requested": "candidate"}
    gen = tmp_path / "gen"
    ResidualDenoiser(4, 14, channels=(8, 8)).save_pretrained(gen)
    volumes = VolumeSpread.fit({"future:1": list(range(5))}, 30.0).to_dict()
    GeneratorSettings(("T1w", "FLAIR"), 8, 0.1, 50, "ddim", 2, 3, volumes=volumes).save(gen)
    make_checkpoint(gen / "base", 0)
    with tracked_run(store, "train-generative"):
        register_checkpoint(gen, "fc-generative")
    folder, source = download_forecaster(params, tmp_path / "b")
    assert source["model_name"] == "fc-generative"
    predictor = load_predictor(folder, n_samples=4)
    assert isinstance(predictor, GenerativePredictor) and predictor.n_samples == 4
    off = params.model_copy(
        update={"predict": params.predict.model_copy(update={"generative": False})}
    )
    assert download_forecaster(off, tmp_path / "c")[1]["model_name"] == "fc"
