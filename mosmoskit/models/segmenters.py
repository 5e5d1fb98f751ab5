"""Segmentation networks for fine-tuning, with pixel-tag attention-map fusion (DESIGN.md section 2).

Three registered segmenters (kind ``"segmenter"``):

- ``"unetr3d"``: MONAI's ``UNETR``, whose ``vit`` is exactly the pre-training ``"vit3d"`` encoder
  (the method's 3D network; the GPU recipe);
- ``"unet2d-seg"``: MONAI's 2D ``BasicUNet``, whose ``conv_0``/``down_*`` blocks are exactly the
  pre-training ``"unet2d"`` encoder;
- ``"unet3d-seg"``: MONAI's 3D ``BasicUNet``, a convolutional 3D network that learns on a CPU
  where UNETR's transformer needs a GPU's steps (chosen with ``segmenter="unet3d-seg"``).

``MosmosSegmenter`` wraps one of them with the pre-trained organ-tag head and fuses its maps
(``fusion.py``): at the input (``"input"``), before the 1x1 output head (``"decoder"``), or not at
all (``"none"``). ``build_segmenter`` builds every variant the method and its baselines need from a
pre-training state dict, with one code path and a ``LoadReport`` of what was loaded where:

==========================  ===============  ==============  ==========================================
variant                     ``fusion``       ``init_encoder`` what comes from the pre-training state
==========================  ===============  ==============  ==========================================
random init                 ``"none"``       False           nothing
pre-trained encoder         ``"none"``       True            segmenter encoder
maps only                   input / decoder  False           map encoder + tag head (segmenter random)
full MOSMOS                 input / decoder  True            segmenter encoder + tag head (+ map encoder)
==========================  ===============  ==============  ==========================================

Where the maps come from:

- ``"input"``: the segmenter's encoder sees C + K channels, so it cannot make the maps; a separate
  copy of the pre-trained encoder (``map_encoder``) and the tag head do, frozen unless
  ``tune_tag_head``. When the segmenter's encoder is loaded too, its first layer gets the
  pre-trained weights on the C image channels and zeros on the K map channels, so it starts as
  the pre-trained encoder and learns how much to use the maps.
- ``"decoder"`` with ``init_encoder``: the segmenter's encoder *is* the pre-trained encoder; it
  runs once per forward and the same features feed the tag head and the decoder.
- ``"decoder"`` without ``init_encoder``: the segmenter's encoder is random, and the tag head was
  trained on the pre-trained encoder's features, so the maps come from a separate pre-trained
  encoder copy, as in ``"input"``.

When the maps are made: with a frozen map branch of its own (every variant above except a shared
encoder or ``tune_tag_head``; ``MosmosSegmenter.precomputed_maps``), the maps do not change during
fine-tuning, so they are computed **once per whole image**, at the geometry the tag head was
pre-trained on (:func:`mosmoskit.pretraining.maps.whole_image_maps`, through
``MosmosSegmenter.whole_image_maps``), before any crop, augmentation or sliding window, and handed
to ``forward(image, maps)`` as channels that were cropped, flipped and rotated with the image. Only
a shared encoder (its maps follow the fine-tuned encoder) or a trained map branch (its maps change
every step and need gradients) still makes maps inside ``forward``, from whatever the network is
given: a crop or a window, never the whole image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from monai.networks.nets import UNETR, BasicUNet

from mosmoskit.labels import LabelMap, available_label_maps, load_label_map
from mosmoskit.models.fusion import (
    FUSION_MODES,
    FusionMaps,
    concat_maps,
    prepare_fusion_maps,
    widen_conv_inputs,
    widen_input_channels,
)
from mosmoskit.models.image_encoders import (
    _BASIC_UNET_ACT,
    BASIC_UNET_LEVELS,
    UNETR_PATCH_SIZE,
    BasicUNetEncoder,
    ImageEncoder,
    UNETRViTEncoder,
)
from mosmoskit.models.registry import create_model, register_model
from mosmoskit.models.tag_head import MAP_NORMALIZATIONS, TagHead

__all__ = [
    "DEFAULT_SEGMENTERS",
    "SEGMENTER_FOR_ENCODER",
    "SEGMENTER_DIMS",
    "UNETR_SKIP_BLOCKS",
    "LoadReport",
    "LoadedPart",
    "MosmosSegmenter",
    "build_segmenter",
    "segmenter_kwargs_for_encoder",
    "unet2d_seg",
    "unet3d_seg",
    "unetr3d",
]

# MONAI's UNETR takes its skip connections from these ViT block outputs (hard-coded in
# ``UNETR.forward``); our forward pass must read the same ones to equal MONAI's.
UNETR_SKIP_BLOCKS: tuple[int, int, int] = (3, 6, 9)

# BasicUNet pools four times; sizes that are not multiples of 2**4 make its skip connections and
# upsampled features disagree in size.
BASIC_UNET_SIZE_DIVISOR = 2 ** (len(BASIC_UNET_LEVELS) - 1)

#: the segmenter whose encoder is each pre-training image encoder
SEGMENTER_FOR_ENCODER: dict[str, str] = {"vit3d": "unetr3d", "unet2d": "unet2d-seg"}
#: the segmenter used without a pre-training config, per spatial dimension
DEFAULT_SEGMENTERS: dict[int, str] = {3: "unetr3d", 2: "unet2d-seg"}
#: every segmenter that can be asked for by name, with its spatial dimension
SEGMENTER_DIMS: dict[str, int] = {"unetr3d": 3, "unet2d-seg": 2, "unet3d-seg": 3}

# Per registered segmenter: the top-level blocks that are the pre-training encoder, and the
# multiple every spatial size must be (ViT patches; BasicUNet's four poolings).
_ENCODER_BLOCKS: dict[str, tuple[str, ...]] = {"unetr3d": ("vit",), "unet2d-seg": BASIC_UNET_LEVELS,
                                               "unet3d-seg": BASIC_UNET_LEVELS}
_SIZE_DIVISOR: dict[str, int] = {"unetr3d": UNETR_PATCH_SIZE, "unet2d-seg": BASIC_UNET_SIZE_DIVISOR,
                                 "unet3d-seg": BASIC_UNET_SIZE_DIVISOR}

# Names of the parts a LoadReport lists.
PART_SEGMENTER_ENCODER = "segmenter encoder"
PART_MAP_ENCODER = "map encoder"
PART_TAG_HEAD = "tag head"
PART_TAG_PROJECTION = "tag feature projection"


# ------------------------------------------------------------------------------ registered networks


@register_model(
    "unetr3d",
    kind="segmenter",
    test_kwargs={
        "out_channels": 3, "img_size": (32, 32, 16), "feature_size": 8, "hidden_size": 48, "mlp_dim": 96,
        "num_heads": 4,
    },
)
def unetr3d(
    *,
    out_channels: int,
    in_channels: int = 1,
    img_size: int | Sequence[int] = (96, 96, 96),
    feature_size: int = 16,
    hidden_size: int = 192,
    mlp_dim: int = 384,
    num_heads: int = 4,
    norm_name: str | tuple = "instance",
    conv_block: bool = True,
    res_block: bool = True,
    dropout_rate: float = 0.0,
    qkv_bias: bool = False,
) -> UNETR:
    """MONAI's 3D ``UNETR``; the ViT defaults equal ``"vit3d"``'s so the pre-trained encoder loads.

    Args:
        out_channels: classes including background (``label_map.num_classes``).
        in_channels: input channels (image channels, plus K maps for input fusion).
        img_size: the only spatial size the ViT accepts (its position embedding has one entry per
            16-voxel patch); each a multiple of 16.
        feature_size: width of the convolutional decoder (MONAI's default 16).
        hidden_size, mlp_dim, num_heads, qkv_bias, dropout_rate: the ViT, as in ``vit3d``.
        norm_name, conv_block, res_block: the decoder blocks, as in ``UNETR``.

    Returns:
        ``UNETR`` mapping (B, in_channels, *img_size) to logits (B, out_channels, *img_size).
    """
    return UNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=img_size,
        feature_size=feature_size,
        hidden_size=hidden_size,
        mlp_dim=mlp_dim,
        num_heads=num_heads,
        proj_type="conv",
        norm_name=norm_name,
        conv_block=conv_block,
        res_block=res_block,
        dropout_rate=dropout_rate,
        spatial_dims=3,
        qkv_bias=qkv_bias,
    )


@register_model("unet2d-seg", kind="segmenter", test_kwargs={"out_channels": 3, "features": (8, 8, 16, 16, 32, 8)})
def unet2d_seg(
    *,
    out_channels: int,
    in_channels: int = 1,
    features: Sequence[int] = (16, 16, 32, 64, 128, 16),
    act: str | tuple = _BASIC_UNET_ACT,
    norm: str | tuple = "batch",
    bias: bool = True,
    dropout: float = 0.0,
    upsample: str = "deconv",
) -> BasicUNet:
    """MONAI's 2D ``BasicUNet``; defaults equal ``"unet2d"``'s (BatchNorm) so the pre-trained encoder loads.

    Args:
        out_channels: classes including background (``label_map.num_classes``).
        in_channels: input channels (image channels, plus K maps for input fusion).
        features: five encoder widths and the last decoder width, as in ``BasicUNet``.
        act, norm, bias, dropout: as in ``BasicUNet`` (and ``"unet2d"``).
        upsample: ``"deconv"``, ``"pixelshuffle"`` or ``"nontrainable"``.

    Returns:
        ``BasicUNet`` mapping (B, in_channels, H, W) to logits (B, out_channels, H, W), H and W
        multiples of 16.
    """
    return _basic_unet(2, in_channels, out_channels, features, act, norm, bias, dropout, upsample)


@register_model("unet3d-seg", kind="segmenter", test_kwargs={"out_channels": 3, "features": (4, 4, 8, 8, 16, 4)})
def unet3d_seg(
    *,
    out_channels: int,
    in_channels: int = 1,
    features: Sequence[int] = (16, 16, 32, 64, 128, 16),
    act: str | tuple = _BASIC_UNET_ACT,
    norm: str | tuple = "batch",
    bias: bool = True,
    dropout: float = 0.0,
    upsample: str = "deconv",
) -> BasicUNet:
    """MONAI's 3D ``BasicUNet``: the same blocks as ``"unet2d-seg"`` in three dimensions.

    Args:
        out_channels: classes including background (``label_map.num_classes``).
        in_channels: input channels (image channels, plus K maps for input fusion).
        features: five encoder widths and the last decoder width, as in ``BasicUNet``.
        act, norm, bias, dropout, upsample: as in ``BasicUNet``.

    Returns:
        ``BasicUNet`` mapping (B, in_channels, H, W, D) to logits (B, out_channels, H, W, D), each
        size a multiple of 16.
    """
    return _basic_unet(3, in_channels, out_channels, features, act, norm, bias, dropout, upsample)


def _basic_unet(spatial_dims: int, in_channels: int, out_channels: int, features: Sequence[int], act: Any,
                norm: Any, bias: bool, dropout: float, upsample: str) -> BasicUNet:
    """MONAI's ``BasicUNet`` with the arguments of ``"unet2d-seg"`` / ``"unet3d-seg"``."""
    return BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                     features=tuple(features), act=act, norm=norm, bias=bias, dropout=dropout, upsample=upsample)


def segmenter_kwargs_for_encoder(encoder: ImageEncoder) -> tuple[str, dict[str, Any]]:
    """The registered segmenter whose encoder matches a pre-training encoder, and its arguments.

    Args:
        encoder: a ``UNETRViTEncoder`` (-> ``"unetr3d"``) or a 2D ``BasicUNetEncoder`` (-> ``"unet2d-seg"``).

    Returns:
        (name, kwargs): ``create_model(name, **kwargs, out_channels=...)`` builds a network whose
        encoder blocks have the encoder's parameter names and shapes.

    Raises:
        ValueError: an encoder with no matching registered segmenter.
    """
    if isinstance(encoder, UNETRViTEncoder):
        kwargs = encoder.unetr_kwargs()
        # unetr3d fixes both; they are in unetr_kwargs because UNETR itself takes them.
        kwargs.pop("proj_type")
        kwargs.pop("spatial_dims")
        return "unetr3d", kwargs
    if isinstance(encoder, BasicUNetEncoder) and encoder.spatial_dims == 2:
        kwargs = encoder.basic_unet_kwargs()
        kwargs.pop("spatial_dims")
        return "unet2d-seg", kwargs
    raise ValueError(
        f"no registered segmenter matches a {getattr(encoder, 'spatial_dims', '?')}D {type(encoder).__name__}; "
        f"known pairs: {SEGMENTER_FOR_ENCODER}"
    )


# ------------------------------------------------------------------------------------ load report


@dataclass(frozen=True)
class LoadedPart:
    """Pre-trained tensors copied into one part of a segmenter.

    Attributes:
        name: the part (``"segmenter encoder"``, ``"map encoder"``, ``"tag head"``,
            ``"tag feature projection"``).
        source: the prefix of the copied keys in the pre-training state dict (``"image_encoder."``).
        tensors: state-dict entries copied (parameters and buffers such as BatchNorm statistics).
        parameters: scalar values of the copied parameters (buffers not counted; for a widened
            tensor, only the values that came from the checkpoint).
        widened: keys whose tensor gained K zero-initialised input channels (input fusion).
        trainable: whether the part is updated by fine-tuning.
    """

    name: str
    source: str
    tensors: int
    parameters: int
    widened: tuple[str, ...] = ()
    trainable: bool = True

    def __post_init__(self) -> None:
        if self.tensors < 0 or self.parameters < 0:
            raise ValueError(f"part {self.name!r}: counts must be >= 0, got {self.tensors}, {self.parameters}")


@dataclass(frozen=True)
class LoadReport:
    """What ``build_segmenter`` loaded from the pre-training state, and where.

    Attributes:
        fusion: the fusion mode.
        init_encoder: whether the segmenter's encoder was initialised from the pre-trained one.
        tune_tag_head: whether the map branch (tag head, and its separate encoder copy) is trained.
        shares_encoder: decoder fusion reading the maps from the segmenter's own encoder.
        parts: one ``LoadedPart`` per part that received tensors (empty for random init).
        num_tags: K, map channels fused into the segmenter (0 for ``"none"``).
    """

    fusion: str
    init_encoder: bool
    tune_tag_head: bool
    shares_encoder: bool
    parts: tuple[LoadedPart, ...] = field(default_factory=tuple)
    num_tags: int = 0

    def __post_init__(self) -> None:
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {list(FUSION_MODES)}, got {self.fusion!r}")
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise ValueError(f"parts must have distinct names, got {names}")

    @property
    def tensors(self) -> int:
        """Tensors copied in all parts."""
        return sum(p.tensors for p in self.parts)

    @property
    def parameters(self) -> int:
        """Parameter values copied in all parts."""
        return sum(p.parameters for p in self.parts)

    def part(self, name: str) -> LoadedPart:
        """The part called ``name``; ``KeyError`` naming the loaded parts if none was loaded."""
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(f"no part {name!r} was loaded; loaded parts: {[p.name for p in self.parts]}")

    def summary(self) -> str:
        """A few human-readable lines for logs."""
        lines = [
            f"fusion={self.fusion!r} init_encoder={self.init_encoder} tune_tag_head={self.tune_tag_head}"
            + (" (maps from the segmenter's own encoder)" if self.shares_encoder else "")
        ]
        if not self.parts:
            lines.append("  nothing loaded: every weight is randomly initialised")
        for p in self.parts:
            line = f"  {p.name} <- {p.source}*: {p.tensors} tensors, {p.parameters:,} parameters"
            if p.widened:
                line += f"; {self.num_tags} zero-initialised map input channels in {', '.join(p.widened)}"
            lines.append(line + ("" if p.trainable else " (frozen)"))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for a checkpoint's ``extra`` or a metrics file)."""
        return {
            "fusion": self.fusion,
            "init_encoder": self.init_encoder,
            "tune_tag_head": self.tune_tag_head,
            "shares_encoder": self.shares_encoder,
            "num_tags": self.num_tags,
            "parts": [
                {"name": p.name, "source": p.source, "tensors": p.tensors, "parameters": p.parameters,
                 "widened": list(p.widened), "trainable": p.trainable}
                for p in self.parts
            ],
        }


# ---------------------------------------------------------------------------------- the segmenter


def _convs(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]


class MosmosSegmenter(nn.Module):
    """A MONAI segmenter (``UNETR`` or ``BasicUNet``) fused with pre-trained pixel-tag attention maps.

    The forward pass is written with the network's own submodules (``vit``, ``encoder1..4``,
    ``decoder5..2``, ``out`` for UNETR; ``conv_0``, ``down_1..4``, ``upcat_4..1``, ``final_conv``
    for BasicUNet), so that the encoder runs once and its features can also feed the tag head;
    with ``fusion="none"`` it computes exactly ``net(image)``.

    Args:
        net: the segmentation network. For ``"input"`` it must take C + K input channels (C image
            channels, K tags); otherwise C. For ``"decoder"`` pass the plain network: its 1x1
            output head is replaced here by one with K more inputs, the extra weights zero, so the
            wrapped model starts as the same function as ``net``.
        fusion: ``"none"``, ``"input"`` or ``"decoder"`` (see ``mosmoskit.models.fusion``).
        tag_head: the pre-trained ``TagHead`` (K = ``tag_head.num_tags``); required unless ``"none"``.
        map_encoder: a separate pre-trained image encoder whose features feed the tag head.
            Required for ``"input"``. For ``"decoder"``, None means "read the tag features from
            the segmenter's own encoder" (its encoder must then be the pre-trained one).
        tune_tag_head: train the map branch (tag head, ``map_encoder``, ``tag_feature_proj``).
            If False they are frozen and kept in eval mode (their BatchNorm statistics and dropout
            stay as pre-trained), and the maps carry no gradient: with a shared encoder the
            segmentation loss reaches the encoder through the decoder only.
        tag_feature_level: with a shared BasicUNet encoder, the level (0-4) the tag head reads
            (``BasicUNetEncoder.feature_level`` of the pre-trained encoder).
        tag_feature_proj: with a shared BasicUNet encoder, the pre-trained encoder's
            ``feature_proj`` (None = identity).
        map_normalize: ``"max"`` (peak 1 per map), ``"sum"`` or ``"none"``.
        scale_by_probability: multiply each map by its tag probability (absent organs fade).
        pretrain_config: the pre-training config of ``map_encoder`` and ``tag_head`` (its
            ``window``, ``image_size``): needed by :meth:`whole_image_maps`. Not part of the state
            dict; ``build_segmenter`` sets it.
        map_model: the pre-trained model (``MosmosPretrainModel``) whose ``image_encoder`` and
            ``tag_head`` are ``map_encoder`` and ``tag_head`` (shared modules, not a copy), whose
            ``attention_maps`` makes the maps; built from the two when not given. Not registered
            as a submodule (the state dict keeps its keys).

    Shapes:
        forward: image (B, C, *spatial) [and maps (B, K, *spatial)] -> logits (B, out_channels,
        *spatial); UNETR accepts only its ``img_size``, BasicUNet any multiple of 16.

    Raises:
        ValueError: an unsupported network, unknown fusion mode, missing or superfluous map
            modules, or channel counts that do not fit together (the message gives the numbers).

    Example:
        >>> from monai.networks.nets import BasicUNet
        >>> net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(8, 8, 16, 16, 32, 8))
        >>> model = MosmosSegmenter(net, fusion="none")
        >>> model(torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(
        self,
        net: nn.Module,
        fusion: str = "none",
        tag_head: TagHead | None = None,
        map_encoder: ImageEncoder | None = None,
        *,
        tune_tag_head: bool = False,
        tag_feature_level: int = 2,
        tag_feature_proj: nn.Module | None = None,
        map_normalize: str = "max",
        scale_by_probability: bool = True,
        pretrain_config: Any = None,
        map_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, (UNETR, BasicUNet)):
            raise ValueError(f"MosmosSegmenter wraps monai UNETR or BasicUNet, got {type(net).__name__}")
        if fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {list(FUSION_MODES)}, got {fusion!r}")
        if map_normalize not in MAP_NORMALIZATIONS:
            raise ValueError(f"map_normalize must be one of {list(MAP_NORMALIZATIONS)}, got {map_normalize!r}")
        self.is_unetr = isinstance(net, UNETR)
        #: UNETR: run the ViT blocks under activation checkpointing while training (less memory,
        #: about one more ViT forward per step); set by ``build_segmenter(gradient_checkpointing=...)``.
        self.gradient_checkpointing = False
        first_conv = _convs(net)[0]  # the ViT patch embedding / BasicUNet's conv_0: reads the input
        self.spatial_dims = first_conv.weight.ndim - 2
        net_in = first_conv.in_channels
        shared = fusion == "decoder" and map_encoder is None

        if fusion == "none":
            if tag_head is not None or map_encoder is not None or tag_feature_proj is not None:
                raise ValueError("fusion='none' uses no maps: do not pass tag_head, map_encoder or tag_feature_proj")
            num_tags = 0
        else:
            if tag_head is None:
                raise ValueError(f"fusion={fusion!r} needs the pre-trained tag_head that makes the maps")
            num_tags = tag_head.num_tags
        if fusion == "input" and map_encoder is None:
            raise ValueError(
                "fusion='input' needs map_encoder: the segmenter's encoder sees C + K channels, so a separate "
                "pre-trained encoder must compute the features the tag head reads"
            )
        if map_encoder is not None:
            if map_encoder.spatial_dims != self.spatial_dims:
                raise ValueError(f"map_encoder is {map_encoder.spatial_dims}D but the network is {self.spatial_dims}D")
            if map_encoder.feature_dim != tag_head.feature_dim:
                raise ValueError(
                    f"tag head reads {tag_head.feature_dim}-channel features but map_encoder gives "
                    f"{map_encoder.feature_dim}"
                )
        image_channels = net_in - num_tags if fusion == "input" else net_in
        if fusion == "input" and image_channels != map_encoder.in_channels:
            raise ValueError(
                f"input fusion: the network takes {net_in} input channels but needs image channels + maps = "
                f"{map_encoder.in_channels} + {num_tags} = {map_encoder.in_channels + num_tags}; build it with "
                f"in_channels={map_encoder.in_channels + num_tags}"
            )
        if fusion == "decoder" and map_encoder is not None and map_encoder.in_channels != image_channels:
            raise ValueError(
                f"map_encoder takes {map_encoder.in_channels} channel(s) but the network takes {image_channels}"
            )
        if tag_feature_proj is not None and not (shared and not self.is_unetr):
            raise ValueError("tag_feature_proj is only used when decoder fusion shares a BasicUNet encoder")

        self.net = net
        self.fusion = fusion
        self.num_tags = num_tags
        self.in_channels = image_channels
        self.out_channels = self._head_conv().out_channels
        self.shares_encoder = shared
        self.tune_tag_head = bool(tune_tag_head)
        self.map_normalize = map_normalize
        self.scale_by_probability = bool(scale_by_probability)
        self.img_size: tuple[int, ...] | None = (
            tuple(int(f) * int(p) for f, p in zip(net.feat_size, net.patch_size)) if self.is_unetr else None
        )
        self.tag_head = tag_head
        self.map_encoder = map_encoder
        self.tag_feature_level = int(tag_feature_level)
        self.tag_feature_proj = None

        if shared:
            self._check_shared_features(tag_head, tag_feature_proj)
            if not self.is_unetr:
                self.tag_feature_proj = tag_feature_proj if tag_feature_proj is not None else nn.Identity()
        if fusion == "decoder":
            self._set_head_conv(widen_conv_inputs(self._head_conv(), num_tags))
        if not self.tune_tag_head:
            for module in self._map_modules():
                module.requires_grad_(False)
                module.eval()
        #: the pre-training config (window, image_size) the maps are made at; see ``whole_image_maps``
        self.pretrain_config = pretrain_config
        if map_model is not None and (getattr(map_model, "image_encoder", None) is not map_encoder
                                      or getattr(map_model, "tag_head", None) is not tag_head):
            raise ValueError("map_model must hold this segmenter's map_encoder and tag_head (the same modules)")
        # Plain attribute, not a submodule: its encoder and tag head are registered here already.
        object.__setattr__(self, "_map_model", map_model)

    # ----------------------------------------------------------------------- structure helpers
    def _check_shared_features(self, tag_head: TagHead, proj: nn.Module | None) -> None:
        if self.is_unetr:
            width, what = self.net.hidden_size, "the ViT hidden size"
        else:
            if not 0 <= self.tag_feature_level < len(BASIC_UNET_LEVELS):
                raise ValueError(
                    f"tag_feature_level must be in 0..{len(BASIC_UNET_LEVELS) - 1}, got {self.tag_feature_level}"
                )
            level = BASIC_UNET_LEVELS[self.tag_feature_level]
            if proj is not None and _convs(proj):
                width, what = _convs(proj)[-1].out_channels, f"tag_feature_proj (on level {level})"
            else:
                width, what = _convs(getattr(self.net, level))[-1].out_channels, f"encoder level {level}"
        if width != tag_head.feature_dim:
            raise ValueError(
                f"decoder fusion with a shared encoder: the tag head reads {tag_head.feature_dim}-channel features "
                f"but {what} has {width}"
            )

    def _head_conv(self) -> nn.Module:
        return self.net.out.conv.conv if self.is_unetr else self.net.final_conv

    def _set_head_conv(self, conv: nn.Module) -> None:
        if self.is_unetr:
            self.net.out.conv.conv = conv
        else:
            self.net.final_conv = conv

    @property
    def precomputed_maps(self) -> bool:
        """Whether the fused maps are made once per whole image, outside ``forward``.

        True when the model fuses maps from a frozen map branch of its own (``map_encoder`` and
        ``tag_head``, not trained): those maps do not change while the segmenter trains, so they
        are computed by :meth:`whole_image_maps` on the whole image at the pre-training geometry
        and passed to ``forward(image, maps)``. False without fusion, with a shared encoder (the
        maps follow the fine-tuned encoder) and with ``tune_tag_head`` (the maps change every
        step and need gradients): those make their maps inside ``forward``.
        """
        return self.fusion != "none" and not self.shares_encoder and not self.tune_tag_head

    @property
    def map_model(self) -> nn.Module:
        """The pre-trained model (image side) that makes the maps: ``map_encoder`` + ``tag_head``.

        A ``MosmosPretrainModel`` sharing (not copying) this segmenter's ``map_encoder`` and
        ``tag_head``, so fine-tuned or loaded weights are its weights; call
        :func:`~mosmoskit.pretraining.maps.whole_image_maps` with it. Not a submodule.

        Raises:
            ValueError: a model without its own map encoder (``fusion="none"`` or a shared encoder).
        """
        if self.map_encoder is None or self.tag_head is None:
            raise ValueError(
                "this segmenter has no map encoder of its own (fusion='none', or decoder fusion reading the "
                "segmenter's own encoder): its maps cannot be made outside the network"
            )
        model = self.__dict__.get("_map_model")
        if model is None:
            from mosmoskit.pretraining.model import MosmosPretrainModel

            model = MosmosPretrainModel(self.map_encoder, self.tag_head)
            object.__setattr__(self, "_map_model", model)
        return model

    def whole_image_maps(
        self, image: Any, device: torch.device | str | None = None, spacing: Sequence[float] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The maps this model fuses for a whole image (HU), made once at the pre-training geometry.

        :func:`mosmoskit.pretraining.maps.whole_image_maps` with :attr:`map_model`,
        ``pretrain_config`` and this model's ``map_normalize`` and ``scale_by_probability``.

        Args:
            image: the whole image in HU without a channel axis: (H, W), (H, W, D), or (H, W, D)
                axial slices for a 2D model; on the grid the segmenter works on.
            device: where the map branch runs (default: where its weights are).
            spacing: the image's voxel size (mm), so that a pre-training that resampled its images
                gets this one at its spacing too (None: taken to be at that spacing already).

        Returns:
            maps (K, *image.shape) float32 on the CPU, exactly what ``forward(image, maps)``
            should receive (cropped and augmented with the image); tag probabilities (K,) or
            (K, D) per slice.

        Raises:
            ValueError: a model whose maps are made inside ``forward`` (see
                :attr:`precomputed_maps`), or no ``pretrain_config``.
        """
        from mosmoskit.pretraining.maps import whole_image_maps

        if not self.precomputed_maps:
            raise ValueError(self._no_precomputed_maps())
        if self.pretrain_config is None:
            raise ValueError("whole_image_maps needs the pre-training config (window, image_size): build the model "
                             "with build_segmenter or pass pretrain_config=")
        return whole_image_maps(self.map_model, image, self.pretrain_config, normalize=self.map_normalize,
                                scale_by_probability=self.scale_by_probability, device=device, spacing=spacing)

    def _no_precomputed_maps(self) -> str:
        if self.fusion == "none":
            return "this segmenter was built with fusion='none': it fuses no maps"
        why = ("it reads them from its own, fine-tuned encoder (share_encoder)" if self.shares_encoder
               else "its map branch is trained (tune_tag_head)")
        return f"this segmenter makes its maps inside forward: {why}"

    def _map_modules(self) -> list[nn.Module]:
        return [m for m in (self.tag_head, self.map_encoder, self.tag_feature_proj) if m is not None]

    def train(self, mode: bool = True) -> MosmosSegmenter:
        """Set training mode; a frozen map branch stays in eval mode (see ``tune_tag_head``)."""
        super().train(mode)
        if not self.tune_tag_head:
            for module in self._map_modules():
                module.eval()
        return self

    # ------------------------------------------------------------------------- forward pieces
    def check_input(self, image: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``image`` is (B, in_channels, *spatial) of an accepted size."""
        axes = "(B, C, H, W, D)" if self.spatial_dims == 3 else "(B, C, H, W)"
        if image.ndim != self.spatial_dims + 2:
            raise ValueError(f"expected a {self.spatial_dims + 2}D input {axes}, got shape {tuple(image.shape)}")
        if image.shape[1] != self.in_channels:
            raise ValueError(
                f"the segmenter takes {self.in_channels} image channel(s), got shape {tuple(image.shape)}"
                + (" (the K maps are added inside the model)" if self.fusion == "input" else "")
            )
        spatial = tuple(image.shape[2:])
        if self.img_size is not None and spatial != self.img_size:
            raise ValueError(
                f"UNETR was built for img_size {self.img_size} (one learned position embedding per "
                f"{UNETR_PATCH_SIZE}-voxel patch), got input shape {tuple(image.shape)}; use "
                f"sliding_window_inference with roi_size={self.img_size} for other sizes"
            )
        if self.img_size is None and any(s % BASIC_UNET_SIZE_DIVISOR for s in spatial):
            raise ValueError(
                f"BasicUNet needs spatial sizes divisible by {BASIC_UNET_SIZE_DIVISOR}, got input shape "
                f"{tuple(image.shape)}"
            )

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The parameters of the segmenter's own encoder (UNETR's ``vit``, BasicUNet's ``conv_0``/``down_*``):
        what ``init_encoder`` loads from pre-training. The map branch is not included."""
        blocks = ("vit",) if self.is_unetr else BASIC_UNET_LEVELS
        return [p for name in blocks for p in getattr(self.net, name).parameters()]

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """UNETR: (tokens, *block outputs); BasicUNet: the five encoder levels."""
        if self.is_unetr and self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return self._encode_vit_checkpointed(x)
        if self.is_unetr:
            tokens, hidden = self.net.vit(x)
            return (tokens, *hidden)
        levels = [self.net.conv_0(x)]
        for name in BASIC_UNET_LEVELS[1:]:
            levels.append(getattr(self.net, name)(levels[-1]))
        return tuple(levels)

    def _encode_vit_checkpointed(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """MONAI ViT's forward, each transformer block under activation checkpointing.

        The blocks' activations (attention maps, MLP intermediates) are recomputed in the backward
        pass instead of kept: less memory for about one more ViT forward. Block outputs are kept
        (UNETR's decoder reads blocks 3, 6 and 9).
        """
        from torch.utils.checkpoint import checkpoint

        vit = self.net.vit
        h = vit.patch_embedding(x)
        if hasattr(vit, "cls_token"):
            h = torch.cat((vit.cls_token.expand(h.shape[0], -1, -1), h), dim=1)
        hidden = []
        for block in vit.blocks:
            h = checkpoint(block, h, use_reentrant=False)
            hidden.append(h)
        return (vit.norm(h), *hidden)

    def _decode(self, x: torch.Tensor, encoded: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The last decoder features, the input of the 1x1 output head (as in MONAI's forward)."""
        net = self.net
        if self.is_unetr:
            tokens, hidden = encoded[0], encoded[1:]
            enc1 = net.encoder1(x)
            enc2 = net.encoder2(net.proj_feat(hidden[UNETR_SKIP_BLOCKS[0]]))
            enc3 = net.encoder3(net.proj_feat(hidden[UNETR_SKIP_BLOCKS[1]]))
            enc4 = net.encoder4(net.proj_feat(hidden[UNETR_SKIP_BLOCKS[2]]))
            dec3 = net.decoder5(net.proj_feat(tokens), enc4)
            dec2 = net.decoder4(dec3, enc3)
            dec1 = net.decoder3(dec2, enc2)
            return net.decoder2(dec1, enc1)
        x0, x1, x2, x3, x4 = encoded
        u4 = net.upcat_4(x4, x3)
        u3 = net.upcat_3(u4, x2)
        u2 = net.upcat_2(u3, x1)
        return net.upcat_1(u2, x0)

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        """The 1x1 output head: (B, F[+K], *spatial) -> logits (B, out_channels, *spatial)."""
        return self.net.out(features) if self.is_unetr else self.net.final_conv(features)

    def _maps_from_features(self, features: torch.Tensor, grid: Sequence[int], size: Sequence[int]) -> FusionMaps:
        out = self.tag_head(features, grid)
        return prepare_fusion_maps(out.maps, out.logits, size, self.map_normalize, self.scale_by_probability)

    def _branch_maps(self, image: torch.Tensor) -> FusionMaps:
        """Maps from the separate pre-trained encoder copy."""
        with nullcontext() if self.tune_tag_head else torch.no_grad():
            enc = self.map_encoder(image)
            return self._maps_from_features(enc.features, enc.grid, image.shape[2:])

    def _shared_maps(self, encoded: tuple[torch.Tensor, ...], size: Sequence[int]) -> FusionMaps:
        """Maps from the segmenter's own encoder output (decoder fusion, shared encoder)."""
        with nullcontext() if self.tune_tag_head else torch.no_grad():
            if self.is_unetr:
                # UNETRViTEncoder's features are the ViT's final (normed) tokens, as here.
                features, grid = encoded[0], tuple(self.net.feat_size)
            else:
                fmap = self.tag_feature_proj(encoded[self.tag_feature_level])
                features, grid = fmap.flatten(2).transpose(1, 2), tuple(fmap.shape[2:])
            return self._maps_from_features(features, grid, size)

    def check_maps(self, maps: torch.Tensor, image: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``maps`` is (B, K, *spatial) for ``image`` (B, C, *spatial)."""
        if maps.ndim != image.ndim or maps.shape[0] != image.shape[0] or maps.shape[1] != self.num_tags \
                or maps.shape[2:] != image.shape[2:]:
            raise ValueError(
                f"maps must be (B, K={self.num_tags}, *spatial) for an image of shape {tuple(image.shape)}, got "
                f"{tuple(maps.shape)}"
            )

    def forward(self, image: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
        """Segment ``image``, fusing ``maps``.

        Args:
            image: (B, C, *spatial) with C = ``in_channels`` (image channels only).
            maps: (B, K, *spatial) the maps to fuse, as they are: :meth:`whole_image_maps` of the
                whole image, cropped / augmented / windowed exactly as ``image`` was. Required in
                practice whenever ``image`` is a crop or a window of a larger image (training,
                sliding windows) and :attr:`precomputed_maps` is true. None: the maps are made
                here from ``image`` itself (the shared-encoder and ``tune_tag_head`` variants
                always do this; for the others it is right only if ``image`` is a whole image at
                the pre-training geometry and window).

        Returns:
            (B, out_channels, *spatial) logits.

        Raises:
            ValueError: wrong rank, channel count or spatial size (see ``check_input``); maps of
                the wrong shape, or maps given to a model that makes its own
                (``precomputed_maps`` false).
        """
        self.check_input(image)
        if maps is not None:
            if not self.precomputed_maps:
                raise ValueError(self._no_precomputed_maps() + "; do not pass maps")
            self.check_maps(maps, image)
        if self.fusion == "input":
            x = concat_maps(image, maps if maps is not None else self._branch_maps(image).maps)
        else:
            x = image
        encoded = self._encode(x)
        features = self._decode(x, encoded)
        if self.fusion == "decoder":
            if maps is None:
                fused = self._shared_maps(encoded, image.shape[2:]) if self.shares_encoder \
                    else self._branch_maps(image)
                maps = fused.maps
            features = concat_maps(features, maps)
        return self._head(features)

    @torch.no_grad()
    def attention_maps(self, image: torch.Tensor) -> FusionMaps:
        """The maps the network makes from ``image`` itself (no gradient; mode unchanged).

        What ``forward(image)`` fuses when no maps are passed. For a model with
        :attr:`precomputed_maps`, the maps it fuses in training and inference are
        :meth:`whole_image_maps` of the whole image instead; this equals them only for a whole
        image at the pre-training geometry and window.

        Args:
            image: (B, C, *spatial), as for ``forward``.

        Returns:
            ``FusionMaps``: ``maps`` (B, K, *spatial) exactly as fused, ``logits`` (B, K),
            ``raw`` (B, K, *grid).

        Raises:
            ValueError: ``fusion == "none"`` (no tag head) or a bad input.
        """
        if self.fusion == "none":
            raise ValueError("this segmenter was built with fusion='none': it has no tag head and no maps")
        self.check_input(image)
        if self.shares_encoder:
            return self._shared_maps(self._encode(image), image.shape[2:])
        return self._branch_maps(image)


# ----------------------------------------------------------------------------------- the builder


def build_segmenter(
    spatial_dims: int,
    label_map: LabelMap | str,
    roi_size: Sequence[int],
    fusion: str = "none",
    pretrained_checkpoint_state: Mapping[str, torch.Tensor] | None = None,
    pretrain_config: Mapping[str, Any] | Any | None = None,
    init_encoder: bool = False,
    tune_tag_head: bool = False,
    *,
    in_channels: int = 1,
    pretrain_label_map: LabelMap | Mapping[str, Any] | str | None = None,
    segmenter_options: Mapping[str, Any] | None = None,
    map_normalize: str = "max",
    scale_by_probability: bool = True,
    architecture_only: bool = False,
    text_dim: int | None = None,
    share_encoder: bool = False,
    gradient_checkpointing: bool = False,
    segmenter: str = "",
) -> tuple[MosmosSegmenter, LoadReport]:
    """Build a fine-tuning segmenter (any baseline or MOSMOS variant) and load what it needs.

    Args:
        spatial_dims: 2 (``"unet2d-seg"``) or 3 (``"unetr3d"``).
        label_map: the fine-tuning label map; ``out_channels = label_map.num_classes``, and with
            fusion its K foreground names must be the pre-training tags.
        roi_size: the network's input grid (sliding-window patch). UNETR with any pre-trained part
            needs exactly the pre-training ``image_size``; BasicUNet any multiple of 16.
        fusion: ``"none"``, ``"input"`` or ``"decoder"``.
        pretrained_checkpoint_state: the pre-training model's state dict
            (``checkpoint["state"]["model"]``: keys ``image_encoder.*``, ``tag_head.*``, ...), or None.
        pretrain_config: the pre-training config (``checkpoint["config"]`` or a ``PretrainConfig``).
            It fixes the encoder architecture (so a random-init baseline given only the config has
            the same network as the pre-trained variants) and the tag head.
        init_encoder: initialise the segmenter's encoder from ``image_encoder.*``. With decoder
            fusion it also decides where the maps come from (see the module docstring).
        share_encoder: decoder fusion with ``init_encoder``: let the frozen tag head read the
            segmenter's own encoder (one encoder pass per step) instead of a frozen copy of the
            pre-trained encoder. Faster, but the maps drift as fine-tuning changes the encoder
            under the frozen head (a two-seed phantom pilot scored 1.2-1.4 Dice points lower), so the
            default is the frozen copy.
        gradient_checkpointing: UNETR: checkpoint the ViT blocks while training (memory for
            compute); the outputs are the same. Ignored by the 2D U-Net.
        tune_tag_head: train the map branch; otherwise it is frozen (see ``MosmosSegmenter``).
        in_channels: image channels C; must equal the pre-trained encoder's.
        pretrain_label_map: the pre-training label map (``checkpoint["label_map"]``), to check tag
            names and order; if None, ``pretrain_config["label_map"]`` is used when it names a
            shipped map, else only K is checked.
        segmenter_options: further builder arguments that the encoder does not fix (UNETR's
            ``feature_size``, ``norm_name``, ``res_block``; BasicUNet's ``upsample``).
        map_normalize, scale_by_probability: map preparation (``prepare_fusion_maps``).
        architecture_only: build the same modules without loading anything (to load a fine-tuned
            state dict afterwards); needs ``pretrain_config`` instead of a state.
        text_dim: with ``architecture_only``, the width of the tag head's text query embedding
            (``tag_head.query_text``) if the pre-trained head had one; read from the state otherwise.
        segmenter: the registered segmenter to build without a pre-trained encoder (``""``: the
            default of ``spatial_dims``, :data:`DEFAULT_SEGMENTERS`); with one it must be the
            encoder's own (``"unetr3d"`` for ``"vit3d"``, ...).

    Returns:
        (model, report): the ``MosmosSegmenter`` and a ``LoadReport`` of the tensors loaded per part.

    Raises:
        ValueError: an unknown fusion mode; a variant that needs pre-trained weights without them
            (or weights without a config); spatial dims, in_channels or roi_size that do not fit the
            pre-trained encoder; a pre-training label map with other tags (both maps named); state
            tensors that are missing, unexpected or of another shape (keys and shapes named).

    Example:
        >>> model, report = build_segmenter(2, "btcv", (64, 64), fusion="none")  # random-init baseline
        >>> print(report.summary())
        fusion='none' init_encoder=False tune_tag_head=False
          nothing loaded: every weight is randomly initialised
    """
    from mosmoskit.config import config_from_dict
    from mosmoskit.pretraining.config import PretrainConfig
    from mosmoskit.pretraining.model import build_image_encoder, build_pretrain_model

    label_map = load_label_map(label_map)
    if fusion not in FUSION_MODES:
        raise ValueError(f"fusion must be one of {list(FUSION_MODES)}, got {fusion!r}")
    if spatial_dims not in DEFAULT_SEGMENTERS:
        raise ValueError(f"spatial_dims must be one of {sorted(DEFAULT_SEGMENTERS)}, got {spatial_dims!r}")
    roi = tuple(int(s) for s in roi_size)
    if len(roi) != spatial_dims or any(s < 1 for s in roi):
        raise ValueError(f"roi_size must be {spatial_dims} positive sizes, got {tuple(roi_size)}")
    if fusion == "none" and tune_tag_head:
        raise ValueError("tune_tag_head=True has no effect with fusion='none' (there is no tag head)")
    num_tags = len(label_map.foreground_names)
    needs_pretrained = init_encoder or fusion != "none"
    variant = f"fusion={fusion!r}, init_encoder={init_encoder}"

    # ---- what was given
    if architecture_only and pretrained_checkpoint_state is not None:
        raise ValueError(
            "architecture_only builds without pre-trained weights: do not pass pretrained_checkpoint_state"
        )
    if needs_pretrained and not architecture_only and pretrained_checkpoint_state is None:
        raise ValueError(
            f"{variant} needs the pre-trained model: pass pretrained_checkpoint_state "
            f"(checkpoint['state']['model']) and pretrain_config (checkpoint['config'])"
        )
    wants_config = pretrained_checkpoint_state is not None or (needs_pretrained and architecture_only)
    if wants_config and pretrain_config is None:
        raise ValueError(f"{variant}: pretrain_config is needed to rebuild the pre-trained encoder and tag head")
    state = None if pretrained_checkpoint_state is None else _model_state(pretrained_checkpoint_state)
    config = None
    if pretrain_config is not None:
        config = (
            pretrain_config if isinstance(pretrain_config, PretrainConfig)
            else config_from_dict(PretrainConfig, dict(pretrain_config), source="pretrain_config")
        )
        if config.spatial_dims != spatial_dims:
            raise ValueError(
                f"the pre-trained encoder {config.image_encoder!r} is {config.spatial_dims}D (pretrain_config "
                f"spatial_dims={config.spatial_dims}) but spatial_dims={spatial_dims} was asked"
            )
    if fusion != "none" and config is not None:
        _check_label_maps(label_map, state, config, pretrain_label_map)

    # ---- the pre-trained modules (built even for architecture_only, so the structure matches)
    encoder: ImageEncoder | None = None
    tag_head: TagHead | None = None
    pretrain_model = None
    if config is not None and fusion != "none":
        if state is not None:
            query_text = state.get("tag_head.query_text")
            text_dim = None if query_text is None else int(query_text.shape[1])
        pretrain_model = build_pretrain_model(config, label_map, with_text_encoder=False, text_dim=text_dim)
        encoder, tag_head = pretrain_model.image_encoder, pretrain_model.tag_head
    elif config is not None:
        encoder = build_image_encoder(config)
    if encoder is not None and encoder.in_channels != in_channels:
        raise ValueError(
            f"in_channels={in_channels} but the pre-trained encoder takes {encoder.in_channels} channel(s)"
        )

    # ---- the segmentation network
    if encoder is not None:
        name, kwargs = segmenter_kwargs_for_encoder(encoder)
        if name == "unetr3d":
            if needs_pretrained and roi != tuple(encoder.img_size):
                raise ValueError(
                    f"roi_size {roi} differs from the pre-training image_size {tuple(encoder.img_size)}: UNETR's ViT "
                    f"has one learned position embedding per {UNETR_PATCH_SIZE}-voxel patch of the image size it was "
                    f"built for, so UNETR needs img_size == pre-training image_size; set roi_size="
                    f"{tuple(encoder.img_size)} and use sliding-window inference for larger volumes"
                )
            kwargs["img_size"] = roi
        if segmenter and segmenter != name:
            raise ValueError(f"segmenter {segmenter!r} was asked, but the pre-trained encoder "
                             f"{type(encoder).__name__} builds {name!r}")
    else:
        name = segmenter or DEFAULT_SEGMENTERS[spatial_dims]
        if SEGMENTER_DIMS.get(name) != spatial_dims:
            known = [n for n, d in SEGMENTER_DIMS.items() if d == spatial_dims]
            raise ValueError(f"segmenter {name!r} is not a {spatial_dims}D segmenter; {spatial_dims}D: {known}")
        kwargs = {"in_channels": in_channels, **({"img_size": roi} if name == "unetr3d" else {})}
    divisor = _SIZE_DIVISOR[name]
    if any(s % divisor for s in roi):
        raise ValueError(f"{name} needs roi_size divisible by {divisor}, got {roi}")
    kwargs["out_channels"] = label_map.num_classes
    fixed = sorted(set(kwargs) & set(segmenter_options or {}))
    if fixed:
        raise ValueError(
            f"segmenter_options may not set {fixed}: they are fixed by the pre-trained encoder, the label map "
            f"or roi_size"
        )
    if fusion == "input":
        kwargs["in_channels"] = in_channels + num_tags
    net = create_model(name, **kwargs, **dict(segmenter_options or {}))

    # ---- load
    parts: list[LoadedPart] = []
    load = state is not None
    shares = fusion == "decoder" and init_encoder and share_encoder
    if shares and getattr(encoder, "feature_path", "encoder") != "encoder":
        raise ValueError(
            "share_encoder=True lets the tag head read an encoder level of the segmenter, but this pre-trained "
            f"tag head reads the pre-training network's decoder (feature_path={encoder.feature_path!r}), which the "
            "segmenter does not have; leave share_encoder=False (the maps then come from a frozen copy)"
        )
    trainable_maps = bool(tune_tag_head)
    if load and encoder is not None:
        staged = _load_part(encoder, state, "image_encoder.", "pre-trained image encoder")
        if init_encoder:
            blocks = _ENCODER_BLOCKS[name]
            widen = num_tags if fusion == "input" else 0
            part = _load_part(net, encoder.state_dict(), "", PART_SEGMENTER_ENCODER, blocks=blocks, widen=widen,
                              source="image_encoder.")
            if widen and len(part.widened) != 1:
                raise ValueError(f"input fusion expected exactly one first layer to widen, widened {part.widened}")
            parts.append(part)
        if fusion != "none" and not shares:
            parts.append(_renamed(staged, PART_MAP_ENCODER, trainable_maps))
    if load and tag_head is not None:
        parts.append(_load_part(tag_head, state, "tag_head.", PART_TAG_HEAD, trainable=trainable_maps))

    tag_kwargs: dict[str, Any] = {}
    if shares and isinstance(encoder, BasicUNetEncoder):
        tag_kwargs = {"tag_feature_level": encoder.feature_level, "tag_feature_proj": encoder.feature_proj}
        proj_tensors = encoder.feature_proj.state_dict()
        if load and proj_tensors:
            parts.append(LoadedPart(
                PART_TAG_PROJECTION, "image_encoder.feature_proj.", tensors=len(proj_tensors),
                parameters=sum(p.numel() for p in encoder.feature_proj.parameters()), trainable=trainable_maps,
            ))
    own_maps = fusion != "none" and not shares
    model = MosmosSegmenter(
        net,
        fusion=fusion,
        tag_head=tag_head,
        map_encoder=encoder if own_maps else None,
        tune_tag_head=tune_tag_head,
        map_normalize=map_normalize,
        scale_by_probability=scale_by_probability,
        pretrain_config=config if fusion != "none" else None,
        map_model=pretrain_model if own_maps else None,
        **tag_kwargs,
    )
    model.gradient_checkpointing = bool(gradient_checkpointing)
    report = LoadReport(
        fusion=fusion, init_encoder=bool(init_encoder), tune_tag_head=bool(tune_tag_head), shares_encoder=shares,
        parts=tuple(parts), num_tags=model.num_tags,
    )
    return model, report


def _model_state(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Validate a pre-training model state dict (and catch a whole checkpoint passed by mistake)."""
    if not isinstance(state, Mapping):
        raise ValueError(f"pretrained_checkpoint_state must be a state dict, got {type(state).__name__}")
    if isinstance(state.get("state"), Mapping) and "model" in state["state"]:
        raise ValueError(
            "pretrained_checkpoint_state looks like a whole checkpoint (it has a 'state' entry): pass "
            "checkpoint['state']['model'], with pretrain_config=checkpoint['config'] and "
            "pretrain_label_map=checkpoint['label_map']"
        )
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"pretrained_checkpoint_state must map names to tensors; not tensors: {_few(sorted(bad))}")
    if not any(k.startswith("image_encoder.") for k in state):
        raise ValueError(
            f"pretrained_checkpoint_state has no 'image_encoder.*' keys (is it a MosmosPretrainModel state dict?); "
            f"its keys look like {_few(sorted(state))}"
        )
    return dict(state)


def _check_label_maps(
    label_map: LabelMap, state: Mapping[str, torch.Tensor] | None, config: Any,
    pretrain_label_map: LabelMap | Mapping[str, Any] | str | None,
) -> None:
    """The tags of the pre-trained head must be the fine-tuning map's foreground names, in order."""
    if isinstance(pretrain_label_map, Mapping):
        pretrain_label_map = LabelMap.from_dict(pretrain_label_map, name=str(config.label_map))
    elif pretrain_label_map is None and str(config.label_map) in available_label_maps():
        pretrain_label_map = load_label_map(str(config.label_map))
    elif pretrain_label_map is not None:
        pretrain_label_map = load_label_map(pretrain_label_map)
    theirs = pretrain_label_map.name if pretrain_label_map is not None else str(config.label_map)
    ours = label_map.name
    k = len(label_map.foreground_names)
    # One tensor per tag in either readout: the decoder's classifier bias or the evidence bias.
    bias_key = next((key for key in ("tag_head.classifier.bias", "tag_head.evidence_bias")
                     if state is not None and key in state), None)
    bias = None if bias_key is None else state[bias_key]
    if bias is not None and bias.shape[0] != k:
        raise ValueError(
            f"the pre-trained tag head has K={bias.shape[0]} tags (label map {theirs!r}, {bias_key} "
            f"{tuple(bias.shape)}) but the fine-tuning label map {ours!r} has K={k} foreground classes; fuse maps "
            f"only with the label map the model was pre-trained on"
        )
    if pretrain_label_map is not None and pretrain_label_map.foreground_names != label_map.foreground_names:
        theirs_names, ours_names = pretrain_label_map.foreground_names, label_map.foreground_names
        if len(theirs_names) != len(ours_names):
            raise ValueError(
                f"the pre-training label map {theirs!r} has K={len(theirs_names)} tags but the fine-tuning label map "
                f"{ours!r} has K={len(ours_names)}; fuse maps only with the label map the model was pre-trained on"
            )
        diff = [f"{i + 1}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(theirs_names, ours_names)) if a != b]
        raise ValueError(
            f"map channel k must be the same organ as tag k, but the pre-training label map {theirs!r} and the "
            f"fine-tuning label map {ours!r} differ at {_few(diff)}"
        )


def _load_part(
    target: nn.Module,
    state: Mapping[str, torch.Tensor],
    prefix: str,
    part: str,
    blocks: Sequence[str] | None = None,
    widen: int = 0,
    source: str | None = None,
    trainable: bool = True,
) -> LoadedPart:
    """Strictly copy ``state``'s ``prefix``* tensors (of top-level ``blocks`` if given) into ``target``.

    With ``widen`` = K, a tensor whose target has exactly K more input channels (axis 1) and is
    otherwise of the same shape gets them as zeros (``widen_input_channels``).
    """
    source = prefix if source is None else source
    tensors = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    wanted = target.state_dict()
    if blocks is not None:
        blocks = tuple(blocks)
        tensors = {k: v for k, v in tensors.items() if k.split(".", 1)[0] in blocks}
        wanted = {k: v for k, v in wanted.items() if k.split(".", 1)[0] in blocks}
    widened: list[str] = []
    loaded_values = {k: v.numel() for k, v in tensors.items()}
    if widen:
        for key in sorted(set(tensors) & set(wanted)):
            have, need = tensors[key].shape, wanted[key].shape
            if (len(have) >= 3 and len(need) == len(have) and need[0] == have[0] and need[2:] == have[2:]
                    and need[1] == have[1] + widen):
                tensors[key] = widen_input_channels(tensors[key], widen)
                widened.append(key)
    missing = sorted(set(wanted) - set(tensors))
    unexpected = sorted(set(tensors) - set(wanted))
    mismatched = [
        f"{source}{k}: checkpoint {tuple(tensors[k].shape)} vs {part} {tuple(wanted[k].shape)}"
        for k in sorted(set(tensors) & set(wanted))
        if tensors[k].shape != wanted[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing from the checkpoint: {_few([source + k for k in missing])}")
    if unexpected:
        problems.append(
            f"{len(unexpected)} checkpoint tensor(s) the {part} lacks: {_few([source + k for k in unexpected])}"
        )
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_few(mismatched)}")
    if problems:
        raise ValueError(
            f"cannot load the {part} from the checkpoint's {source}* tensors (was it pre-trained with this "
            f"pretrain_config?): " + "; ".join(problems)
        )
    target.load_state_dict(tensors, strict=False)
    parameter_names = {n for n, _ in target.named_parameters()}
    return LoadedPart(
        name=part,
        source=source,
        tensors=len(tensors),
        parameters=sum(n for k, n in loaded_values.items() if k in parameter_names),
        widened=tuple(widened),
        trainable=trainable,
    )


def _renamed(part: LoadedPart, name: str, trainable: bool) -> LoadedPart:
    return LoadedPart(name, part.source, part.tensors, part.parameters, part.widened, trainable)


def _few(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")
