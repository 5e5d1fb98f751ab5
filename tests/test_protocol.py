"""The label-scarce protocol: deterministic, nested, patient-level subsets and a fixed test split."""

from __future__ import annotations

import random

import pytest

from mosmoskit.data.protocol import LabelScarceProtocol, patient_split, select_labelled_subset

CASES = [f"case_{i:03d}" for i in range(40)]
# 2D slices: 12 patients with 3 to 6 slices each
SLICES = {f"p{p:02d}_s{s}": f"p{p:02d}" for p in range(12) for s in range(3 + p % 4)}


def test_subset_is_deterministic_and_seed_dependent():
    a = select_labelled_subset(CASES, label_fraction=0.25, seed=3)
    assert a == select_labelled_subset(CASES, label_fraction=0.25, seed=3)
    assert a == sorted(a) and len(a) == 10
    assert a != select_labelled_subset(CASES, label_fraction=0.25, seed=4)


def test_subset_is_independent_of_input_order():
    shuffled = CASES[:]
    random.Random(0).shuffle(shuffled)
    for fraction in (0.05, 0.5):
        assert select_labelled_subset(shuffled, label_fraction=fraction, seed=1) == \
            select_labelled_subset(CASES, label_fraction=fraction, seed=1)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_subsets_are_nested_across_fractions_and_counts(seed):
    fractions = (0.01, 0.05, 0.10, 0.25, 0.5, 1.0)
    subsets = [set(select_labelled_subset(CASES, label_fraction=f, seed=seed)) for f in fractions]
    assert [len(s) for s in subsets] == [1, 2, 4, 10, 20, 40]
    for small, large in zip(subsets, subsets[1:]):
        assert small < large
    by_count = [set(select_labelled_subset(CASES, n_labelled=n, seed=seed)) for n in range(1, 41)]
    assert all(a < b for a, b in zip(by_count, by_count[1:]))
    assert by_count[3] == subsets[2]  # 10 % of 40 is the same 4 cases as n_labelled=4


def test_at_least_one_case_and_fraction_rounding():
    assert len(select_labelled_subset(CASES[:5], label_fraction=0.01)) == 1
    # 0.1 * 30 = 3.0000000000000004 in floating point: still 3 cases, not 4
    assert len(select_labelled_subset(CASES[:30], label_fraction=0.1)) == 3
    assert select_labelled_subset(["only"], label_fraction=0.01) == ["only"]


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), "0.5", True])
def test_bad_fractions_raise_with_the_range(bad):
    with pytest.raises(ValueError, match=r"label_fraction must be (in \(0, 1\]|a number)"):
        select_labelled_subset(CASES, label_fraction=bad)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="exactly one of label_fraction and n_labelled"):
        select_labelled_subset(CASES, label_fraction=0.1, n_labelled=2)
    with pytest.raises(ValueError, match="exactly one of"):
        select_labelled_subset(CASES)
    with pytest.raises(ValueError, match=r"n_labelled must be in 1\.\.40"):
        select_labelled_subset(CASES, n_labelled=0)
    with pytest.raises(ValueError, match=r"n_labelled must be in 1\.\.40"):
        select_labelled_subset(CASES, n_labelled=41)
    with pytest.raises(ValueError, match="repeated: \\['case_000'\\]"):
        select_labelled_subset(CASES + ["case_000"], n_labelled=1)
    with pytest.raises(ValueError, match="at least one case"):
        select_labelled_subset([], label_fraction=0.5)
    with pytest.raises(ValueError, match=r"groups has no patient for case ids \['extra'\]"):
        select_labelled_subset(list(SLICES) + ["extra"], n_labelled=1, groups=SLICES)


def test_subset_keeps_patients_whole():
    ids = list(SLICES)
    for fraction in (0.01, 0.25, 0.5):
        chosen = select_labelled_subset(ids, label_fraction=fraction, seed=2, groups=SLICES)
        patients = {SLICES[c] for c in chosen}
        # fractions count patients: ceil(0.25 * 12) = 3
        assert len(patients) == {0.01: 1, 0.25: 3, 0.5: 6}[fraction]
        assert sorted(chosen) == sorted(c for c in ids if SLICES[c] in patients)
    by_function = select_labelled_subset(ids, n_labelled=4, seed=2, groups=lambda c: c.split("_")[0])
    assert by_function == select_labelled_subset(ids, n_labelled=4, seed=2, groups=SLICES)


def test_patient_split_is_deterministic_disjoint_and_complete():
    split = patient_split(CASES, test_fraction=0.2, val_fraction=0.1, seed=5)
    assert list(split) == ["train", "val", "test"]
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (28, 4, 8)
    assert sorted(split["train"] + split["val"] + split["test"]) == CASES
    assert split == patient_split(list(reversed(CASES)), test_fraction=0.2, val_fraction=0.1, seed=5)
    assert split["test"] != patient_split(CASES, test_fraction=0.2, val_fraction=0.1, seed=6)["test"]
    assert patient_split(CASES, seed=5)["val"] == []


def test_test_set_is_fixed_across_val_and_label_fractions():
    reference = patient_split(CASES, test_fraction=0.25, seed=0)["test"]
    for val_fraction in (0.0, 0.05, 0.1, 0.3):
        split = patient_split(CASES, test_fraction=0.25, val_fraction=val_fraction, seed=0)
        assert split["test"] == reference
        for fraction in (0.05, 0.25, 1.0):
            labelled = select_labelled_subset(split["train"], label_fraction=fraction, seed=1)
            assert not set(labelled) & set(reference)


def test_patient_split_keeps_patients_whole():
    split = patient_split(list(SLICES), groups=SLICES, test_fraction=0.25, val_fraction=0.25, seed=0)
    owners = {name: {SLICES[c] for c in cases} for name, cases in split.items()}
    assert [len(owners[k]) for k in ("train", "val", "test")] == [6, 3, 3]
    assert not (owners["train"] & owners["test"]) and not (owners["train"] & owners["val"])
    assert not (owners["val"] & owners["test"])


def test_patient_split_bad_fractions():
    with pytest.raises(ValueError, match=r"test_fraction must be in \[0, 1\)"):
        patient_split(CASES, test_fraction=1.0)
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        patient_split(CASES, val_fraction=-0.1)
    with pytest.raises(ValueError, match="leave none for training"):
        patient_split(CASES[:3], test_fraction=0.5, val_fraction=0.4)
    # a positive fraction of a tiny cohort still holds out one patient
    assert len(patient_split(CASES[:3], test_fraction=0.01)["test"]) == 1


def test_protocol_runs_and_description():
    protocol = LabelScarceProtocol(label_fractions=(0.05, 0.25, 1.0), seeds=(0, 1), test_fraction=0.25)
    split = protocol.split(CASES)
    runs = list(protocol.runs(split["train"]))
    assert [(f, s, len(c)) for f, s, c in runs] == [
        (0.05, 0, 2), (0.05, 1, 2), (0.25, 0, 8), (0.25, 1, 8), (1.0, 0, 30), (1.0, 1, 30)]
    by_seed = {s: [set(c) for f, s2, c in runs if s2 == s] for s in (0, 1)}
    assert all(a < b for subsets in by_seed.values() for a, b in zip(subsets, subsets[1:]))
    assert protocol.describe(label_fraction=0.25, seed=1, n_labelled=8) == {
        "protocol": "label_scarce", "label_fractions": [0.05, 0.25, 1.0], "seeds": [0, 1], "split_seed": 0,
        "test_fraction": 0.25, "val_fraction": 0.0, "label_fraction": 0.25, "seed": 1, "n_labelled": 8}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"label_fractions": (0.5, 0.1)}, "increasing and unique"),
        ({"label_fractions": ()}, "increasing and unique"),
        ({"label_fractions": (0.0, 0.5)}, r"each label fraction must be in \(0, 1\]"),
        ({"seeds": (1, 1)}, "distinct integers"),
        ({"seeds": ()}, "distinct integers"),
        ({"test_fraction": 1.2}, "test_fraction must be in"),
    ],
)
def test_protocol_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LabelScarceProtocol(**kwargs)


# =============================================================================================
# Fine-tuning augmentations (mosmoskit.data.augment): left and right must stay apart.
# =============================================================================================
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mosmoskit.data.augment import (  # noqa: E402
    AugmentConfig,
    LeftRightSwapFlipd,
    left_right_pairs,
    segmentation_train_transforms,
)
from mosmoskit.labels import load_label_map  # noqa: E402

BTCV = load_label_map("btcv")
K_LEFT, K_RIGHT, SPLEEN = BTCV.id_of("kidney_left"), BTCV.id_of("kidney_right"), BTCV.id_of("spleen")
NO_AUG = {"affine_prob": 0.0, "flip_prob": 0.0, "intensity_prob": 0.0}


def test_left_right_pairs_found_by_name():
    pairs, unpaired = left_right_pairs("btcv")
    assert pairs == (("kidney_left", "kidney_right"), ("adrenal_gland_left", "adrenal_gland_right"))
    assert unpaired == ()
    assert ("left_kidney", "right_kidney") in left_right_pairs("amos")[0]
    ts_pairs, ts_unpaired = left_right_pairs("totalseg_ct")
    assert ("rib_left_3", "rib_right_3") in ts_pairs and "atrial_appendage_left" in ts_unpaired
    assert left_right_pairs("brats") == ((), ())


def test_lr_swap_flip_moves_left_kidney_to_mirror_with_right_id():
    shape = (9, 5, 4)
    label = torch.zeros((1, *shape), dtype=torch.long)
    label[0, 1, 2, 3] = K_LEFT
    label[0, 6, 0, 1] = K_RIGHT
    label[0, 4, 4, 0] = SPLEEN
    image = torch.arange(np.prod(shape), dtype=torch.float32).reshape(1, *shape)
    out = LeftRightSwapFlipd(BTCV)({"image": image, "label": label})
    expected = torch.zeros_like(label)
    expected[0, 9 - 1 - 1, 2, 3] = K_RIGHT  # left kidney voxel -> mirrored position, right kidney id
    expected[0, 9 - 1 - 6, 0, 1] = K_LEFT
    expected[0, 9 - 1 - 4, 4, 0] = SPLEEN   # unpaired organs keep their id
    assert torch.equal(torch.as_tensor(out["label"]), expected)
    assert torch.equal(torch.as_tensor(out["image"]), torch.flip(image, dims=[1]))
    # twice is the identity; prob 0 never flips
    twice = LeftRightSwapFlipd(BTCV)(out)
    assert torch.equal(torch.as_tensor(twice["label"]), label)
    untouched = LeftRightSwapFlipd(BTCV, prob=0.0)({"image": image, "label": label})
    assert torch.equal(untouched["label"], label)


def test_lr_swap_flip_2d_numpy_and_errors():
    label = np.zeros((1, 4, 3), dtype=np.int64)
    label[0, 0, 1] = K_LEFT
    out = LeftRightSwapFlipd(BTCV, keys=("label",))({"label": label})
    assert np.asarray(out["label"])[0, 3, 1] == K_RIGHT and np.asarray(out["label"]).sum() == K_RIGHT
    with pytest.raises(ValueError, match=r"lateral structures without a counterpart: \[.*'atrial_appendage_left'"):
        LeftRightSwapFlipd("totalseg_ct")
    LeftRightSwapFlipd("totalseg_ct", allow_unpaired=True)
    with pytest.raises(ValueError, match="label_keys \\['seg'\\] are not among keys"):
        LeftRightSwapFlipd(BTCV, label_keys=("seg",))
    with pytest.raises(ValueError, match="prob must be a probability"):
        LeftRightSwapFlipd(BTCV, prob=1.5)


def _lateral_sample(shape=(24, 20, 12)):
    """Image = left-right ramp (increasing along axis 0), left kidney in the low-x half, right
    kidney in the high-x half: any mirror along axis 0 turns the ramp around."""
    x = torch.arange(shape[0], dtype=torch.float32)[:, None, None].expand(shape)
    label = torch.zeros(shape, dtype=torch.long)
    label[3:9, 6:14, 3:9] = K_LEFT
    label[15:21, 6:14, 3:9] = K_RIGHT
    return {"image": (x / shape[0])[None].clone(), "label": label[None]}


def _ramp_slope(image: torch.Tensor) -> float:
    img = torch.as_tensor(image)[0]
    profile = img.mean(dim=tuple(range(1, img.ndim)))
    x = torch.arange(len(profile), dtype=torch.float32)
    return float(((x - x.mean()) * (profile - profile.mean())).sum())


def _kidney_sides(label: torch.Tensor) -> tuple[float, float] | None:
    lab = torch.as_tensor(label)[0]
    left, right = torch.nonzero(lab == K_LEFT), torch.nonzero(lab == K_RIGHT)
    if len(left) == 0 or len(right) == 0:
        return None
    return float(left[:, 0].float().mean()), float(right[:, 0].float().mean())


@pytest.mark.parametrize("allow_lr_flip", [False, True])
def test_default_pipeline_never_mirrors_left_right(allow_lr_flip):
    chain = segmentation_train_transforms(
        (16, 16, 8), BTCV, spatial_dims=3, num_samples=4, allow_lr_flip=allow_lr_flip,
        flip_prob=0.5, affine_prob=0.5, intensity_prob=0.5,
    )
    chain.set_random_state(seed=0)
    slopes, sides = [], []
    for _ in range(12):
        for crop in chain(_lateral_sample()):
            assert tuple(crop["image"].shape) == (1, 16, 16, 8) == tuple(crop["label"].shape)
            slopes.append(_ramp_slope(crop["image"]))
            sides.append(_kidney_sides(crop["label"]))
    both = [s for s in sides if s is not None]
    assert len(slopes) == 48 and len(both) >= 5
    if not allow_lr_flip:
        # flips along axes 1 and 2 and rotations up to 15 degrees keep the ramp increasing
        assert all(s > 0 for s in slopes)
        assert all(left < right for left, right in both)
    else:
        mirrored = [s < 0 for s in slopes]
        assert 5 <= sum(mirrored) <= 43  # about half at lr_flip_prob 0.5: the test can see a mirror
        # The mirror moved the left kidney to high x but gave it the right kidney's id, so in every
        # crop, mirrored or not, the left-kidney id sits at lower x than the right's (a plain flip
        # would have put it at higher x in the mirrored crops).
        assert all(left < right for left, right in both)
        assert any(m for side, m in zip(sides, mirrored) if side is not None)


def test_crops_have_roi_size_even_when_image_is_smaller_2d():
    chain = segmentation_train_transforms((32, 32), BTCV, spatial_dims=2, num_samples=3)
    chain.set_random_state(seed=1)
    label = torch.zeros(1, 20, 40, dtype=torch.long)
    label[0, 5:10, 5:10] = SPLEEN
    crops = chain({"image": torch.rand(1, 20, 40), "label": label})
    assert len(crops) == 3
    assert all(tuple(c["image"].shape) == (1, 32, 32) == tuple(c["label"].shape) for c in crops)


def _fraction_with_foreground(pos_neg_ratio: float) -> float:
    chain = segmentation_train_transforms((8, 8, 8), BTCV, 3, pos_neg_ratio=pos_neg_ratio, num_samples=8, **NO_AUG)
    chain.set_random_state(seed=0)
    label = torch.zeros(1, 40, 40, 40, dtype=torch.long)
    label[0, 30:33, 5:8, 20:23] = SPLEEN  # 27 of 64000 voxels
    sample = {"image": torch.rand(1, 40, 40, 40), "label": label}
    hits = [bool((c["label"] > 0).any()) for _ in range(8) for c in chain(sample)]
    return sum(hits) / len(hits)


def test_foreground_balance_of_crops():
    only_fg = _fraction_with_foreground(float("inf"))
    balanced = _fraction_with_foreground(1.0)
    only_bg = _fraction_with_foreground(0.0)
    assert only_fg == 1.0
    assert 0.3 <= balanced <= 0.8
    assert only_bg <= 0.1  # a random 8^3 crop rarely meets a 3^3 organ in a 40^3 volume


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"roi_size": (16, 16)}, "roi_size must be 3 positive integers"),
        ({"flip_axes": (0, 1)}, "contains axis 0, the left-right axis"),
        ({"flip_axes": (3,)}, "flip_axes must be distinct spatial axes"),
        ({"flip_prob": 1.2}, "flip_prob must be a probability"),
        ({"pos_neg_ratio": -1}, "pos_neg_ratio must be >= 0"),
        ({"num_samples": 0}, "num_samples must be a positive integer"),
        ({"max_rotation_deg": 90}, r"max_rotation_deg must be in \[0, 45\]"),
        ({"intensity_scale": 1.0}, r"intensity_scale must be in \[0, 1\)"),
        ({"spatial_dims": 4, "roi_size": (8, 8, 8, 8)}, "spatial_dims must be 2 or 3"),
    ],
)
def test_augment_config_validates(kwargs, message):
    args = {"roi_size": (16, 16, 16), **kwargs}
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**args)


def test_unknown_option_and_unpaired_map_raise():
    with pytest.raises(ValueError, match=r"unknown augmentation option\(s\) \['flip_probability'\]"):
        segmentation_train_transforms((8, 8, 8), BTCV, flip_probability=0.5)
    with pytest.raises(ValueError, match="without a counterpart"):
        segmentation_train_transforms((8, 8, 8), "totalseg_ct", allow_lr_flip=True)
    assert AugmentConfig((8, 8), spatial_dims=2).flip_axes == (1,)
    assert AugmentConfig((8, 8, 8)).flip_axes == (1, 2)


def test_class_balanced_crops_reach_a_small_organ_as_often_as_a_large_one():
    """A 3x3 adrenal next to a 70x70 liver: random foreground centres almost never land on the adrenal,
    class-balanced centres do about as often as on the liver."""
    label = torch.zeros(1, 128, 128)
    label[0, 10:80, 10:80] = 6      # liver
    label[0, 100:103, 100:103] = 13  # adrenal_gland_left
    sample = {"image": torch.rand(1, 128, 128), "label": label}
    quiet = dict(affine_prob=0.0, flip_prob=0.0, intensity_prob=0.0)

    def share_with_adrenal(class_balanced: bool) -> float:
        chain = segmentation_train_transforms((16, 16), "btcv", spatial_dims=2, num_samples=200,
                                              pos_neg_ratio=float("inf"), class_balanced=class_balanced, **quiet)
        chain.set_random_state(0)
        crops = chain(dict(sample))
        return sum(bool((c["label"] == 13).any()) for c in crops) / len(crops)

    assert share_with_adrenal(False) < 0.05
    assert 0.35 < share_with_adrenal(True) < 0.65


def test_stored_class_indices_give_the_same_crops_as_scanning_the_mask():
    """ClassIndicesd in the cached prefix is a pure speed-up: same seed, same crops."""
    from mosmoskit.data.augment import ClassIndicesd

    rng = np.random.default_rng(3)
    label = torch.as_tensor(rng.integers(0, 14, size=(1, 40, 36, 20)))
    image = torch.rand(1, 40, 36, 20)
    quiet = dict(affine_prob=0.0, flip_prob=0.0, intensity_prob=0.0, class_balanced=True)
    scan = segmentation_train_transforms((16, 16, 8), "btcv", num_samples=6, **quiet)
    stored = segmentation_train_transforms((16, 16, 8), "btcv", num_samples=6, label_indices_key="idx", **quiet)
    scan.set_random_state(7)
    stored.set_random_state(7)
    with_indices = ClassIndicesd("label", 14, output_key="idx")({"image": image, "label": label})
    a = scan({"image": image, "label": label})
    b = stored(with_indices)
    assert all(torch.equal(x["label"], y["label"]) and torch.equal(x["image"], y["image"]) for x, y in zip(a, b))


def test_class_indices_are_thinned_to_a_bound_and_stay_inside_their_class():
    from mosmoskit.data.augment import ClassIndicesd

    label = torch.zeros(1, 50, 50, dtype=torch.long)
    label[0, :5, :5] = 2
    out = ClassIndicesd("label", 3, max_per_class=100)({"label": label})["label_cls_indices"]
    assert 90 <= len(out[0]) <= 100 and len(out[1]) == 0 and len(out[2]) == 25  # 2475 background voxels, stride 25
    flat = label.reshape(-1).numpy()
    assert (flat[out[0]] == 0).all() and (flat[out[2]] == 2).all() and len(out[1]) == 0
