"""Per-organ Dice / HD95: hand-computed cases, parity with MONAI and a brute-force reference,
the four missing-organ statuses, aggregation and the CSV table."""

from __future__ import annotations

import csv
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from mosmoskit.evaluation.segmentation import (
    bootstrap_mean_ci,
    METRIC_COLUMNS,
    hausdorff_distance,
    metrics_table,
    organ_metrics,
    summarize_metrics,
    write_metrics_csv,
)
from mosmoskit.labels import load_label_map

BTCV = load_label_map("btcv")
SPLEEN, KIDNEY_R, KIDNEY_L, GALLBLADDER, LIVER = (BTCV.id_of(n) for n in (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver"))
ANISO = (2.5, 0.8, 1.2)


def _brute_force_hd(a: np.ndarray, b: np.ndarray, spacing, percentile: float) -> float:
    """Reference: all pairwise distances between surface voxels (surface = voxels with a face
    neighbour outside the mask, the image outside counting as outside)."""
    def surface_points(m):
        padded = np.pad(m, 1)
        eroded = ndimage.binary_erosion(padded)[tuple(slice(1, -1) for _ in m.shape)]
        return np.argwhere(m & ~eroded) * np.asarray(spacing)

    pa, pb = surface_points(a), surface_points(b)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(1), percentile), np.percentile(d.min(0), percentile))


def _blob(rng, shape, threshold=0.5):
    return ndimage.gaussian_filter(rng.random(shape), 2) > threshold


# ----------------------------------------------------------------------------- Dice
def test_dice_hand_computed_3d_and_2d():
    gt = np.zeros((10, 10, 10), dtype=np.int64)
    gt[2:6, 2:6, 2:6] = SPLEEN  # 64 voxels
    pred = np.zeros_like(gt)
    pred[2:6, 2:6, 2:4] = SPLEEN  # 32 voxels, all inside the GT
    pred[7:9, 7:9, 7:9] = SPLEEN  # 8 voxels outside
    m = organ_metrics(pred, gt, BTCV, spacing=(1, 1, 1))["spleen"]
    # Dice = 2 * 32 / (64 + 40)
    assert m["dice"] == pytest.approx(64 / 104)
    assert (m["gt_voxels"], m["pred_voxels"], m["status"]) == (64, 40, "present")

    gt2 = np.zeros((6, 6), dtype=np.uint8)
    gt2[0:3, 0:3] = LIVER  # 9 pixels
    pred2 = np.zeros_like(gt2)
    pred2[1:4, 1:4] = LIVER  # 9 pixels, 4 shared
    m2 = organ_metrics(pred2, gt2, BTCV, spacing=(0.7, 0.7))["liver"]
    assert m2["dice"] == pytest.approx(8 / 18)


# ----------------------------------------------------------------------------- HD95
@pytest.mark.parametrize("axis", [0, 2])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_hd95_of_offset_cuboids_is_offset_times_spacing(axis, k):
    # A cuboid 4 voxels thick along `axis`, 8x8 across, and its copy moved k voxels along `axis`.
    # Every surface voxel of A has a surface voxel of B at most k voxels away along `axis` (the
    # matching face voxel), and the whole leading face of A (64 of 184 surface voxels, > 5 %) is
    # exactly k voxels from B's leading face, with nothing of B closer. So both directed 95th
    # percentiles, and the maximum, equal k * spacing[axis], whatever the other spacings are.
    shape = [12, 12, 12]
    shape[axis] = 16
    a = np.zeros(shape, dtype=bool)
    box = [slice(2, 10)] * 3
    box[axis] = slice(2, 6)
    a[tuple(box)] = True
    b = np.roll(a, k, axis=axis)
    expected = k * ANISO[axis]
    assert hausdorff_distance(b, a, ANISO) == pytest.approx(expected)
    assert hausdorff_distance(b, a, ANISO, percentile=100) == pytest.approx(expected)
    gt = a.astype(np.int64) * KIDNEY_L
    pred = b.astype(np.int64) * KIDNEY_L
    m = organ_metrics(pred, gt, BTCV, spacing=ANISO)["kidney_left"]
    assert m["hd95"] == pytest.approx(expected)
    # overlap is (4 - k) slices of 64 voxels out of 4 + 4
    assert m["dice"] == pytest.approx((4 - k) / 4)


def test_hd_of_parallel_plates_is_their_gap():
    # One-voxel plates are all surface; each voxel of one plate faces a voxel of the other.
    a = np.zeros((10, 6, 6), dtype=bool)
    a[2] = True
    b = np.zeros_like(a)
    b[7] = True
    assert hausdorff_distance(a, b, (1.5, 1.0, 1.0)) == pytest.approx(5 * 1.5)


def test_hd95_parity_with_monai_and_brute_force():
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(0)
    for _ in range(4):
        x, y = _blob(rng, (14, 12, 10)), _blob(rng, (14, 12, 10))
        ours = hausdorff_distance(x, y, ANISO)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI's own deprecation warning
            theirs = compute_hausdorff_distance(
                torch.tensor(x)[None, None].float(), torch.tensor(y)[None, None].float(),
                include_background=True, percentile=95, spacing=ANISO,
            )
        assert ours == pytest.approx(float(theirs), rel=1e-5)
        # blobs touch the image border: the brute force counts border voxels as surface too
        assert ours == pytest.approx(_brute_force_hd(x, y, ANISO, 95))
        assert hausdorff_distance(x, y, ANISO, 100) == pytest.approx(_brute_force_hd(x, y, ANISO, 100))


def test_identical_masks_have_zero_distance_and_empty_is_nan():
    a = np.zeros((5, 5), dtype=bool)
    a[1:4, 1:4] = True
    assert hausdorff_distance(a, a, (1.0, 2.0)) == 0.0
    assert math.isnan(hausdorff_distance(a, np.zeros_like(a), (1.0, 2.0)))


# ----------------------------------------------------------------------------- statuses
def _four_status_case():
    gt = np.zeros((12, 12, 12), dtype=np.int64)
    pred = np.zeros_like(gt)
    gt[1:5, 1:5, 1:5] = SPLEEN          # present in both
    pred[2:5, 1:5, 1:5] = SPLEEN
    gt[6:9, 6:9, 6:9] = KIDNEY_R        # missed
    pred[9:11, 1:3, 1:3] = GALLBLADDER  # false positive
    return pred, gt                     # everything else: absent from both


def test_missing_organ_statuses_default():
    pred, gt = _four_status_case()
    m = organ_metrics(pred, gt, BTCV, spacing=(1, 1, 2))
    assert list(m) == list(BTCV.foreground_names)
    assert m["spleen"]["status"] == "present"
    assert m["spleen"]["dice"] == pytest.approx(2 * 48 / (64 + 48))
    assert m["spleen"]["hd95"] == pytest.approx(1.0)
    missed = m["kidney_right"]
    assert (missed["status"], missed["dice"], missed["gt_voxels"], missed["pred_voxels"]) == ("missed", 0.0, 27, 0)
    assert math.isnan(missed["hd95"])
    fp = m["gallbladder"]
    assert (fp["status"], fp["dice"], fp["gt_voxels"], fp["pred_voxels"]) == ("false_positive", 0.0, 0, 8)
    assert math.isnan(fp["hd95"])
    both = m["liver"]
    assert both["status"] == "absent_both" and math.isnan(both["dice"]) and math.isnan(both["hd95"])


def test_missed_distance_diagonal():
    pred, gt = _four_status_case()
    m = organ_metrics(pred, gt, BTCV, spacing=(1, 1, 2), missed_distance="diagonal")
    assert m["kidney_right"]["hd95"] == pytest.approx(math.sqrt(12**2 + 12**2 + 24**2))
    assert math.isnan(m["gallbladder"]["hd95"])  # false positives stay NaN


def test_accepts_torch_and_channel_axis():
    pred, gt = _four_status_case()
    ref = organ_metrics(pred, gt, BTCV, spacing=(1, 1, 2))
    got = organ_metrics(torch.as_tensor(pred)[None], torch.as_tensor(gt, dtype=torch.float32)[None], "btcv", (1, 1, 2))
    assert got["spleen"] == ref["spleen"]
    assert got["kidney_right"]["status"] == "missed"


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_useful_errors():
    pred, gt = _four_status_case()
    with pytest.raises(ValueError, match=r"prediction shape .* differs"):
        organ_metrics(pred[:-1], gt, BTCV, (1, 1, 1))
    bad = pred.copy()
    bad[0, 0, 0] = 99
    with pytest.raises(ValueError, match=r"case_7 \(prediction\): label values \[99\]"):
        organ_metrics(bad, gt, BTCV, (1, 1, 1), source="case_7")
    with pytest.raises(ValueError, match="non-integer"):
        organ_metrics(pred + 0.5, gt, BTCV, (1, 1, 1))
    with pytest.raises(ValueError, match="spacing must give 2 or 3 values"):
        organ_metrics(pred, gt, BTCV, (1,))
    with pytest.raises(ValueError, match=r"expected 2 spatial axes"):
        organ_metrics(pred, gt, BTCV, (1, 1))
    with pytest.raises(ValueError, match="positive finite"):
        organ_metrics(pred, gt, BTCV, (1, 0, 1))
    with pytest.raises(ValueError, match=r"hd_percentile must be in \(0, 100\]"):
        organ_metrics(pred, gt, BTCV, (1, 1, 1), hd_percentile=0)
    with pytest.raises(ValueError, match="missed_distance must be one of"):
        organ_metrics(pred, gt, BTCV, (1, 1, 1), missed_distance="max")
    with pytest.raises(ValueError, match="has 2 values but the masks have 3"):
        hausdorff_distance(pred > 0, gt > 0, (1, 1))


# ----------------------------------------------------------------------------- aggregation
def _m(dice, hd, status, gt=10, pred=10):
    return {"dice": dice, "hd95": hd, "status": status, "gt_voxels": gt, "pred_voxels": pred}


NAN = float("nan")
PER_CASE = {
    "c1": {"spleen": _m(0.8, 2.0, "present"), "liver": _m(0.9, 4.0, "present")},
    "c2": {"spleen": _m(0.6, 6.0, "present"), "liver": _m(0.0, NAN, "missed", pred=0)},
    "c3": {"spleen": _m(NAN, NAN, "absent_both", 0, 0), "liver": _m(0.03, 30.0, "present")},
    "c4": {"spleen": _m(0.0, NAN, "false_positive", gt=0), "liver": _m(0.7, 5.0, "present")},
}


def test_summarize_metrics_hand_computed():
    s = summarize_metrics(PER_CASE)
    spleen, liver = s["organs"]["spleen"], s["organs"]["liver"]
    assert s["n_cases"] == 4
    # spleen Dice over c1, c2, c4 (c3 is NaN): mean 1.4 / 3, sample std of (0.8, 0.6, 0.0)
    assert spleen["dice_mean"] == pytest.approx(1.4 / 3)
    assert spleen["dice_std"] == pytest.approx(np.std([0.8, 0.6, 0.0], ddof=1))
    assert (spleen["n_dice"], spleen["n_hd95"]) == (3, 2)
    assert spleen["hd95_mean"] == pytest.approx(4.0)
    assert (spleen["n_present"], spleen["n_false_positive"], spleen["n_absent_both"]) == (2, 1, 1)
    # a false positive is not a "never learned" failure: the organ is absent from the GT
    assert spleen["n_never_learned"] == 0
    assert liver["dice_mean"] == pytest.approx((0.9 + 0.0 + 0.03 + 0.7) / 4)
    assert liver["hd95_mean"] == pytest.approx((4 + 30 + 5) / 3)
    assert liver["never_learned_cases"] == ["c2", "c3"] and liver["n_missed"] == 1
    assert s["never_learned"] == 2
    assert s["mean_dice"] == pytest.approx((1.4 / 3 + 1.63 / 4) / 2)
    assert s["mean_hd95"] == pytest.approx((4.0 + 13.0) / 2)
    assert summarize_metrics(PER_CASE, never_learned_dice=0.01)["never_learned"] == 1


def test_summarize_single_case_std_is_nan_with_sample_std():
    s = summarize_metrics({"c1": PER_CASE["c1"]})
    assert math.isnan(s["organs"]["spleen"]["dice_std"])
    assert summarize_metrics({"c1": PER_CASE["c1"]}, ddof=0)["organs"]["spleen"]["dice_std"] == 0.0


def test_summarize_rejects_malformed_input():
    with pytest.raises(ValueError, match="non-empty mapping"):
        summarize_metrics({})
    with pytest.raises(ValueError, match=r"per_case\['c1'\]\['spleen'\] lacks \['hd95'"):
        summarize_metrics({"c1": {"spleen": {"dice": 1.0, "status": "present", "gt_voxels": 1, "pred_voxels": 1}}})
    with pytest.raises(ValueError, match="has status 'ok'"):
        summarize_metrics({"c1": {"spleen": _m(1.0, 0.0, "ok")}})
    with pytest.raises(ValueError, match="never_learned_dice"):
        summarize_metrics(PER_CASE, never_learned_dice=5)


def test_metrics_table_and_csv(tmp_path):
    rows = metrics_table(PER_CASE)
    assert len(rows) == 8 and tuple(rows[0]) == METRIC_COLUMNS
    assert rows[2] == {"case_id": "c2", "organ": "spleen", "dice": 0.6, "hd95": 6.0, "status": "present",
                       "gt_voxels": 10, "pred_voxels": 10}
    path = write_metrics_csv(tmp_path / "out" / "metrics.csv", PER_CASE)
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.csv"]  # no temporary file left
    with path.open(newline="") as fh:
        back = list(csv.DictReader(fh))
    assert tuple(back[0]) == METRIC_COLUMNS
    assert [(r["case_id"], r["organ"]) for r in back] == [(r["case_id"], r["organ"]) for r in rows]
    assert float(back[3]["dice"]) == 0.0 and math.isnan(float(back[3]["hd95"])) and back[3]["status"] == "missed"
    assert float(back[7]["dice"]) == 0.7
    with pytest.raises(FileExistsError):
        write_metrics_csv(path, PER_CASE, overwrite=False)


def test_end_to_end_organ_metrics_into_summary():
    pred, gt = _four_status_case()
    per_case = {"a": organ_metrics(pred, gt, BTCV, (1, 1, 2)), "b": organ_metrics(gt, gt, BTCV, (1, 1, 2))}
    s = summarize_metrics(per_case)
    assert s["organs"]["spleen"]["dice_mean"] == pytest.approx((2 * 48 / 112 + 1.0) / 2)
    assert s["organs"]["kidney_right"]["never_learned_cases"] == ["a"]
    assert s["organs"]["liver"]["n_dice"] == 0 and math.isnan(s["organs"]["liver"]["dice_mean"])


# ----------------------------------------------------------------------------- real scan
@pytest.mark.shared_data
def test_real_scan_shift_matches_monai(totalseg):
    import nibabel as nib
    from monai.metrics import compute_hausdorff_distance

    img = nib.load(totalseg / "ct_abdomen_3mm_labels.nii.gz")
    gt = np.asarray(img.dataobj)
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    lmap = load_label_map("totalseg_ct")
    same = organ_metrics(gt, gt, lmap, spacing)
    present = [n for n, m in same.items() if m["status"] == "present"]
    assert len(present) == 61
    assert all(same[n]["dice"] == 1.0 and same[n]["hd95"] == 0.0 for n in present)
    assert all(m["status"] == "absent_both" for n, m in same.items() if n not in present)

    pred = np.zeros_like(gt)
    pred[:, 2:] = gt[:, :-2]  # shift 2 voxels (6 mm) along axis 1
    shifted = organ_metrics(pred, gt, lmap, spacing)
    for name in ("liver", "kidney_left", "spleen"):
        i = lmap.id_of(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = compute_hausdorff_distance(
                torch.tensor(pred == i)[None, None].float(), torch.tensor(gt == i)[None, None].float(),
                include_background=True, percentile=95, spacing=spacing,
            )
        assert shifted[name]["hd95"] == pytest.approx(float(ref), rel=1e-5)
        assert 0.0 < shifted[name]["hd95"] <= 6.0


# ------------------------------------------------------------------------------ pool_by_group
def test_pooled_dice_equals_dice_of_the_stacked_slices():
    """Pooling per-slice metrics gives exactly organ_metrics on the patient's slices stacked."""
    from mosmoskit.evaluation.segmentation import pool_by_group

    rng = np.random.default_rng(0)
    lmap = load_label_map("btcv")
    slices_gt = [rng.integers(0, 4, size=(12, 12)) for _ in range(3)]
    slices_pred = [np.where(rng.random((12, 12)) < 0.7, g, rng.integers(0, 4, size=(12, 12))) for g in slices_gt]
    slices_gt[2][slices_gt[2] == 3] = 0            # kidney_left absent from the last slice's GT ...
    slices_pred[2][slices_pred[2] == 3] = 0        # ... and from its prediction: absent_both there
    per_slice = {f"p_s{i}": organ_metrics(p, g, lmap, spacing=(1.0, 1.0)) for i, (p, g) in
                 enumerate(zip(slices_pred, slices_gt))}
    pooled = pool_by_group(per_slice, {c: "p" for c in per_slice})["p"]
    stacked = organ_metrics(np.stack(slices_pred, -1), np.stack(slices_gt, -1), lmap, spacing=(1.0, 1.0, 1.0))
    for organ in lmap.foreground_names:
        assert pooled[organ]["status"] == stacked[organ]["status"]
        assert pooled[organ]["gt_voxels"] == stacked[organ]["gt_voxels"]
        assert pooled[organ]["pred_voxels"] == stacked[organ]["pred_voxels"]
        if math.isnan(stacked[organ]["dice"]):
            assert math.isnan(pooled[organ]["dice"])
        else:
            assert pooled[organ]["dice"] == pytest.approx(stacked[organ]["dice"], abs=1e-12)
    assert pooled["spleen"]["n_slices"] == 3


def test_pooling_keeps_patients_apart_and_states_missing_and_false_positive():
    from mosmoskit.evaluation.segmentation import pool_by_group

    lmap = load_label_map("btcv")
    empty = np.zeros((6, 6), dtype=np.int64)
    spleen = empty.copy()
    spleen[1:4, 1:4] = 1
    per_slice = {
        "a0": organ_metrics(empty, spleen, lmap, spacing=(1.0, 1.0)),   # patient a: spleen missed
        "a1": organ_metrics(empty, empty, lmap, spacing=(1.0, 1.0)),
        "b0": organ_metrics(spleen, empty, lmap, spacing=(1.0, 1.0)),   # patient b: spleen hallucinated
    }
    pooled = pool_by_group(per_slice, {"a0": "a", "a1": "a", "b0": "b"})
    assert list(pooled) == ["a", "b"]
    assert pooled["a"]["spleen"]["status"] == "missed" and pooled["a"]["spleen"]["dice"] == 0.0
    assert pooled["b"]["spleen"]["status"] == "false_positive" and pooled["b"]["spleen"]["dice"] == 0.0
    assert pooled["a"]["liver"]["status"] == "absent_both" and math.isnan(pooled["a"]["liver"]["dice"])
    with pytest.raises(ValueError, match="no patient for case"):
        pool_by_group(per_slice, {"a0": "a"})


# ------------------------------------------------------------------------- confidence intervals
def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_cases():
    rng = np.random.default_rng(0)
    few, many = rng.normal(0.8, 0.1, 6), rng.normal(0.8, 0.1, 60)
    low, high = bootstrap_mean_ci(few)
    assert low < few.mean() < high
    assert bootstrap_mean_ci(few) == [low, high]  # seeded: the same interval every time
    many_low, many_high = bootstrap_mean_ci(many)
    assert many_high - many_low < (high - low)
    assert bootstrap_mean_ci(np.array([0.5, np.nan])) == pytest.approx([math.nan] * 2, nan_ok=True)
    constant = bootstrap_mean_ci(np.full(5, 0.7))
    assert constant == pytest.approx([0.7, 0.7])


def test_summary_carries_per_organ_and_mean_intervals():
    per_case = {f"c{i}": {"liver": {"dice": d, "hd95": 1.0, "status": "present", "gt_voxels": 9, "pred_voxels": 9},
                          "adrenal": {"dice": a, "hd95": math.nan, "status": "present" if a == a else "absent_both",
                                      "gt_voxels": 1 if a == a else 0, "pred_voxels": 1 if a == a else 0}}
                for i, (d, a) in enumerate([(0.9, 0.2), (0.95, math.nan), (0.85, 0.6), (0.9, 0.4)])}
    summary = summarize_metrics(per_case)
    liver, adrenal = summary["organs"]["liver"]["dice_ci95"], summary["organs"]["adrenal"]["dice_ci95"]
    assert liver[0] <= 0.9 <= liver[1] and 0.2 <= adrenal[0] <= 0.4 <= adrenal[1] <= 0.6
    low, high = summary["mean_dice_ci95"]
    assert low <= summary["mean_dice"] <= high
