"""Tests of the phantom cohort generator, its reports, its CLI and the slice plots."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import nibabel as nib
import numpy as np
import pytest

from mosmoskit.data.phantom import (
    PhantomConfig,
    generate_cohort,
    make_case,
    make_slices,
    sample_anatomy,
    volume_affine,
)
from mosmoskit.data.phantom_reports import OrganFinding, ReportStyle, tags_from_findings, write_report
from mosmoskit.labels import load_label_map

BTCV = load_label_map("btcv")
ORGANS = BTCV.foreground_names
TINY_3D = dict(shape=(48, 48, 32), spacing=(8.0, 8.0, 10.0))
TINY_2D = dict(shape=(64, 64), spacing=(6.0, 6.0))

# Written independently of the generator's template table: what a reader would take as a mention.
TERMS = {
    "liver": r"\bliver\b|\bhepatic\b|hepatomegaly",
    "spleen": r"\bspleen\b|\bsplenic\b(?!\s+veins?)|splenomegaly|splenectomy|asplenia",
    "gallbladder": r"gallbladder|gallstone|cholecyst|cholelithiasis",
    "esophagus": r"esophag",
    "stomach": r"stomach|gastric|gastrectomy",
    "aorta": r"aort",
    "inferior_vena_cava": r"\bivc\b|vena cava",
    "portal_vein_and_splenic_vein": r"portal|splenic veins?\b",
    "pancreas": r"pancrea",
    "kidney_right": r"\bright (kidney|renal|nephrectomy)|\bkidneys\b|on the right",
    "kidney_left": r"\bleft (kidney|renal|nephrectomy)|\bkidneys\b|on the left",
    "adrenal_gland_right": r"\bright adrenal|\badrenals\b|adrenal glands|bilateral adrenalectomy",
    "adrenal_gland_left": r"\bleft adrenal|\badrenals\b|adrenal glands|bilateral adrenalectomy",
}
ABSENCE_CUE = (
    r"not visualized|absent|status post|ectomy\b|not included|at this level|in the field of view|in the scanned range"
    r"|agenesis|asplenia|absence of|interrupt|azygos continuation|not identified|resected|cavernous transformation"
)


def sentences(report: str) -> list[str]:
    return [s.strip().lower() for s in re.split(r"[.\n]", report) if s.strip()]


def check_report_matches_tags(report: str, tags: dict[str, int]) -> None:
    sents = sentences(report)
    for organ, tag in tags.items():
        hits = [s for s in sents if re.search(TERMS[organ], s)]
        if tag == -1:
            assert not hits, f"unmentioned {organ} appears in: {hits}\n{report}"
        elif tag == 0:
            assert any(re.search(ABSENCE_CUE, s) for s in hits), f"absent {organ} not reported absent\n{report}"
        else:
            assert any(not re.search(ABSENCE_CUE, s) for s in hits), f"present {organ} not reported\n{report}"


@pytest.fixture(scope="module")
def cohort3d(tmp_path_factory) -> Path:
    return generate_cohort(tmp_path_factory.mktemp("c3") / "out", n=3, seed=7, progress=False, **TINY_3D)


@pytest.fixture(scope="module")
def cohort2d(tmp_path_factory) -> Path:
    return generate_cohort(tmp_path_factory.mktemp("c2") / "out", n=2, seed=7, spatial_dims=2,
                           slices_per_case=3, progress=False, **TINY_2D)


def read_rows(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "reports.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ cohort on disk
def test_layout_and_dataset_json(cohort3d):
    for name in ("imagesTr", "labelsTr", "dataset.json", "label_map.json", "reports.jsonl"):
        assert (cohort3d / name).exists(), name
    ds = json.loads((cohort3d / "dataset.json").read_text())
    assert ds["tensorImageSize"] == "3D" and ds["modality"] == {"0": "CT"} and ds["numTraining"] == 3
    assert ds["labels"]["0"] == "background" and ds["labels"]["1"] == "spleen" and ds["labels"]["13"] == "adrenal_gland_left"
    assert ds["training"][0] == {"image": "./imagesTr/phantom_0000.nii.gz", "label": "./labelsTr/phantom_0000.nii.gz"}
    assert ds["spatial_dims"] == 3 and ds["label_map"] == "btcv"
    assert ds["generator"]["seed"] == 7 and ds["generator"]["shape"] == [48, 48, 32]
    assert PhantomConfig.from_dict(ds["generator"]["config"]) == PhantomConfig()
    assert load_label_map(cohort3d / "label_map.json").labels == BTCV.labels


def test_same_seed_byte_identical_other_seed_differs(cohort3d, tmp_path):
    again = generate_cohort(tmp_path / "again", n=3, seed=7, progress=False, **TINY_3D)
    files = sorted(p.relative_to(cohort3d) for p in cohort3d.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (cohort3d / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = generate_cohort(tmp_path / "other", n=1, seed=8, progress=False, **TINY_3D)
    assert (other / "imagesTr/phantom_0000.nii.gz").read_bytes() != (cohort3d / "imagesTr/phantom_0000.nii.gz").read_bytes()


def test_nifti_header_affine_and_spacing(cohort3d):
    img = nib.load(cohort3d / "imagesTr/phantom_0001.nii.gz")
    lab = nib.load(cohort3d / "labelsTr/phantom_0001.nii.gz")
    assert img.shape == (48, 48, 32) and img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
    assert np.allclose(img.header.get_zooms(), (8.0, 8.0, 10.0))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert np.allclose(img.affine, lab.affine)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    # the volume is centred: the middle of the voxel grid is the world origin
    centre = img.affine @ np.array([23.5, 23.5, 15.5, 1.0])
    assert np.allclose(centre[:3], 0.0)
    assert np.allclose(volume_affine((4, 2, 2), (2.0, 1.0, 3.0))[:3, 3], [-3.0, -0.5, -1.5])


def test_labels_valid_and_presence_equals_findings(cohort3d):
    for row in read_rows(cohort3d):
        lab = np.asarray(nib.load(cohort3d / row["label"]).dataobj)
        present = BTCV.present(lab, source=row["label"])  # raises on values outside BTCV
        for organ in ORGANS:
            assert present[organ] == row["findings"][organ]["present"], (row["case_id"], organ)
        img = np.asarray(nib.load(cohort3d / row["image"]).dataobj)
        assert -1024 <= img.min() and img.max() <= 3071
        assert img[lab == 0].min() < -900  # air around the body


def test_reports_agree_with_tags_and_findings(cohort3d):
    for row in read_rows(cohort3d):
        findings = {o: OrganFinding.from_dict(f) for o, f in row["findings"].items()}
        assert row["tags"] == tags_from_findings(findings)
        for organ, tag in row["tags"].items():
            f = findings[organ]
            assert tag == (-1 if not f.mentioned else int(f.present))
        check_report_matches_tags(row["report"], row["tags"])


def test_absent_organs_and_lesions_follow_config(tmp_path):
    cfg = PhantomConfig(absent_prob={"spleen": 1.0, "gallbladder": 1.0}, lesion_prob={"liver": 1.0},
                        mention_prob_absent=1.0, mention_prob_abnormal=1.0, enlarged_prob={})
    case = make_case(3, 0, config=cfg, **TINY_3D)
    assert not (case.label == BTCV.id_of("spleen")).any() and not (case.label == BTCV.id_of("gallbladder")).any()
    assert case.tags["spleen"] == 0 and case.tags["gallbladder"] == 0
    assert case.findings["liver"].n_lesions >= 1 and case.tags["liver"] == 1
    assert re.search(r"splenectomy|spleen is not visualized|absent spleen", case.report.lower())
    assert re.search(r"cholecystectomy|gallbladder is (surgically absent|not visualized)", case.report.lower())
    assert re.search(r"hepatic lesion|liver lesion|lesions? in the liver|hypoattenuating", case.report.lower())
    check_report_matches_tags(case.report, case.tags)


def test_never_both_kidneys_absent():
    cfg = PhantomConfig(absent_prob={"kidney_right": 1.0, "kidney_left": 1.0})
    anatomy = sample_anatomy(np.random.default_rng(0), cfg)
    assert anatomy.findings["kidney_right"].present != anatomy.findings["kidney_left"].present


# ------------------------------------------------------------------ anatomy
@pytest.fixture(scope="module")
def mid_case():
    return make_case(11, 2, shape=(64, 64, 48), spacing=(6.0, 6.0, 6.67))


def _world_centroid(case, organ: str) -> np.ndarray:
    idx = np.argwhere(case.label == BTCV.id_of(organ))
    assert len(idx), f"{organ} missing"
    return (case.affine[:3, :3] @ idx.T).T.mean(0) + case.affine[:3, 3]


def test_anatomy_positions_in_world_coordinates(mid_case):
    c = {o: _world_centroid(mid_case, o) for o in ORGANS if mid_case.findings[o].present}
    assert c["liver"][0] > 30 > -30 > c["spleen"][0]  # liver on the patient's right (+x), spleen left
    assert c["aorta"][0] < 0 < c["inferior_vena_cava"][0]  # aorta left of midline, IVC right
    assert c["kidney_right"][1] < c["pancreas"][1] and c["kidney_left"][1] < c["pancreas"][1]  # posterior
    assert c["kidney_right"][2] < c["kidney_left"][2]  # right kidney lower
    assert c["adrenal_gland_right"][2] > c["kidney_right"][2] and c["adrenal_gland_left"][2] > c["kidney_left"][2]
    assert c["stomach"][0] < 0 and c["stomach"][1] > c["aorta"][1]  # left and anterior
    assert c["gallbladder"][1] > c["inferior_vena_cava"][1]


@pytest.mark.parametrize("organ, lo, hi", [
    ("liver", 85, 115), ("spleen", 95, 130), ("kidney_right", 125, 180), ("kidney_left", 125, 180),
    ("pancreas", 65, 110), ("aorta", 120, 195), ("inferior_vena_cava", 105, 175),
])
def test_mean_hu_per_organ(mid_case, organ, lo, hi):
    mask = mid_case.label == BTCV.id_of(organ)
    if not mask.any():
        pytest.skip(f"{organ} absent in this case")
    assert lo <= float(mid_case.image[mask].mean()) <= hi


def _neighbour_labels(label: np.ndarray, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and HU of the 6 face neighbours of each voxel of ``mask``: two (n_voxels, 6) arrays."""
    lab = np.pad(label, 1, constant_values=0)
    img = np.pad(image, 1, constant_values=-1000.0)
    idx = np.argwhere(mask) + 1
    labs, hus = [], []
    for axis in range(3):
        for step in (-1, 1):
            nb = idx.copy()
            nb[:, axis] += step
            labs.append(lab[tuple(nb.T)])
            hus.append(img[tuple(nb.T)])
    return np.stack(labs, 1), np.stack(hus, 1)


def _upper_pole(case, organ: str) -> np.ndarray:
    """World centroid of the top third (craniocaudally) of an organ's voxels."""
    idx = np.argwhere(case.label == BTCV.id_of(organ))
    world = (case.affine[:3, :3] @ idx.T).T + case.affine[:3, 3]
    top = world[:, 2] >= np.quantile(world[:, 2], 2 / 3)
    return world[top].mean(0)


@pytest.mark.parametrize("preset", ["default", "pretraining"])
def test_adrenals_sit_in_retroperitoneal_fat(preset):
    """The right adrenal lies in the retrocaval fat (behind the IVC, medial to the liver, above the
    right kidney), not inside the liver; the left one lateral to the aorta, anteromedial to the upper
    left kidney. Both are mostly surrounded by fat."""
    from scipy import ndimage

    cfg = PhantomConfig() if preset == "default" else PhantomConfig.pretraining()
    cfg = dataclasses.replace(cfg, absent_prob={}, congenital_absent_prob={})
    liver, fat_share = BTCV.id_of("liver"), []
    for index in range(4):
        case = make_case(13, index, shape=(96, 96, 56), spacing=(4.0, 4.0, 5.0), config=cfg)
        c = {o: _world_centroid(case, o) for o in ORGANS}
        for organ, big in (("adrenal_gland_right", ("liver",)), ("adrenal_gland_left", ("spleen", "stomach"))):
            mask = case.label == BTCV.id_of(organ)
            labs, hus = _neighbour_labels(case.label, case.image, mask)
            for neighbour in big:
                touching = (labs == BTCV.id_of(neighbour)).any(1).mean()
                assert touching < 0.3, (index, organ, neighbour, touching)
            ring = ndimage.binary_dilation(mask) & ~mask
            assert (case.label[ring] == liver).mean() < 0.5, (index, organ)  # never enclosed by the liver
            fat_share.append(((labs == 0) & (hus < -30)).any(1).mean())
        right, left = c["adrenal_gland_right"], c["adrenal_gland_left"]
        assert right[1] < c["inferior_vena_cava"][1] and right[2] > c["kidney_right"][2]  # behind the IVC, above the kidney
        assert c["inferior_vena_cava"][0] < right[0] < c["kidney_right"][0]
        assert c["kidney_left"][0] < left[0] < c["aorta"][0]  # between the left kidney and the aorta
        pole = _upper_pole(case, "kidney_left")
        assert left[0] > pole[0] and left[1] > pole[1] - 3.0 and left[2] > c["kidney_left"][2], (left, pole)
    assert np.mean(fat_share) > 0.7 and min(fat_share) > 0.4, np.round(fat_share, 2)


def test_same_anatomy_at_any_resolution():
    coarse = make_case(5, 1, **TINY_3D)
    fine = make_case(5, 1, shape=(96, 96, 64), spacing=(4.0, 4.0, 5.0))
    for organ in ("liver", "spleen", "aorta", "stomach"):
        assert np.linalg.norm(_world_centroid(coarse, organ) - _world_centroid(fine, organ)) < 8.0, organ
        vol_c = (coarse.label == BTCV.id_of(organ)).sum() * 640.0
        vol_f = (fine.label == BTCV.id_of(organ)).sum() * 80.0
        assert abs(vol_c - vol_f) / vol_f < 0.3, organ
    assert coarse.findings["liver"].present == fine.findings["liver"].present


# ------------------------------------------------------------------ 2D mode
def test_2d_mode_writes_2d_niftis_with_slice_reports(cohort2d):
    ds = json.loads((cohort2d / "dataset.json").read_text())
    assert ds["tensorImageSize"] == "2D" and ds["spatial_dims"] == 2 and ds["numTraining"] == 6
    rows = read_rows(cohort2d)
    assert [r["case_id"] for r in rows[:3]] == ["phantom_0000_s00", "phantom_0000_s01", "phantom_0000_s02"]
    cfg = PhantomConfig()
    for row in rows:
        img = nib.load(cohort2d / row["image"])
        lab = np.asarray(nib.load(cohort2d / row["label"]).dataobj)
        assert img.shape == (64, 64) and lab.shape == (64, 64)
        assert np.isclose(img.affine[2, 3], row["z_mm"], atol=0.01) and row["parent_case"] == row["case_id"][:12]
        counts = np.bincount(lab.ravel(), minlength=len(BTCV))
        for organ, tag in row["tags"].items():
            n = counts[BTCV.id_of(organ)]
            if tag == 1:
                assert n >= cfg.slice_min_pixels, (row["case_id"], organ)
            elif tag == 0:
                assert n == 0, (row["case_id"], organ)
        check_report_matches_tags(row["report"], row["tags"])
    # slices of one case are ordered from inferior to superior and differ
    zs = [r["z_mm"] for r in rows[:3]]
    assert zs == sorted(zs) and len(set(zs)) == 3


def test_limited_range_scans_blank_beyond_the_cut_and_report_what_they_leave_out():
    """Every scan limited (prob 1): nothing is imaged beyond the range, an organ with no voxel in it
    is reported absent from the field of view, a sliver at the edge is not mentioned, the rest are
    present; the reports read back to the generator's tags through the kit's own parser."""
    from mosmoskit.reports import extract_tags

    cfg = PhantomConfig(scan_range_prob=1.0, out_of_range_mention_prob=1.0, mention_prob=1.0)
    zs = (np.arange(32) - 15.5) * 10.0
    seen_out_of_range = set()
    sides = set()
    for index in range(6):
        case = make_case(4, index, config=cfg, **TINY_3D)
        lo, hi = case.scan_range_mm
        sides.add("top" if hi > zs[-1] else "bottom")
        outside = (zs < lo) | (zs > hi)
        assert outside.any() and not outside.all()
        assert (case.image[:, :, outside] == -1024).all() and (case.label[:, :, outside] == 0).all()
        assert (case.image[:, :, ~outside] > -1000).any()  # the body is imaged inside the range
        counts = np.bincount(case.label.ravel(), minlength=len(BTCV))
        for organ, f in case.findings.items():
            n = counts[BTCV.id_of(organ)]
            assert f.present == (n > 0), (index, organ)
            if f.absence == "out_of_range":
                seen_out_of_range.add(organ)
                assert case.tags[organ] == 0
            elif f.present and n >= cfg.slice_min_pixels:
                assert case.tags[organ] == 1
        assert extract_tags(case.report, BTCV) == case.tags, case.report
        check_report_matches_tags(case.report, case.tags)
    assert sides == {"top", "bottom"}
    assert len(seen_out_of_range) >= 3  # the point of the option: organs go missing from the image


def test_scan_range_off_keeps_earlier_cohorts_byte_identical():
    """With scan_range_prob 0 nothing extra is drawn: same image, label and report as the default config."""
    a = make_case(4, 1, config=PhantomConfig(), **TINY_3D)
    b = make_case(4, 1, config=PhantomConfig(scan_range_prob=0.0, out_of_range_mention_prob=0.2), **TINY_3D)
    assert a.scan_range_mm is None and b.scan_range_mm is None
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label) and a.report == b.report


def test_lesions_beyond_the_scan_range_are_not_counted():
    from mosmoskit.data.phantom import _case_rng, _grid_axes, render

    cfg = PhantomConfig(lesion_prob={o: 1.0 for o in ("liver", "kidney_right", "kidney_left", "spleen")})
    anatomy = sample_anatomy(_case_rng(0, 0), cfg)
    axes = _grid_axes(TINY_3D["shape"], TINY_3D["spacing"])
    blur = [cfg.blur_mm / s for s in TINY_3D["spacing"]]
    _, _, full = render(anatomy, *axes, blur, np.random.default_rng(0))
    _, _, all_planes = render(anatomy, *axes, blur, np.random.default_rng(0), np.ones(32, dtype=bool))
    upper = axes[2] > 0
    _, label, upper_only = render(anatomy, *axes, blur, np.random.default_rng(0), upper)
    assert all_planes == full and sum(full) > 0
    assert all(u <= f for u, f in zip(upper_only, full)) and sum(upper_only) < sum(full)
    assert not label[:, :, ~upper].any()


def test_make_slices_out_of_plane_and_sliver_rules():
    cfg = PhantomConfig(out_of_plane_mention_prob=1.0, mention_prob=1.0)
    for case in make_slices(2, 0, slices_per_case=4, config=cfg, **TINY_2D):
        counts = np.bincount(case.label.ravel(), minlength=len(BTCV))
        for organ, f in case.findings.items():
            n = counts[BTCV.id_of(organ)]
            if n == 0:
                assert not f.present and f.mentioned and case.tags[organ] == 0
            elif n < cfg.slice_min_pixels:
                assert case.tags[organ] == -1
            else:
                assert f.present and case.tags[organ] == 1


# ------------------------------------------------------------------ boundaries
def test_refuses_non_empty_folder_unless_overwrite(tmp_path):
    root = generate_cohort(tmp_path / "c", n=2, seed=0, progress=False, **TINY_3D)
    with pytest.raises(FileExistsError, match="already holds results"):
        generate_cohort(root, n=1, seed=0, progress=False, **TINY_3D)
    generate_cohort(root, n=1, seed=0, progress=False, overwrite=True, **TINY_3D)
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == ["phantom_0000.nii.gz"]  # stale case removed
    assert len(read_rows(root)) == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), r"\bn\b"),
    (dict(n=2.5), r"\bn\b"),
    (dict(spacing=(4.0, -4.0, 5.0)), "spacing"),
    (dict(spacing=(4.0, 4.0)), "spacing"),
    (dict(shape=(48, 48)), "shape"),
    (dict(shape=(48, 48, 1)), "shape"),
    (dict(spatial_dims=4), "spatial_dims"),
    (dict(image_dtype="uint8"), "image_dtype"),
    (dict(spatial_dims=2, shape=(64, 64), spacing=(6.0, 6.0), slices_per_case=0), "slices_per_case"),
])
def test_bad_parameters_raise(tmp_path, kwargs, match):
    args = dict(n=1, seed=0, progress=False, shape=(48, 48, 32), spacing=(8.0, 8.0, 10.0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate_cohort(tmp_path / "bad", **args)
    assert not (tmp_path / "bad").exists()  # nothing written before validation


@pytest.mark.parametrize("kwargs, match", [
    (dict(absent_prob={"spleen": 1.5}), r"absent_prob\['spleen'\]"),
    (dict(lesion_prob={"brain": 0.1}), "unknown organs"),
    (dict(body_width_mm=(360.0, 290.0)), "body_width_mm"),
    (dict(mention_prob=-0.1), "mention_prob"),
    (dict(max_lesions=0), "max_lesions"),
    (dict(noise_hu=-1.0), "noise_hu"),
    (dict(scan_range_prob=1.5), "scan_range_prob"),
    (dict(out_of_range_mention_prob=-0.5), "out_of_range_mention_prob"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PhantomConfig(**kwargs)


def test_field_of_view_too_small_names_the_organ():
    with pytest.raises(ValueError, match="outside the field of view"):
        make_case(0, 0, shape=(8, 8, 8), spacing=(4.0, 4.0, 4.0))


# ------------------------------------------------------------------ report writer
def test_report_phrasing_cases():
    rng = np.random.default_rng(0)
    findings = {"spleen": OrganFinding(present=False), "kidney_right": OrganFinding(present=True),
                "kidney_left": OrganFinding(present=True, mentioned=False),
                "liver": OrganFinding(present=True, n_lesions=2, lesion_size_mm=14.0)}
    text = write_report(findings, rng, ReportStyle(structured_prob=1.0))
    assert text.startswith("FINDINGS:") and "IMPRESSION:" in text
    assert "14 mm" in text and "left" not in text.lower()
    assert tags_from_findings(findings) == {"spleen": 0, "kidney_right": 1, "kidney_left": -1, "liver": 1}
    check_report_matches_tags(text, tags_from_findings(findings))
    pair = write_report({"kidney_right": OrganFinding(True), "kidney_left": OrganFinding(True)},
                        np.random.default_rng(1), ReportStyle(pair_prob=1.0, max_fillers=0, structured_prob=0.0))
    assert re.search(r"kidneys", pair.lower()) and "right" not in pair.lower()


def test_random_findings_reports_are_consistent_and_varied():
    rng = np.random.default_rng(123)
    texts = set()
    for _ in range(300):
        findings = {}
        for organ in ORGANS:
            present = rng.random() < 0.8
            if present:
                n = int(rng.integers(0, 3))
                f = OrganFinding(True, enlarged=bool(rng.random() < 0.3), n_lesions=n, lesion_size_mm=float(n * 7),
                                 mentioned=bool(rng.random() < 0.7))
            else:
                f = OrganFinding(False, mentioned=bool(rng.random() < 0.7))
            findings[organ] = f
        text = write_report(findings, rng)
        check_report_matches_tags(text, tags_from_findings(findings))
        texts.add(text)
    assert len(texts) == 300
    assert write_report(findings, np.random.default_rng(5)) == write_report(findings, np.random.default_rng(5))


def test_random_findings_with_extended_wording_and_new_states():
    """Atrophic organs, congenital absences and the extended wording keep the report-tag contract."""
    from mosmoskit.data.phantom_reports import has_wording

    rng = np.random.default_rng(7)
    style = ReportStyle(extended_phrasing=True, denial_prob=0.7)
    for _ in range(300):
        findings = {}
        for organ in ORGANS:
            r = rng.random()
            if r < 0.2:
                kind = "congenital" if rng.random() < 0.5 and has_wording(organ, "congenital") else "resected"
                findings[organ] = OrganFinding(False, absence=kind, mentioned=bool(rng.random() < 0.8))
                continue
            atrophic = bool(r < 0.4 and has_wording(organ, "atrophic"))
            enlarged = not atrophic and bool(rng.random() < 0.3)
            n = int(rng.integers(0, 3))
            findings[organ] = OrganFinding(True, enlarged=enlarged, atrophic=atrophic, n_lesions=n,
                                           lesion_size_mm=float(n * 6), mentioned=bool(rng.random() < 0.8))
        text = write_report(findings, rng, style)
        check_report_matches_tags(text, tags_from_findings(findings))


def test_report_and_finding_errors():
    with pytest.raises(ValueError, match="absent organ"):
        OrganFinding(present=False, enlarged=True)
    with pytest.raises(ValueError, match="n_lesions"):
        OrganFinding(present=True, n_lesions=-1)
    with pytest.raises(ValueError, match="unknown organ"):
        write_report({"brain": OrganFinding(True)}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="out_of_plane"):
        write_report({"liver": OrganFinding(False, absence="out_of_plane")}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="out_of_range"):
        write_report({"liver": OrganFinding(False, absence="out_of_range")}, np.random.default_rng(0), scope="slice")
    with pytest.raises(ValueError, match="structured_prob"):
        ReportStyle(structured_prob=2.0)


# ------------------------------------------------------------------ CLI
def test_cli_writes_cohort_and_reports_time(tmp_path, capsys):
    from mosmoskit.commands import phantoms

    parser = argparse.ArgumentParser()
    phantoms.add_arguments(parser)
    out = tmp_path / "cli"
    args = parser.parse_args(["--out", str(out), "--n", "1", "--seed", "3", "--shape", "48", "48", "32",
                              "--spacing", "8", "8", "10", "--no-progress"])
    assert phantoms.run(args) == 0
    printed = capsys.readouterr().out
    assert "wrote 1 phantom cases" in printed and re.search(r"took \d+\.\d s", printed)
    assert (out / "imagesTr/phantom_0000.nii.gz").exists()
    with pytest.raises(FileExistsError):
        phantoms.run(args)
    bad = parser.parse_args(["--out", str(tmp_path / "x"), "--n", "1", "--config", str(tmp_path / "missing.json")])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        phantoms.run(bad)


# ------------------------------------------------------------------ plots
def test_display_slice_is_radiological():
    from mosmoskit.viz.slices import display_slice

    vol = np.zeros((4, 5, 3))
    vol[3, 4, 1] = 1.0  # the most right (+x), most anterior (+y) voxel
    vol[0, 0, 2] = 2.0  # most left, most posterior, most superior
    axial = display_slice(vol, "axial", 1)
    assert axial.shape == (5, 4) and axial[0, 0] == 1.0  # right-anterior shows top-left
    coronal = display_slice(vol, "coronal", 0)
    assert coronal.shape == (3, 4) and coronal[0, -1] == 2.0  # superior on top, patient's left on the right
    sagittal = display_slice(vol, "sagittal", 0)
    assert sagittal.shape == (3, 5) and sagittal[0, -1] == 2.0  # superior on top, posterior on the right
    with pytest.raises(ValueError, match="axis"):
        display_slice(vol, "oblique")
    with pytest.raises(ValueError, match="outside"):
        display_slice(vol, "axial", 3)


def test_plot_overlay_and_overview():
    from mosmoskit.viz.slices import plot_case_overview, plot_overlay

    case = make_case(0, 0, **TINY_3D)
    ax = plot_overlay(case.image, case.label, "btcv", spacing=TINY_3D["spacing"])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "liver" in legend and len(ax.images) == 2
    fig = plot_case_overview(case.image, case.label, BTCV, views=("axial", "coronal"), report=case.report,
                             spacing=TINY_3D["spacing"])
    assert len(fig.axes) == 3
    with pytest.raises(ValueError, match="shape"):
        plot_overlay(case.image, case.label[..., :3], BTCV)
    with pytest.raises(ValueError, match="not in label map"):
        plot_overlay(case.image, case.label + 20, BTCV)
    import matplotlib.pyplot as plt

    plt.close("all")
