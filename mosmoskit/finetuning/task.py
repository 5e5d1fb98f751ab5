"""The fine-tuning task: a segmenter paired with Dice + cross-entropy.

``step(batch)`` returns the two loss terms by name (``dice``, ``ce``); the generic training loop
sums and logs them. ``validate(loader)`` segments whole validation cases with a sliding window
(exactly as inference does) and returns their mean organ Dice. The validation cases come from the
training pool only (see :mod:`mosmoskit.finetuning.data`): the test set is never looked at while
training.

A segmenter that fuses precomputed maps (``MosmosSegmenter.precomputed_maps``) gets them from the
batch (``batch["maps"]``: the whole image's maps, cropped and augmented with the image); the
sliding window cuts the maps with the image (the two are concatenated before
``sliding_window_inference`` and split again for the model), so every window fuses the whole
image's maps, never maps made from the window.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from mosmoskit.labels import LabelMap
from mosmoskit.losses import SegmentationLoss

__all__ = [
    "SegmentationTask",
    "check_maps_given",
    "map_predictor",
    "per_class_dice",
    "sliding_window",
    "sliding_window_probabilities",
    "split_maps",
    "with_maps",
]


def per_class_dice(prediction: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Hard Dice of every foreground class of one case.

    Args:
        prediction: (*spatial) or (1, *spatial) integer class ids.
        label: the ground truth, same shape.
        num_classes: C, background included.

    Returns:
        (C - 1,) float64 tensor: ``2 |P & G| / (|P| + |G|)`` per class 1..C-1, NaN for a class
        absent from both (nothing to score; left out of means, as in
        :func:`mosmoskit.evaluation.segmentation.organ_metrics`).

    Raises:
        ValueError: shapes differ.
    """
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in shape")
    p = prediction.reshape(-1).long()
    g = label.reshape(-1).long()
    pred_counts = torch.bincount(p, minlength=num_classes)[:num_classes].double()
    gt_counts = torch.bincount(g, minlength=num_classes)[:num_classes].double()
    overlap = torch.bincount(g[p == g], minlength=num_classes)[:num_classes].double()
    total = pred_counts + gt_counts
    dice = torch.where(total > 0, 2.0 * overlap / total.clamp_min(1.0), torch.full_like(total, math.nan))
    return dice[1:]


def with_maps(image: torch.Tensor, maps: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """``image`` and ``maps`` as one tensor for a sliding window, and the number of image channels.

    Args:
        image: (B, C, *spatial).
        maps: (B, K, *spatial) the whole image's maps, or None.

    Returns:
        ``(x, C)``: x (B, C [+ K], *spatial); :func:`split_maps` of any window of x gives the
        window's image and maps, cut at the same place.
    """
    if maps is None:
        return image, image.shape[1]
    if maps.shape[0] != image.shape[0] or maps.shape[2:] != image.shape[2:]:
        raise ValueError(f"maps {tuple(maps.shape)} do not fit the image {tuple(image.shape)}: (B, K, *spatial) "
                         f"with the image's B and spatial size")
    return torch.cat([image, maps.to(image.dtype)], dim=1), image.shape[1]


def split_maps(window: torch.Tensor, image_channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The image and maps of a window of :func:`with_maps`'s tensor (maps None if it had none)."""
    if window.shape[1] == image_channels:
        return window, None
    return window[:, :image_channels], window[:, image_channels:]


def map_predictor(model: nn.Module, image_channels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A sliding-window predictor: splits each window of :func:`with_maps` and calls
    ``model(image, maps=maps)`` (``model(image)`` when there are no maps); returns the logits."""

    def predictor(window: torch.Tensor) -> torch.Tensor:
        image, maps = split_maps(window, image_channels)
        return model(image) if maps is None else model(image, maps=maps)

    return predictor


def check_maps_given(model: nn.Module, maps: Any, what: str) -> None:
    """Raise ``ValueError`` if ``model`` fuses precomputed maps and ``maps`` is None."""
    if maps is None and getattr(model, "precomputed_maps", False):
        raise ValueError(
            f"{what}: this segmenter fuses maps made once per whole image (precomputed_maps), but the batch has no "
            f"'maps'; build the data with mosmoskit.finetuning.data.fusion_map_transform(model), or compute them "
            f"with model.whole_image_maps(image_hu)"
        )


def sliding_window(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    roi_size: Sequence[int],
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The kit's one sliding window: MONAI's, Gaussian-weighted, used by validation and ``predict`` alike.

    Args:
        predictor: maps (N, C_in, *roi_size) windows to (N, C_out, *roi_size) outputs.
        x: (B, C_in, *spatial), any spatial size (padded to ``roi_size`` where smaller).
        roi_size, sw_batch_size, overlap: the window, windows per call, overlap in [0, 1).
        sw_device: where windows are computed (default: ``x``'s device).
        device: where the output is accumulated (default: ``x``'s device).

    Returns:
        (B, C_out, *spatial) plain tensor on ``device``.
    """
    from monai.inferers import sliding_window_inference

    out = sliding_window_inference(
        x, roi_size=tuple(int(s) for s in roi_size), sw_batch_size=sw_batch_size, predictor=predictor,
        overlap=overlap, mode="gaussian", sw_device=sw_device, device=device,
    )
    return out.as_tensor() if hasattr(out, "as_tensor") else out


def sliding_window_probabilities(
    model: nn.Module,
    image: torch.Tensor,
    roi_size: Sequence[int],
    sw_batch_size: int = 4,
    overlap: float = 0.25,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    maps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax probabilities of a whole image, averaged over overlapping windows (:func:`sliding_window`).

    Args:
        model: maps (N, C_in, *roi_size) [and maps (N, K, *roi_size)] to logits (N, C, *roi_size).
        image: (B, C_in, *spatial), any spatial size (padded to ``roi_size`` where smaller).
        roi_size: the window, the network's input size.
        sw_batch_size: windows per forward pass.
        overlap: overlap of neighbouring windows, in [0, 1).
        sw_device: where windows are computed (default: the image's device).
        device: where the output is accumulated (default: the image's device); ``"cpu"`` keeps
            a large volume's output off the GPU.
        maps: (B, K, *spatial) the whole image's maps, or None: each window passes the maps'
            window to ``model(window, maps=...)`` (zero-padded wherever the image is padded).

    Returns:
        (B, C, *spatial) float32 probabilities on ``device``.
    """
    x, channels = with_maps(image, maps)
    logits = map_predictor(model, channels)

    def predictor(window: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits(window).float(), dim=1)

    return sliding_window(predictor, x, roi_size, sw_batch_size, overlap, sw_device=sw_device, device=device)


class SegmentationTask:
    """A segmenter and its Dice + cross-entropy loss, for :class:`~mosmoskit.training.Trainer`.

    Args:
        model: a segmenter mapping (B, C_in, *roi_size) images to (B, C, *roi_size) logits.
        label_map: the output channels' label map (C = ``label_map.num_classes``).
        roi_size: the sliding window used by :meth:`validate`.
        sw_batch_size, overlap: sliding-window settings of :meth:`validate`.
        dice_weight, ce_weight: weights of the two loss terms.
        batch_dice: Dice over the whole batch per organ rather than per crop (see
            :class:`~mosmoskit.losses.SegmentationLoss`).
        ce_class_weights: one cross-entropy weight per class, or None (see
            :class:`~mosmoskit.losses.SegmentationLoss`).

    Example:
        >>> import torch
        >>> from mosmoskit.labels import load_label_map
        >>> from mosmoskit.models import build_segmenter
        >>> model, _ = build_segmenter(2, "btcv", (32, 32))
        >>> task = SegmentationTask(model, load_label_map("btcv"), (32, 32))
        >>> terms = task.step({"image": torch.rand(2, 1, 32, 32), "label": torch.zeros(2, 1, 32, 32)})
        >>> sorted(terms)
        ['ce', 'dice']
    """

    def __init__(
        self,
        model: nn.Module,
        label_map: LabelMap,
        roi_size: Sequence[int],
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        batch_dice: bool = True,
        encoder_lr_scale: float = 1.0,
        ce_class_weights: Sequence[float] | None = None,
    ) -> None:
        self.model = model
        self.encoder_lr_scale = float(encoder_lr_scale)
        self.label_map = label_map
        self.roi_size = tuple(int(s) for s in roi_size)
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        self.loss = SegmentationLoss(label_map.num_classes, dice_weight=dice_weight, ce_weight=ce_weight,
                                      batch=batch_dice, ce_class_weights=ce_class_weights)

    def parameters_for_optimizer(self) -> list[Any]:
        """All parameters at one rate, or two groups when ``encoder_lr_scale`` != 1: the model's
        ``encoder_parameters()`` at ``lr * encoder_lr_scale``, everything else at ``lr``."""
        if self.encoder_lr_scale == 1.0:
            return list(self.model.parameters())
        chooser = getattr(self.model, "encoder_parameters", None)
        if not callable(chooser):
            raise ValueError(f"encoder_lr_scale={self.encoder_lr_scale} needs a model with encoder_parameters() "
                             f"(a MosmosSegmenter), got {type(self.model).__name__}")
        encoder_ids = {id(p) for p in chooser()}
        rest = [p for p in self.model.parameters() if id(p) not in encoder_ids]
        encoder = [p for p in self.model.parameters() if id(p) in encoder_ids]
        return [{"params": rest}, {"params": encoder, "lr_scale": self.encoder_lr_scale}]

    def step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss terms of one batch.

        Args:
            batch: ``image`` (B, C_in, *roi_size) float, ``label`` (B, 1, *roi_size) class ids, and
                for a segmenter with precomputed maps ``maps`` (B, K, *roi_size).

        Returns:
            ``{"dice": ..., "ce": ...}``, scalar tensors.

        Raises:
            ValueError: a segmenter with precomputed maps and a batch without ``maps``.
        """
        maps = batch.get("maps")
        check_maps_given(self.model, maps, "training step")
        logits = self.model(batch["image"]) if maps is None else self.model(batch["image"], maps=maps)
        return self.loss(logits, batch["label"])

    def validate(self, loader: Iterable[dict[str, Any]]) -> dict[str, float]:
        """Mean organ Dice of whole validation cases (sliding window, argmax).

        Args:
            loader: batches of whole cases, ``image`` (1, C_in, *spatial), ``label`` (1, 1, *spatial),
                and ``maps`` (1, K, *spatial) for a segmenter with precomputed maps.

        Returns:
            ``{"val_dice": mean over cases of the mean Dice over organs present in the case's
            ground truth or prediction, "val_cases": number of cases}``.
        """
        per_case = []
        for batch in loader:
            check_maps_given(self.model, batch.get("maps"), "validation")
            probs = sliding_window_probabilities(self.model, batch["image"], self.roi_size, self.sw_batch_size,
                                                 self.overlap, maps=batch.get("maps"))
            predicted = probs.argmax(dim=1)
            for b in range(predicted.shape[0]):
                dice = per_class_dice(predicted[b], batch["label"][b, 0], self.label_map.num_classes)
                finite = dice[~torch.isnan(dice)]
                if finite.numel():
                    per_case.append(float(finite.mean()))
        mean = sum(per_case) / len(per_case) if per_case else math.nan
        return {"val_dice": mean, "val_cases": float(len(per_case))}
