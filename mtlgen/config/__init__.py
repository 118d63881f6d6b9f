"""The one source of settings: a pydantic schema of ``params.yaml``.

Every section forbids unknown keys, so a typo fails before any work starts, with the
dotted key path and what was expected in the message. ``load_config`` applies
``-S key.path=value`` overrides (values parsed as YAML) before validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from mtlgen.config.base import Section
from mtlgen.config.cohort import SynthConfig
from mtlgen.config.sections import (
    DataConfig,
    EvaluateConfig,
    FlowsConfig,
    GenerativeConfig,
    ModelConfig,
    PredictConfig,
    PreprocessConfig,
    ProgressionConfig,
    RegistryConfig,
    ReportConfig,
    TrackingConfig,
    TrainConfig,
)

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A settings file or override that does not match the schema."""


class Params(Section):
    """Root of params.yaml."""

    seed: int = Field(0, ge=0)
    synth: SynthConfig = SynthConfig()
    progression: ProgressionConfig = ProgressionConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegistryConfig = RegistryConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    tracking: TrackingConfig = TrackingConfig()
    predict: PredictConfig = PredictConfig()
    flows: FlowsConfig = FlowsConfig()
    generative: GenerativeConfig = GenerativeConfig()
    report: ReportConfig = ReportConfig()


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"override {dotted!r}: empty key in dotted path")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.path=value``; the value is parsed as YAML (``3`` -> int, ``[1,2]`` -> list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE, e.g. synth.patients=8")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.strip(), value


def _describe(error: dict[str, Any]) -> str:
    path = ".".join(str(p) for p in error["loc"]) or "<root>"
    msg = error["msg"]
    if error["type"] == "extra_forbidden":
        msg = "unknown key (check spelling; see params.yaml for the valid keys)"
    elif "input" in error and error["type"] != "missing":
        msg = f"{msg} (got {error['input']!r})"
    return f"{path}: {msg}"


def validate_params(tree: dict[str, Any], source: str = "params.yaml") -> Params:
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError(f"{source}: invalid settings\n  " + "\n  ".join(lines)) from None


def load_config(path: Path | str | None = DEFAULT_PARAMS, overrides: list[str] = ()) -> Params:
    """Read ``path`` (missing file -> defaults), apply overrides, validate."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None and Path(path).exists():
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        tree = loaded or {}
    elif path is not None and Path(path) != DEFAULT_PARAMS:
        raise ConfigError(f"{path}: settings file not found")
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    return validate_params(tree, source)
