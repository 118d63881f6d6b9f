"""The report pages in a real headless browser (Debian's chromium, installed when missing)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtlgen.report.build import build_reports

pytestmark = pytest.mark.integration

BAND_COLOURS = ((244, 199, 195), (201, 231, 207))  # the plot's progressive / responding bands


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of chromium; installed with apt-get (as root) when missing."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=False, capture_output=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "chromium"], check=False, capture_output=True, env=env
        )
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is missing and could not be installed (apt-get install chromium)")
    return found


def _browser(chromium: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def _screenshot(chromium: str, page: Path, png: Path) -> np.ndarray:
    _browser(chromium, f"--screenshot={png}", "--window-size=1200,1600", page.as_uri())
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def _band_pixels(shot: np.ndarray) -> int:
    return sum(int((np.abs(shot - c).sum(-1) <= 6).sum()) for c in BAND_COLOURS)


@pytest.fixture(scope="module")
def pages(report_cohort, tmp_path_factory) -> Path:
    params, _ = report_cohort
    out = tmp_path_factory.mktemp("browser-reports")
    build_reports(params, out)
    return out


def test_patient_page_renders_with_its_plot(chromium, pages, tmp_path):
    page = sorted(pages.glob("patients/*/index.html"))[0]
    shot = _screenshot(chromium, page, tmp_path / "patient.png")
    assert shot.shape[:2] == (1600, 1200) and shot.std() > 20  # not blank
    assert _band_pixels(shot) > 5000  # the trajectory plot's status bands are on screen
    # the same page without its plot file shows no bands: the check sees the plot itself
    bare = tmp_path / "bare"
    shutil.copytree(page.parent, bare)
    (bare / "trajectory.png").unlink()
    assert _band_pixels(_screenshot(chromium, bare / "index.html", tmp_path / "bare.png")) < 500


def test_index_renders_the_table_with_javascript(chromium, pages, tmp_path):
    shot = _screenshot(chromium, pages / "index.html", tmp_path / "index.png")
    assert shot.std() > 10
    dom = _browser(chromium, "--dump-dom", (pages / "index.html").as_uri()).stdout
    links = re.findall(r'<a href="(patients/p[0-9a-f]{16}/index.html)">', dom)
    assert len(links) == len(list(pages.glob("patients/*/index.html")))
    assert all((pages / link).is_file() for link in links)
    assert "4 patients, page 1 of 1" in dom
