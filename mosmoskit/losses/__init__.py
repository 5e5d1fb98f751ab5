"""Losses of the two MOSMOS stages; each returns a dict of named terms that the caller sums.

* :class:`ContrastiveLoss`: objective A, symmetric image-report InfoNCE with a learnable,
  clamped temperature, gathering embeddings across processes under ``torch.distributed``.
* :class:`TagLoss`: objective B, multi-label organ-tag recognition (BCE or asymmetric loss),
  masking tags a report does not mention.
* :func:`intensity_background_loss`: a free constraint on the tag head's pixels (air, fat and
  bone are no organ), read from the intensities; :func:`intensity_affinity_loss`: neighbouring
  pixels of similar intensity share a class.
* :class:`SegmentationLoss`: fine-tuning, Dice + cross-entropy as separate terms
  (:func:`frequency_class_weights` for a class-weighted cross-entropy).

Example:
    >>> import torch
    >>> from mosmoskit.losses import ContrastiveLoss, TagLoss
    >>> terms = {**ContrastiveLoss()(torch.randn(4, 8), torch.randn(4, 8)),
    ...          **TagLoss()(torch.randn(4, 13), torch.ones(4, 13))}
    >>> sorted(terms)
    ['contrastive', 'tags']
    >>> total = sum(terms.values())
"""

from mosmoskit.losses.background import intensity_affinity_loss, intensity_background_loss
from mosmoskit.losses.contrastive import ContrastiveLoss
from mosmoskit.losses.segmentation import SegmentationLoss, frequency_class_weights
from mosmoskit.losses.tags import TAG_ABSENT, TAG_PRESENT, TAG_UNMENTIONED, TagLoss

__all__ = ["ContrastiveLoss", "SegmentationLoss", "frequency_class_weights", "intensity_affinity_loss", "intensity_background_loss", "TagLoss", "TAG_ABSENT", "TAG_PRESENT", "TAG_UNMENTIONED"]
