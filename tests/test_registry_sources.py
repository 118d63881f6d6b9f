"""Pseudonyms, source discovery and its errors (no images needed)."""

import os
import stat
from datetime import date

import pytest

from mtlgen.ids import check_token
from mtlgen.io.source_types import parse_date
from mtlgen.io.sources import SourceError, discover
from mtlgen.registry.pseudonym import KEY_ENV, load_key, pseudonymise


def test_pseudonym_is_keyed_stable_and_a_plain_token(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    key_file = tmp_path / "keys" / "pseudonym.key"
    key = load_key(key_file)
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert load_key(key_file) == key, "the key file is created once and then reused"
    p = pseudonymise("001", key)
    assert check_token(p, "pseudonym") == p and "001" not in p[1:4]
    assert pseudonymise("001", key) == p != pseudonymise("002", key)
    monkeypatch.setenv(KEY_ENV, "another-secret-of-enough-length")
    assert pseudonymise("001", load_key(key_file)) != p
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ValueError, match="at least 16"):
        load_key(key_file)


def test_parse_date_accepts_iso_and_dicom_and_names_the_problem():
    assert parse_date("2018-05-22T14:47:00") == date(2018, 5, 22)
    assert parse_date("20040826") == date(2004, 8, 26)
    with pytest.raises(ValueError, match="missing visit date"):
        parse_date("n/a")
    with pytest.raises(ValueError, match="unparsable visit date '22/05/2018'"):
        parse_date("22/05/2018")


def test_discover_rejects_unknown_sources_with_the_path(tmp_path):
    with pytest.raises(SourceError, match="no such file or folder"):
        discover(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="not a BIDS folder"):
        discover(tmp_path / "empty")
    manifest = tmp_path / "m.csv"
    manifest.write_text("patient,image\n001,a.nii.gz\n")
    with pytest.raises(SourceError, match=r"m\.csv: missing column\(s\) modality"):
        discover(manifest)


def test_manifest_groups_rows_into_visits_with_their_lines(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "patient,days,modality,image,label\n"
        "001,0,T1w,a.nii.gz,l.nii.gz\n"
        "001,0,FLAIR,b.nii.gz,l.nii.gz\n"
        "001,0,T1w,c.nii.gz,\n"
        "001,120.5,T1w,d.nii.gz,\n"
        "001,abc,T1w,e.nii.gz,\n"
    )
    (patient,) = discover(manifest)
    visits = {v.visit_id: v for v in patient.visits}
    assert set(visits) == {"day0", "day120_5", "dayabc"}
    first = visits["day0"]
    assert [s.modality for s in first.scans] == ["T1w", "FLAIR", "T1w"]
    assert [s.line for s in first.scans] == [2, 3, 4]  # registration keeps one T1w of two
    assert all(s.problem is None for s in first.scans) and patient.root == tmp_path
    assert first.label.files == ((tmp_path / "l.nii.gz").resolve(),)
    assert visits["day120_5"].days == 120.5
    assert "unparsable days 'abc'" in visits["dayabc"].problem


def test_bids_discovery_reads_dates_labels_and_contrasts(motion_cohort):
    patients = discover(motion_cohort)
    assert [p.patient_id for p in patients] == ["001", "002", "003"]
    first = patients[0].visits[0]
    assert first.visit_id == "01" and first.date is not None and first.problem is None
    assert {s.modality for s in first.scans} == {"T1w", "FLAIR"}
    assert first.label is not None and first.label.path.name.endswith("_dseg.nii.gz")


def test_register_command_reports_a_bad_source_with_exit_2(tmp_path):
    from typer.testing import CliRunner

    from mtlgen.cli import app

    settings = tmp_path / "params.yaml"  # the default processed folder and key: the cwd's
    settings.write_text(f"registry:\n  url: sqlite:///{tmp_path / 'r.sqlite'}\n")
    run = CliRunner().invoke(app, ["-p", str(settings), "register", str(tmp_path / "nowhere")])
    assert run.exit_code == 2 and "no such file or folder" in run.output
    assert not (tmp_path / "r.sqlite").exists()  # a bad source touches nothing
