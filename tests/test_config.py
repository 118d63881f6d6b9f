"""params.yaml validation: unknown keys, bad types and out-of-range values name the key path."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtlgen.cli import app
from mtlgen.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_are_valid():
    params = load_config(REPO / "params.yaml")
    assert params.synth.patients == 24
    assert params.synth.spacing_mm == 2.0


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_its_path(tmp_path):
    with pytest.raises(ConfigError, match=r"synth\.patientz: unknown key"):
        load_config(write(tmp_path, "synth:\n  patientz: 3\n"))


def test_unknown_section_names_its_path(tmp_path):
    with pytest.raises(ConfigError, match=r"trian: unknown key"):
        load_config(write(tmp_path, "trian:\n  epochs: 3\n"))


def test_wrong_type_names_path_and_expected_type(tmp_path):
    with pytest.raises(
        ConfigError, match=r"synth\.patients: Input should be a valid integer.*'many'"
    ):
        load_config(write(tmp_path, "synth:\n  patients: many\n"))


def test_out_of_range_names_path_and_bound(tmp_path):
    with pytest.raises(
        ConfigError, match=r"synth\.spacing_mm: Input should be greater than or equal to 0\.5"
    ):
        load_config(write(tmp_path, "synth:\n  spacing_mm: 0.1\n"))


def test_cross_field_rule(tmp_path):
    with pytest.raises(ConfigError, match=r"visits_max must be >= visits_min"):
        load_config(write(tmp_path, "synth:\n  visits_min: 5\n  visits_max: 3\n"))


def test_overrides_apply_and_are_validated(tmp_path):
    params = load_config(
        write(tmp_path, "seed: 1\n"), ["synth.patients=8", "synth.lesion_volume_ml=[1, 2]"]
    )
    assert params.synth.patients == 8
    assert params.synth.lesion_volume_ml == (1.0, 2.0)
    with pytest.raises(ConfigError, match=r"synth\.patients: Input should be a valid integer"):
        load_config(write(tmp_path, "seed: 1\n"), ["synth.patients=lots"])
    with pytest.raises(ConfigError, match=r"expected KEY\.PATH=VALUE"):
        load_config(write(tmp_path, "seed: 1\n"), ["synth.patients"])
    with pytest.raises(ConfigError, match=r"'seed' is a value, not a section"):
        load_config(write(tmp_path, "seed: 1\n"), ["seed.x=1"])


def test_missing_explicit_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="settings file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_cli_fails_before_work_with_key_path(tmp_path):
    out = tmp_path / "cohort"
    result = CliRunner().invoke(app, ["-S", "synth.patients=-1", "synth", "--out", str(out)])
    assert result.exit_code == 2
    assert "synth.patients: Input should be greater than or equal to 1" in result.output
    assert not out.exists()
