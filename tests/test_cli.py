"""The command line: synth writes a cohort and its preview; help explains."""

import json

from typer.testing import CliRunner

from mtlgen.cli import app


def test_help_lists_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "synth" in result.output and "-S" in result.output


def test_synth_with_preview(tmp_path):
    out = tmp_path / "bids"
    result = CliRunner().invoke(
        app,
        [
            "-S",
            "synth.workers=1",
            "-S",
            "synth.spacing_mm=4",
            "synth",
            "--out",
            str(out),
            "--patients",
            "1",
            "--seed",
            "3",
            "--preview",
        ],
    )
    assert result.exit_code == 0, result.output
    png = out / "preview.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    truth = json.loads((out / "derivatives/groundtruth/groundtruth.json").read_text())
    assert truth["seed"] == 3 and list(truth["patients"]) == ["sub-001"]
