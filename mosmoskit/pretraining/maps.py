"""The pixel-tag attention maps of one whole image, at the geometry the tag head was pre-trained on.

:func:`whole_image_maps` is the one function that turns an image into the maps that fine-tuning
fuses and that the viewer shows: the fine-tuning pipeline calls it once per training and
validation case (:class:`WholeImageMapsd`, before any crop or
augmentation), and :func:`mosmoskit.inference.predict_volume` / ``attention_maps_volume`` call it
once per scan before the sliding window. Windows and crops then *carry* the maps as channels
instead of recomputing them on a part of the image.

Why the whole image, and why at the pre-training geometry: the tag head's position encoding is
normalised to its feature grid (:func:`~mosmoskit.models.tag_head.sincos_position_encoding`), so
the same organ seen in a 96x96 crop or a sliding window gets other coordinates than in the whole
128x128 slice it was trained on, and the encoder has never seen intensity-shifted, rotated or
flipped inputs. Pre-training shows the tag head every image centre-cropped or padded to
``config.image_size`` (``ImageReportDataset``), windowed with ``config.window``. Here:

* the image is windowed with the **pre-training** window (not the fine-tuning one);
* ``fit="auto"`` (default): every axis no longer than ``image_size`` is centre-padded to it, with
  the window's low value, exactly as pre-training does. For an image of the pre-training grid
  (the phantom defaults: 128x128 slices, ``image_size`` 128x128) the network input is then the
  pre-training input bit for bit, and so are the maps. An axis longer than ``image_size`` is
  resized (linear) to it instead of cropped: a centre crop would cut off organs at the border
  (they would get no map), while a resize keeps the whole field of view at the grid and normalised
  positions the tag head was trained on, at a somewhat smaller scale. A fully convolutional 2D
  encoder could take the whole image padded to a multiple of 16, but its feature grid would then
  differ from the pre-training grid, and with it every position code (the very mismatch this
  module removes), so that is not offered. The 3D ViT has a fixed ``image_size`` anyway;
* ``fit="pad"``: centre-crop or pad every axis as pre-training does (a cropped border gets maps of
  0: the tag head cannot point there); ``fit="resize"``: resize the whole image to ``image_size``;
* the maps come from the model's ``attention_maps`` at ``image_size``, are cut out of the padding
  / resized back onto the image's own grid, rescaled to peak 1 per map on that grid (what
  :func:`~mosmoskit.models.fusion.prepare_fusion_maps` gives the segmenter), and optionally
  multiplied by the tag probability.

Nothing here depends on how the maps are made: only ``model.attention_maps(image, normalize=...,
scale_by_probability=False) -> (maps (B, K, *spatial), logits (B, K))`` is called.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Any, Hashable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import MapTransform
from torch import nn

from mosmoskit.data.transforms import resample_transform
from mosmoskit.pretraining.data import window_intensity

__all__ = ["MAP_FITS", "WholeImageMapsd", "map_geometry", "map_memory_bytes", "whole_image_maps"]

#: How a whole image is brought to the pre-training ``image_size`` (see the module docstring).
MAP_FITS: tuple[str, ...] = ("auto", "pad", "resize")
_NORMALIZATIONS = ("max", "sum", "none")


def map_geometry(shape: Sequence[int], image_size: Sequence[int], fit: str = "auto") -> tuple[int, ...]:
    """The size each axis is resized to before it is centre-padded or cropped to ``image_size``.

    Args:
        shape: the image's spatial shape (one slice for a 2D model).
        image_size: the pre-training input grid.
        fit: ``"auto"``, ``"pad"`` or ``"resize"``.

    Returns:
        ``resized``: ``shape`` itself for axes that are padded/cropped, ``image_size`` for axes
        that are resized.
    """
    if fit not in MAP_FITS:
        raise ValueError(f"fit must be one of {list(MAP_FITS)}, got {fit!r}")
    if len(shape) != len(image_size):
        raise ValueError(f"an image of shape {tuple(shape)} does not fit the {len(image_size)}D image_size "
                         f"{tuple(image_size)}")
    out = []
    for have, want in zip(shape, image_size):
        resize = fit == "resize" or (fit == "auto" and have > want)
        out.append(int(want) if resize else int(have))
    return tuple(out)


def _pad_or_crop(x: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor, list[tuple[slice, slice]]]:
    """Centre pad (zeros) or crop the spatial axes of (N, C, *spatial) to ``size``, as
    ``center_crop_or_pad`` does; also the (source, destination) slices per axis."""
    out = x.new_zeros((*x.shape[:2], *size))
    src, dst, pairs = [], [], []
    for have, want in zip(x.shape[2:], size):
        if have >= want:
            start = (have - want) // 2
            s, d = slice(start, start + want), slice(0, want)
        else:
            start = (want - have) // 2
            s, d = slice(0, have), slice(start, start + have)
        src.append(s)
        dst.append(d)
        pairs.append((s, d))
    out[(slice(None), slice(None), *dst)] = x[(slice(None), slice(None), *src)]
    return out, pairs


def _undo_pad_or_crop(maps: torch.Tensor, shape: Sequence[int], pairs: list[tuple[slice, slice]]) -> torch.Tensor:
    """The inverse placement of :func:`_pad_or_crop`: maps on ``shape``, 0 where the image was cropped off."""
    out = maps.new_zeros((*maps.shape[:2], *shape))
    src = [p[0] for p in pairs]
    dst = [p[1] for p in pairs]
    out[(slice(None), slice(None), *src)] = maps[(slice(None), slice(None), *dst)]
    return out


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, size=tuple(int(s) for s in size), mode=mode, align_corners=False)


def _renormalize(maps: torch.Tensor, how: str, eps: float = 1e-12) -> torch.Tensor:
    if how == "none":
        return maps
    flat = maps.flatten(2)
    scale = flat.amax(dim=2) if how == "max" else flat.sum(dim=2)
    return maps / scale.clamp_min(eps).reshape(*scale.shape, *([1] * (maps.ndim - 2)))


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode for the call, each one's own mode restored afterwards (a wrapper's
    flag may disagree with its children's: a frozen map branch inside a training segmenter)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def _device_of(model: nn.Module) -> torch.device:
    encoder = getattr(model, "image_encoder", None)
    for source in (encoder, model):
        if isinstance(source, nn.Module):
            for p in source.parameters():
                return p.device
    return torch.device("cpu")


def whole_image_maps(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    config: Any,
    *,
    normalize: str = "max",
    scale_by_probability: bool = False,
    fit: str = "auto",
    device: torch.device | str | None = None,
    batch_size: int = 16,
    spacing: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-tag attention maps of a whole image, computed once at the pre-training geometry.

    Args:
        model: the pre-trained model's image side: anything with ``attention_maps(image (B, 1,
            *image_size), normalize=..., scale_by_probability=False) -> (maps (B, K, *image_size),
            logits (B, K))`` (a :class:`~mosmoskit.pretraining.model.MosmosPretrainModel` from
            ``load_pretrained``, or ``MosmosSegmenter.map_model``). Run in eval mode, without
            gradients; each submodule's mode is restored afterwards.
        image: the whole image in HU, single channel, no channel axis: (H, W) for a 2D model,
            (H, W, D) for a 3D model, or (H, W, D) for a 2D model, whose axial slices (last axis)
            are then each one image. On the grid fine-tuning works on (after orientation and any
            resampling to ``spacing``).
        config: the **pre-training** config (``PretrainConfig`` or anything with ``window``,
            ``image_size`` and ``spatial_dims``).
        normalize: ``"max"`` (peak 1 per map on the image grid, what fusion uses), ``"sum"``
            (each map sums to 1 over the image) or ``"none"``.
        scale_by_probability: multiply each map by its tag probability (absent organs fade), as
            ``MosmosSegmenter(scale_by_probability=True)`` fuses them.
        fit: ``"auto"`` (default), ``"pad"`` or ``"resize"``: how the image is brought to
            ``config.image_size`` (see the module docstring).
        device: where the model runs (default: the device of its image encoder's parameters).
        batch_size: slices per forward pass for a 2D model on a volume.
        spacing: the image's voxel size (mm, one value per axis). When the pre-training resampled
            its images (``config.spacing``), the image is resampled to that spacing first with the
            same MONAI ``Spacingd`` (a 2D model on a volume: in-plane only), and the maps come back
            to the image's grid through its inverse (then peak 1 again). None: the image is taken
            to be at the pre-training spacing already.

    Returns:
        ``(maps, probabilities)`` as float32 CPU tensors: maps (K, *image.shape), map k for the
        k-th tag (the label map's k-th foreground organ); probabilities (K,) the tag
        probabilities, or (K, D) one per slice for a 2D model on a volume.

    Raises:
        ValueError: an image of another dimension than the model takes, an unknown ``normalize``
            or ``fit``.

    Example:
        >>> model, config, label_map = load_pretrained("runs/pretrain/last.pt")     # doctest: +SKIP
        >>> maps, probs = whole_image_maps(model, load_image("ct.nii.gz").array, config)  # doctest: +SKIP
    """

    if normalize not in _NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {list(_NORMALIZATIONS)}, got {normalize!r}")
    if fit not in MAP_FITS:
        raise ValueError(f"fit must be one of {list(MAP_FITS)}, got {fit!r}")
    dims = int(config.spatial_dims)
    image_size = tuple(int(s) for s in config.image_size)
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    array = array.astype(np.float32, copy=False)
    if array.ndim == dims:
        slices = False
    elif dims == 2 and array.ndim == 3:
        slices = True
    else:
        raise ValueError(
            f"a {dims}D pre-trained model cannot make maps of a {array.ndim}D image of shape {array.shape} "
            f"(pass the spatial axes only, no channel axis)"
        )
    target = tuple(float(v) for v in (getattr(config, "spacing", ()) or ()))
    resampling = None
    if target and spacing is not None and any(abs(float(a) - b) > 1e-6 for a, b in zip(spacing, target)):
        array, resampling = _to_spacing(array, spacing, target, slices)
    windowed = torch.from_numpy(window_intensity(array, config.window))
    inputs = windowed.permute(2, 0, 1)[:, None] if slices else windowed[None, None]  # (N, 1, *spatial)
    shape = tuple(inputs.shape[2:])
    resized = map_geometry(shape, image_size, fit)
    device = torch.device(device) if device is not None else _device_of(model)
    step = max(1, int(batch_size))
    maps_all, probs_all = [], []
    with _eval_mode(model), torch.no_grad():
        for start in range(0, inputs.shape[0], step):
            x = _resize(inputs[start:start + step], resized)
            x, pairs = _pad_or_crop(x, image_size)
            maps, logits = model.attention_maps(x.to(device), normalize=normalize, scale_by_probability=False)
            maps = maps.float().cpu()
            if tuple(maps.shape[2:]) != image_size:
                raise ValueError(f"attention_maps returned maps of shape {tuple(maps.shape)} for an input of "
                                 f"{tuple(x.shape)}")
            maps = _resize(_undo_pad_or_crop(maps, resized, pairs), shape)
            maps_all.append(_renormalize(maps.clamp_min(0.0), normalize))
            probs_all.append(torch.sigmoid(logits.float().cpu()))
    maps = torch.cat(maps_all)  # (N, K, *spatial)
    probs = torch.cat(probs_all)  # (N, K)
    if resampling is not None:
        # back to the image's own grid, through the inverse of the resampling (linear)
        grid = maps.permute(1, 2, 3, 0) if slices else maps[0]  # (K, *spatial)
        grid = _renormalize(_from_spacing(grid, resampling)[None].clamp_min(0.0), normalize)[0]
        maps = grid.permute(3, 0, 1, 2) if slices else grid[None]
    if scale_by_probability:
        maps = maps * probs.reshape(*probs.shape, *([1] * (maps.ndim - 2)))
    if slices:
        return maps.permute(1, 2, 3, 0).contiguous(), probs.T.contiguous()  # (K, H, W, D), (K, D)
    return maps[0].contiguous(), probs[0]


def _to_spacing(array: np.ndarray, spacing: Sequence[float], target: Sequence[float],
                slices: bool) -> tuple[np.ndarray, Any]:
    """``array`` (HU, voxel size ``spacing``) resampled to ``target`` with the kit's MONAI resampling;
    also what :func:`_from_spacing` needs to go back."""
    sizes = [float(v) for v in spacing][: array.ndim]
    if len(sizes) != array.ndim or min(sizes) <= 0:
        raise ValueError(f"spacing must give {array.ndim} positive voxel sizes for an image of shape {array.shape}, "
                         f"got {tuple(spacing)}")
    affine = np.diag([*sizes, *([1.0] * (3 - len(sizes))), 1.0])
    transform = resample_transform(("image",), target, keep_last_axis=slices)
    moved = transform({"image": MetaTensor(torch.from_numpy(np.ascontiguousarray(array))[None], affine=affine)})["image"]
    return np.asarray(moved.as_tensor()[0], dtype=np.float32), (transform, moved)


def _from_spacing(maps: torch.Tensor, resampling: Any) -> torch.Tensor:
    """(K, *resampled grid) -> (K, *original grid) through the inverse of :func:`_to_spacing`'s resampling."""
    transform, moved = resampling
    carried = MetaTensor(maps, meta=copy.deepcopy(moved.meta), applied_operations=copy.deepcopy(moved.applied_operations))
    back = transform.inverse({"image": carried})["image"]
    return back.as_tensor() if hasattr(back, "as_tensor") else back


def map_memory_bytes(num_tags: int, shape: Sequence[int]) -> int:
    """Bytes of the float32 maps of one image: ``4 * K * prod(shape)``."""
    return 4 * int(num_tags) * math.prod(int(s) for s in shape)


class WholeImageMapsd(MapTransform):
    """Dictionary transform: the pre-trained attention maps of the whole image, as K channels.

    Calls :func:`mosmoskit.pretraining.maps.whole_image_maps` once on ``data[image_key]`` (the
    whole image in HU, channel first ``(1, *spatial)``, after loading, orientation and any
    resampling; before the intensity window and any augmentation) and stores the maps
    ``(K, *spatial)`` float32 under ``maps_key``, with the image's affine and metadata when the
    image is a ``MetaTensor``. It is deterministic, so a ``CacheDataset`` keeps its output and the
    maps are made once per case; crops, flips and rotations after it must list ``maps_key``
    among their keys (:func:`mosmoskit.data.augment.segmentation_train_transforms` does with
    ``map_key``), intensity transforms must not.

    The model is deep-copied onto ``device`` and frozen when the transform is built, so the
    transform never depends on where (or whether) the segmenter it came from is trained, and a
    data-loader worker process never touches a GPU.

    Args:
        model: the pre-trained model's image side (``MosmosSegmenter.map_model``, or
            ``load_pretrained(...)[0]``).
        pretrain_config: its pre-training config (``window``, ``image_size``, ``spatial_dims``).
        image_key: the image, in HU.
        maps_key: where the maps go.
        normalize, scale_by_probability, fit: as :func:`~mosmoskit.pretraining.maps.whole_image_maps`.
        device: where the maps are computed (default CPU).
        copy_model: deep-copy the model (default); False uses it as given.
    """

    def __init__(
        self,
        model: Any,
        pretrain_config: Any,
        image_key: str = "image",
        maps_key: str = "maps",
        normalize: str = "max",
        scale_by_probability: bool = True,
        fit: str = "auto",
        device: str = "cpu",
        copy_model: bool = True,
    ) -> None:
        super().__init__((image_key,))
        if maps_key == image_key:
            raise ValueError(f"maps_key must differ from image_key, both are {image_key!r}")
        if copy_model:
            model = copy.deepcopy(model).to(device)
            model.requires_grad_(False)
        self.model = model.eval()
        self.pretrain_config = pretrain_config
        self.image_key, self.maps_key = image_key, maps_key
        self.normalize, self.scale_by_probability, self.fit = normalize, bool(scale_by_probability), fit
        self.device = device

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = d[self.image_key]
        if image.shape[0] != 1:
            raise ValueError(f"sample[{self.image_key!r}] has {image.shape[0]} channels; the pre-trained maps are "
                             f"made from single-channel images")
        # A MetaTensor knows its voxel size: the maps are then made at the pre-training spacing.
        spacing = tuple(float(v) for v in image.pixdim) if isinstance(image, MetaTensor) else None
        maps, _ = whole_image_maps(self.model, _image_array(image), self.pretrain_config, normalize=self.normalize,
                                   scale_by_probability=self.scale_by_probability, fit=self.fit, device=self.device,
                                   spacing=spacing)
        if isinstance(image, MetaTensor):
            maps = MetaTensor(maps, meta=copy.deepcopy(dict(image.meta)))  # the image's affine and source
        d[self.maps_key] = maps
        return d


def _image_array(image: Any) -> np.ndarray:
    """The single channel of a (1, *spatial) image as a numpy array."""
    if isinstance(image, torch.Tensor):
        return image.detach().cpu().numpy()[0]
    return np.asarray(image)[0]
