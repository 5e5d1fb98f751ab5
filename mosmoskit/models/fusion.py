"""How pixel-tag attention maps enter a segmentation network (DESIGN.md section 2, "Fine-tuning").

The pre-trained tag head gives, for every organ tag, a distribution over the encoder's feature grid
(``TagHeadOutput.maps``, (B, K, *grid)). Before a segmenter can use them they are

1. upsampled to the image grid and rescaled to peak 1 per map (``upsample_maps(..., normalize="max")``):
   a resolution-independent input channel rather than a distribution whose values shrink with the
   number of voxels;
2. multiplied by the tag probability (``scale_maps_by_probability``): an absent organ still gets a
   map (each attention row sums to 1), and the prototype (DESIGN.md section 5) needed that map to
   fade instead of telling the segmenter "the organ is here".

``prepare_fusion_maps`` does both (for maps the network makes itself; maps made once per whole
image by :func:`mosmoskit.pretraining.maps.whole_image_maps` arrive already on the image grid,
peak 1 and scaled, and are fused as given: ``MosmosSegmenter.forward(image, maps)``). The fusion
points are ``FUSION_MODES``:

- ``"none"``: the plain network (baselines);
- ``"input"``: maps concatenated to the image channels (``concat_maps``), so the network's first
  layers take C + K channels; this works for any network;
- ``"decoder"``: maps concatenated to the last decoder features, in front of the 1x1 output head,
  which gets K extra input channels (``widen_conv_inputs``).

Where a pre-trained or already-initialised layer gains K input channels, the new channels start at
zero (``widen_input_channels``): the layer then computes exactly what it computed before, and
training learns how much to use the maps (the gradient of a zero weight is not zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from mosmoskit.models.tag_head import MAP_NORMALIZATIONS, scale_maps_by_probability, upsample_maps

__all__ = [
    "FUSION_MODES",
    "FusionMaps",
    "prepare_fusion_maps",
    "concat_maps",
    "widen_input_channels",
    "widen_conv_inputs",
]

FUSION_MODES: tuple[str, ...] = ("none", "input", "decoder")

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True, eq=False)
class FusionMaps:
    """Attention maps ready to be fused, and what they were made from.

    Attributes:
        maps: (B, K, *spatial) maps on the image grid, peak 1 per map (or as ``normalize`` asked),
            times the tag probability if so asked: what the segmenter receives.
        logits: (B, K) tag logits of the same forward pass.
        raw: (B, K, *grid) the tag head's attention on its feature grid (each map sums to 1).
    """

    maps: torch.Tensor
    logits: torch.Tensor
    raw: torch.Tensor


def prepare_fusion_maps(
    raw_maps: torch.Tensor,
    logits: torch.Tensor,
    size: Sequence[int],
    normalize: str = "max",
    scale_by_probability: bool = True,
) -> FusionMaps:
    """Turn the tag head's maps into segmenter input channels.

    Args:
        raw_maps: (B, K, h, w[, d]) ``TagHeadOutput.maps``.
        logits: (B, K) ``TagHeadOutput.logits``.
        size: the image grid (H, W[, D]) to upsample to.
        normalize: ``"max"`` (peak 1 per map, default), ``"sum"`` or ``"none"``; see ``normalize_maps``.
        scale_by_probability: multiply each map by sigmoid(logit), so absent organs fade.

    Returns:
        ``FusionMaps`` with ``maps`` (B, K, *size).

    Raises:
        ValueError: an unknown ``normalize``, or shapes that do not fit (see ``upsample_maps`` and
            ``scale_maps_by_probability``).
    """
    if normalize not in MAP_NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {list(MAP_NORMALIZATIONS)}, got {normalize!r}")
    maps = upsample_maps(raw_maps, size, normalize=normalize)
    if scale_by_probability:
        maps = scale_maps_by_probability(maps, logits)
    return FusionMaps(maps=maps, logits=logits, raw=raw_maps)


def concat_maps(x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Concatenate maps to an image or a feature map along the channel axis.

    Args:
        x: (B, C, *spatial) image or decoder features.
        maps: (B, K, *spatial) fusion maps on the same grid.

    Returns:
        (B, C + K, *spatial), maps last; in ``x``'s dtype (maps computed in float32 under autocast
        would otherwise promote the result).

    Raises:
        ValueError: different batch sizes, ranks or spatial sizes.
    """
    if maps.ndim != x.ndim or maps.shape[0] != x.shape[0] or maps.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"maps {tuple(maps.shape)} cannot be concatenated to {tuple(x.shape)}: batch size and spatial "
            f"size must match (B, K, *spatial) vs (B, C, *spatial)"
        )
    return torch.cat([x, maps.to(x.dtype)], dim=1)


def widen_input_channels(weight: torch.Tensor, extra: int) -> torch.Tensor:
    """Append ``extra`` zero input channels to a convolution weight.

    Args:
        weight: (C_out, C_in, *kernel).
        extra: number of input channels to add (K), >= 0.

    Returns:
        (C_out, C_in + extra, *kernel): ``[:, :C_in]`` equals ``weight``, ``[:, C_in:]`` is zero.

    Raises:
        ValueError: ``weight`` has fewer than 3 dims (not a convolution weight) or ``extra`` < 0.
    """
    if weight.ndim < 3:
        raise ValueError(f"expected a convolution weight (C_out, C_in, *kernel), got shape {tuple(weight.shape)}")
    if extra < 0:
        raise ValueError(f"extra must be >= 0, got {extra!r}")
    zeros = weight.new_zeros((weight.shape[0], int(extra), *weight.shape[2:]))
    return torch.cat([weight.detach(), zeros], dim=1)


def widen_conv_inputs(conv: nn.Module, extra: int) -> nn.Module:
    """A copy of ``conv`` that takes ``extra`` more input channels, the new ones zero-initialised.

    Used for the output head in decoder fusion: the head keeps the weights it had on the decoder
    features, so at initialisation the network computes the same logits as without maps.

    Args:
        conv: an ``nn.Conv1d/2d/3d`` with ``groups == 1``.
        extra: K, the channels appended after the existing inputs.

    Returns:
        A new convolution of the same type, device and dtype with ``in_channels + extra`` inputs.

    Raises:
        ValueError: not a plain convolution, or a grouped one (its channels cannot be appended).
    """
    if not isinstance(conv, _CONVS):
        raise ValueError(f"widen_conv_inputs expects an nn.Conv1d/2d/3d, got {type(conv).__name__}")
    if conv.groups != 1:
        raise ValueError(f"cannot append input channels to a grouped convolution (groups={conv.groups})")
    widened = type(conv)(
        conv.in_channels + int(extra),
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        widened.weight.copy_(widen_input_channels(conv.weight, extra))
        if conv.bias is not None:
            widened.bias.copy_(conv.bias)
    return widened
