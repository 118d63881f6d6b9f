"""params.yaml validation: unknown keys, bad types and out-of-range values name the key path."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtlgen.cli import app
from mtlgen.config import ConfigError, Params, load_config, validate_params
from mtlgen.cron import check_cron

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
        ConfigError, match=r"synth\.spacing_mm: .*within 0\.5 and 8 mm \(got 0\.1\)"
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


def _leaves(tree, prefix=""):
    """Dotted key -> value for every leaf of a nested dump (lists and tuples are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else key))
    return out


def test_schema_defaults_equal_params_yaml():
    """One source of defaults: a key left out of params.yaml means what params.yaml says."""
    defaults = _leaves(Params().model_dump(mode="json"))
    repo = _leaves(load_config(REPO / "params.yaml").model_dump(mode="json"))
    differing = {
        key: (defaults.get(key, "<missing>"), repo.get(key, "<missing>"))
        for key in sorted(set(defaults) | set(repo))
        if defaults.get(key, "<missing>") != repo.get(key, "<missing>")
    }
    assert not differing, "schema default != params.yaml for " + ", ".join(
        f"{key} ({default!r} != {value!r})" for key, (default, value) in differing.items()
    )


@pytest.mark.parametrize(
    "expr",
    [
        "0 2 * * *",
        "*/15 8-18 * * mon-fri",
        "0 3 * * 0",
        "30 4 * * sun",
        "0 2 L * *",
        "0 2 * * 1#2",
        "0 2 * * * 30",  # 6th field: seconds (Prefect accepts it)
        "@daily",
        "@hourly",
    ],
)
def test_valid_cron(expr):
    assert check_cron(expr) == expr
    params = validate_params({"flows": {"schedules": {"register": expr}}})
    assert params.flows.schedules["register"] == expr


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 2 * *", "4 field(s)"),
        ("60 2 * * *", "minute field '60' is not valid (0-59)"),
        ("0 24 * * *", "hour field '24'"),
        ("0 2 0 * *", "day-of-month field '0'"),
        ("0 2 * 13 *", "month field '13'"),
        ("0 2 * * 8", "day-of-week field '8'"),
        ("*/0 * * * *", "minute field '*/0'"),
        ("0 2 * * funday", "day-of-week field 'funday'"),
        ("R 2 * * *", "minute field 'R': random/hashed values are not supported by Prefect"),
        ("0 2 15W * *", "day-of-month field '15W': nearest weekday"),
        ("@reboot", "unknown macro"),
    ],
)
def test_invalid_cron_names_the_field(expr, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_cron(expr)
    with pytest.raises(ConfigError) as info:
        validate_params({"flows": {"schedules": {"pipeline": expr}}})
    text = str(info.value)
    assert f"flows.schedules.pipeline: Value error, cron {expr!r}" in text
    assert "expected 5 fields 'minute hour day-of-month month day-of-week'" in text
    assert "'0 2 * * *'" in text


def test_cron_check_agrees_with_prefect():
    """What the settings accept is what Prefect's Cron schedule accepts (its validator)."""
    from prefect._internal.schemas.validators import validate_cron_string

    for expr in [
        "0 2 * * *",
        "0 5-2 * * *",
        "0 2 ? * *",
        "0 2 * JAN *",
        "@weekly",
        "@annually",
        "0 2 * * 7",
        "0 2 * *",
        "0 2 * * * * * *",
        "-1 * * * *",
        "R * * * *",
        "H * * * *",
        "0 2 15W * *",
        "0 2 W * *",
        "@reboot",
        "",
    ]:
        try:
            validate_cron_string(expr)
            prefect_ok = True
        except ValueError:
            prefect_ok = False
        try:
            check_cron(expr)
            ours_ok = True
        except ValueError:
            ours_ok = False
        assert ours_ok == prefect_ok, expr
