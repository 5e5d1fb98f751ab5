"""Label maps: loading, validation, raw values, regions and remapping by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mosmoskit.labels import LabelMap, available_label_maps, canonical_name, load_label_map

BTCV_ORGANS = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior_vena_cava", "portal_vein_and_splenic_vein", "pancreas", "adrenal_gland_right",
    "adrenal_gland_left",
)


def test_shipped_maps_load_and_have_expected_sizes():
    assert {"btcv", "amos", "mmwhs", "brats", "totalseg_ct", "totalseg_mr"} <= set(available_label_maps())
    sizes = {"btcv": 13, "amos": 15, "mmwhs": 7, "brats": 3, "totalseg_ct": 117}
    for name, k in sizes.items():
        lm = load_label_map(name)
        assert lm.names[0] == "background"
        assert len(lm.foreground_names) == k, name
        assert lm.num_classes == k + 1


def test_btcv_order_is_the_challenge_order():
    assert load_label_map("btcv").foreground_names == BTCV_ORGANS


def test_btcv_and_amos_number_pancreas_differently_and_remap_by_name():
    btcv, amos = load_label_map("btcv"), load_label_map("amos")
    assert btcv.id_of("pancreas") == 11 and amos.id_of("pancreas") == 10
    remap = amos.remap_to(btcv, drop_unmatched=True)
    mask = np.array([amos.id_of("pancreas"), amos.id_of("postcava"), amos.id_of("duodenum"), 0])
    out = remap(mask)
    assert out.tolist() == [11, btcv.id_of("inferior_vena_cava"), 0, 0]
    assert set(remap.dropped) == {"duodenum", "bladder", "prostate_uterus"}
    assert remap.unfilled == ("portal_vein_and_splenic_vein",)


def test_remap_raises_on_unplaceable_names_unless_dropped():
    with pytest.raises(ValueError, match="no counterpart for.*duodenum"):
        load_label_map("amos").remap_to(load_label_map("btcv"))


def test_synonyms_are_explicit_not_substrings():
    assert canonical_name("postcava") == "inferior_vena_cava"
    assert canonical_name("Right Kidney") == "kidney_right"
    assert canonical_name("gall-bladder") == "gallbladder"
    # A substring match would wrongly send "portal_vein" to "portal_vein_and_splenic_vein".
    assert canonical_name("portal_vein") == "portal_vein"


def test_totalsegmentator_onto_btcv_keeps_all_13_organs():
    remap = load_label_map("totalseg_ct").remap_to(load_label_map("btcv"), drop_unmatched=True)
    assert remap.unfilled == ()
    assert len(remap.dropped) == 117 - 13


def test_check_mask_names_source_and_values():
    btcv = load_label_map("btcv")
    ok = np.zeros((4, 4, 4), dtype=np.uint8)
    ok[0, 0, 0] = btcv.id_of("liver")
    assert btcv.check_mask(ok, source="case1.nii.gz") == ("liver",)
    bad = ok.copy()
    bad[1, 1, 1] = 14
    bad[2, 2, 2] = 99
    with pytest.raises(ValueError, match=r"case7\.nii\.gz: label values \[14, 99\] are not in label map 'btcv'"):
        btcv.check_mask(bad, source="case7.nii.gz")


@pytest.mark.parametrize(
    "array, message",
    [
        (np.array([0.0, np.nan]), "NaN"),
        (np.array([0.0, 1.5]), "non-integer"),
        (np.array([-1, 0]), r"\[-1\]"),
        (np.array(["a"]), "must hold integers"),
    ],
)
def test_check_mask_rejects_bad_values(array, message):
    with pytest.raises(ValueError, match=message):
        load_label_map("btcv").check_mask(array, source="x")


def test_check_mask_accepts_tensors_and_float_integers():
    torch = pytest.importorskip("torch")
    lm = load_label_map("btcv")
    assert lm.check_mask(torch.tensor([[0.0, 6.0]])) == ("liver",)


def test_mmwhs_raw_values_round_trip():
    mm = load_label_map("mmwhs")
    raw = np.array([0, 205, 420, 500, 550, 600, 820, 850])
    ids = mm.from_raw(raw, source="ct_1001_label.nii.gz")
    assert ids.tolist() == list(range(8))
    assert mm.to_raw(ids).tolist() == raw.tolist()
    with pytest.raises(ValueError, match="ct_1001_label.nii.gz: label values \\[421\\]"):
        mm.from_raw(np.array([0, 421]), source="ct_1001_label.nii.gz")


def test_brats_raw_values_and_regions():
    brats = load_label_map("brats")
    raw = np.array([0, 1, 2, 4])
    ids = brats.from_raw(raw)
    assert ids.tolist() == [0, 1, 2, 3]
    regions = brats.region_masks(ids)
    assert regions["ET"].tolist() == [False, False, False, True]
    assert regions["TC"].tolist() == [False, True, False, True]
    assert regions["WT"].tolist() == [False, True, True, True]
    with pytest.raises(ValueError, match=r"\[3\]"):
        brats.from_raw(np.array([0, 3]))  # BraTS 2023's ET value is not this map's


def test_dict_round_trip_and_file(tmp_path):
    for name in ("btcv", "brats"):
        lm = load_label_map(name)
        assert LabelMap.from_dict(lm.to_dict()) == LabelMap.from_dict(lm.to_dict())
        assert LabelMap.from_dict(lm.to_dict()).labels == lm.labels
        path = tmp_path / f"{name}.json"
        lm.save(path)
        again = load_label_map(path)
        assert again.labels == lm.labels and again.raw_values == lm.raw_values and again.regions == lm.regions


def test_plain_json_form(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"background": 0, "liver": 1, "tumour": 2}))
    lm = load_label_map(path)
    assert lm.name == "mine" and lm.foreground_names == ("liver", "tumour")


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"liver": 1}, "'background' must exist and be 0"),
        ({"background": 0, "liver": 2}, "consecutive"),
        ({"background": 0, "liver": 1, "spleen": 1}, "consecutive"),
        ({"background": 0, "liver": "1"}, "must be an integer"),
    ],
)
def test_malformed_maps_raise(tmp_path, labels, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(labels))
    with pytest.raises(ValueError, match=message):
        load_label_map(path)


def test_unknown_name_and_missing_file():
    with pytest.raises(ValueError, match="unknown label map 'btvc'.*btcv"):
        load_label_map("btvc")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_label_map("no/such/map.json")


def test_id_lookup_errors_list_known_names():
    lm = load_label_map("btcv")
    with pytest.raises(KeyError, match="has no label 'kidney'"):
        lm.id_of("kidney")
    with pytest.raises(KeyError, match="no id 14"):
        lm.name_of(14)


def test_totalseg_maps_match_the_shared_files(totalseg):
    for ours, theirs in (("totalseg_ct", "labels_total_ct.json"), ("totalseg_mr", "labels_total_mr.json")):
        assert load_label_map(ours).labels == json.loads((totalseg / theirs).read_text())
