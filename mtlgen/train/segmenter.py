"""Training of the image-only segmentation peer (``mtlgen.models.segmenter.ImageSegmenter``)
on the same labelled visits of the same training patients as the multi-task network, under the
same settings (seed, ``train.epochs`` cap, batch size, learning rate, weight decay, gradient
clipping, early stopping on the validation patients, augmentation): the budget is the same
rule, not the same seconds (an epoch of the peer is one visit per sample, not a series).

Loss: Dice + cross-entropy over the three classes (MONAI ``DiceCELoss``). Writes ``best/``
(the lowest validation loss) and ``last/`` checkpoints, ``history.csv`` / ``history.json`` and
``train_result.json`` into the output folder; a rerun starts over.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mtlgen.config import Params
from mtlgen.data.splits import Split
from mtlgen.data.visits import VisitDataset
from mtlgen.io.atomic import write_text_atomic
from mtlgen.io.series import PatientSeries
from mtlgen.models.segmenter import ImageSegmenter
from mtlgen.train.checkpoints import save_checkpoint
from mtlgen.train.distributed import select_device
from mtlgen.train.records import TrainResult, write_history
from mtlgen.train.setup import split_series
from mtlgen.train.stopping import record_validation

log = logging.getLogger(__name__)
TASK = "image_seg"


def _run_epoch(
    model: ImageSegmenter,
    loader: DataLoader,
    loss_fn: DiceCELoss,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    grad_clip: float = 0.0,
    desc: str = "",
    progress: bool = False,
) -> float:
    """One pass over ``loader``: a training epoch with ``optimizer``, else validation. Returns
    the mean loss."""
    model.train(optimizer is not None)
    amp = device.type == "cuda"
    total, count = 0.0, 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        image, label = batch["image"].to(device), batch["label"].to(device)[:, None]
        with (
            torch.set_grad_enabled(optimizer is not None),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp),
        ):
            loss = loss_fn(model(image).float(), label)
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        total += float(loss.detach()) * len(image)
        count += len(image)
    return total / max(count, 1)


def _loaders(
    params: Params, series: list[PatientSeries], split: Split
) -> tuple[VisitDataset, DataLoader, DataLoader]:
    """The training visits (augmented, shuffled by seed) and the validation visits."""
    train_series, val_series = split_series(series, split)
    train_ds = VisitDataset(train_series, params.data, train=True, seed=params.seed)
    val_ds = VisitDataset(val_series, params.data)
    generator = torch.Generator().manual_seed(params.seed)
    batch = params.train.batch_size
    log.info("image-only segmenter: %d training, %d validation visits", len(train_ds), len(val_ds))
    return (
        train_ds,
        DataLoader(train_ds, batch_size=batch, shuffle=True, generator=generator),
        DataLoader(val_ds, batch_size=batch),
    )


def train_segmenter(
    params: Params,
    series: list[PatientSeries],
    split: Split,
    out_dir: Path | str | None = None,
    logger: Any | None = None,
) -> TrainResult:
    """Train the image-only segmenter on the split's labelled training visits; ``logger`` (an
    MLflow run) gets the settings and per-epoch losses."""
    cfg = params.train
    out_dir = Path(out_dir or cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = select_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train_ds, train_dl, val_dl = _loaders(params, series, split)
    torch.manual_seed(params.seed)
    model = ImageSegmenter(params.data.contrasts, params.model.features).to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    meta = {"task": TASK, "seed": params.seed, "split_sha256": split.sha256()}
    if logger is not None:
        logger.log_params({"tasks": TASK, **{f"train.{k}": v for k, v in cfg.model_dump().items()}})
    counters: dict[str, Any] = {"bar": math.inf, "bad_epochs": 0}
    best, best_epoch, history, t_start = math.inf, 0, [], time.perf_counter()
    while len(history) < cfg.epochs and counters["bad_epochs"] < cfg.patience:
        epoch, t_epoch = len(history) + 1, time.perf_counter()
        train_ds.set_epoch(epoch - 1)
        desc = f"epoch {epoch}/{cfg.epochs}"
        train_loss = _run_epoch(
            model, train_dl, loss_fn, device, optimizer, cfg.grad_clip, desc, cfg.progress
        )
        val_loss = _run_epoch(model, val_dl, loss_fn, device)
        row = {"epoch": epoch, "train_loss_seg": train_loss, "val_loss": val_loss}
        history.append({**row, "epoch_time_s": time.perf_counter() - t_epoch})
        epoch_meta = {**meta, "epoch": epoch, "val": {"val_loss": val_loss}}
        if val_loss < best - 1e-6:
            best, best_epoch = val_loss, epoch
            save_checkpoint(out_dir / "best", model, epoch_meta)
        save_checkpoint(out_dir / "last", model, epoch_meta)
        if logger is not None:
            logger.log_metrics({k: float(v) for k, v in history[-1].items() if k != "epoch"}, epoch)
        log.info("epoch %d: train %.4f | val_loss %.4f", epoch, train_loss, val_loss)
        record_validation(counters, val_loss, cfg.min_improvement)
    history_csv, history_json = write_history(history, out_dir)
    wall = time.perf_counter() - t_start
    result = TrainResult(
        checkpoint_dir=out_dir / "best",
        last_dir=out_dir / "last",
        tasks=(TASK,),
        wall_time_s=wall,
        total_train_time_s=wall,
        affinity_time_s=0.0,
        epochs_run=len(history),
        best_epoch=best_epoch,
        best_val={"val_loss": best},
        history_csv=history_csv,
        history_json=history_json,
        affinity_json=None,
        affinity_png=None,
    )
    write_text_atomic(out_dir / "train_result.json", result.to_json() + "\n")
    return result
