"""Do the pixel-tag maps find the organ on images the model never saw? Three tests and their bar.

A map is only worth feeding to a segmenter if it beats what knows nothing about the image: the
**fixed-position prior**, each organ's mean mask over other patients (an atlas). All three tests run
on held-out patients whose images are *moved* (shifted, rotated, zoomed: :data:`HELD_OUT_MOVES`),
so a map that always points at the same place cannot pass them, and every number comes with the
prior's number on the same images:

1. **Pointing game**: is the peak of organ k's map inside organ k?
2. **Zero-label map Dice**: the maps as a segmentation with no labelled pixel at all, by the
   half-peak threshold of each map, and (for maps that are per-pixel class probabilities, as the
   competition readout gives) by the argmax over background and organs. The prior is scored both
   ways and its better result is the bar.
3. **Counterfactual erasure**: replace the organ's pixels by fat and noise; its tag logit should
   fall. Erasing an equal-size blob elsewhere in the body should not move it. A tag that the
   context predicts fails this test even when its AUROC is high.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mosmoskit.evaluation.localisation import pointing_hits
from mosmoskit.labels import LabelMap

__all__ = ["HELD_OUT_MOVES", "held_out_moves", "half_peak_masks", "argmax_masks", "dice", "evaluate_maps", "prior_maps"]

#: how held-out images are moved for every map metric: shifts up to 15 voxels per axis, rotations
#: up to 12 degrees, zooms of +-10% (keyword arguments of ``ImageReportDataset``), for a 128-pixel
#: field of view; :func:`held_out_moves` scales the shift to other grids
HELD_OUT_MOVES: dict[str, float] = {"max_shift": 15, "max_rotation_deg": 12.0, "max_scale": 0.10}


def held_out_moves(image_size: Sequence[int]) -> dict[str, float]:
    """:data:`HELD_OUT_MOVES` for a grid of ``image_size``: the shift is the same share of the field of
    view (15 of 128 pixels, about 45 mm on the 2D phantoms; 6 voxels of a 48-voxel 3D grid), so a
    coarse 3D grid is not moved four times as far as a 2D slice."""
    side = min(int(s) for s in image_size[:2])
    return {**HELD_OUT_MOVES, "max_shift": max(1, round(HELD_OUT_MOVES["max_shift"] * side / 128))}

#: fat and its noise in HU: what fills an erased organ's place
_FAT_HU, _FAT_NOISE_HU = -100.0, 10.0
#: an organ smaller than this (voxels) is not erased: a few voxels move no logit
_MIN_ERASE_VOXELS = 30


def prior_maps(labels: Sequence[np.ndarray], tag_ids: Sequence[int]) -> np.ndarray:
    """Each organ's mean mask over ``labels`` (K, *spatial): the fixed-position prior."""
    stack = np.stack([np.asarray(l) for l in labels])
    return np.stack([(stack == organ).mean(axis=0) for organ in tag_ids]).astype(np.float32)


def half_peak_masks(maps: np.ndarray) -> np.ndarray:
    """(K, *spatial) bool: each map at or above half its own peak (an all-zero map gives nothing)."""
    peak = maps.reshape(maps.shape[0], -1).max(axis=1).reshape(-1, *([1] * (maps.ndim - 1)))
    return (maps >= 0.5 * peak) & (peak > 0)


def argmax_masks(probabilities: np.ndarray) -> np.ndarray:
    """(K, *spatial) bool from per-voxel organ probabilities: argmax over background (1 - sum) and K organs."""
    background = 1.0 - probabilities.sum(axis=0, keepdims=True)
    winner = np.concatenate([background, probabilities]).argmax(axis=0)
    return np.stack([winner == k + 1 for k in range(probabilities.shape[0])])


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1 when both are empty)."""
    total = int(prediction.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * float((prediction & truth).sum()) / total


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _erase(image: np.ndarray, mask: np.ndarray, window: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """``image`` (windowed to [0, 1]) with ``mask`` replaced by fat and its noise."""
    low, high = float(window[0]), float(window[1])
    fat = (_FAT_HU + rng.normal(0.0, _FAT_NOISE_HU, size=int(mask.sum())) - low) / (high - low)
    out = image.copy()
    out[mask] = np.clip(fat, 0.0, 1.0)
    return out


def _blob_elsewhere(mask: np.ndarray, label: np.ndarray, body: np.ndarray, rng: np.random.Generator,
                    tries: int = 50) -> np.ndarray | None:
    """The organ's mask moved to a place in the body where it touches neither itself nor the organ."""
    coords = np.argwhere(mask)
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    for _ in range(tries):
        offset = np.array([rng.integers(-lo[a], mask.shape[a] - hi[a]) for a in range(mask.ndim)])
        moved = np.zeros_like(mask)
        moved[tuple((coords + offset).T)] = True
        if (moved & mask).any():
            continue
        if body[moved].mean() >= 0.9:
            return moved
    return None


@torch.no_grad()
def evaluate_maps(
    model: torch.nn.Module,
    dataset: Any,
    label_map: LabelMap,
    prior: np.ndarray,
    organs: Sequence[str],
    window: Sequence[float],
    device: torch.device | str = "cpu",
    erasure: bool = True,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, float]:
    """Pointing game, zero-label Dice and erasure of a pre-trained model's maps, beside the prior.

    Args:
        model: a :class:`~mosmoskit.pretraining.model.MosmosPretrainModel` (image side is enough).
        dataset: held-out pairs with labels (``ImageReportDataset(..., with_labels=True,
            **HELD_OUT_MOVES)``): each item has ``image`` (1, *spatial) windowed to [0, 1] and
            ``label``.
        label_map: the tag vocabulary; map k is organ ``label_map.foreground_names[k]``.
        prior: (K, *spatial) fixed-position prior (:func:`prior_maps` of other patients' masks).
        organs: the organs to score (names of ``label_map``).
        window: the HU window of the images (to write fat into an erased organ).
        device: where to run the model.
        erasure: run the erasure test (two extra forward passes per organ and image).
        batch_size: images per forward pass.
        seed: the noise of erased pixels and the places of the control blobs.

    Returns:
        Flat dict: ``pointing/<organ>``, ``pointing_prior/<organ>``, ``dice_half_peak/<organ>``,
        ``dice_argmax/<organ>`` (only when the maps are per-voxel probabilities that sum to at most
        1), ``dice_prior/<organ>`` (the prior's better rule), ``erase_drop/<organ>``,
        ``blob_drop/<organ>`` (mean logit drops), each also as ``.../mean`` over ``organs``, and
        ``n_images``. NaN marks an organ never present in the held-out images.
    """
    names = list(label_map.foreground_names)
    index = {n: names.index(n) for n in organs}
    tag_ids = [label_map.id_of(n) for n in names]
    rng = np.random.default_rng(seed)
    prior_half, prior_arg = half_peak_masks(prior), argmax_masks(prior)
    rows: dict[str, dict[str, list[float]]] = {key: {n: [] for n in organs} for key in (
        "pointing", "pointing_prior", "dice_half_peak", "dice_argmax", "dice_prior_half_peak", "dice_prior_argmax",
        "erase_drop", "blob_drop")}
    probabilistic = True
    was_training = model.training
    model.eval()
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = torch.stack([item["image"] for item in items]).to(device)
        maps, logits = model.attention_maps(images, normalize="none")
        maps, logits = maps.float().cpu().numpy(), logits.float().cpu().numpy()
        probabilistic = probabilistic and bool((maps.sum(axis=1) <= 1.0 + 1e-4).all())
        erased, blobs, owners = [], [], []
        for b, item in enumerate(items):
            label = item["label"].numpy()
            hits = pointing_hits(maps[b], label, tag_ids)
            prior_hits = pointing_hits(prior, label, tag_ids)
            half, arg = half_peak_masks(maps[b]), argmax_masks(maps[b])
            image = item["image"][0].numpy()
            body = image > 0.05  # brighter than air and the fat at the window's floor
            for organ in organs:
                k = index[organ]
                truth = label == tag_ids[k]
                if not truth.any():
                    continue
                rows["pointing"][organ].append(float(hits[tag_ids[k]]))
                rows["pointing_prior"][organ].append(float(prior_hits[tag_ids[k]]))
                rows["dice_half_peak"][organ].append(dice(half[k], truth))
                rows["dice_argmax"][organ].append(dice(arg[k], truth))
                rows["dice_prior_half_peak"][organ].append(dice(prior_half[k], truth))
                rows["dice_prior_argmax"][organ].append(dice(prior_arg[k], truth))
                if erasure and truth.sum() >= _MIN_ERASE_VOXELS:
                    blob = _blob_elsewhere(truth, label, body, rng)
                    if blob is not None:
                        erased.append(_erase(image, truth, window, rng))
                        blobs.append(_erase(image, blob, window, rng))
                        owners.append((b, organ))
        if owners:
            for which, stack in (("erase_drop", erased), ("blob_drop", blobs)):
                batch = torch.from_numpy(np.stack(stack))[:, None].to(device)
                new_logits = torch.cat([model.attention_maps(chunk, normalize="none")[1]
                                        for chunk in batch.split(batch_size)]).float().cpu().numpy()
                for (b, organ), new in zip(owners, new_logits):
                    rows[which][organ].append(float(logits[b, index[organ]] - new[index[organ]]))
    model.train(was_training)
    metrics: dict[str, float] = {"n_images": float(len(dataset))}
    for organ in organs:
        rows.setdefault("dice_prior", {})[organ] = [
            max(_mean(rows["dice_prior_half_peak"][organ]), _mean(rows["dice_prior_argmax"][organ]))
        ] if rows["dice_prior_half_peak"][organ] else []
    keys = ["pointing", "pointing_prior", "dice_half_peak", "dice_prior", "dice_prior_half_peak",
            "dice_prior_argmax", "erase_drop", "blob_drop"] + (["dice_argmax"] if probabilistic else [])
    for key in keys:
        per_organ = {organ: _mean(rows[key][organ]) for organ in organs}
        metrics.update({f"{key}/{organ}": value for organ, value in per_organ.items()})
        finite = [v for v in per_organ.values() if v == v]
        metrics[f"{key}/mean"] = _mean(finite)
    return metrics
