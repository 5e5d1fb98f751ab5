"""The map-quality pieces: competition readout, intensity background, moves, mosaics, map metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mosmoskit.evaluation.localisation import pointing_hits
from mosmoskit.evaluation.map_quality import argmax_masks, dice, evaluate_maps, half_peak_masks, prior_maps
from mosmoskit.labels import LabelMap
from mosmoskit.losses import intensity_background_loss
from mosmoskit.losses.background import background_pixels
from mosmoskit.models.image_encoders import BasicUNetEncoder, load_encoder_into_basic_unet
from mosmoskit.models.tag_head import TagHead
from mosmoskit.pretraining.config import PretrainConfig
from mosmoskit.pretraining.data import Move, move_image, shift_with_padding, tag_mosaics


# ---------------------------------------------------------------------------- competition readout
def test_competition_readout_pixels_are_a_softmax_over_background_and_organs():
    torch.manual_seed(0)
    head = TagHead(num_tags=5, feature_dim=8, embed_dim=16, readout="competition", pos_encoding="none",
                   pool_fraction=0.25)
    out = head(torch.randn(3, 16, 8), grid=(4, 4))
    assert out.maps.shape == (3, 5, 4, 4) and out.pixel_logits.shape == (3, 6, 16)
    probs = out.pixel_logits.softmax(dim=1)
    torch.testing.assert_close(out.attention, probs[:, 1:])
    # organs compete: the K organ probabilities of a pixel never sum past 1
    assert (out.attention.sum(dim=1) <= 1 + 1e-6).all()
    # the tag logit is the log-odds of the mean of the top 25% (4 of 16) pixel probabilities
    top = out.attention.topk(4, dim=-1).values.mean(dim=-1)
    torch.testing.assert_close(out.logits, torch.log(top) - torch.log1p(-top))


def test_competition_readout_learns_which_pixels_carry_a_tag():
    """Two organs, each a bright square in some images: tags alone teach which pixels are which."""
    torch.manual_seed(0)
    head = TagHead(num_tags=2, feature_dim=2, embed_dim=16, readout="competition", pos_encoding="none",
                   pool_fraction=0.05)
    optimiser = torch.optim.Adam(head.parameters(), lr=0.05)
    grid = (8, 8)
    for _ in range(150):
        present = torch.randint(0, 2, (16, 2)).float()
        feats = torch.zeros(16, 2, *grid)
        for b in range(16):
            for k in range(2):
                if present[b, k]:
                    r, c = torch.randint(0, 6, (2,))
                    feats[b, k, r:r + 2, c:c + 2] = 1.0
        out = head(feats.flatten(2).transpose(1, 2), grid)
        loss = F.binary_cross_entropy_with_logits(out.logits, present)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    feats = torch.zeros(1, 2, *grid)
    feats[0, 0, 1:3, 1:3] = 1.0
    feats[0, 1, 5:7, 4:6] = 1.0
    maps = head(feats.flatten(2).transpose(1, 2), grid).maps[0]
    assert maps[0].argmax() == torch.tensor(1 * 8 + 1) or maps[0, 1:3, 1:3].min() > 0.5
    assert maps[1, 5:7, 4:6].min() > 0.5 and maps[1, 1:3, 1:3].max() < 0.5


def test_competition_readout_rejects_a_bad_pool_fraction():
    with pytest.raises(ValueError, match="pool_fraction"):
        TagHead(num_tags=2, feature_dim=4, readout="competition", pool_fraction=0.0)


def test_pretrain_config_checks_the_new_fields():
    with pytest.raises(ValueError, match="organ_hu"):
        PretrainConfig(organ_hu=(300.0, 250.0))
    with pytest.raises(ValueError, match="does not overlap the window"):
        PretrainConfig(organ_hu=(300.0, 400.0))  # the window clips at 250 HU
    PretrainConfig(window=(-100.0, 200.0))  # the default organ_hu reaches past this window: that side is unused
    with pytest.raises(ValueError, match="feature_level"):
        PretrainConfig(feature_path="decoder", feature_level=4)
    with pytest.raises(ValueError, match="max_scale"):
        PretrainConfig(max_scale=1.5)
    with pytest.raises(ValueError, match="phantom_preset"):
        PretrainConfig(phantom_preset="enriched")
    # the 2D-only parts of the default recipe do not stop a 3D run: the ViT has one token grid
    PretrainConfig(spatial_dims=3, image_encoder="vit3d", image_size=(32, 32, 16))


# ------------------------------------------------------------------------------ decoder features
def test_decoder_features_are_fine_and_the_encoder_still_loads_into_basic_unet():
    from monai.networks.nets import BasicUNet

    enc = BasicUNetEncoder(features=(8, 8, 16, 16, 32, 8), feature_level=1, feature_path="decoder")
    out = enc(torch.zeros(2, 1, 32, 32))
    assert out.grid == (16, 16) and out.features.shape == (2, 256, 8) and enc.feature_stride == 2
    assert len(out.hidden_states) == 5  # the encoder levels only, as a segmenter decoder reuses them
    unet = BasicUNet(**enc.basic_unet_kwargs(), out_channels=3)
    assert load_encoder_into_basic_unet(enc, unet) > 0
    with pytest.raises(ValueError, match="feature_path"):
        BasicUNetEncoder(feature_path="sideways")
    with pytest.raises(ValueError, match="feature_level"):
        BasicUNetEncoder(feature_level=4, feature_path="decoder")


# ------------------------------------------------------------------------- intensity background
def test_background_pixels_are_read_from_the_intensity_window():
    window, organ_hu = (-175.0, 250.0), (-50.0, 250.0)
    hu = torch.full((1, 1, 4, 4), 100.0)
    hu[0, 0, 0, :] = -100.0  # fat
    hu[0, 0, 3, :] = 700.0  # bone, clipped to the window's top
    image = ((hu - window[0]) / (window[1] - window[0])).clamp(0, 1)
    mask = background_pixels(image, (4, 4), window, organ_hu).reshape(4, 4)
    assert mask[0].all() and mask[3].all() and not mask[1:3].any()
    coarse = background_pixels(image, (2, 2), window, organ_hu)
    assert coarse.tolist() == [[False, False, False, False]]  # each 2x2 cell is half background: not > 0.5
    # a range beyond the window's top: the clipped bone could be organ, so only the fat is background
    beyond = background_pixels(image, (4, 4), window, (-50.0, 400.0)).reshape(4, 4)
    assert beyond[0].all() and not beyond[1:].any()
    with pytest.raises(ValueError, match="overlapping the intensity window"):
        background_pixels(image, (4, 4), window, (300.0, 400.0))


def test_intensity_background_loss_is_cross_entropy_on_background_pixels_only():
    window = (-175.0, 250.0)
    image = torch.full((1, 1, 2, 2), 0.7)
    image[0, 0, 0, 0] = 0.0
    logits = torch.randn(1, 4, 4)
    loss = intensity_background_loss(logits, image, (2, 2), window, (-50.0, 250.0))["background"]
    expected = -logits.log_softmax(dim=1)[0, 0, 0]
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="pixel_logits"):
        intensity_background_loss(torch.randn(1, 4, 3), image, (2, 2), window, (-50.0, 250.0))


def test_air_inside_the_body_may_belong_to_a_hollow_organ_but_fat_and_outside_air_may_not():
    window = (-175.0, 250.0)
    image = torch.full((1, 1, 3, 3), 0.7)
    image[0, 0, 1, 1] = 0.0  # gas inside the body (tissue on every side)
    image[0, 0, 0, 2] = 0.0  # air at the edge: around the patient
    image[0, 0, 0, 0] = (-100.0 - window[0]) / (window[1] - window[0])  # fat
    logits = torch.randn(1, 4, 9)
    loss = intensity_background_loss(logits, image, (3, 3), window, (-50.0, 250.0), hollow=[2])["background"]
    log_p = logits.log_softmax(dim=1)[0]
    expected = -(torch.logsumexp(log_p[[0, 2], 4], dim=0) + log_p[0, 0] + log_p[0, 2]) / 3
    torch.testing.assert_close(loss, expected)
    plain = intensity_background_loss(logits, image, (3, 3), window, (-50.0, 250.0))["background"]
    torch.testing.assert_close(plain, -(log_p[0, 4] + log_p[0, 0] + log_p[0, 2]) / 3)
    with pytest.raises(ValueError, match="hollow organ classes"):
        intensity_background_loss(logits, image, (3, 3), window, (-50.0, 250.0), hollow=[0])


def test_equivariance_loss_is_zero_for_maps_that_move_with_the_image_and_not_for_fixed_ones():
    from mosmoskit.losses.equivariance import equivariance_loss, move_by_theta, random_moves

    theta = random_moves(2, (16, 16), max_shift=3, max_rotation_deg=10, max_scale=0.1,
                         generator=torch.Generator().manual_seed(0))
    assert theta.shape == (2, 2, 3) and not torch.allclose(theta[0], theta[1])
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    blob = torch.exp(-((xx - 0.2) ** 2 + (yy + 0.1) ** 2) / 0.1)
    logits = torch.stack([torch.zeros_like(blob), 6 * blob - 3]).expand(2, 2, 16, 16)  # background, one organ
    moved = move_by_theta(logits, theta)  # logits that follow the move exactly
    follows = equivariance_loss(logits.flatten(2), moved.flatten(2), theta, (16, 16))["equivariance"]
    stays = equivariance_loss(logits.flatten(2), logits.flatten(2), theta, (16, 16))["equivariance"]
    assert float(follows) < 0.02 * float(stays) and float(stays) > 0.005
    with pytest.raises(ValueError, match="equivariance_loss expects"):
        equivariance_loss(logits.flatten(2), moved.flatten(2), theta, (8, 32 + 1))
    with pytest.raises(ValueError, match="2D moves"):
        random_moves(1, (8, 8, 8), 1, 1, 0.1)


def test_pretraining_with_equivariance_logs_its_term_and_needs_moves(tmp_path):
    from mosmoskit.labels import load_label_map
    from mosmoskit.pretraining.model import build_pretrain_model
    from mosmoskit.pretraining.task import PretrainTask

    btcv = load_label_map("btcv")
    with pytest.raises(ValueError, match="needs moves"):
        PretrainConfig(equivariance_weight=1.0, max_shift=0, max_rotation_deg=0.0, max_scale=0.0)
    # where the term is not used (3D, other readouts) no moves are needed
    PretrainConfig(max_shift=0, max_rotation_deg=0.0, max_scale=0.0, tag_readout="evidence")
    PretrainConfig(max_shift=0, max_rotation_deg=0.0, max_scale=0.0, spatial_dims=3, image_encoder="vit3d",
                   image_size=(32, 32, 16))
    cfg = PretrainConfig(output_dir=str(tmp_path), text_encoder="tiny", image_size=(32, 32), embed_dim=16,
                         tag_head_dim=16, encoder_width=4, contrastive_weight=0.0, equivariance_weight=1.0)
    task = PretrainTask(build_pretrain_model(cfg, btcv), cfg, btcv)
    assert task.hollow_classes == [5, 7]  # esophagus and stomach may hold gas
    terms = task.step({"image": torch.rand(4, 1, 32, 32), "tags": torch.ones(4, 13), "case_id": list("abcd")})
    assert {"tags", "background", "affinity", "equivariance"} <= set(terms)
    terms["equivariance"].backward()
    assert task.model.image_encoder.conv_0.conv_0.conv.weight.grad is not None


# ----------------------------------------------------------------------------- moves and mosaics
def test_a_pure_shift_is_exact_and_a_rotation_turns_about_the_centre():
    rng = np.random.default_rng(0)
    image = rng.random((16, 16)).astype(np.float32)
    np.testing.assert_array_equal(move_image(image, Move((3, -2))), shift_with_padding(image, (3, -2)))
    dot = np.zeros((15, 15), np.float32)
    dot[7, 11] = 1.0  # 4 voxels from the centre along the second axis
    turned = move_image(dot, Move((0, 0), rotation_deg=90.0), order=0)
    assert np.argwhere(turned == 1).tolist() in ([[3, 7]], [[11, 7]])
    label = np.zeros((16, 16), np.int64)
    label[4:8, 4:8] = 5
    moved = move_image(label, Move((1, 1), rotation_deg=10.0, scale=1.1), order=0)
    assert moved.dtype == np.int64 and set(np.unique(moved)) <= {0, 5}


def test_mosaic_tags_are_the_union_of_the_tiles_reports():
    images = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 1, 4, 4).contiguous()
    tags = torch.tensor([[1, 0, -1], [0, 0, 0], [0, 0, -1], [0, 0, 0]]).float()
    mosaics, mosaic_tags = tag_mosaics(images, tags, 2, torch.Generator().manual_seed(0))
    assert mosaics.shape == (2, 1, 4, 4)
    assert mosaic_tags.tolist() == [[1, 0, -1], [1, 0, -1]]
    assert sorted(mosaics[0, 0, ::2, ::2].flatten().tolist()) == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="mosaics"):
        tag_mosaics(images[:3], tags[:3], 1, torch.Generator())


# ---------------------------------------------------------------------------------- map metrics
def test_pointing_on_a_plateau_takes_its_middle_not_the_face():
    coarse = torch.zeros(1, 1, 3, 3, 2)
    coarse[0, 0, 0, 1, 0] = 1.0  # a peak in an outer cell
    up = F.interpolate(coarse, size=(48, 48, 32), mode="trilinear", align_corners=False)[0].numpy()
    label = np.zeros((48, 48, 32), np.int64)
    label[2:14, 18:30, 2:14] = 1  # the organ under that cell, away from the faces
    assert pointing_hits(up, label, [1]) == {1: True}


class _IntensityModel(torch.nn.Module):
    """Organ k has intensity (k + 1) / 10: maps are exact, logits count the organ's pixels."""

    def attention_maps(self, images, normalize="none"):
        levels = torch.arange(1, 4, dtype=images.dtype).reshape(1, 3, 1, 1) / 10
        maps = (images - levels).abs().lt(0.01).float()
        counts = maps.flatten(2).sum(dim=2)
        return maps, torch.log1p(counts)


def test_evaluate_maps_scores_a_perfect_map_above_the_prior():
    label_map = LabelMap.from_dict({"background": 0, "a": 1, "b": 2, "c": 3}, name="toy")
    rng = np.random.default_rng(0)
    items, labels = [], []
    for _ in range(6):
        label = np.zeros((32, 32), np.int64)
        for organ in (1, 2, 3):
            r, c = rng.integers(0, 24, size=2)
            label[r:r + 7, c:c + 7] = organ
        image = np.where(label > 0, label / 10, 0.5).astype(np.float32)
        items.append({"image": torch.from_numpy(image[None]), "label": torch.from_numpy(label)})
        labels.append(label)
    prior = prior_maps(labels[:3], [1, 2, 3])
    metrics = evaluate_maps(_IntensityModel(), items, label_map, prior, ["a", "b", "c"], window=(-175.0, 250.0))
    assert metrics["pointing/mean"] == 1.0 and metrics["dice_half_peak/mean"] == 1.0
    assert metrics["dice_argmax/mean"] == 1.0
    assert metrics["dice_prior/mean"] < 0.9
    assert metrics["erase_drop/mean"] > 2.0 and abs(metrics["blob_drop/mean"]) < 0.5
    assert metrics["n_images"] == 6


def test_half_peak_and_argmax_masks():
    maps = np.array([[[0.2, 0.6], [0.0, 0.1]], [[0.7, 0.3], [0.0, 0.0]]], np.float32)
    assert half_peak_masks(maps)[0].tolist() == [[False, True], [False, False]]
    assert not half_peak_masks(np.zeros((1, 2, 2))).any()
    arg = argmax_masks(maps)
    assert arg[1, 0, 0] and arg[0, 0, 1] and not arg[:, 1, :].any()
    assert dice(np.ones((2, 2), bool), np.ones((2, 2), bool)) == 1.0
    assert math.isclose(dice(np.eye(2, dtype=bool), np.ones((2, 2), bool)), 2 * 2 / 6)
