"""The settings sections of every stage but ``synth``: registry, preprocessing, data, model,
training, evaluation, progression rule, tracking, flows and prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from mtlgen.config.base import Section
from mtlgen.cron import check_cron
from mtlgen.ids import check_token


class ProgressionConfig(Section):
    """Status rule: relative change of lesion-core volume vs the last observed visit; the
    level of the calibrated volume intervals."""

    increase: float = Field(0.25, gt=0, le=10)
    decrease: float = Field(0.25, gt=0, lt=1)
    interval_level: float = Field(0.8, gt=0, lt=1)
    interval_min_days: float = Field(180.0, gt=0)


class TrackingConfig(Section):
    """MLflow tracking and model registry (embedded default: SQLite file + artifact folder)."""

    uri: str = Field("sqlite:///mlflow.db", min_length=1)
    artifact_root: Path = Path("mlruns")
    experiment: str = Field("mtlgen", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    model_name: str = Field("mtlgen-mtl", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    connect_timeout_s: float = Field(5.0, gt=0, le=120)


class RegistryConfig(Section):
    """The patient / visit / scan registry and the checks every scan passes before it is used."""

    url: str = Field("sqlite:///data/registry.sqlite", min_length=1)
    key_file: Path = Path("data/pseudonym.key")
    label_values: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    spacing_range_mm: tuple[float, float] = (0.2, 10.0)
    sqlite_timeout_s: float = Field(120.0, gt=0)
    allowed_roots: list[Path] = Field(default_factory=list)
    max_file_mb: float = Field(2048.0, gt=0)
    review_min_ncc: float = Field(0.3, ge=-1, le=1)
    review_min_mi: float = Field(0.2, ge=0)
    head_foreground_range: tuple[float, float] = (0.02, 0.9)
    head_min_coherence: float = Field(0.5, ge=-1, le=1)
    head_min_extent_mm: float = Field(30.0, ge=0)
    stale_after_s: float = Field(3600.0, ge=0)

    @model_validator(mode="after")
    def _ranges(self) -> RegistryConfig:
        lo, hi = self.spacing_range_mm
        if not 0 < lo < hi:
            raise ValueError("spacing_range_mm must be an increasing pair of positive numbers")
        lo, hi = self.head_foreground_range
        if not 0 <= lo < hi <= 1:
            raise ValueError("head_foreground_range must be an increasing pair in 0..1")
        if any(not 0 <= v <= 255 for v in self.label_values):
            raise ValueError("label_values must lie in 0..255 (labels are stored as uint8)")
        return self


class PreprocessConfig(Section):
    """The model grid every accepted scan is resampled onto, and the rigid alignment to baseline."""

    out_dir: Path = Path("data/processed")
    spacing_mm: float = Field(3.0, ge=0.5, le=8.0)
    shape: tuple[int, int, int] = (56, 64, 56)
    intensity_floor_percentile: float = Field(1.0, ge=0, lt=50)
    intensity_tissue_value: float = Field(0.75, gt=0, le=10)
    intensity_match_baseline: bool = True
    intensity_bias_sigma_mm: float = Field(15.0, ge=0, le=200)
    reference_contrasts: list[str] = Field(default_factory=lambda: ["T1w", "FLAIR"], min_length=1)
    align_levels: list[int] = Field(default_factory=lambda: [2, 1], min_length=1)
    align_bins: int = Field(32, ge=8, le=256)
    align_sampling: float = Field(0.1, gt=0, le=1)
    align_iterations: int = Field(30, ge=1, le=10_000)
    align_threads: int = Field(1, ge=1, le=256)

    @model_validator(mode="after")
    def _ranges(self) -> PreprocessConfig:
        if any(n <= 0 or n % 8 for n in self.shape):
            raise ValueError(f"shape must be positive multiples of 8, got {list(self.shape)}")
        if any(f < 1 for f in self.align_levels) or self.align_levels != sorted(
            self.align_levels, reverse=True
        ):
            raise ValueError("align_levels must be decreasing shrink factors >= 1, e.g. [2, 1]")
        return self


class PrimaryMetric(Section):
    """A metric that decides whether a model is better: ``<kind>.<metric>``, its direction, the
    non-inferiority ``margin`` (metric units): a candidate worse by less than this, with the
    promotion's confidence, counts as no worse; and ``min_gain``, the least improvement that
    counts as better (a systematic difference of no practical size decides nothing)."""

    metric: str = Field(pattern=r"^(future|reconstruction)\.[a-z0-9_]+$")
    direction: Literal["max", "min"]
    margin: float = Field(0.0, ge=0)
    min_gain: float = Field(0.0, ge=0)


class EvaluateConfig(Section):
    """Evaluation of models and baselines on the test patients (``mtlgen evaluate``)."""

    out_dir: Path = Path("data/evaluation")
    baselines: list[Literal["copy_last", "linear", "exponential"]] = Field(
        default_factory=lambda: ["copy_last", "linear", "exponential"]
    )
    checkpoints: dict[str, Path] = Field(default_factory=dict)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    brain_fraction: float = Field(0.1, gt=0, lt=1)
    brain_sigma_vox: float = Field(1.0, ge=0, le=10)
    changing_dilation_vox: int = Field(1, ge=0, le=10)
    near_mm: float = Field(15.0, ge=0, le=100)
    ssim_window: int = Field(7, ge=3, le=15)
    primary_metrics: list[PrimaryMetric] = Field(
        default_factory=lambda: [
            PrimaryMetric(metric="future.dice_lesion", direction="max", margin=0.02),
            PrimaryMetric(metric="future.volume_abs_error_ml", direction="min", margin=0.25),
            PrimaryMetric(metric="future.image_mae_change", direction="min", margin=0.005),
        ],
        min_length=1,
    )
    generative_metrics: list[PrimaryMetric] = Field(  # the generator's rule: its own outputs
        default_factory=lambda: [
            PrimaryMetric(
                metric="future.image_crps_near", direction="min", margin=0.002, min_gain=0.001
            ),
            PrimaryMetric(
                metric="future.growth_brier", direction="min", margin=0.02, min_gain=0.01
            ),
        ],
        min_length=1,
    )
    promotion_confidence: float = Field(0.95, gt=0.5, lt=1)
    promotion_resamples: int = Field(2000, ge=100, le=100_000)

    @model_validator(mode="after")
    def _names(self) -> EvaluateConfig:
        if self.ssim_window % 2 == 0:
            raise ValueError(f"ssim_window must be odd, got {self.ssim_window}")
        for name in self.checkpoints:
            check_token(name, "checkpoint name")
            if name in ("copy_last", "linear", "exponential"):
                raise ValueError(f"checkpoint name {name!r} is taken by a baseline")
        return self


TaskName = Literal["seg", "future_seg", "progression", "image"]
TASK_NAMES: tuple[str, ...] = ("seg", "future_seg", "progression", "image")


class DataConfig(Section):
    """Longitudinal samples for learning: split, context length, channels, augmentation."""

    split_file: Path = Path("data/splits.json")
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.2, ge=0, lt=1)
    contrasts: list[str] = Field(default_factory=lambda: ["T1w", "FLAIR"], min_length=1)
    max_context: int = Field(3, ge=1, le=16)
    reconstruction: bool = True
    mask_dropout: float = Field(0.5, ge=0, le=1)
    unlabelled_fraction: float = Field(0.25, ge=0, le=1)
    augment: bool = True
    flip_prob: float = Field(0.5, ge=0, le=1)
    affine_prob: float = Field(0.3, ge=0, le=1)
    rotate_deg: float = Field(5.0, ge=0, le=45)
    scale_fraction: float = Field(0.05, ge=0, le=0.5)

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be < 1")
        if len(set(self.contrasts)) != len(self.contrasts):
            raise ValueError(f"contrasts must be unique, got {self.contrasts}")
        return self


class ModelConfig(Section):
    """Spatio-temporal multi-task network (mtlgen.models.mtl_net)."""

    spatial_dims: Literal[2, 3] = 3
    features: list[int] = Field(default_factory=lambda: [8, 16, 32, 64], min_length=2, max_length=6)
    time_dim: int = Field(32, ge=4, le=512)
    heads: int = Field(2, ge=1, le=16)
    sharing: Literal["hard", "soft", "mtan", "cross_task"] = "hard"
    soft_penalty: Literal["l2", "l1"] = "l2"
    soft_lambda: float = Field(1e-3, ge=0)


class TrainConfig(Section):
    """Optimisation, loss weighting, gradient surgery, task affinity, checkpoints."""

    out_dir: Path = Path("data/models/mtl")
    task: Literal["all", "seg", "future_seg", "progression", "image", "image_seg", "generative"] = (
        "all"
    )
    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(2, ge=1, le=256)
    lr: float = Field(2e-3, gt=0, le=1)
    weight_decay: float = Field(1e-5, ge=0)
    weighting: Literal["fixed", "uncertainty", "dwa"] = "fixed"
    task_weights: dict[TaskName, float] = Field(
        default_factory=lambda: {"seg": 1.0, "future_seg": 1.0, "progression": 1.0, "image": 1.0}
    )
    dwa_temperature: float = Field(2.0, gt=0)
    pcgrad: bool = False
    image_gradient_weight: float = Field(0.5, ge=0)
    image_lesion_weight: float = Field(1.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    affinity_batches: int = Field(2, ge=0, le=1000)
    patience: int = Field(3, ge=1)
    min_improvement: float = Field(0.01, ge=0, lt=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    threads: int = Field(0, ge=0, le=256)
    progress: bool = True

    @model_validator(mode="after")
    def _weights(self) -> TrainConfig:
        if any(w < 0 for w in self.task_weights.values()):
            raise ValueError(f"task_weights must be >= 0, got {self.task_weights}")
        return self


class GenerativeConfig(Section):
    """The diffusion generator of follow-up residuals (``mtlgen.generative``): its cube,
    network, schedule, sampler and training budget."""

    out_dir: Path = Path("data/models/generative")
    base: Path = Path("data/models/mtl/best")  # the multi-task model whose forecasts it draws on
    crop: int = Field(24, ge=8, le=256)
    residual_scale: float = Field(0.1, gt=0)
    channels: list[int] = Field(default_factory=lambda: [16, 32, 32], min_length=2)
    num_res_blocks: int = Field(1, ge=1, le=4)
    train_timesteps: int = Field(1000, ge=10, le=10_000)
    sampler: Literal["ddim", "dpm"] = "ddim"
    steps: int = Field(10, ge=1, le=1000)
    n_samples: int = Field(8, ge=2, le=256)
    steps_per_epoch: int = Field(100, ge=1)
    epochs: int = Field(12, ge=1, le=10_000)
    batch_size: int = Field(4, ge=1, le=256)
    lr: float = Field(5e-4, gt=0, le=1)
    centre_grid: list[float] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], min_length=1
    )
    spread_grid: list[float] = Field(
        default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0], min_length=1
    )
    spread_cases: int = Field(32, ge=1)


FlowName = Literal["register", "train", "predict", "pipeline"]

CronExpr = Annotated[str, AfterValidator(check_cron)]


class FlowsConfig(Section):
    """Prefect orchestration (flows/): concurrency, retries, retraining and follow-up rules,
    schedules."""

    source: Path = Path("data/raw/demo")
    task_runner: Literal["threads", "dask"] = "threads"
    workers: int = Field(2, ge=1, le=256)
    dask_address: str | None = Field(None, pattern=r"^(tcp|tls|ucx|inproc)://\S+$")
    retries: int = Field(3, ge=0, le=20)
    retry_delay_s: float = Field(2.0, ge=0, le=3600)
    retrain_min_new_visits: int = Field(8, ge=1, le=1_000_000)
    train_generator: bool = True  # after promotion, train, evaluate and promote the generator
    predict_window_days: float = Field(30.0, ge=0, le=3650)
    follow_up_days: float = Field(120.0, gt=0, le=3650)
    predict_out_dir: Path = Path("data/predictions")
    timezone: str = "UTC"
    schedules: dict[FlowName, CronExpr] = Field(
        default_factory=lambda: {"register": "0 2 * * *", "pipeline": "0 3 * * 0"}
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, timezone: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
        return timezone


class PredictConfig(Section):
    """`mtlgen predict`: each registered patient's visit ``days_ahead`` after its last one,
    written in ``space``: ``native`` (the last visit's source scan grid) or ``model``."""

    model: str = Field("champion", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    days_ahead: float = Field(180.0, gt=0, le=3650)
    out_dir: Path = Path("data/predictions/pipeline")
    space: Literal["native", "model"] = "native"
    generative: bool = True  # the generator's champion (over its base) when one is registered
    n_samples: int | None = Field(None, ge=2, le=256)  # draws; None: the generator's own


class ReportConfig(Section):
    """`mtlgen report` and `mtlgen patient show`: per-patient HTML pages and the cohort index."""

    out_dir: Path = Path("data/reports/html")
    page_size: int = Field(50, ge=5, le=1000)
