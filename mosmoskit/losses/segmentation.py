"""Fine-tuning loss: soft Dice plus cross-entropy, reported as two named terms.

The segmenters (2D U-Net, 3D UNETR) output one logit per class and voxel; the labels are integer
class ids from the label map (background 0). Dice handles the class imbalance of small organs,
cross-entropy gives well-behaved gradients early in training; their sum is the usual choice
(MONAI's UNETR tutorial, nnU-Net). The arithmetic is MONAI's :class:`monai.losses.DiceCELoss`;
this wrapper only checks the inputs and keeps the two terms apart, so that logs show which one
moves.
"""

from __future__ import annotations

import math

import torch
from monai.losses import DiceCELoss
from torch import nn

__all__ = ["SegmentationLoss"]

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

    Raises:
        ValueError: ``num_classes < 2`` (softmax over one class is constant), a negative weight,
            both weights 0, or non-positive smoothing.

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
        ce = self.dice_ce.ce(logits, labels)
        return {"dice": self.dice_weight * dice, "ce": self.ce_weight * ce}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dice_weight={self.dice_weight}, ce_weight={self.ce_weight}, "
            f"include_background={self.include_background}"
        )


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
