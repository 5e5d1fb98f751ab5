"""Tests of the cohort summary (mosmoskit.data.summary) and the summarize command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import nibabel as nib
import numpy as np
import pytest

from mosmoskit import cli
from mosmoskit.data.phantom import generate_cohort
from mosmoskit.data.summary import (
    TAG_NAMES,
    CaseStats,
    _mask_agreement,
    _tag_agreement,
    format_summary,
    summarize_cohort,
    write_summary,
)
from mosmoskit.labels import load_label_map

BTCV = load_label_map("btcv")
ORGANS = BTCV.foreground_names
TINY_3D = dict(shape=(48, 48, 32), spacing=(8.0, 8.0, 10.0))
VOXEL_ML = 8.0 * 8.0 * 10.0 / 1000.0
N_CASES = 3


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return generate_cohort(tmp_path_factory.mktemp("cohort") / "c", n=N_CASES, seed=0, progress=False, **TINY_3D)


@pytest.fixture(scope="module")
def summary(cohort):
    return summarize_cohort(cohort, progress=False)


@pytest.fixture(scope="module")
def rows(cohort) -> list[dict]:
    return [json.loads(line) for line in (cohort / "reports.jsonl").read_text().splitlines()]


@pytest.fixture()
def commands():
    """The CLI must list this module's commands (a command module not in cli.COMMANDS is unreachable)."""
    assert {"summarize", "demo"} <= set(cli.COMMANDS)


def _copy(cohort: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(cohort, tmp_path / "copy"))


def _write_value(path: Path, value: int) -> None:
    img = nib.load(path)
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = value
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)


# ------------------------------------------------------------------------------------ counts
def test_counts_equal_the_generator_findings(summary, rows):
    assert summary.n_cases == N_CASES and summary.spatial_dims == 3 and summary.kind == "msd+reports"
    assert summary.audit.ok and summary.audit.n_checked == N_CASES
    assert summary.size_unit == "ml" and summary.intensity_unit == "HU"
    for organ in ORGANS:
        expected = sum(r["findings"][organ]["present"] for r in rows)
        assert summary.organs[organ].n_present == expected, organ
    for case, row in zip(summary.cases, rows):
        assert case.case_id == row["case_id"]
        assert set(case.organ_voxels) == {o for o in ORGANS if row["findings"][o]["present"]}
        assert case.shape == TINY_3D["shape"] and case.spacing == TINY_3D["spacing"]
        assert case.axcodes == ("R", "A", "S")


def test_sizes_and_intensities_match_a_naive_count(cohort, summary, rows):
    images = [np.asanyarray(nib.load(cohort / r["image"]).dataobj).astype(np.float64) for r in rows]
    labels = [np.asanyarray(nib.load(cohort / r["label"]).dataobj) for r in rows]
    for organ in ORGANS:
        lid = BTCV.id_of(organ)
        sizes = [(lab == lid).sum() * VOXEL_ML for lab in labels if (lab == lid).any()]
        stats = summary.organs[organ]
        if not sizes:
            assert stats.median_size is None and stats.mean_intensity is None
            continue
        assert stats.median_size > 0
        assert stats.median_size == pytest.approx(float(np.median(sizes)))
        assert (stats.min_size, stats.max_size) == pytest.approx((min(sizes), max(sizes)))
        inside = np.concatenate([img[lab == lid] for img, lab in zip(images, labels)])
        assert stats.mean_intensity == pytest.approx(inside.mean(), rel=1e-6)
    for case, img in zip(summary.cases, images):
        assert (case.intensity_min, case.intensity_max) == (img.min(), img.max())
        assert case.intensity_mean == pytest.approx(img.mean())
    liver = summary.organs["liver"]  # a plausible liver, not just a positive number
    assert 800 < liver.median_size < 3500 and 60 < liver.mean_intensity < 140


# ------------------------------------------------------------------------------------ reports
def test_parser_agreement_with_generator_tags(summary, rows):
    from mosmoskit.reports import extract_tags

    gen = summary.reports.generator
    assert summary.reports.n_reports == N_CASES
    assert gen is not None and 0.0 <= gen.accuracy <= 1.0
    assert gen.n_pairs == N_CASES * len(ORGANS)
    assert sum(sum(row.values()) for row in gen.confusion.values()) == gen.n_pairs
    assert gen.accuracy == pytest.approx(gen.n_correct / gen.n_pairs)
    # the confusion table, recomputed here from the parser and the rows
    expected = {t: {p: 0 for p in TAG_NAMES.values()} for t in TAG_NAMES.values()}
    for row in rows:
        parsed = extract_tags(row["report"], BTCV)
        for organ in ORGANS:
            expected[TAG_NAMES[row["tags"][organ]]][TAG_NAMES[parsed.get(organ, -1)]] += 1
    assert {k: dict(v) for k, v in gen.confusion.items()} == expected
    for t in TAG_NAMES.values():
        assert gen.count_by_true[t] == sum(expected[t].values())
    counts = summary.reports.extracted_counts
    for organ in ORGANS:
        assert sum(counts[organ].values()) == N_CASES
    mask = summary.reports.mask
    assert mask.n_tagged_present == sum(c["present"] for c in counts.values())
    assert mask.n_tagged_absent == sum(c["absent"] for c in counts.values())
    assert 0 <= mask.n_present_in_mask <= mask.n_tagged_present


def test_tag_agreement_by_hand():
    pairs = [("a", "liver", 1, 1), ("a", "spleen", 0, 0), ("b", "liver", 1, -1), ("b", "spleen", -1, -1),
             ("c", "liver", 0, 1)]
    agreement = _tag_agreement(pairs, ["liver", "spleen"], max_examples=1)
    assert (agreement.n_pairs, agreement.n_correct, agreement.accuracy) == (5, 3, 0.6)
    assert agreement.confusion["present"] == {"present": 1, "absent": 0, "unmentioned": 1}
    assert agreement.confusion["absent"] == {"present": 1, "absent": 1, "unmentioned": 0}
    assert agreement.accuracy_by_true == {"present": 0.5, "absent": 0.5, "unmentioned": 1.0}
    assert agreement.accuracy_by_organ == pytest.approx({"liver": 1 / 3, "spleen": 1.0})
    assert agreement.examples == ({"case_id": "b", "organ": "liver", "true": "present", "predicted": "unmentioned"},)


def test_mask_agreement_by_hand():
    a = CaseStats("a", "a.nii.gz", "la.nii.gz", organ_voxels={"liver": 10})
    b = CaseStats("b", "b.nii.gz", "lb.nii.gz", organ_voxels={"spleen": 4})
    rows = [(a, {"liver": 1, "spleen": 0}), (b, {"liver": 1, "spleen": 0})]
    m = _mask_agreement(rows, ["liver", "spleen"], max_examples=5)
    assert (m.n_tagged_present, m.n_present_in_mask, m.n_tagged_absent, m.n_absent_in_mask) == (2, 1, 2, 1)
    assert m.present_agreement == 0.5 and m.absent_agreement == 0.5
    assert m.per_organ["liver"] == {"present": (1, 2), "absent": (0, 0)}
    assert {(e["case_id"], e["organ"]) for e in m.examples} == {("b", "liver"), ("b", "spleen")}


def test_malformed_generator_tags_raise(cohort, tmp_path):
    folder = _copy(cohort, tmp_path)
    lines = (folder / "reports.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    row["tags"]["liver"] = 2
    lines[1] = json.dumps(row)
    (folder / "reports.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"phantom_0001.*liver.*got 2"):
        summarize_cohort(folder, progress=False)


# ------------------------------------------------------------------------------------ audit
def test_corrupted_labels_are_all_listed(cohort, tmp_path):
    folder = _copy(cohort, tmp_path)
    _write_value(folder / "labelsTr" / "phantom_0000.nii.gz", 99)
    _write_value(folder / "labelsTr" / "phantom_0002.nii.gz", 42)
    with pytest.raises(ValueError, match=r"2 of 3 case\(s\)") as err:
        summarize_cohort(folder, progress=False)
    message = str(err.value)
    assert "phantom_0000" in message and "99" in message and "phantom_0002" in message and "42" in message
    assert "phantom_0001" not in message

    lenient = summarize_cohort(folder, progress=False, strict=False)
    assert set(lenient.audit.failures) == {"phantom_0000", "phantom_0002"}
    assert 99 in lenient.cases[0].values_found and 42 in lenient.cases[2].values_found
    assert all(o.n_cases == 1 for o in lenient.organs.values())
    assert lenient.reports.mask is not None  # the case that passed still counts
    assert "FAILED for 2 of 3" in format_summary(lenient)


def test_label_on_another_grid_fails_the_audit(cohort, tmp_path):
    folder = _copy(cohort, tmp_path)
    path = folder / "labelsTr" / "phantom_0001.nii.gz"
    img = nib.load(path)
    shifted = img.affine.copy()
    shifted[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), shifted, img.header), path)
    with pytest.raises(ValueError, match=r"phantom_0001: label: .*does not line up"):
        summarize_cohort(folder, progress=False)


def test_empty_or_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset.json"):
        summarize_cohort(tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="no such data folder"):
        summarize_cohort(tmp_path / "nope", progress=False)


def test_missing_listed_file_raises(cohort, tmp_path):
    folder = _copy(cohort, tmp_path)
    (folder / "imagesTr" / "phantom_0001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="phantom_0001"):
        summarize_cohort(folder, progress=False)


def test_without_reports(cohort, tmp_path):
    folder = _copy(cohort, tmp_path)
    (folder / "reports.jsonl").unlink()
    s = summarize_cohort(folder, progress=False, label_map="btcv")
    assert s.kind == "msd" and s.reports is None
    assert "## Reports" not in format_summary(s)


# ------------------------------------------------------------------------------------ writing
def test_write_summary(summary, tmp_path):
    written = write_summary(summary, tmp_path / "out", figure_cases=2)
    assert set(written) == {"json", "markdown", "figure"}
    data = json.loads(written["json"].read_text())
    assert data == json.loads(json.dumps(summary.to_dict()))
    assert data["reports"]["generator"]["n_pairs"] == N_CASES * len(ORGANS)
    text = written["markdown"].read_text()
    for heading in ("## Images", "## Label audit", "## Organs", "## Reports", "Parser vs ground-truth tags"):
        assert heading in text
    assert written["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="figure_cases"):
        write_summary(summary, tmp_path / "bad", figure_cases=-1)


# ------------------------------------------------------------------------------------ commands
def test_summarize_command(cohort, tmp_path, capsys, commands):
    assert cli.main(["summarize", str(cohort), "--no-progress", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "## Label audit" in out and "phantom_0002" in out
    assert (tmp_path / "s" / "summary.md").is_file()


def test_summarize_command_errors_are_one_line(tmp_path, capsys, commands):
    assert cli.main(["summarize", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no dataset.json" in err and "Traceback" not in err


def test_summarize_command_lenient_exit_code(cohort, tmp_path, capsys, commands):
    folder = _copy(cohort, tmp_path)
    _write_value(folder / "labelsTr" / "phantom_0001.nii.gz", 99)
    assert cli.main(["summarize", str(folder), "--no-progress"]) == 2
    assert "99" in capsys.readouterr().err
    assert cli.main(["summarize", str(folder), "--no-progress", "--lenient"]) == 1
    assert "FAILED" in capsys.readouterr().out


def _real_folder(tmp_path: Path, totalseg: Path, stem: str, map_name: str, modality: str) -> Path:
    """An MSD folder around one real scan (files copied: paths must stay inside the data root)."""
    folder = tmp_path / stem
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    shutil.copy(totalseg / f"{stem}.nii.gz", folder / "imagesTr" / "case.nii.gz")
    shutil.copy(totalseg / f"{stem}_labels.nii.gz", folder / "labelsTr" / "case.nii.gz")
    lm = load_label_map(map_name)
    (folder / "dataset.json").write_text(json.dumps({
        "name": stem, "modality": {"0": modality}, "label_map": map_name,
        "labels": {str(v): k for k, v in lm.labels.items()},
        "training": [{"image": "./imagesTr/case.nii.gz", "label": "./labelsTr/case.nii.gz"}],
    }))
    return folder


@pytest.mark.shared_data
def test_real_ct_and_mr(totalseg, tmp_path):
    ct = summarize_cohort(_real_folder(tmp_path, totalseg, "ct_abdomen_3mm", "totalseg_ct", "CT"), progress=False)
    case = ct.cases[0]
    assert ct.audit.ok and ct.reports is None and ct.intensity_unit == "HU"
    assert case.shape == (122, 101, 112) and case.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert len(case.organ_voxels) == 61  # SOURCE.md: 61 structures present
    assert ct.organs["liver"].n_present == 1 and ct.organs["esophagus"].n_present == 0
    assert 800 < ct.organs["liver"].median_size < 2500  # an adult liver, in ml
    assert -50 < ct.organs["liver"].mean_intensity < 150 and ct.organs["lung_lower_lobe_left"].mean_intensity < -500
    mr = summarize_cohort(_real_folder(tmp_path, totalseg, "mr_abdomen_3mm", "totalseg_mr", "MR"), progress=False)
    assert mr.audit.ok and mr.intensity_unit == "a.u."
    assert mr.cases[0].axcodes == ("L", "P", "S") and mr.cases[0].shape == (117, 91, 20)
    written = write_summary(mr, tmp_path / "mr_summary", figure_cases=1)
    assert "figure" in written and "## Reports" not in written["markdown"].read_text()
