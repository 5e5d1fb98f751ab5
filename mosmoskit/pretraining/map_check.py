"""The standing map check of a pre-training run: its maps against the fixed-position prior.

Run at the end of every pre-training whose held-out pairs have masks (phantoms, labelled data) and
written into ``metrics.json`` under ``maps/...``;
:func:`mosmoskit.pretraining.run.map_check_of_run` re-scores a finished run folder. See :mod:`mosmoskit.evaluation.map_quality` for the three tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mosmoskit.evaluation.map_quality import evaluate_maps, held_out_moves, prior_maps
from mosmoskit.labels import LabelMap
from mosmoskit.pretraining.config import PretrainConfig
from mosmoskit.pretraining.data import ImageReportDataset, training_masks
from mosmoskit.pretraining.evaluate import large_organs

__all__ = ["learned_tags", "map_check", "map_check_examples"]

#: seed of the held-out moves, fixed so that every run is judged on the same moved images
_MOVE_SEED = 20260


def map_check(
    model: torch.nn.Module,
    config: PretrainConfig,
    split: dict[str, list[dict[str, Any]]],
    label_map: LabelMap,
    device: torch.device | str = "cpu",
    erasure: bool = True,
) -> dict[str, float]:
    """Map metrics of ``model`` on the held-out patients of ``split``, moved by :func:`~mosmoskit.evaluation.map_quality.held_out_moves`.

    Returns:
        ``maps/<metric>/<organ>`` and ``maps/<metric>/mean`` for the large organs (see
        :func:`~mosmoskit.evaluation.map_quality.evaluate_maps`); empty when the held-out cases
        have no masks.
    """
    if not split["val"] or not all(c.get("label") for c in split["val"]):
        return {}
    masks = training_masks(split["train"], label_map, config.image_size, config.spacing or None)
    if not masks:
        return {}
    tag_ids = [label_map.id_of(n) for n in label_map.foreground_names]
    prior = prior_maps(masks, tag_ids)
    moved = ImageReportDataset(split["val"], label_map, config.image_size, window=config.window, seed=_MOVE_SEED,
                               with_labels=True, spacing=config.spacing or None, cache_rate=config.cache_rate,
                               **held_out_moves(config.image_size))
    learned = learned_tags(model, label_map)
    organs = [name for name in large_organs(label_map) if name in learned]
    metrics = evaluate_maps(model, moved, label_map, prior, organs, config.window, device=device, erasure=erasure)
    return {f"maps/{key}": value for key, value in metrics.items()}


def learned_tags(model: torch.nn.Module, label_map: LabelMap) -> list[str]:
    """The tags ``model``'s tag head learned (all but those the run left out for lack of negatives)."""
    learned = getattr(getattr(model, "tag_head", None), "learned", None)
    names = list(label_map.foreground_names)
    return names if learned is None else [n for n, keep in zip(names, learned.tolist()) if keep]


@torch.no_grad()
def map_check_examples(
    model: torch.nn.Module,
    config: PretrainConfig,
    split: dict[str, list[dict[str, Any]]],
    label_map: LabelMap,
    n: int = 2,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The first ``n`` moved held-out images of :func:`map_check` with everything needed to draw them.

    Returns:
        Keyword arguments of :func:`mosmoskit.viz.map_check.plot_map_vs_prior`: ``images``,
        ``labels``, ``maps``, ``prior``, ``names``, ``organs`` (the large organs), ``label_ids``,
        ``probabilities``. Volumes are cut on one axial plane (the first image's with the most
        labelled voxels).

    Raises:
        ValueError: the held-out or training cases have no masks.
    """
    if not split["val"] or not all(c.get("label") for c in split["val"]):
        raise ValueError("the held-out cases have no masks: there is nothing to draw the maps against")
    masks = training_masks(split["train"], label_map, config.image_size, config.spacing or None)
    if not masks:
        raise ValueError("the training cases have no masks: the fixed-position prior needs them")
    names = list(label_map.foreground_names)
    tag_ids = [label_map.id_of(name) for name in names]
    learned = learned_tags(model, label_map)
    moved = ImageReportDataset(split["val"][: max(1, int(n))], label_map, config.image_size, window=config.window,
                               seed=_MOVE_SEED, with_labels=True, spacing=config.spacing or None, cache_rate=config.cache_rate,
                               **held_out_moves(config.image_size))
    items = [moved[i] for i in range(len(moved))]
    images = torch.stack([item["image"] for item in items]).to(device)
    model = model.to(device).eval()
    maps, logits = model.attention_maps(images, normalize="none")
    images_np, labels = images[:, 0].cpu().numpy(), np.stack([item["label"].numpy() for item in items])
    maps_np, prior = maps.float().cpu().numpy(), prior_maps(masks, tag_ids)
    if images_np.ndim == 4:
        # Volumes are drawn on one axial plane: the first image's plane with the most labelled voxels.
        z = int(np.argmax((labels[0] > 0).sum(axis=(0, 1))))
        images_np, labels, maps_np, prior = images_np[..., z], labels[..., z], maps_np[..., z], prior[..., z]
    return {
        "images": images_np, "labels": labels, "maps": maps_np, "prior": prior, "names": names,
        "organs": [o for o in large_organs(label_map) if o in learned], "label_ids": tag_ids,
        "probabilities": torch.sigmoid(logits).float().cpu().numpy(),
    }
