"""The pre-training task: the MOSMOS model paired with its two objectives.

``step(batch)`` returns the weighted loss terms by name; the generic training loop sums and logs
them without knowing what they are (``contrastive`` = objective A, ``tags`` = objective B, and
with the competition readout ``background`` and ``affinity``: the intensity constraints on the tag
head's pixels, and ``equivariance``: maps that move with the image).
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch

from mosmoskit.labels import LabelMap, canonical_name
from mosmoskit.losses import ContrastiveLoss, TagLoss, intensity_affinity_loss, intensity_background_loss
from mosmoskit.losses.equivariance import equivariance_loss, move_by_theta, random_moves
from mosmoskit.pretraining.config import PretrainConfig
from mosmoskit.pretraining.data import tag_mosaics
from mosmoskit.pretraining.evaluate import evaluate_pretraining
from mosmoskit.pretraining.model import MosmosPretrainModel

__all__ = ["HOLLOW_ORGANS", "PretrainTask"]

#: organs whose lumen holds gas (canonical names): air inside them is organ, not background
HOLLOW_ORGANS = frozenset({"stomach", "esophagus", "duodenum", "small_bowel", "colon", "rectum", "bowel"})


class PretrainTask:
    """Objective A (image-report InfoNCE) + lambda * objective B (organ tags).

    The contrastive loss, which owns the learnable temperature, is registered on the model as
    ``model.contrastive_loss`` (as CLIP keeps its logit scale in the model), so the optimiser, the
    checkpoint and a DistributedDataParallel wrapper all see the temperature.

    Args:
        model: the pre-training model (with a text encoder when ``contrastive_weight > 0``).
        config: weights and loss options.
        label_map: the tag vocabulary.
        baseline_maps: fixed-position maps for the pointing-game baseline in validation.
    """

    def __init__(
        self,
        model: MosmosPretrainModel,
        config: PretrainConfig,
        label_map: LabelMap,
        baseline_maps: np.ndarray | None = None,
    ) -> None:
        if config.contrastive_weight > 0 and model.text_encoder is None:
            raise ValueError("contrastive_weight > 0 needs a model with a text encoder")
        if "contrastive_loss" not in dict(model.named_children()):
            model.add_module("contrastive_loss", ContrastiveLoss())
        self.model = model
        self.config = config
        self.label_map = label_map
        self.tag_loss = TagLoss(kind=config.tag_loss, unmentioned=config.unmentioned)
        self.baseline_maps = baseline_maps
        # classes (organ k is k + 1) whose pixels may be gas: the background term lets air be them
        self.hollow_classes = [k + 1 for k, name in enumerate(label_map.foreground_names)
                               if canonical_name(name) in HOLLOW_ORGANS]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one batch: ``contrastive`` and/or ``tags``."""
        cfg = self.config
        reports = list(batch["report"]) if cfg.contrastive_weight > 0 else None
        images, targets = batch["image"], batch["tags"]
        n_pairs = len(images)
        # Seeded from the batch itself, so a resumed run draws the same mosaics and moves.
        seed = zlib.crc32("|".join(map(str, batch.get("case_id", ()))).encode())
        if cfg.mosaic_per_batch and n_pairs >= 4 and images.ndim == 4:  # 2D slices only
            # They join the batch's forward pass (BatchNorm then normalises one batch, as in evaluation).
            mosaics, mosaic_tags = tag_mosaics(images, targets, cfg.mosaic_per_batch,
                                               torch.Generator().manual_seed(seed))
            images = torch.cat([images, mosaics])
            targets = torch.cat([targets, mosaic_tags.to(targets.device)])
        out = self.model(images, reports)
        terms: dict[str, torch.Tensor] = {}
        if cfg.contrastive_weight > 0:
            terms["contrastive"] = cfg.contrastive_weight * self.model.contrastive_loss(
                out.image_emb[:n_pairs], out.text_emb)["contrastive"]
        logits = out.tags.logits
        if cfg.tag_loss_weight > 0:
            learned = self.model.tag_head.learned  # tags without negatives in the cohort are left out
            terms["tags"] = cfg.tag_loss_weight * self.tag_loss(logits[:, learned], targets[:, learned])["tags"]
        grid = tuple(out.tags.maps.shape[2:])
        competition = out.tags.pixel_logits is not None
        if competition and cfg.organ_hu and cfg.organ_hu_weight > 0:
            background = intensity_background_loss(out.tags.pixel_logits, images, grid, cfg.window, cfg.organ_hu,
                                                   hollow=self.hollow_classes)
            terms["background"] = cfg.organ_hu_weight * background["background"]
        if competition and cfg.affinity_weight > 0 and images.ndim == 4:
            sigma = cfg.affinity_sigma_hu / (cfg.window[1] - cfg.window[0])
            affinity = intensity_affinity_loss(out.tags.pixel_logits, images, grid, sigma)
            terms["affinity"] = cfg.affinity_weight * affinity["affinity"]
        if competition and cfg.equivariance_weight > 0 and images.ndim == 4:
            # The pairs once more, moved: their pixel classes must be the originals' moved alike.
            theta = random_moves(n_pairs, images.shape[2:], cfg.max_shift, cfg.max_rotation_deg, cfg.max_scale,
                                 torch.Generator().manual_seed(seed + 1)).to(images.device)
            moved = self.model.image_encoder(move_by_theta(images[:n_pairs], theta))
            moved_logits = self.model.tag_head(moved.features, moved.grid).pixel_logits
            terms["equivariance"] = cfg.equivariance_weight * equivariance_loss(
                out.tags.pixel_logits[:n_pairs], moved_logits, theta, grid)["equivariance"]
        return terms

    def extra_logs(self) -> dict[str, float]:
        return {"temperature": self.model.contrastive_loss.temperature}

    def parameters_for_optimizer(self) -> list[dict[str, Any]]:
        """Two groups: the text encoder learns ``text_lr_scale`` times slower (it starts pre-trained)."""
        text_ids = set()
        if self.model.text_encoder is not None:
            text_ids = {id(p) for p in self.model.text_encoder.parameters()}
        image_side = [p for p in self.model.parameters() if p.requires_grad and id(p) not in text_ids]
        text_side = [p for p in self.model.parameters() if p.requires_grad and id(p) in text_ids]
        groups = [{"params": image_side}]
        if text_side and self.config.text_lr_scale > 0:
            groups.append({"params": text_side, "lr": self.config.lr * self.config.text_lr_scale})
        return groups

    def validate(self, loader: Any) -> dict[str, float]:
        return evaluate_pretraining(self.model, loader, self.label_map, device=self.device,
                                    baseline_maps=self.baseline_maps)
