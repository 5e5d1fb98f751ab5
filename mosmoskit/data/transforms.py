"""MONAI dictionary transform chains for images (``"image"``) and masks (``"label"``).

Built by functions with explicit arguments, so that a notebook or config names every choice:

* :func:`load_transforms`: read (NIfTI or DICOM, with the kit's reader: see
  :mod:`mosmoskit.data.readers`), channel first, reorient (RAS by default), optionally resample
  (bilinear for images, nearest for masks, so ids never blend into fractional values);
* :func:`ct_intensity_transform`: clip a CT window and scale it to [0, 1];
* :class:`CheckLabelsd`: validate masks against a label map, failing with the *file name* (and
  converting MMWHS/BraTS raw values to ids), so a bad mask stops the run at its first batch with a
  message that says which file to fix;
* the pre-trained attention maps of the whole image (in HU, before the intensity window), stored as
  K channels under ``"maps"`` that every later spatial transform moves with the image, are
  :class:`mosmoskit.pretraining.maps.WholeImageMapsd`: it lives with pre-training, above this module.

Example:
    >>> from monai.transforms import Compose
    >>> from mosmoskit.data.transforms import CheckLabelsd, ct_intensity_transform, load_transforms
    >>> from mosmoskit.labels import load_label_map
    >>> chain = Compose([
    ...     load_transforms(("image", "label"), spacing=(1.5, 1.5, 2.0)),
    ...     CheckLabelsd(("label",), load_label_map("btcv")),
    ...     ct_intensity_transform(window=(-175, 250)),
    ... ])
    >>> # chain({"image": "img.nii.gz", "label": "seg.nii.gz"})["image"].shape -> (1, X, Y, Z)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Hashable, Iterator, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged, MapTransform, Orientationd, ScaleIntensityRanged, Spacingd

from mosmoskit.data.readers import image_reader, quiet_monai_readers
from mosmoskit.labels import LabelMap, load_label_map

__all__ = ["CT_SOFT_TISSUE_WINDOW", "CheckLabelsd", "ct_intensity_transform", "load_transforms",
           "resample_transform", "unwrap_transform_errors"]

#: Abdominal soft-tissue window (HU) used for BTCV in the UNETR paper and MONAI's tutorials.
CT_SOFT_TISSUE_WINDOW: tuple[float, float] = (-175.0, 250.0)
_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@contextmanager
def unwrap_transform_errors() -> Iterator[None]:
    """Re-raise the error a transform raised instead of MONAI's wrapper around it.

    MONAI's ``Compose`` wraps any error of a transform in ``RuntimeError("applying transform
    ...")``; the kit's own checks (a mask with values outside the label map, an image of the wrong
    dimension, an unreadable file) raise errors that name the file and the problem, and a user
    should see those, with their type.
    """
    try:
        yield
    except RuntimeError as err:
        inner: BaseException = err
        while (isinstance(inner, RuntimeError) and str(inner).startswith("applying transform")
               and inner.__cause__ is not None):
            inner = inner.__cause__
        if inner is err:
            raise
        raise inner from None


def _keys(keys: str | Sequence[str], what: str) -> tuple[str, ...]:
    out = (keys,) if isinstance(keys, str) else tuple(keys)
    if not out or not all(isinstance(k, str) and k for k in out):
        raise ValueError(f"{what} must be one or more non-empty key names, got {keys!r}")
    return out


def load_transforms(
    keys: str | Sequence[str] = ("image", "label"),
    spacing: Sequence[float] | None = None,
    orientation: str = "RAS",
    label_keys: str | Sequence[str] = ("label",),
    allow_missing_keys: bool = False,
):
    """Load, channel-first, reorient and (optionally) resample.

    Args:
        keys: dictionary keys holding file paths (NIfTI file, DICOM folder or file).
        spacing: target voxel size in mm, one value per spatial axis (``(1.5, 1.5, 2.0)``);
            ``None`` keeps each file's own spacing.
        orientation: axis codes to reorient to; RAS is the kit's canonical orientation (the one
            :func:`mosmoskit.data.readers.load_image` returns). 2D images use the first two codes.
        label_keys: which of ``keys`` are masks: resampled with nearest neighbour (all others
            bilinear).
        allow_missing_keys: skip keys absent from a sample (e.g. test cases without labels).

    Returns:
        A ``monai.transforms.Compose``: ``{key: path}`` -> ``{key: MetaTensor (1, X, Y[, Z])}``,
        float32, whose ``.meta["filename_or_obj"]`` is the file path.

    Raises:
        ValueError: empty keys, label keys that are not among ``keys``, bad axis codes, or a
            non-positive spacing.
    """
    keys = _keys(keys, "keys")
    label_keys = _keys(label_keys, "label_keys") if label_keys else ()
    unknown = [k for k in label_keys if k not in keys]
    if unknown:
        raise ValueError(f"label_keys {unknown} are not among keys {list(keys)}")
    codes = orientation.upper() if isinstance(orientation, str) else ""
    pairs = [set(p) for p in _AXIS_LABELS]
    if len(codes) not in (2, 3) or any(sum(c in p for c in codes) != 1 for p in pairs[: len(codes)]):
        raise ValueError(
            f"orientation must name each axis once with one of L/R, P/A, I/S (like 'RAS' or 'LPS'), got {orientation!r}"
        )
    with quiet_monai_readers():
        chain: list[Any] = [
            LoadImaged(
                keys,
                reader=image_reader(),
                ensure_channel_first=True,
                image_only=True,
                dtype=np.float32,
                allow_missing_keys=allow_missing_keys,
            ),
            Orientationd(keys, axcodes=codes, labels=_AXIS_LABELS, allow_missing_keys=allow_missing_keys),
        ]
    if spacing is not None:
        chain.append(resample_transform(keys, spacing, label_keys=label_keys, allow_missing_keys=allow_missing_keys))
    return Compose(chain)


def resample_transform(
    keys: str | Sequence[str] = ("image",),
    spacing: Sequence[float] = (),
    label_keys: str | Sequence[str] = (),
    allow_missing_keys: bool = False,
    keep_last_axis: bool = False,
):
    """MONAI ``Spacingd`` to ``spacing`` (mm): linear for images and maps, nearest for masks.

    The one resampling of the kit: training and validation data (:func:`load_transforms`) and
    :func:`mosmoskit.inference.predict_volume` use it, and prediction goes back to the scan's own
    grid with its ``inverse``.

    Args:
        keys: the keys to resample.
        spacing: target voxel size, one value per spatial axis (2D: two values).
        label_keys: which of ``keys`` are masks (nearest neighbour).
        allow_missing_keys: skip keys absent from a sample.
        keep_last_axis: a 2D ``spacing`` applied to a volume: resample in-plane only and keep the
            slice spacing (how a 2D network sees a volume slice by slice).

    Raises:
        ValueError: a spacing that is not 2 or 3 positive numbers.
    """
    keys = _keys(keys, "keys")
    label_keys = _keys(label_keys, "label_keys") if label_keys else ()
    pixdim = tuple(float(s) for s in spacing)
    if len(pixdim) not in (2, 3) or not all(np.isfinite(pixdim)) or min(pixdim) <= 0:
        raise ValueError(f"spacing must be 2 or 3 positive numbers (mm), got {spacing!r}")
    if keep_last_axis:
        pixdim = (*pixdim, -1.0)  # MONAI keeps an axis whose target spacing is not positive
    modes = tuple("nearest" if k in label_keys else "bilinear" for k in keys)
    return Spacingd(keys, pixdim=pixdim, mode=modes, allow_missing_keys=allow_missing_keys)


def ct_intensity_transform(
    window: Sequence[float] = CT_SOFT_TISSUE_WINDOW,
    keys: str | Sequence[str] = ("image",),
    output_range: Sequence[float] = (0.0, 1.0),
    clip: bool = True,
):
    """Map a CT window (HU) linearly onto ``output_range``, clipping outside values.

    Args:
        window: (low, high) HU; the default is the abdominal soft-tissue window.
        keys: image keys (never masks).
        output_range: (b_min, b_max) the window is mapped to.
        clip: clip values outside the window to ``output_range``.

    Returns:
        A ``monai.transforms.ScaleIntensityRanged``.

    Raises:
        ValueError: a window or range that is not two finite increasing numbers.
    """
    for name, pair in (("window", window), ("output_range", output_range)):
        vals = tuple(float(v) for v in pair)
        if len(vals) != 2 or not all(np.isfinite(vals)) or vals[0] >= vals[1]:
            raise ValueError(f"{name} must be two finite numbers low < high, got {pair!r}")
    lo, hi = (float(v) for v in window)
    b_min, b_max = (float(v) for v in output_range)
    return ScaleIntensityRanged(_keys(keys, "keys"), a_min=lo, a_max=hi, b_min=b_min, b_max=b_max, clip=clip)


class CheckLabelsd(MapTransform):
    """Dictionary transform: every mask must hold only values of ``label_map``.

    It calls :meth:`LabelMap.check_mask` with ``source`` = the file the mask was read from
    (``meta["filename_or_obj"]``), so a bad mask raises a ``ValueError`` that names the file and
    the unexpected values. When the map has ``raw_values`` (MMWHS, BraTS) and ``raw`` is not
    false, it also converts the stored values to consecutive ids.

    Place it after :func:`load_transforms` and before any transform that would change values
    (a Spacingd with nearest interpolation is safe).

    Args:
        keys: mask keys.
        label_map: a :class:`LabelMap`, a shipped map name or a JSON path.
        raw: whether masks store raw values to convert; ``None``: exactly when the map has
            ``raw_values``.
        allow_missing_keys: skip absent keys.

    Raises:
        ValueError: (when called) values not in the map, non-integer or NaN values; the message
            starts with the file path.

    Example:
        >>> import numpy as np
        >>> check = CheckLabelsd(("label",), "btcv")
        >>> check({"label": np.array([[0, 14]])})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: sample['label']: label values [14] are not in label map 'btcv' ...
    """

    def __init__(
        self,
        keys: str | Sequence[str] = ("label",),
        label_map: LabelMap | str | None = None,
        raw: bool | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(_keys(keys, "keys"), allow_missing_keys)
        if label_map is None:
            raise ValueError("CheckLabelsd needs a label_map (a LabelMap, a shipped name or a JSON path)")
        self.label_map = load_label_map(label_map)
        self.raw = self.label_map.raw_values is not None if raw is None else bool(raw)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            meta = getattr(value, "meta", None) or {}
            source = str(meta.get("filename_or_obj") or f"sample[{key!r}]")
            if self.raw:
                d[key] = _like(value, self.label_map.from_raw(_to_numpy(value), source=source))
            else:
                self.label_map.check_mask(value, source=source)
        return d


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _like(value: Any, array: np.ndarray) -> Any:
    """``array`` in the type and dtype of ``value`` (a MetaTensor keeps its meta and history)."""
    if isinstance(value, MetaTensor):
        out = torch.as_tensor(array, dtype=value.dtype, device=value.device)
        return MetaTensor(out, meta=value.meta, applied_operations=value.applied_operations)
    if isinstance(value, torch.Tensor):
        return torch.as_tensor(array, dtype=value.dtype, device=value.device)
    return array.astype(np.asarray(value).dtype, copy=False)
