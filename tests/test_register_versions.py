"""A file whose content changed is registered as a new version; the old one is kept."""

import json
import shutil

import nibabel as nib
import numpy as np
from sqlalchemy import select

from mtlgen.io.nifti import save_nifti
from mtlgen.register.run import register_source
from mtlgen.registry.db import session_scope
from mtlgen.registry.models import Label, Result, Scan, Visit
from mtlgen.registry.series import load_series


def _copy_patient(cohort, out, participant="sub-001"):
    out.mkdir(parents=True)
    shutil.copy(cohort / "dataset_description.json", out / "dataset_description.json")
    shutil.copytree(cohort / participant, out / participant)
    labels = "derivatives/labels"
    shutil.copytree(cohort / labels / participant, out / labels / participant)
    return out


def _edit(path, change):
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    change(data)
    save_nifti(path, data, img.affine, dtype=img.get_data_dtype())


def _versions(url, model, visit_key, modality=None):
    with session_scope(url) as s:
        query = (
            select(model, Result)
            .join(Visit, Visit.id == model.visit_id)
            .join(Result, getattr(Result, f"{model.__tablename__[:-1]}_id") == model.id)
            .where(Visit.key == visit_key)
            .order_by(model.version)
        )
        if modality:
            query = query.where(Scan.modality == modality)
        return s.execute(query).all()


def test_changed_files_become_new_versions(tmp_path, motion_cohort, register_params):
    src = _copy_patient(motion_cohort, tmp_path / "bids")
    params = register_params(tmp_path / "reg")
    url = params.registry.url
    first = register_source(src, params, progress=False)
    assert first.rejected == [] and first.registered > 4

    t1 = src / "sub-001/ses-02/anat/sub-001_ses-02_T1w.nii.gz"
    _edit(t1, lambda d: d.__setitem__((slice(10, 14),) * 3, 0))
    label = next((src / "derivatives/labels/sub-001/ses-03/anat").glob("*_dseg.nii.gz"))
    _edit(label, lambda d: d.__setitem__(d == 2, 1))
    second = register_source(src, params, progress=False)
    assert (second.registered, second.unchanged) == (2, first.registered - 2)

    (old, old_result), (new, new_result) = _versions(url, Scan, "02", "T1w")
    assert (old.version, old.status, new.version, new.status) == (1, "superseded", 2, "current")
    assert old.sha256 != new.sha256 and old.source_path == new.source_path == str(t1)
    assert old_result.processed_path != new_result.processed_path
    old_img = nib.load(old_result.processed_path).get_fdata()
    new_img = nib.load(new_result.processed_path).get_fdata()
    assert not np.array_equal(old_img, new_img), "the old version's output is kept as it was"

    (old_label, _), (new_label, label_result) = _versions(url, Label, "03")
    assert (old_label.status, new_label.status) == ("superseded", "current")
    t1_03 = _versions(url, Scan, "03", "T1w")[0][1]
    assert json.loads(label_result.to_baseline) == json.loads(t1_03.to_baseline)
    assert set(np.unique(nib.load(label_result.processed_path).get_fdata())) <= {0, 1}

    (patient,) = load_series(url)
    visits = {v.visit: v for v in patient.visits}
    assert str(visits["02"].images["T1w"]) == new_result.processed_path
    assert str(visits["03"].label) == label_result.processed_path

    third = register_source(src, params, progress=False)
    assert (third.registered, third.unchanged) == (0, first.registered)
