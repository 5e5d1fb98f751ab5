"""Fine-tuning loss: soft Dice plus cross-entropy, reported as two named terms.

The segmenters (2D U-Net, 3D UNETR) output one logit per class and voxel; the labels are integer
class ids from the label map (background 0). Dice handles the class imbalance of small organs,
cross-entropy gives well-behaved gradients early in training; their sum is the usual choice
(MONAI's UNETR tutorial, nnU-Net). The arithmetic is MONAI's :class:`monai.losses.DiceCELoss`;
this wrapper only checks the inputs and keeps the two terms apart, so that logs show which one
moves.

Cross-entropy may weight each class (``ce_class_weights``, e.g. :func:`frequency_class_weights`).
Why: a class that fills 6 pixels of a 16,000-pixel slice (an adrenal at 3 mm) gets almost no
cross-entropy gradient, and once its softmax probability is near 0 the Dice gradient, which flows
through that probability, vanishes too: the class is never predicted again. Measured on the 2D
phantoms (60 patients, 15 held out, 800 steps, random init): unweighted, both adrenals score Dice
0.00 and the esophagus 0.47; with square-root inverse-frequency weights 0.81, 0.80 and 0.70, and the
13-organ mean rises from 0.76 to 0.88. The weights touch cross-entropy only: MONAI's ``weight``
would rescale the Dice terms as well.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

__all__ = ["SegmentationLoss", "frequency_class_weights"]

# How many offending label values an error message lists before it stops.
_MAX_LISTED = 10


class SegmentationLoss(nn.Module):
    """Dice + cross-entropy on softmax logits and integer labels, as ``{"dice", "ce"}`` terms.

    The returned terms are already weighted, so their sum equals
    ``monai.losses.DiceCELoss(include_background, to_onehot_y=True, softmax=True,
    lambda_dice=dice_weight, lambda_ce=ce_weight)`` on the same inputs.

    Args:
        num_classes: number of output channels C, background included (``LabelMap.num_classes``).
        dice_weight: weight of the Dice term (>= 0).
        ce_weight: weight of the cross-entropy term (>= 0).
        include_background: include channel 0 in the Dice term. Off by default: background fills
            most of the volume, its Dice is close to 1 from the start and only dilutes the organ
            terms; cross-entropy still covers background voxels.
        smooth_nr: Dice numerator smoothing (keeps an organ absent from both prediction and label
            at Dice 1 rather than 0/0).
        smooth_dr: Dice denominator smoothing.
        batch: compute Dice over the whole batch per class instead of per image then averaged
            (steadier when images often miss organs, e.g. 2D slices).
        ce_class_weights: one positive weight per class (background included) for the
            cross-entropy term, or None (every voxel counts alike). The weighted mean divides by
            the summed weights of the voxels' classes, as :func:`torch.nn.functional.cross_entropy`
            does, so the term keeps its scale.

    Raises:
        ValueError: ``num_classes < 2`` (softmax over one class is constant), a negative weight,
            both weights 0, non-positive smoothing, or class weights that are not ``num_classes``
            finite positive numbers.

    Example:
        >>> import torch
        >>> loss_fn = SegmentationLoss(num_classes=3)
        >>> logits = torch.randn(2, 3, 8, 8, 8)                  # (B, C, H, W, D)
        >>> labels = torch.randint(0, 3, (2, 1, 8, 8, 8))        # (B, 1, H, W, D) class ids
        >>> terms = loss_fn(logits, labels)
        >>> sorted(terms)
        ['ce', 'dice']
    """

    def __init__(
        self,
        num_classes: int,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        include_background: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        ce_class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"SegmentationLoss: num_classes must be an int >= 2 (background plus at least one structure), "
                f"got {num_classes!r}"
            )
        for name, value in (("dice_weight", dice_weight), ("ce_weight", ce_weight)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"SegmentationLoss: {name} must be a finite number >= 0, got {value!r}")
        if dice_weight == 0 and ce_weight == 0:
            raise ValueError("SegmentationLoss: dice_weight and ce_weight are both 0: the loss would be constant")
        for name, value in (("smooth_nr", smooth_nr), ("smooth_dr", smooth_dr)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"SegmentationLoss: {name} must be a finite number > 0, got {value!r}")
        self.num_classes = num_classes
        self.ce_class_weights: torch.Tensor | None = None
        if ce_class_weights is not None:
            weights = torch.as_tensor([float(w) for w in ce_class_weights], dtype=torch.float32)
            if weights.numel() != num_classes or not bool(torch.isfinite(weights).all()) or bool((weights <= 0).any()):
                raise ValueError(
                    f"SegmentationLoss: ce_class_weights must be {num_classes} finite numbers > 0 (one per class, "
                    f"background first), got {list(ce_class_weights)!r}"
                )
            self.ce_class_weights = weights
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.include_background = bool(include_background)
        # Unit lambdas: the weights are applied here so each returned term is what it adds to the sum.
        self.dice_ce = DiceCELoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=True,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
        )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted Dice and cross-entropy terms.

        Args:
            logits: (B, C, H, W) or (B, C, H, W, D) raw class scores, C = ``num_classes``
                (no softmax applied: the loss applies it).
            labels: (B, 1, H, W) or (B, 1, H, W, D) class ids in [0, num_classes); integer dtype, or a
                floating dtype holding whole numbers (as MONAI's image loaders produce).

        Returns:
            ``{"dice": dice_weight * dice_loss, "ce": ce_weight * cross_entropy}``, two 0-d tensors.

        Raises:
            ValueError: wrong number of dimensions, C != num_classes, labels without the single
                channel or with other batch/spatial sizes than the logits, or label values that are
                not class ids (negative, fractional, or >= num_classes; the message lists them).
        """
        if logits.dim() not in (4, 5):
            raise ValueError(
                f"SegmentationLoss expects logits (B, C, H, W) or (B, C, H, W, D), got shape {tuple(logits.shape)}"
            )
        if not logits.is_floating_point():
            raise ValueError(f"SegmentationLoss expects floating-point logits, got {logits.dtype}")
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"SegmentationLoss: logits have {logits.shape[1]} channels (shape {tuple(logits.shape)}) but "
                f"num_classes is {self.num_classes}"
            )
        expected = (logits.shape[0], 1, *logits.shape[2:])
        if tuple(labels.shape) != expected:
            no_channel = tuple(labels.shape) == (logits.shape[0], *logits.shape[2:])
            hint = " (add the channel: labels.unsqueeze(1))" if no_channel else ""
            raise ValueError(
                f"SegmentationLoss: labels must have shape (B, 1, *spatial) = {expected} to match logits "
                f"{tuple(logits.shape)}, got {tuple(labels.shape)}{hint}"
            )
        _check_label_values(labels, self.num_classes)
        dice = self.dice_ce.dice(logits, labels)
        if self.ce_class_weights is None:
            ce = self.dice_ce.ce(logits, labels)
        else:
            weights = self.ce_class_weights.to(logits.device)
            ce = F.cross_entropy(logits.float(), labels[:, 0].long(), weight=weights)
        return {"dice": self.dice_weight * dice, "ce": self.ce_weight * ce}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dice_weight={self.dice_weight}, ce_weight={self.ce_weight}, "
            f"include_background={self.include_background}, class-weighted ce={self.ce_class_weights is not None}"
        )


def frequency_class_weights(voxel_counts: Sequence[float]) -> list[float]:
    """Cross-entropy weights from how often each class occurs: ``sqrt(most frequent / this)``.

    The most frequent class (background, usually) gets 1, a class 10,000 times rarer 100. The square
    root (rather than plain inverse frequency, which would give 10,000) keeps rare organs learnable
    without flooding the image with them. A class that never occurs gets 1 (no voxel uses it).

    Args:
        voxel_counts: voxels per class, background first (e.g. summed over the labelled masks).

    Returns:
        One weight per class.

    Raises:
        ValueError: negative or non-finite counts, or all zero.

    Example:
        >>> frequency_class_weights([10000, 100, 1, 0])
        [1.0, 10.0, 100.0, 1.0]
    """
    counts = [float(c) for c in voxel_counts]
    if not counts or not all(math.isfinite(c) and c >= 0 for c in counts) or max(counts) == 0:
        raise ValueError(f"voxel_counts must be finite counts >= 0, not all zero, got {list(voxel_counts)!r}")
    top = max(counts)
    return [math.sqrt(top / c) if c > 0 else 1.0 for c in counts]


def _check_label_values(labels: torch.Tensor, num_classes: int) -> None:
    """Raise ``ValueError`` naming label values that are not class ids in [0, num_classes)."""
    if labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"SegmentationLoss: labels must hold integer class ids, got dtype {labels.dtype}")
    # Elementwise comparisons are cheap next to the network; the (sorting) unique is computed only
    # to write the error message.
    bad = (labels < 0) | (labels >= num_classes)
    if labels.is_floating_point():
        bad = bad | (labels != torch.round(labels))  # also catches NaN
    if bool(bad.any()):
        values = torch.unique(torch.as_tensor(labels)[bad]).tolist()
        listed = ", ".join(repr(v) for v in values[:_MAX_LISTED]) + (" ..." if len(values) > _MAX_LISTED else "")
        raise ValueError(
            f"SegmentationLoss: labels must be class ids 0..{num_classes - 1} (num_classes={num_classes}), found "
            f"{listed} in {int(bad.sum())} voxel(s); remap the label file with its LabelMap first"
        )
