"""Training: outputs, determinism, weightings, single-task runs, resume after SIGKILL, DDP."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mtlgen.config import load_config
from mtlgen.data.splits import Split
from mtlgen.data.trajectories import volume_trajectories
from mtlgen.inference.model import load_predictor
from mtlgen.models.hub import read_meta
from mtlgen.models.mtl_net import MultiTaskNet
from mtlgen.models.priors import fit_growth_prior

TINY = [
    "model.features=[4,8,16]",
    "model.time_dim=8",
    "train.batch_size=2",
    "train.affinity_batches=1",
    "train.progress=false",
    "data.max_context=2",
    "train.threads=1",  # 2 threads on 2 shared cores spin and run several times slower
]


def _params(*overrides: str):
    return load_config(None, [*TINY, *overrides])


def _split(series) -> Split:
    ids = [s.patient for s in series]
    return Split(0, tuple(ids[:3]), tuple(ids[3:]), ())


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_training_writes_checkpoints_history_and_affinity(tmp_path, tiny_series):
    from mtlgen.train.loop import train_model

    result = train_model(_params("train.epochs=2"), tiny_series, _split(tiny_series), tmp_path)
    assert result.epochs_run == 2 and result.tasks == ("seg", "future_seg", "progression", "image")
    history = json.loads(result.history_json.read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(np.isfinite(row["val_loss"]) for row in history)
    assert result.history_csv.read_text().splitlines()[0].startswith("epoch,train_loss_seg")
    assert result.best_val["val_loss"] == min(row["val_loss"] for row in history)
    record = json.loads(result.affinity_json.read_text())
    # the tasks that read the shared trunk (progression works on the volume trajectory)
    assert record["tasks"] == ["seg", "future_seg", "image"] and len(record["epochs"]) == 2
    for epoch in record["epochs"]:
        m = np.array(epoch["matrix"])
        assert m.shape == (3, 3) and np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)
        assert (np.abs(m) <= 1 + 1e-9).all()
        assert not np.allclose(m, np.eye(3)), "tasks share an encoder: gradients must correlate"
    assert result.affinity_png.read_bytes()[:4] == b"\x89PNG"
    # its cost is part of the training time, recorded per epoch and in total
    assert 0 < result.affinity_time_s < result.total_train_time_s
    assert sum(row["affinity_time_s"] for row in history) == pytest.approx(result.affinity_time_s)
    saved = json.loads((tmp_path / "train_result.json").read_text())
    assert saved["best_epoch"] == result.best_epoch
    predictor = load_predictor(result.checkpoint_dir)
    assert predictor.name == "mtl-hard"
    # the progression head started from the training patients' Gompertz fit
    train = volume_trajectories(tiny_series[:3], max_context=2)
    capacity, weight = fit_growth_prior(
        train.volumes, train.years, train.valid, train.ref, train.truth
    )
    meta = read_meta(result.checkpoint_dir)
    assert meta["growth_prior"] == {"capacity_ml": capacity.tolist(), "weight": weight.tolist()}
    loaded = MultiTaskNet.from_pretrained(result.checkpoint_dir)  # local
    assert torch.equal(loaded.growth_weights[:, 2], weight)  # fixed: training does not move it


def test_pcgrad_changes_the_step_not_the_measured_task_affinity(tmp_path, tiny_series):
    from mtlgen.train.loop import train_model

    # one epoch, affinity from its first step, where both runs hold the same weights
    runs = {
        pcgrad: train_model(
            _params("train.epochs=1", f"train.pcgrad={pcgrad}", "train.weighting=uncertainty"),
            tiny_series,
            _split(tiny_series),
            tmp_path / str(pcgrad),
        )
        for pcgrad in (False, True)
    }
    plain, surgery = (
        np.array(json.loads(r.affinity_json.read_text())["epochs"][0]["matrix"])
        for r in runs.values()
    )
    assert np.allclose(plain, surgery, atol=1e-5)
    assert not np.allclose(plain, np.eye(3))
    wa, wb = _weights(runs[False].last_dir), _weights(runs[True].last_dir)
    assert any(not torch.equal(wa[k], wb[k]) for k in wa), "pcgrad must change the update"


def test_cpu_training_is_deterministic(tmp_path, tiny_series):
    from mtlgen.train.loop import train_model

    params = _params("train.epochs=1", "train.affinity_batches=0")
    a = train_model(params, tiny_series, _split(tiny_series), tmp_path / "a")
    b = train_model(params, tiny_series, _split(tiny_series), tmp_path / "b")
    wa, wb = _weights(a.last_dir), _weights(b.last_dir)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    "overrides",
    [
        ("model.sharing=hard",),
        ("model.sharing=soft",),
        ("model.sharing=mtan",),
        ("model.sharing=cross_task",),
        ("train.weighting=uncertainty",),
        ("train.weighting=dwa",),
        ("train.pcgrad=true",),
    ],
)
def test_each_sharing_strategy_and_weighting_trains_the_losses_down(
    tmp_path, tiny_series, overrides
):
    from mtlgen.train.loop import train_model

    params = _params(
        "train.epochs=4",
        "train.lr=0.01",
        "train.affinity_batches=0",
        "data.augment=false",
        *overrides,
    )
    result = train_model(params, tiny_series, _split(tiny_series), tmp_path)
    history = json.loads(result.history_json.read_text())
    first, last = (
        sum(row[f"train_loss_{t}"] for t in result.tasks) for row in (history[0], history[-1])
    )
    assert all(np.isfinite(row["val_loss"]) for row in history)
    assert last < 0.85 * first, f"{overrides}: task losses {first:.3f} -> {last:.3f}"
    weights = [[row[f"weight_{t}"] for t in result.tasks] for row in history]
    if "train.weighting=uncertainty" in overrides:
        assert weights[0] != [1.0] * 4  # learned log-variances moved
    if "train.weighting=dwa" in overrides:
        assert weights[0] == [1.0] * 4 and sum(weights[-1]) == pytest.approx(4.0)
        assert weights[-1] != [1.0] * 4  # from epoch 3 on, weights follow the loss ratios


def test_single_task_model_answers_its_task_and_copies_the_rest(tmp_path, tiny_series):
    from mtlgen.train.loop import train_model

    params = _params("train.epochs=1")
    result = train_model(params, tiny_series, _split(tiny_series), tmp_path, task="progression")
    assert result.tasks == ("progression",) and result.affinity_json is None
    assert result.affinity_time_s == 0.0
    predictor = load_predictor(result.checkpoint_dir)
    assert predictor.name == "single-progression-copy-last"
    assert predictor.model.tasks == ("progression",)


def test_resume_settings_mismatch_starts_afresh(tmp_path, tiny_series):
    from mtlgen.train.loop import train_model

    train_model(_params("train.epochs=1"), tiny_series, _split(tiny_series), tmp_path)
    other = train_model(
        _params("train.epochs=1", "train.lr=0.01"), tiny_series, _split(tiny_series), tmp_path
    )
    assert other.epochs_run == 1  # not "already done": the lr changed, so it trained again


RUNNER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from mtlgen.config import load_config
    from mtlgen.io.series import PatientSeries, VisitVolumes
    from mtlgen.data.splits import load_split
    from mtlgen.train.loop import train_model

    spec = json.loads(Path(sys.argv[1]).read_text())
    series = [
        PatientSeries(p["patient"], tuple(
            VisitVolumes(v["visit"], v["days"], {k: Path(x) for k, x in v["images"].items()},
                         Path(v["label"]))
            for v in p["visits"]))
        for p in spec["series"]
    ]
    params = load_config(None, spec["overrides"])
    train_model(params, series, load_split(spec["split"]), Path(sys.argv[2]))
    """
)


def _runner_spec(tmp_path: Path, series, overrides: list[str]) -> Path:
    from mtlgen.data.splits import save_split

    save_split(_split(series), tmp_path / "split.json")
    spec = {
        "split": str(tmp_path / "split.json"),
        "overrides": overrides,
        "series": [
            {
                "patient": s.patient,
                "visits": [
                    {
                        "visit": v.visit,
                        "days": v.days,
                        "images": {k: str(p) for k, p in v.images.items()},
                        "label": str(v.label),
                    }
                    for v in s.visits
                ],
            }
            for s in series
        ],
    }
    (tmp_path / "runner.py").write_text(RUNNER)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_equals_uninterrupted_run(tmp_path, tiny_series):
    from mtlgen.train.state import read_loop

    spec = _runner_spec(tmp_path, tiny_series, [*TINY, "train.epochs=4"])
    cmd = [sys.executable, str(tmp_path / "runner.py"), str(spec)]
    subprocess.run([*cmd, str(tmp_path / "full")], check=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, str(killed)], start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        loop = (
            read_loop(killed / "last")
            if (killed / "last/train_state.safetensors").exists()
            else None
        )
        if loop and loop["epoch"] >= 1:
            break
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_loop(killed / "last")["epoch"] < 4, "the kill must land before the end"
    subprocess.run([*cmd, str(killed)], check=True, timeout=600)

    full, resumed = _weights(tmp_path / "full/last"), _weights(killed / "last")
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], atol=1e-6, rtol=1e-5)
    hist_full = json.loads((tmp_path / "full/history.json").read_text())
    hist_resumed = json.loads((killed / "history.json").read_text())
    assert [r["val_loss"] for r in hist_resumed] == pytest.approx(
        [r["val_loss"] for r in hist_full], rel=1e-5
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "surgery",
    [
        ["train.affinity_batches=0"],
        # task gradients taken beside DistributedDataParallel's backward pass: PCGrad's merge
        # is averaged over the processes too, and affinity is measured on rank 0 only
        ["train.affinity_batches=2", "train.pcgrad=true", "train.weighting=uncertainty"],
    ],
    ids=["plain", "pcgrad"],
)
def test_torchrun_two_process_gloo_keeps_weights_in_sync(tmp_path, tiny_series, surgery):
    overrides = [*TINY, "train.epochs=2", "train.device=cpu", *surgery]
    spec = _runner_spec(tmp_path, tiny_series, overrides)
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            str(tmp_path / "runner.py"),
            str(spec),
            str(out),
        ],
        check=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    result = json.loads((out / "train_result.json").read_text())
    assert result["world_size"] == 2 and result["epochs_run"] == 2
    assert result["replica_max_abs_diff"] == 0.0
    # the processes trained on different halves of the data yet hold identical weights, and
    # the run differs from a single-process run (gradients were really averaged)
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, str(tmp_path / "runner.py"), str(spec), str(single)],
        check=True,
        timeout=600,
    )
    a, b = _weights(out / "last"), _weights(single / "last")
    assert any(not torch.allclose(a[k], b[k]) for k in a)


def test_training_stops_when_validation_stops_progressing():
    from mtlgen.train.loop import _fresh_loop, _record_epoch
    from mtlgen.train.trainer import EpochStats

    loop = _fresh_loop("x")
    # falls by 10 %, then by ever less than 1 % of itself: progress stops after epoch 3
    losses = [1.0, 0.9, 0.81, 0.805, 0.803, 0.802, 0.8015]
    stopped_after = None
    for loss in losses:
        stats = EpochStats({"seg": loss})
        improved = _record_epoch(loop, stats, {"val_loss": loss}, [1.0], 0.0, 0.01)
        assert improved  # every lower loss is the best checkpoint
        if loop["bad_epochs"] >= 3 and stopped_after is None:
            stopped_after = loop["epoch"]
    assert stopped_after == 6 and loop["best_epoch"] == 7
    # a 1 % gain over the bar counts again
    _record_epoch(loop, EpochStats({"seg": 0.79}), {"val_loss": 0.79}, [1.0], 0.0, 0.01)
    assert loop["bad_epochs"] == 0


def test_the_image_only_segmenter_learns_lesions_and_answers_only_segmentation(
    tmp_path, tiny_series
):
    from mtlgen.evaluate.cases import answers
    from mtlgen.inference.segmenter import SegmenterPredictor
    from mtlgen.io.series import load_visit
    from mtlgen.train.segmenter import train_segmenter

    params = _params("train.epochs=12", "train.patience=12", "train.lr=0.01", "data.augment=false")
    split = _split(tiny_series)
    result = train_segmenter(params, tiny_series, split, tmp_path)
    history = json.loads(result.history_json.read_text())
    assert result.tasks == ("image_seg",) and len(history) == result.epochs_run == 12
    assert history[-1]["train_loss_seg"] < 0.7 * history[0]["train_loss_seg"]  # it learns
    meta = read_meta(result.checkpoint_dir)
    assert meta["architecture"] == "ImageSegmenter" and meta["epoch"] == result.best_epoch
    predictor = load_predictor(result.checkpoint_dir)
    assert isinstance(predictor, SegmenterPredictor)
    assert answers(predictor, "current") and answers(predictor, "unlabelled")
    assert not answers(predictor, "future") and not answers(predictor, "reconstruction")
    # a training visit, its label hidden: the lesion is found from the images alone
    visit = load_visit(tiny_series[0].visits[1])
    truth = visit.label > 0
    hidden = dataclasses.replace(visit, label=None)
    pred = predictor.predict([hidden], visit.days).label > 0
    dice = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert dice > 0.5, dice
    with pytest.raises(ValueError, match="no context visit on day"):
        predictor.predict([hidden], visit.days + 30)
