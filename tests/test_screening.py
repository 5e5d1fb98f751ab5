"""Screening a cohort for broken cases: stop at the first one, or skip and list every one.

A phantom cohort gets three broken cases: a truncated image, a label with a value outside the
label map, and a label on another grid than its image. ``screen_cases`` must raise at the first
with ``skip_bad=False``, and with ``skip_bad=True`` keep all the others and list exactly those
three with their files and reasons; a fine-tuning run with ``skip_bad_cases=True`` must finish on
such a cohort and write ``skipped_cases.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mosmoskit.config import config_to_dict
from mosmoskit.data.datalists import load_dataset
from mosmoskit.data.phantom import generate_cohort
from mosmoskit.data.readers import ImageReadError
from mosmoskit.data.screening import ScreenResult, SkippedCase, screen_cases, screen_summary
from mosmoskit.finetuning import FinetuneConfig, prepare_finetuning_data, run_finetuning
from mosmoskit.labels import load_label_map

BTCV = load_label_map("btcv")


def damage(root: Path, truncated: str, bad_value: str, misaligned: str) -> dict[str, Path]:
    """Break three cases of a phantom cohort in place; returns the file each one breaks."""
    image = root / "imagesTr" / f"{truncated}.nii.gz"
    raw = image.read_bytes()
    image.write_bytes(raw[: len(raw) // 2])  # an interrupted copy

    label = root / "labelsTr" / f"{bad_value}.nii.gz"
    img = nib.load(str(label))
    data = np.asarray(img.dataobj).copy()
    data.flat[0] = 99  # one voxel outside the 14 BTCV ids
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(label))

    shifted = root / "labelsTr" / f"{misaligned}.nii.gz"
    img = nib.load(str(shifted))
    affine = img.affine.copy()
    affine[:3, 3] += 5.0  # exported on another grid: 5 mm off along every axis
    out = nib.Nifti1Image(np.asarray(img.dataobj), affine, img.header)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    nib.save(out, str(shifted))
    return {truncated: image, bad_value: label, misaligned: shifted}


@pytest.fixture(scope="module")
def broken_3d(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """5 phantom volumes; cases 1 (truncated image), 2 (label value 99) and 4 (label 5 mm off) broken."""
    root = generate_cohort(tmp_path_factory.mktemp("broken3d") / "data", n=5, seed=3, shape=(32, 32, 32),
                           spacing=(10.0, 10.0, 10.0), progress=False)
    return root, damage(root, "phantom_0001", "phantom_0002", "phantom_0004")


def cases_of(root: Path) -> list[dict]:
    return load_dataset(root, label_map=BTCV).cases


# ------------------------------------------------------------------------------- screen_cases
def test_skip_bad_false_raises_at_the_first_bad_case_naming_its_file(broken_3d):
    root, broken = broken_3d
    with pytest.raises(ImageReadError) as info:
        screen_cases(cases_of(root), BTCV, skip_bad=False)
    message = str(info.value)
    assert str(broken["phantom_0001"]) in message and "truncated" in message
    assert "phantom_0002" not in message and "phantom_0004" not in message  # it stopped at the first


def test_skip_bad_true_keeps_the_rest_and_lists_exactly_the_bad_cases(broken_3d, tmp_path):
    root, broken = broken_3d
    cases = cases_of(root)
    result = screen_cases(cases, "btcv", skip_bad=True)

    assert result.good_ids == ["phantom_0000", "phantom_0003"]
    assert result.good == [cases[0], cases[3]]  # the input dicts themselves, in order
    assert result.skipped_ids == ["phantom_0001", "phantom_0002", "phantom_0004"]
    by_id = {s.case_id: s for s in result.skipped}
    for case_id, path in broken.items():
        assert by_id[case_id].path == str(path), "the file that failed, image or label"
    assert by_id["phantom_0001"].error == "ImageReadError" and "truncated" in by_id["phantom_0001"].reason
    assert "[99]" in by_id["phantom_0002"].reason and "not in label map 'btcv'" in by_id["phantom_0002"].reason
    assert "does not line up" in by_id["phantom_0004"].reason and "origin" in by_id["phantom_0004"].reason

    table = result.report(root)
    lines = table.splitlines()
    assert lines[0] == "screened 5 cases: 2 kept, 3 skipped"
    assert lines[1].split() == ["case", "file", "reason"]
    assert [line.split()[0] for line in lines[2:]] == result.skipped_ids  # one line per skipped case
    assert "labelsTr/phantom_0002.nii.gz" in lines[3] and str(root) not in table  # paths shortened
    assert "<- differs" in lines[4]  # multi-line reasons kept, on one line

    written = result.write_report(tmp_path / "skipped_cases.json")
    saved = json.loads(written.read_text())
    assert saved["cases"] == 5 and saved["kept"] == 2 and saved["skipped"] == 3
    assert [s["case_id"] for s in saved["skipped_cases"]] == result.skipped_ids
    assert saved["skipped_cases"][1]["reason"] == by_id["phantom_0002"].reason  # the full message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["skipped_cases.json"]  # no temporary file left


def test_check_labels_false_reads_images_only(broken_3d):
    root, _ = broken_3d
    cases = cases_of(root)
    cases[3] = {**cases[3], "label": str(root / "labelsTr" / "missing.nii.gz")}
    result = screen_cases(cases, BTCV, skip_bad=True, check_labels=False)
    # the bad value and the shifted grid go unnoticed; the truncated image and the missing label do not
    assert result.good_ids == ["phantom_0000", "phantom_0002", "phantom_0004"]
    assert [(s.case_id, s.error) for s in result.skipped] == [("phantom_0001", "ImageReadError"),
                                                             ("phantom_0003", "FileNotFoundError")]
    assert not result.checked_labels


def test_good_cohort_passes_and_errors_other_than_data_errors_propagate(tmp_path, monkeypatch):
    root = generate_cohort(tmp_path / "data", n=2, seed=3, shape=(32, 32, 32), spacing=(10.0, 10.0, 10.0),
                           progress=False)
    result = screen_cases(cases_of(root), BTCV, skip_bad=False)
    assert result.good_ids == ["phantom_0000", "phantom_0001"] and not result.skipped
    assert result.report() == "screened 2 cases: 2 kept, 0 skipped"
    assert screen_summary(result) == {"screened": True, "cases": 2, "kept": 2, "skipped": 0, "skipped_case_ids": []}
    assert screen_summary(None) == {"screened": False}

    with pytest.raises(ValueError, match="case id 'phantom_0000' appears twice"):
        screen_cases(cases_of(root) * 2, BTCV, skip_bad=True)

    def out_of_memory(*args, **kwargs):
        raise MemoryError("no memory")

    # a MemoryError is not a property of a case: it must not be listed as a skipped case
    monkeypatch.setattr("mosmoskit.data.readers.load_image", out_of_memory)
    with pytest.raises(MemoryError):
        screen_cases(cases_of(root), BTCV, skip_bad=True)


def test_result_to_dict_round_trips_the_skipped_cases():
    skipped = SkippedCase("b", "/d/b.nii.gz", "/d/b.nii.gz: bad\n  x", "ValueError")
    result = ScreenResult(good=[{"case_id": "a"}], skipped=[skipped])
    assert result.to_dict()["skipped_cases"] == [{"case_id": "b", "path": "/d/b.nii.gz",
                                                  "reason": "/d/b.nii.gz: bad\n  x", "error": "ValueError"}]
    assert result.report("/d").splitlines()[2].split() == ["b", "b.nii.gz", "bad;", "x"]


# ------------------------------------------------------------------------------ fine-tuning
@pytest.fixture(scope="module")
def broken_2d(tmp_path_factory) -> Path:
    """6 phantom patients x 2 slices; three slices of three patients broken."""
    root = generate_cohort(tmp_path_factory.mktemp("broken2d") / "data", n=6, seed=3, shape=(32, 32),
                           spacing=(12.0, 12.0), spatial_dims=2, slices_per_case=2, progress=False)
    damage(root, "phantom_0001_s01", "phantom_0003_s00", "phantom_0005_s01")
    return root


def tiny_config(root: Path, dataset: Path, **overrides) -> FinetuneConfig:
    common = dict(dataset=str(dataset), spatial_dims=2, roi_size=(32, 32), encoder_width=8, test_fraction=0.25,
                  max_steps=2, val_every=0, checkpoint_every=2, batch_size=1, crops_per_case=1, val_max_cases=1,
                  warmup_steps=0, device="cpu", sw_batch_size=2, save_predictions=False, output_dir=str(root))
    common.update(overrides)
    return FinetuneConfig(**common)


def test_preparation_screens_only_when_asked(broken_2d, tmp_path):
    plain = prepare_finetuning_data(tiny_config(tmp_path / "plain", broken_2d), progress=False)
    assert plain.screening is None and len(plain.cases) == 12  # no reading of every case unless asked

    screened = prepare_finetuning_data(tiny_config(tmp_path / "screened", broken_2d, skip_bad_cases=True),
                                       progress=False)
    bad = {"phantom_0001_s01", "phantom_0003_s00", "phantom_0005_s01"}
    assert set(screened.screening.skipped_ids) == bad
    assert len(screened.cases) == 9 and not bad & set(screened.cases)
    split = screened.split
    assert not bad & set(split.train_pool + split.val + split.test)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_finetuning_with_skip_bad_cases_finishes_and_writes_the_report(broken_2d, tmp_path, one_thread, caplog):
    config = tiny_config(tmp_path / "run", broken_2d, skip_bad_cases=True)
    with caplog.at_level("WARNING", logger="mosmoskit.finetuning.run"):
        result = run_finetuning(config, progress=False)

    report = json.loads((result.output_dir / "skipped_cases.json").read_text())
    assert report["skipped"] == 3 and report["kept"] == 9
    assert {s["case_id"] for s in report["skipped_cases"]} == {"phantom_0001_s01", "phantom_0003_s00",
                                                               "phantom_0005_s01"}
    metrics = json.loads((result.output_dir / "metrics.json").read_text())
    assert metrics["data"] == {"screened": True, "cases": 12, "kept": 9, "skipped": 3, "report": "skipped_cases.json",
                               "skipped_case_ids": [s["case_id"] for s in report["skipped_cases"]]}
    assert result.data == metrics["data"]
    assert any("skipped 3 of 12 labelled cases" in r.getMessage() for r in caplog.records)

    # overwrite=True without screening: the old report goes with the old run
    clean = generate_cohort(tmp_path / "clean", n=4, seed=3, shape=(32, 32), spacing=(12.0, 12.0), spatial_dims=2,
                            slices_per_case=1, progress=False)
    again = run_finetuning(FinetuneConfig(**{**config_to_dict(config), "overwrite": True, "skip_bad_cases": False,
                                             "dataset": str(clean)}), progress=False)
    assert not (again.output_dir / "skipped_cases.json").exists()
    assert json.loads((again.output_dir / "metrics.json").read_text())["data"] == {"screened": False}


def test_every_case_broken_is_a_clear_error(tmp_path):
    root = generate_cohort(tmp_path / "data", n=1, seed=3, shape=(32, 32), spacing=(12.0, 12.0), spatial_dims=2,
                           slices_per_case=1, progress=False)
    (root / "labelsTr" / "phantom_0000_s00.nii.gz").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"every one of the 1 labelled cases is broken(.|\n)*phantom_0000_s00"):
        prepare_finetuning_data(tiny_config(tmp_path / "run", root, skip_bad_cases=True), progress=False)
