"""Training augmentations for segmentation that respect left and right.

A flip along the left-right axis turns a left kidney into something that looks, lies and is
labelled like a right kidney, except that its label still says "left". A network trained on such
samples learns that laterality is noise, and confuses the two kidneys at test time. So:

* the default pipeline flips only along axes that keep left and right where they are. Images in
  the kit are in RAS orientation (:func:`mosmoskit.data.transforms.load_transforms`), where
  spatial axis 0 is left-right: it is never flipped;
* a left-right flip is available only through :class:`LeftRightSwapFlipd`, which flips axis 0
  *and* exchanges the ids of every left/right pair of the label map (``kidney_left`` <->
  ``kidney_right``, ``adrenal_gland_left`` <-> ``adrenal_gland_right``, AMOS's ``left_kidney``
  <-> ``right_kidney``, TotalSegmentator's ``rib_left_3`` <-> ``rib_right_3``), found by name, so
  the flipped sample is a plausible mirrored patient with correct labels. Turn it on with
  ``allow_lr_flip=True``.

Mirroring is plausible for paired organs and for brains; it is *not* for the heart, whose left
and right chambers are different structures, not mirror images (MMWHS): keep ``allow_lr_flip``
off for cardiac data.

The pipeline works on loaded, channel-first samples ``{"image": (C, *spatial), "label": (1,
*spatial)}``: put it after :func:`~mosmoskit.data.transforms.load_transforms`,
:class:`~mosmoskit.data.transforms.CheckLabelsd` and the intensity window.

Pre-trained attention maps (``map_key``, usually ``"maps"``: K channels, channel k for the k-th
foreground organ, made by :class:`~mosmoskit.pretraining.maps.WholeImageMapsd` on the whole image)
travel with the image: they are padded, cropped, rotated and scaled (linear interpolation) and
flipped exactly as the image; a left-right mirror also exchanges the channels of every left/right
pair, as it exchanges their label ids. Intensity changes never touch them.

Example:
    >>> import torch
    >>> from mosmoskit.data.augment import segmentation_train_transforms
    >>> chain = segmentation_train_transforms((32, 32, 16), "btcv", spatial_dims=3, num_samples=2)
    >>> sample = {"image": torch.rand(1, 48, 48, 24), "label": torch.zeros(1, 48, 48, 24)}
    >>> sample["label"][0, 10:20, 10:20, 5:10] = 1
    >>> crops = chain(sample)
    >>> len(crops), tuple(crops[0]["image"].shape)
    (2, (1, 32, 32, 16))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    Flip,
    MapTransform,
    RandAffined,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)

from mosmoskit.labels import LabelMap, load_label_map

__all__ = [
    "AugmentConfig",
    "ClassIndicesd",
    "LR_AXIS",
    "LeftRightSwapFlipd",
    "left_right_pairs",
    "segmentation_train_transforms",
    "train_transforms_from_config",
]

#: Spatial axis that runs left-right in the kit's RAS orientation.
LR_AXIS = 0
_LATERAL = {"left": "right", "right": "left"}


def left_right_pairs(label_map: LabelMap | str) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """Find the left/right pairs of a label map by name.

    A name is lateral when exactly one of its underscore-separated words is ``left`` or
    ``right`` (``kidney_left``, ``left_kidney``, ``rib_left_3``); its counterpart is the same name
    with that word exchanged. Nothing is matched by substring (``leftover`` is not lateral).

    Args:
        label_map: a :class:`LabelMap` or a shipped name (``"btcv"``).

    Returns:
        ``(pairs, unpaired)``: ``pairs`` holds ``(left_name, right_name)`` tuples in id order of
        the left name; ``unpaired`` the lateral names whose counterpart is not in the map (such as
        TotalSegmentator's ``atrial_appendage_left``).
    """
    lmap = load_label_map(label_map)
    pairs: list[tuple[str, str]] = []
    unpaired: list[str] = []
    for name in lmap.foreground_names:
        words = name.split("_")
        sides = [i for i, w in enumerate(words) if w in _LATERAL]
        if len(sides) != 1:
            continue
        i = sides[0]
        other = "_".join(words[:i] + [_LATERAL[words[i]]] + words[i + 1 :])
        if other not in lmap:
            unpaired.append(name)
        elif words[i] == "left":
            pairs.append((name, other))
    return tuple(pairs), tuple(unpaired)


class ClassIndicesd(MapTransform):
    """Store the flat voxel indices of every class of a mask, for class-balanced crops.

    ``RandCropByLabelClassesd`` otherwise scans the whole mask once per class for every crop it
    cuts: on a 160x160x128 volume that is most of a training step's data time. This transform is
    deterministic, so a ``CacheDataset`` keeps its output and the scan happens once per case.
    Large classes are thinned with a fixed stride to at most ``max_per_class`` indices (a crop
    centre needs a representative voxel, not all of them), which bounds the memory per case to
    ``num_classes * max_per_class`` integers.

    Args:
        label_key: the integer mask, channel first ``(1, *spatial)``.
        num_classes: classes of the label map, background included.
        output_key: where the list of per-class index arrays goes (default ``label_key +
            "_cls_indices"``).
        max_per_class: indices kept per class at most.

    Example:
        >>> import torch
        >>> mask = torch.zeros(1, 4, 4, dtype=torch.long); mask[0, 1, 2] = 2
        >>> out = ClassIndicesd("label", num_classes=3)({"label": mask})
        >>> [len(i) for i in out["label_cls_indices"]], int(out["label_cls_indices"][2][0])
        ([15, 0, 1], 6)
    """

    def __init__(self, label_key: str, num_classes: int, output_key: str | None = None,
                 max_per_class: int = 200_000) -> None:
        super().__init__((label_key,))
        if num_classes < 2 or max_per_class < 1:
            raise ValueError(f"num_classes must be >= 2 and max_per_class >= 1, got {num_classes}, {max_per_class}")
        self.label_key = label_key
        self.num_classes = int(num_classes)
        self.output_key = output_key or f"{label_key}_cls_indices"
        self.max_per_class = int(max_per_class)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.utils import convert_to_numpy

        d = dict(data)
        label = convert_to_numpy(d[self.label_key])
        flat = label.reshape(label.shape[0], -1)[0] if label.ndim > 1 else label.ravel()
        indices = []
        for k in range(self.num_classes):
            found = np.flatnonzero(flat == k)
            if found.size > self.max_per_class:
                found = found[:: int(math.ceil(found.size / self.max_per_class))]
            indices.append(found)
        d[self.output_key] = indices
        return d


def _check_prob(value: float, name: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return v


class LeftRightSwapFlipd(RandomizableTransform, MapTransform):
    """Mirror a sample left-right and swap the ids of left/right organ pairs in its masks.

    With probability ``prob`` (1.0: always) every key is flipped along ``lr_axis`` (spatial axis 0
    in RAS) with MONAI's ``Flip``, which also updates a MetaTensor's affine and records the
    operation; in ``label_keys`` the ids of each pair found by :func:`left_right_pairs` are then
    exchanged, so a left-kidney voxel lands on the mirrored position with the right kidney's id.
    Structures without a side (liver, spleen) are mirrored and keep their ids.

    Args:
        label_map: the masks' label map (a :class:`LabelMap` or a shipped name).
        keys: keys to flip: images and masks, channel first ``(C, *spatial)``.
        label_keys: which of ``keys`` are integer masks whose ids are swapped.
        prob: probability of flipping a sample.
        lr_axis: the spatial axis that runs left-right (0 in RAS).
        allow_unpaired: accept a map with lateral names that have no counterpart (they would be
            mirrored onto the wrong side under their old name); by default that raises.
        allow_missing_keys: skip keys absent from a sample.
        map_keys: which of ``keys`` hold one channel per foreground organ (attention maps,
            ``(K, *spatial)``, channel k = the map's k-th foreground name): after the flip the
            channels of each left/right pair are exchanged.

    Raises:
        ValueError: label or map keys not among ``keys``, a bad ``prob`` or ``lr_axis``, or
            unpaired lateral names (listed) without ``allow_unpaired``.

    Example:
        >>> import torch
        >>> flip = LeftRightSwapFlipd("btcv")
        >>> label = torch.zeros(1, 4, 1, 1, dtype=torch.long)
        >>> label[0, 0] = 3                                  # kidney_left at x = 0
        >>> flip({"image": label.float(), "label": label})["label"].flatten().tolist()
        [0, 0, 0, 2]
    """

    def __init__(
        self,
        label_map: LabelMap | str,
        keys: Sequence[str] = ("image", "label"),
        label_keys: Sequence[str] = ("label",),
        prob: float = 1.0,
        lr_axis: int = LR_AXIS,
        allow_unpaired: bool = False,
        allow_missing_keys: bool = False,
        map_keys: Sequence[str] = (),
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, _check_prob(prob, "prob"))
        self.label_keys = tuple(label_keys)
        unknown = [k for k in self.label_keys if k not in self.keys]
        if unknown:
            raise ValueError(f"label_keys {unknown} are not among keys {list(self.keys)}")
        self.map_keys = tuple(map_keys)
        unknown = [k for k in self.map_keys if k not in self.keys or k in self.label_keys]
        if unknown:
            raise ValueError(f"map_keys {unknown} must be among keys {list(self.keys)} and not label keys")
        if isinstance(lr_axis, bool) or not isinstance(lr_axis, int) or lr_axis < 0:
            raise ValueError(f"lr_axis must be a non-negative spatial axis index, got {lr_axis!r}")
        self.label_map = load_label_map(label_map)
        pairs, unpaired = left_right_pairs(self.label_map)
        if unpaired and not allow_unpaired:
            raise ValueError(
                f"label map {self.label_map.name!r} has lateral structures without a counterpart: {list(unpaired)}; "
                f"a left-right flip would put them on the wrong side under their old name. Pass "
                f"allow_unpaired=True to flip anyway, or keep left-right flips off"
            )
        self.pairs = pairs
        self.id_pairs = tuple((self.label_map.id_of(a), self.label_map.id_of(b)) for a, b in pairs)
        names = list(self.label_map.foreground_names)
        #: map channel order after a mirror: channel k takes the map of its left/right counterpart
        self.channel_order = list(range(len(names)))
        for a, b in pairs:
            i, j = names.index(a), names.index(b)
            self.channel_order[i], self.channel_order[j] = j, i
        self.lr_axis = lr_axis
        self._flip = Flip(spatial_axis=lr_axis)

    def swap_channels(self, maps: Any) -> Any:
        """Exchange the channels of each left/right pair in ``maps`` (K, *spatial), K = foreground organs."""
        if maps.shape[0] != len(self.channel_order):
            raise ValueError(f"maps of shape {tuple(maps.shape)}: expected one channel per foreground organ of "
                             f"{self.label_map.name!r} ({len(self.channel_order)})")
        return maps[self.channel_order]

    def swap_ids(self, mask: Any) -> Any:
        """Exchange the ids of each left/right pair in ``mask`` (tensor or array, any shape)."""
        original = mask.clone() if isinstance(mask, torch.Tensor) else np.array(mask, copy=True)
        out = mask.clone() if isinstance(mask, torch.Tensor) else np.array(mask, copy=True)
        for left, right in self.id_pairs:
            out[original == left] = right
            out[original == right] = left
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            value = d[key]
            n_spatial = len(value.shape) - 1
            if self.lr_axis >= n_spatial:
                raise ValueError(
                    f"sample[{key!r}] has shape {tuple(value.shape)} ({n_spatial} spatial axes after the channel); "
                    f"lr_axis {self.lr_axis} does not exist"
                )
            flipped = self._flip(value)
            if key in self.label_keys:
                flipped = self.swap_ids(flipped)
            elif key in self.map_keys:
                flipped = self.swap_channels(flipped)
            d[key] = flipped
        return d


@dataclass(frozen=True)
class AugmentConfig:
    """Every choice of the segmentation training augmentation.

    Args:
        roi_size: crop size in voxels, one value per spatial axis ((96, 96, 96) for UNETR).
        spatial_dims: 2 (slices) or 3 (volumes).
        pos_neg_ratio: crops centred on foreground per crop centred on background
            (``RandCropByPosNegLabeld``'s pos:neg); ``inf`` gives only foreground-centred crops,
            0 only background-centred ones.
        num_samples: crops drawn per sample (the loader's batch grows by this factor).
        allow_lr_flip: add :class:`LeftRightSwapFlipd` with probability ``lr_flip_prob``.
        lr_flip_prob: probability of a left-right mirror with id swap.
        flip_prob: probability of a flip along each axis of ``flip_axes``, independently.
        flip_axes: spatial axes that may be flipped plainly; default all but the left-right axis.
            Axis 0 (left-right) is refused: use ``allow_lr_flip``.
        affine_prob: probability of a random rotation and scaling.
        max_rotation_deg: largest rotation about each axis, in degrees (at most 45: "small").
        max_scale: relative zoom range: factors in [1 - max_scale, 1 + max_scale].
        intensity_prob: probability of each intensity change (scale, then shift).
        intensity_scale: relative intensity scale range, below 1 so contrast never inverts.
        intensity_shift: intensity offset range, in image units (a [0, 1] CT window: 0.1).
        image_threshold: if set, background crop centres must also have image > this value
            (inside the body), as in MONAI's BTCV tutorial.
        class_balanced: centre foreground crops on each organ equally often
            (``RandCropByLabelClassesd``, ratios 1 per organ present in the sample) instead of on a
            random foreground voxel, which favours large organs in proportion to their size. Small
            organs (adrenals, esophagus) then appear in a crop about as often as the liver does.
            Background-centred crops get the weight of one organ divided by ``pos_neg_ratio``
            (``inf``: none), among the organs present in the sample.
        label_indices_key: with ``class_balanced``, the key where :class:`ClassIndicesd` stored
            each class's voxel indices earlier in the pipeline (in its cached part), so a crop
            draws a centre without scanning the whole mask; ``None`` scans the mask at every crop.
            Ignored when ``image_threshold`` is set (the threshold needs the image at crop time).

    Raises:
        ValueError: a value outside the ranges above; the message names the field and value.
    """

    roi_size: tuple[int, ...]
    spatial_dims: int = 3
    pos_neg_ratio: float = 1.0
    num_samples: int = 4
    allow_lr_flip: bool = False
    lr_flip_prob: float = 0.5
    flip_prob: float = 0.1
    flip_axes: tuple[int, ...] | None = None
    affine_prob: float = 0.2
    max_rotation_deg: float = 15.0
    max_scale: float = 0.1
    intensity_prob: float = 0.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    image_threshold: float | None = None
    class_balanced: bool = False
    label_indices_key: str | None = None

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3) or isinstance(self.spatial_dims, bool):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        roi = tuple(self.roi_size) if isinstance(self.roi_size, (tuple, list)) else (self.roi_size,)
        if len(roi) != self.spatial_dims or not all(
            isinstance(r, (int, np.integer)) and not isinstance(r, bool) and r > 0 for r in roi
        ):
            raise ValueError(
                f"roi_size must be {self.spatial_dims} positive integers (one per spatial axis), got {self.roi_size!r}"
            )
        object.__setattr__(self, "roi_size", tuple(int(r) for r in roi))
        ratio = float(self.pos_neg_ratio)
        if math.isnan(ratio) or ratio < 0:
            raise ValueError(
                f"pos_neg_ratio must be >= 0 (inf: foreground-centred crops only), got {self.pos_neg_ratio!r}"
            )
        n = self.num_samples
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"num_samples must be a positive integer, got {self.num_samples!r}")
        for name in ("lr_flip_prob", "flip_prob", "affine_prob", "intensity_prob"):
            _check_prob(getattr(self, name), name)
        if self.flip_axes is None:
            axes = tuple(a for a in range(self.spatial_dims) if a != LR_AXIS)
        else:
            axes = tuple(self.flip_axes)
        if LR_AXIS in axes:
            raise ValueError(
                f"flip_axes {self.flip_axes!r} contains axis {LR_AXIS}, the left-right axis in RAS: a plain flip "
                f"there would mislabel left and right organs. Set allow_lr_flip=True instead, which uses "
                f"LeftRightSwapFlipd to swap their ids"
            )
        in_range = all(isinstance(a, (int, np.integer)) and 0 <= a < self.spatial_dims for a in axes)
        if not in_range or len(set(axes)) != len(axes):
            raise ValueError(
                f"flip_axes must be distinct spatial axes in 1..{self.spatial_dims - 1}, got {self.flip_axes!r}"
            )
        object.__setattr__(self, "flip_axes", tuple(int(a) for a in axes))
        if not (0.0 <= float(self.max_rotation_deg) <= 45.0):
            raise ValueError(f"max_rotation_deg must be in [0, 45] (small rotations), got {self.max_rotation_deg!r}")
        for name in ("max_scale", "intensity_scale"):
            if not (0.0 <= float(getattr(self, name)) < 1.0):
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not (math.isfinite(float(self.intensity_shift)) and float(self.intensity_shift) >= 0):
            raise ValueError(f"intensity_shift must be a finite number >= 0, got {self.intensity_shift!r}")
        if self.image_threshold is not None and not math.isfinite(float(self.image_threshold)):
            raise ValueError(f"image_threshold must be a finite number or None, got {self.image_threshold!r}")


def train_transforms_from_config(
    config: AugmentConfig, label_map: LabelMap | str, image_key: str = "image", label_key: str = "label",
    map_key: str | None = None,
) -> Compose:
    """Build the training chain of an :class:`AugmentConfig`; see
    :func:`segmentation_train_transforms` for what it does (and ``map_key``)."""
    lmap = load_label_map(label_map)
    keys: tuple[str, ...] = (image_key, label_key)
    if image_key == label_key:
        raise ValueError(f"image_key and label_key must differ, both are {image_key!r}")
    if map_key is not None:
        if map_key in keys:
            raise ValueError(f"map_key must differ from image_key and label_key, got {map_key!r}")
        keys = (*keys, map_key)
    # linear for the image and the maps, nearest for the mask so ids never blend
    modes = tuple("nearest" if k == label_key else "bilinear" for k in keys)
    ratio = float(config.pos_neg_ratio)
    pos, neg = (1.0, 0.0) if math.isinf(ratio) else (ratio, 1.0)
    chain: list[Any] = [
        # Cases smaller than the ROI (thin slabs, small 2D slices) are padded with background
        # first, so every crop has exactly roi_size.
        SpatialPadd(keys, spatial_size=config.roi_size),
    ]
    if config.class_balanced:
        # MONAI drops the classes a sample lacks and renormalises, so a weight per class is the
        # only stable meaning: background is centred on as often as one organ, times neg / pos.
        n_organs = lmap.num_classes - 1
        background = 1.0 if pos == 0 else neg / pos
        organ = 1.0 if pos > 0 else 0.0
        chain.append(
            RandCropByLabelClassesd(
                keys,
                label_key=label_key,
                spatial_size=config.roi_size,
                ratios=[background] + [organ] * n_organs,
                num_classes=lmap.num_classes,
                num_samples=config.num_samples,
                image_key=image_key if config.image_threshold is not None else None,
                image_threshold=float(config.image_threshold or 0.0),
                indices_key=config.label_indices_key if config.image_threshold is None else None,
                warn=False,  # organs absent from a sample are expected (2D slices, resections)
            )
        )
    else:
        chain.append(
            RandCropByPosNegLabeld(
                keys,
                label_key=label_key,
                spatial_size=config.roi_size,
                pos=pos,
                neg=neg,
                num_samples=config.num_samples,
                image_key=image_key if config.image_threshold is not None else None,
                image_threshold=float(config.image_threshold or 0.0),
            )
        )
    if config.affine_prob > 0:
        angle = math.radians(config.max_rotation_deg)
        chain.append(
            RandAffined(
                keys,
                prob=config.affine_prob,
                rotate_range=angle if config.spatial_dims == 2 else (angle, angle, angle),
                scale_range=config.max_scale,
                # nearest for masks so ids never blend; zeros = background outside the rotated crop
                mode=modes,
                padding_mode="zeros",
            )
        )
    if config.flip_prob > 0:
        chain.extend(RandFlipd(keys, prob=config.flip_prob, spatial_axis=axis) for axis in config.flip_axes)
    if config.allow_lr_flip and config.lr_flip_prob > 0:
        chain.append(LeftRightSwapFlipd(lmap, keys=keys, label_keys=(label_key,), prob=config.lr_flip_prob,
                                        map_keys=() if map_key is None else (map_key,)))
    if config.intensity_prob > 0:
        chain.append(RandScaleIntensityd(image_key, factors=config.intensity_scale, prob=config.intensity_prob))
        chain.append(RandShiftIntensityd(image_key, offsets=config.intensity_shift, prob=config.intensity_prob))
    return Compose(chain)


def segmentation_train_transforms(
    roi_size: Sequence[int],
    label_map: LabelMap | str,
    spatial_dims: int = 3,
    pos_neg_ratio: float = 1.0,
    num_samples: int = 4,
    allow_lr_flip: bool = False,
    image_key: str = "image",
    label_key: str = "label",
    map_key: str | None = None,
    **options: Any,
) -> Compose:
    """MONAI dictionary transforms for fine-tuning a segmenter, left and right kept apart.

    In order: pad to ``roi_size``; ``num_samples`` random crops of ``roi_size``, centred on
    foreground or background at ``pos_neg_ratio`` (``RandCropByPosNegLabeld``); a small random
    rotation and scaling (``RandAffined``, nearest for the mask); plain flips along the axes that
    do not swap left and right (never axis 0); with ``allow_lr_flip``, a left-right mirror that
    swaps left/right ids (:class:`LeftRightSwapFlipd`); random intensity scale and shift of the
    image.

    Args:
        roi_size: crop size, one value per spatial axis.
        label_map: the masks' label map; needed to find left/right pairs.
        spatial_dims: 2 or 3.
        pos_neg_ratio: foreground-centred : background-centred crops (``inf``: foreground only).
        num_samples: crops per sample.
        allow_lr_flip: allow left-right mirroring with id swap (off by default; never for hearts).
        image_key, label_key: sample keys of the image ``(C, *spatial)`` and of the integer mask
            ``(1, *spatial)``.
        map_key: the key of pre-trained attention maps ``(K, *spatial)`` made on the whole image
            (:class:`~mosmoskit.pretraining.maps.WholeImageMapsd`), or None. They get every
            spatial transform of the image (linear interpolation, zeros outside), their left/right
            channels are exchanged by a left-right mirror, and no intensity transform.
        **options: any other field of :class:`AugmentConfig` (``flip_prob``,
            ``max_rotation_deg``, ``intensity_shift``, ...).

    Returns:
        A ``Compose``: a sample dict -> a list of ``num_samples`` dicts of crops of
        ``roi_size``. Seed it with ``.set_random_state(seed)``.

    Raises:
        ValueError: an unknown option (the message lists the valid ones) or a value that
            :class:`AugmentConfig` rejects; a label map with unpaired lateral names when
            ``allow_lr_flip`` is on.
    """
    valid = {f.name for f in fields(AugmentConfig)} - {
        "roi_size", "spatial_dims", "pos_neg_ratio", "num_samples", "allow_lr_flip"}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(f"unknown augmentation option(s) {unknown}; valid options are {sorted(valid)}")
    config = AugmentConfig(
        roi_size=tuple(roi_size),
        spatial_dims=spatial_dims,
        pos_neg_ratio=pos_neg_ratio,
        num_samples=num_samples,
        allow_lr_flip=allow_lr_flip,
        **options,
    )
    return train_transforms_from_config(config, label_map, image_key=image_key, label_key=label_key,
                                        map_key=map_key)
