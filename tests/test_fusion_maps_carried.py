"""The fused attention maps are made once per whole image and carried through crops and windows.

(a) a training crop's maps are the crop of the whole-image maps (the real training chain, fixed
seeds); (b) a left-right mirror swaps and mirrors the left/right organ channels; (c) intensity
changes (augmentation, the fine-tuning window) leave the maps unchanged; (d) every sliding window
fuses its part of the whole-image maps (validation helper and ``predict_volume``); (e) validation
and ``predict`` fuse the same maps and score the same Dice. Plus the geometry of
``whole_image_maps`` (pre-training input bit for bit; pad / resize; 2D slices of a volume).

Everything is tiny and on CPU: a random (untrained) 2D pre-training model with a width-4 U-Net,
BTCV's 13 tags, phantom slices of 64x64, 32x32 crops.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mosmoskit.config import config_to_dict
from mosmoskit.data.augment import LeftRightSwapFlipd, segmentation_train_transforms
from mosmoskit.data.phantom import generate_cohort
from mosmoskit.data.readers import Volume, load_image, load_label
from mosmoskit.finetuning import FinetuneConfig, SegmentationTask, per_class_dice, prepare_finetuning_data
from mosmoskit.finetuning.data import (
    eval_transforms,
    fusion_map_transform,
    make_val_loader,
    train_transforms,
)
from mosmoskit.finetuning.task import sliding_window_probabilities
from mosmoskit.inference import attention_maps_volume, network_maps, predict_volume
from mosmoskit.labels import load_label_map
from mosmoskit.models import build_segmenter
from mosmoskit.pretraining.config import PretrainConfig
from mosmoskit.pretraining.data import center_crop_or_pad, window_intensity
from mosmoskit.pretraining.maps import map_geometry, whole_image_maps
from mosmoskit.pretraining.model import build_pretrain_model

BTCV = load_label_map("btcv")
NAMES = list(BTCV.foreground_names)
K = len(NAMES)
# encoder features: the shared-encoder variant (tested here too) reads a level of the segmenter
PCONFIG = PretrainConfig(image_size=(64, 64), encoder_width=4, tag_head_dim=16, embed_dim=16, text_encoder="tiny",
                         feature_path="encoder")
ROI = (32, 32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pretrained():
    torch.manual_seed(0)
    model = build_pretrain_model(PCONFIG, BTCV, with_text_encoder=False).eval()
    return model


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    base = tmp_path_factory.mktemp("carried")
    return generate_cohort(base / "c2", n=4, seed=5, shape=(64, 64), spacing=(6.0, 6.0), spatial_dims=2,
                           slices_per_case=2, progress=False)


def _segmenter(pretrained, fusion="input", **kwargs):
    torch.manual_seed(1)
    model, _ = build_segmenter(2, BTCV, ROI, fusion, pretrained.state_dict(), config_to_dict(PCONFIG), True,
                               **kwargs)
    return model.eval()


def _config(cohort, tmp_path, **overrides):
    fields = dict(dataset=str(cohort), roi_size=ROI, test_fraction=0.25, val_max_cases=2, crops_per_case=4,
                  device="cpu", output_dir=str(tmp_path), pretrained_checkpoint="unused.pt", fusion="input",
                  sw_batch_size=2)
    fields.update(overrides)
    return FinetuneConfig(**fields)


def _find(window: np.ndarray, whole: np.ndarray, affine: bool) -> list[tuple[int, int]]:
    """Offsets where ``window`` is ``a * whole[crop] + b`` (``affine``) or equal to it, exactly."""
    h, w = window.shape
    found = []
    for i in range(whole.shape[0] - h + 1):
        for j in range(whole.shape[1] - w + 1):
            ref = whole[i:i + h, j:j + w]
            if affine:
                design = np.stack([ref.ravel(), np.ones(ref.size)], axis=1)
                coef, *_ = np.linalg.lstsq(design, window.ravel(), rcond=None)
                residual = np.abs(design @ coef - window.ravel()).max()
                if residual < 1e-4 and ref.std() > 1e-3:
                    found.append((i, j))
            elif np.allclose(ref, window, atol=1e-6):
                found.append((i, j))
    return found


# ---------------------------------------------------------------------------------- whole_image_maps
def test_whole_image_maps_at_the_pretraining_grid_are_the_pretraining_maps(pretrained):
    """An image of image_size: the network input is the pre-training input (window, no resize), so
    the maps are attention_maps of that input bit for bit; the probabilities are its tags'."""
    rng = np.random.default_rng(0)
    hu = rng.uniform(-300, 400, size=(64, 64)).astype(np.float32)
    maps, probs = whole_image_maps(pretrained, hu, PCONFIG)
    x = torch.from_numpy(center_crop_or_pad(window_intensity(hu, PCONFIG.window), PCONFIG.image_size))[None, None]
    expected, logits = pretrained.attention_maps(x, normalize="max", scale_by_probability=False)
    assert maps.shape == (K, 64, 64) and probs.shape == (K,)
    assert torch.equal(maps, expected[0])
    torch.testing.assert_close(probs, torch.sigmoid(logits[0]))
    scaled, _ = whole_image_maps(pretrained, hu, PCONFIG, scale_by_probability=True)
    torch.testing.assert_close(scaled, maps * probs[:, None, None])


def test_whole_image_maps_pad_small_images_and_resize_large_ones(pretrained):
    rng = np.random.default_rng(1)
    small = rng.uniform(-300, 400, size=(48, 40)).astype(np.float32)
    maps, _ = whole_image_maps(pretrained, small, PCONFIG)
    # padded exactly as pre-training pads (window low value), maps cut out of the padding, peak 1
    padded = center_crop_or_pad(small, PCONFIG.image_size, fill=PCONFIG.window[0])
    full, _ = whole_image_maps(pretrained, padded, PCONFIG)
    cut = full[:, 8:56, 12:52]
    expected = cut / cut.flatten(1).amax(dim=1)[:, None, None]
    torch.testing.assert_close(maps, expected)
    assert maps.shape == (K, 48, 40) and torch.allclose(maps.flatten(1).amax(dim=1), torch.ones(K))

    assert map_geometry((96, 40), (64, 64)) == (64, 40)  # the long axis is resized, the short one padded
    assert map_geometry((96, 40), (64, 64), "resize") == (64, 64)
    assert map_geometry((96, 40), (64, 64), "pad") == (96, 40)
    large = rng.uniform(-300, 400, size=(96, 80)).astype(np.float32)
    maps, _ = whole_image_maps(pretrained, large, PCONFIG)
    assert maps.shape == (K, 96, 80) and torch.isfinite(maps).all()
    cropped, _ = whole_image_maps(pretrained, large, PCONFIG, fit="pad")
    assert float(cropped[:, :16].abs().max()) == 0.0  # cut off by the centre crop: no map there


def test_whole_image_maps_of_a_volume_for_a_2d_model_are_its_slices(pretrained):
    rng = np.random.default_rng(2)
    volume = rng.uniform(-300, 400, size=(64, 64, 3)).astype(np.float32)
    maps, probs = whole_image_maps(pretrained, volume, PCONFIG, batch_size=2, scale_by_probability=True)
    assert maps.shape == (K, 64, 64, 3) and probs.shape == (K, 3)
    for z in range(3):
        one, p = whole_image_maps(pretrained, volume[..., z], PCONFIG, scale_by_probability=True)
        torch.testing.assert_close(maps[..., z], one)
        torch.testing.assert_close(probs[:, z], p)


def test_segmenter_whole_image_maps_and_which_variants_precompute(pretrained):
    model = _segmenter(pretrained, "input")
    assert model.precomputed_maps and model.map_model.image_encoder is model.map_encoder
    hu = np.random.default_rng(3).uniform(-300, 400, size=(64, 64)).astype(np.float32)
    maps, _ = model.whole_image_maps(hu)
    expected, _ = whole_image_maps(pretrained, hu, PCONFIG, scale_by_probability=True)
    torch.testing.assert_close(maps, expected)
    assert "map_model" not in dict(model.named_children()) and not any(
        k.startswith("map_model") for k in model.state_dict())
    assert _segmenter(pretrained, "decoder").precomputed_maps
    shared = _segmenter(pretrained, "decoder", share_encoder=True)
    tuned = _segmenter(pretrained, "input", tune_tag_head=True)
    for other in (shared, tuned, _segmenter(pretrained, "none")):
        assert not other.precomputed_maps and fusion_map_transform(other) is None
        with pytest.raises(ValueError, match="maps"):
            other.whole_image_maps(hu)
    with pytest.raises(ValueError, match="makes its maps inside forward.*share_encoder"):
        shared(torch.zeros(1, 1, 32, 32), maps=torch.zeros(1, K, 32, 32))
    with pytest.raises(ValueError, match=r"maps must be \(B, K=13"):
        model(torch.zeros(1, 1, 32, 32), maps=torch.zeros(1, K, 16, 32))


# -------------------------------------------------------------------------------- (a) training crops
def test_training_crops_carry_the_crop_of_the_whole_image_maps(pretrained, cohort, tmp_path):
    """Through the real training chain (load, maps, window, class-balanced crops, affine, flips,
    intensity), each crop's maps are the whole-image maps at the crop's place; and they differ
    from maps made on the crop itself (the old behaviour)."""
    model = _segmenter(pretrained, "input")
    config = _config(cohort, tmp_path)
    transform = fusion_map_transform(model)
    chain = train_transforms(config, BTCV, transform)
    item = {"image": str(cohort / "imagesTr" / "phantom_0000_s00.nii.gz"),
            "label": str(cohort / "labelsTr" / "phantom_0000_s00.nii.gz")}
    hu = load_image(item["image"]).array
    whole_maps, _ = model.whole_image_maps(hu)
    whole_image = window_intensity(hu, config.window)
    matched = 0
    for seed in range(4):
        chain.set_random_state(seed)
        crops = chain(dict(item))
        for crop in crops:
            assert crop["maps"].shape == (K, *ROI) and crop["image"].shape == (1, *ROI)
            where = _find(crop["image"][0].numpy(), whole_image, affine=True)
            if not where:
                continue  # rotated / scaled / flipped crop: checked by the flip test
            i, j = where[0]
            torch.testing.assert_close(crop["maps"], whole_maps[:, i:i + 32, j:j + 32], rtol=0, atol=1e-6)
            matched += 1
            own = model.attention_maps(crop["image"][None]).maps[0]  # maps made on the crop
            assert (own - crop["maps"]).abs().max() > 1e-3
    assert matched >= 8, matched
    # The segmenter receives exactly these channels in a training step.
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs.get("maps")),
                                             with_kwargs=True)
    batch = {"image": torch.stack([c["image"] for c in crops]), "label": torch.stack([c["label"] for c in crops]),
             "maps": torch.stack([c["maps"] for c in crops])}
    SegmentationTask(model, BTCV, ROI).step(batch)
    handle.remove()
    assert torch.equal(seen[0], batch["maps"])
    with pytest.raises(ValueError, match="batch has no 'maps'"):
        SegmentationTask(model, BTCV, ROI).step({k: v for k, v in batch.items() if k != "maps"})


def test_affine_and_plain_flips_move_the_maps_like_the_image():
    """A rotation/scaling and a plain flip give the maps the same geometry as the image (linear)."""
    torch.manual_seed(0)
    image = torch.rand(1, 48, 48)
    maps = torch.rand(K, 48, 48)
    maps[0] = image[0]  # a map channel equal to the image must come out equal to the image
    label = torch.zeros(1, 48, 48)
    label[0, 10:30, 12:36] = 6
    chain = segmentation_train_transforms((48, 48), BTCV, spatial_dims=2, num_samples=1, map_key="maps",
                                          affine_prob=1.0, flip_prob=1.0, intensity_prob=0.0, pos_neg_ratio=1.0)
    chain.set_random_state(3)
    out = chain({"image": image, "label": label, "maps": maps})[0]
    assert not torch.allclose(out["image"], image)
    torch.testing.assert_close(out["maps"][0], out["image"][0], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------- (b) left-right
def test_left_right_mirror_swaps_and_mirrors_the_lateral_map_channels():
    flip = LeftRightSwapFlipd(BTCV, keys=("image", "label", "maps"), map_keys=("maps",))
    maps = torch.rand(K, 8, 6)
    image = torch.rand(1, 8, 6)
    out = flip({"image": image, "label": torch.zeros(1, 8, 6), "maps": maps})
    mirrored = torch.flip(maps, dims=[1])
    for left, right in (("kidney_left", "kidney_right"), ("adrenal_gland_left", "adrenal_gland_right")):
        i, j = NAMES.index(left), NAMES.index(right)
        torch.testing.assert_close(out["maps"][i], mirrored[j])
        torch.testing.assert_close(out["maps"][j], mirrored[i])
    liver = NAMES.index("liver")
    torch.testing.assert_close(out["maps"][liver], mirrored[liver])
    torch.testing.assert_close(out["image"], torch.flip(image, dims=[1]))
    with pytest.raises(ValueError, match="map_keys"):
        LeftRightSwapFlipd(BTCV, keys=("image", "label"), map_keys=("maps",))


def test_training_chain_mirror_swaps_map_channels_with_label_ids(pretrained, cohort, tmp_path):
    """allow_lr_flip through the augmentation chain: mirrored maps, swapped kidney/adrenal channels."""
    chain = segmentation_train_transforms((64, 64), BTCV, spatial_dims=2, num_samples=1, allow_lr_flip=True,
                                          map_key="maps", lr_flip_prob=1.0, affine_prob=0.0, flip_prob=0.0,
                                          intensity_prob=0.0)
    hu = load_image(cohort / "imagesTr" / "phantom_0001_s00.nii.gz").array
    label = torch.from_numpy(load_label(cohort / "labelsTr" / "phantom_0001_s00.nii.gz", BTCV).array)[None].float()
    maps, _ = whole_image_maps(pretrained, hu, PCONFIG)
    out = chain({"image": torch.from_numpy(window_intensity(hu, PCONFIG.window))[None], "label": label,
                 "maps": maps})[0]
    mirrored = torch.flip(maps, dims=[1])
    i, j = NAMES.index("kidney_left"), NAMES.index("kidney_right")
    torch.testing.assert_close(out["maps"][i], mirrored[j])
    torch.testing.assert_close(out["maps"][j], mirrored[i])
    left_id, right_id = BTCV.id_of("kidney_left"), BTCV.id_of("kidney_right")
    assert torch.equal(out["label"][0] == right_id, torch.flip(label[0] == left_id, dims=[0]))


# -------------------------------------------------------------------------------- (c) intensities
def test_intensity_changes_leave_the_maps_unchanged(pretrained, cohort, tmp_path):
    maps = torch.rand(K, 32, 32)
    image = torch.rand(1, 32, 32)
    chain = segmentation_train_transforms(ROI, BTCV, spatial_dims=2, num_samples=1, map_key="maps",
                                          affine_prob=0.0, flip_prob=0.0, intensity_prob=1.0, intensity_shift=0.1)
    label = torch.zeros(1, 32, 32)
    label[0, 8:20, 8:20] = 6
    out = chain({"image": image, "label": label, "maps": maps})[0]
    assert not torch.allclose(out["image"], image) and torch.equal(out["maps"], maps)
    # In the real chain no intensity transform lists the maps.
    model = _segmenter(pretrained)
    config = _config(cohort, tmp_path)
    for t in train_transforms(config, BTCV, fusion_map_transform(model)).transforms:
        if "Intensity" in type(t).__name__:
            assert "maps" not in t.keys, type(t).__name__
    # The maps come from HU with the pre-training window: another fine-tuning window changes the
    # image the segmenter sees, not the maps.
    item = {"image": str(cohort / "imagesTr" / "phantom_0000_s01.nii.gz"),
            "label": str(cohort / "labelsTr" / "phantom_0000_s01.nii.gz")}
    a = eval_transforms(config, BTCV, fusion_map_transform(model))(dict(item))
    other_window = _config(cohort, tmp_path, window=(-100.0, 300.0))
    b = eval_transforms(other_window, BTCV, fusion_map_transform(model))(dict(item))
    assert not torch.allclose(a["image"], b["image"]) and torch.equal(a["maps"], b["maps"])


# ------------------------------------------------------------------------------- (d) sliding windows
def test_every_sliding_window_fuses_its_part_of_the_whole_image_maps(pretrained):
    model = _segmenter(pretrained, "decoder")
    rng = np.random.default_rng(4)
    hu = rng.uniform(-300, 400, size=(96, 80)).astype(np.float32)
    affine = np.diag([6.0, 6.0, 1.0, 1.0])
    volume = Volume(hu, affine, affine, hu.shape, (6.0, 6.0), ("R", "A"), "large")
    config = FinetuneConfig(roi_size=ROI, pretrained_checkpoint="p.pt", fusion="decoder", sw_batch_size=3,
                            window=PCONFIG.window)
    whole = network_maps(model, volume, config)
    expected, _ = model.whole_image_maps(hu)
    assert whole.shape == (1, K, 96, 80) and torch.equal(whole[0], expected)
    image = window_intensity(hu, config.window)
    for run in ("validation", "predict"):
        windows = []
        handle = model.register_forward_pre_hook(lambda m, args, kwargs: windows.append((args[0], kwargs["maps"])),
                                                 with_kwargs=True)
        with torch.no_grad():
            if run == "validation":
                sliding_window_probabilities(model, torch.from_numpy(image)[None, None], ROI, 3, 0.25, maps=whole)
            else:
                predict_volume(model, volume, config, on_spacing_mismatch="ignore")
        handle.remove()
        assert len(windows) >= 3
        n = 0
        for x, maps in windows:
            for b in range(x.shape[0]):
                where = _find(x[b, 0].float().numpy(), image, affine=False)
                assert len(where) == 1, run
                i, j = where[0]
                torch.testing.assert_close(maps[b].float(), expected[:, i:i + 32, j:j + 32], rtol=0, atol=1e-6)
                n += 1
        assert n >= 12, (run, n)  # (96 / 24 - 1) x (80 / 24 ...) windows, all checked
    # attention_maps_volume shows exactly these maps
    shown = attention_maps_volume(model, volume, config)
    np.testing.assert_allclose(shown, expected.numpy(), atol=1e-6)


# -------------------------------------------------------------------------------- (e) val = predict
def test_validation_and_predict_fuse_the_same_maps_and_score_the_same_dice(pretrained, cohort, tmp_path):
    model = _segmenter(pretrained, "input")
    config = _config(cohort, tmp_path / "run", roi_size=(64, 64))  # one window per case
    data = prepare_finetuning_data(config, progress=False)
    loader = make_val_loader(data, config, fusion_map_transform(model))
    seen = {"validation": [], "predict": []}
    current = []
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: current.append(kwargs["maps"]), with_kwargs=True)
    task = SegmentationTask(model, BTCV, config.roi_size, config.sw_batch_size, config.sw_overlap)
    with torch.no_grad():
        val_dice = task.validate(loader)["val_dice"]
    seen["validation"], current[:] = list(current), []
    dices = []
    for case_id in data.split.val:
        case = data.cases[case_id]
        volume = load_image(case["image"])
        labels, _ = predict_volume(model, volume, config, on_spacing_mismatch="ignore")
        truth = load_label(case["label"], BTCV, reference=volume).array
        dice = per_class_dice(torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(truth.astype(np.int64)),
                              BTCV.num_classes)
        finite = dice[~torch.isnan(dice)]
        if finite.numel():
            dices.append(float(finite.mean()))
    seen["predict"] = list(current)
    handle.remove()
    assert len(seen["validation"]) == len(seen["predict"]) == len(data.split.val) >= 2
    for v, p in zip(seen["validation"], seen["predict"]):
        torch.testing.assert_close(v.float(), p.float(), rtol=0, atol=1e-6)
    assert val_dice == pytest.approx(sum(dices) / len(dices), abs=1e-9)
    assert math.isfinite(val_dice)
