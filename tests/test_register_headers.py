"""Real headers: nibabel's LAS big-endian ``anatomical.nii``, pydicom's single-slice
``MR_small.dcm``, and an oblique multi-slice DICOM series written here with pydicom and
converted by dcm2niix."""

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.processing import resample_from_to
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy.spatial.transform import Rotation
from sqlalchemy import select

from mtlgen.io.validate import Volume, read_volume
from mtlgen.preprocess.grid import Grid
from mtlgen.preprocess.resample import resample_to_grid
from mtlgen.register.run import register_source
from mtlgen.registry.db import session_scope
from mtlgen.registry.models import Rejection, Result, Scan

ANATOMICAL = Path(nib.__file__).parent / "tests/data/anatomical.nii"
LPS = np.diag([-1.0, -1.0, 1.0])


def test_anatomical_nii_registers_with_its_orientation_and_spacing(tmp_path, register_params):
    params = register_params(tmp_path)
    manifest = tmp_path / "m.csv"
    image = shutil.copy(ANATOMICAL, tmp_path)  # under the manifest's folder (file policy)
    manifest.write_text(f"patient,date,modality,image\nnib01,2020-03-04,T1w,{image}\n")
    result = register_source(manifest, params, progress=False)
    assert (result.registered, result.needs_review, result.rejected) == (1, 0, [])
    with session_scope(params.registry.url) as s:
        scan, res = s.execute(select(Scan, Result).join(Result, Result.scan_id == Scan.id)).one()
    assert scan.orientation == "LAS"
    assert json.loads(scan.spacing) == [2.0, 2.0, 2.0]
    assert json.loads(scan.shape) == [33, 41, 25]
    out = nib.load(res.processed_path)
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S") and out.shape == (56, 64, 56)
    # orientation is handled in world space: nibabel's own resampling of the source onto the
    # processed grid (an independent implementation) matches the processed image
    expected = resample_from_to(nib.load(ANATOMICAL), (out.shape, out.affine), order=1)
    inside = expected.get_fdata() != 0
    corr = np.corrcoef(out.get_fdata()[inside], expected.get_fdata()[inside])[0, 1]
    print(f"anatomical.nii: correlation with nibabel resampling {corr:.5f}")
    assert inside.sum() > 5_000 and corr > 0.999


def _oblique_affine(shape, spacing) -> np.ndarray:
    affine = np.eye(4)
    rot = Rotation.from_euler("xz", [15, 10], degrees=True).as_matrix()
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def _write_series(volume: np.ndarray, affine: np.ndarray, folder: Path, patient: str) -> None:
    """One MR Image Storage file per slice k; pixel (row r, column c) is volume[c, r, k]."""
    folder.mkdir(parents=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    cos_col, cos_row = (LPS @ affine[:3, 0]) / spacing[0], (LPS @ affine[:3, 1]) / spacing[1]
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName, ds.StudyDate = patient, "Synthetic^Oblique", "20200101"
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber = "MR", "T1w", 1
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [float(v) for v in (*cos_col, *cos_row)]
        ds.ImagePositionPatient = [float(v) for v in LPS @ (affine @ [0, 0, k, 1])[:3]]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = ds.SpacingBetweenSlices = float(spacing[2])
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T.astype("<i2")).tobytes()
        ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def dicom_source(tmp_path_factory, motion_cohort):
    """A DICOM folder: an oblique synthetic series (patient SYN1) and MR_small.dcm (2-D)."""
    root = tmp_path_factory.mktemp("dicom")
    t1 = read_volume((motion_cohort / "sub-001/ses-01/anat/sub-001_ses-01_T1w.nii.gz",))
    shape, spacing = (44, 52, 36), (4.0, 4.0, 4.5)
    affine = _oblique_affine(shape, spacing)
    centre = t1.affine[:3, :3] @ ((np.asarray(t1.data.shape) - 1) / 2) + t1.affine[:3, 3]
    affine[:3, 3] += centre
    volume, _ = resample_to_grid(t1, Grid(shape, affine), np.eye(4), order=1)
    volume = np.rint(volume).astype(np.int16)
    _write_series(volume, affine, root / "source/syn1/series1", "SYN1")
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "source/MR_small.dcm")
    return root / "source", Volume(volume.astype(np.float32), affine)


def test_oblique_dicom_series_converts_with_its_geometry(dicom_source):
    source, truth = dicom_source
    files = tuple(sorted((source / "syn1/series1").glob("*.dcm")))
    converted = read_volume(files)
    to_converted = np.linalg.inv(converted.affine) @ truth.affine
    ijk = np.indices(truth.data.shape).reshape(3, -1)
    mapped = to_converted[:3, :3] @ ijk + to_converted[:3, 3:4]
    offset = np.abs(mapped - np.rint(mapped))
    print(f"dcm2niix geometry: max offset {offset.max():.4f} voxels")
    assert offset.max() < 0.5
    idx = tuple(np.rint(mapped).astype(int))
    assert np.array_equal(converted.data[idx], truth.data.reshape(-1))
    assert sorted(converted.spacing) == pytest.approx(sorted((4.0, 4.0, 4.5)), abs=1e-3)


def test_dicom_folder_registers_series_and_rejects_single_slice(
    dicom_source, tmp_path, register_params
):
    source, _ = dicom_source
    params = register_params(tmp_path)
    result = register_source(source, params, progress=False)
    assert (result.registered, result.needs_review) == (1, 0)
    ((rejected),) = result.rejected
    assert rejected.path.endswith("MR_small.dcm")
    assert rejected.reason.startswith("2-D image (shape 64x64x1)")
    with session_scope(params.registry.url) as s:
        scan = s.scalars(select(Scan)).one()
        reasons = s.scalars(select(Rejection.reason)).all()
    assert scan.modality == "T1w" and scan.source_path.endswith("series1")
    assert sorted(json.loads(scan.spacing)) == pytest.approx([4.0, 4.0, 4.5], abs=1e-3)
    assert len(reasons) == 1 and "expected a 3-D volume" in reasons[0]


def test_manifest_accepts_a_dicom_file(tmp_path, register_params):
    params = register_params(tmp_path)
    manifest = tmp_path / "m.tsv"
    rows = [
        {
            "patient": "mr1",
            "days": "0",
            "modality": "T1w",
            "image": shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path),
        }
    ]
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    result = register_source(manifest, params, progress=False)
    assert result.registered == 0
    assert [r.reason.split(":")[0] for r in result.rejected] == ["2-D image (shape 64x64x1)"]
