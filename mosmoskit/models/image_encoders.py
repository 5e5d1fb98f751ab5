"""Image encoders f_v: an image in, a grid of pixel/patch features and a pooled vector out.

Two families, one per network the method is validated on (DESIGN.md section 2):

- ``"vit3d"``: the Vision Transformer inside MONAI's ``UNETR``, built with exactly the arguments
  ``UNETR`` passes to it and stored as ``self.vit``, so ``encoder.state_dict()``'s ``vit.*`` keys
  load straight into a ``monai.networks.nets.UNETR`` (``load_encoder_into_unetr``).
- ``"unet2d"``: the encoder half of MONAI's ``BasicUNet`` (blocks ``conv_0``, ``down_1`` ...
  ``down_4``, named as there), loading straight into a ``BasicUNet`` with the same ``features``,
  ``norm``, ``act``, ``bias`` (``load_encoder_into_basic_unet``).

Every encoder returns an ``EncoderOutput`` whose ``features`` (B, N, C) feed the tag head and the
projection of the contrastive objective uses ``pooled``; ``hidden_states`` are what a segmentation
decoder reuses as skip connections. A new backbone subclasses ``ImageEncoder`` and registers one
builder with ``@register_model(name, kind="image_encoder")``.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from monai.networks.nets.basic_unet import Down, TwoConv, UpCat
from monai.networks.nets.vit import ViT

from mosmoskit.models.registry import register_model

__all__ = [
    "EncoderOutput",
    "ImageEncoder",
    "UNETRViTEncoder",
    "BasicUNetEncoder",
    "UNETR_PATCH_SIZE",
    "UNETR_NUM_LAYERS",
    "BASIC_UNET_LEVELS",
    "FEATURE_PATHS",
    "vit3d",
    "unet2d",
    "load_encoder_into_unetr",
    "load_encoder_into_basic_unet",
]

# MONAI's UNETR hard-codes both: 16-voxel patches, and a 12-block ViT whose block outputs 3, 6 and 9
# become its skip connections (``UNETR.__init__`` sets ``self.num_layers = 12``).
UNETR_PATCH_SIZE = 16
UNETR_NUM_LAYERS = 12

# BasicUNet's encoder blocks, shallowest first; level i has stride 2**i.
BASIC_UNET_LEVELS: tuple[str, ...] = ("conv_0", "down_1", "down_2", "down_3", "down_4")
#: where a BasicUNet encoder's tag-head features come from (see ``BasicUNetEncoder``)
FEATURE_PATHS: tuple[str, ...] = ("encoder", "decoder")

# BasicUNet's default activation, kept so that the default encoder loads into a default-act BasicUNet.
_BASIC_UNET_ACT: tuple[str, dict[str, Any]] = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})


@dataclass(frozen=True, eq=False)
class EncoderOutput:
    """What every image encoder returns.

    Attributes:
        features: (B, N, C) pixel/patch features for the tag head, flattened row-major from
            (B, C, *grid) so that ``features.transpose(1, 2).reshape(B, C, *grid)`` is the feature map.
        grid: the spatial grid of ``features``; N == prod(grid).
        pooled: (B, C_pooled) one global vector per image (input of the contrastive projection).
        hidden_states: backbone-specific intermediate outputs a segmentation decoder reuses: the ViT
            block outputs (each (B, N, hidden)) or the U-Net levels (each (B, C_i, *spatial_i)).

    Raises:
        ValueError: inconsistent shapes (N != prod(grid), batch sizes differ).
    """

    features: torch.Tensor
    grid: tuple[int, ...]
    pooled: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...]

    def __post_init__(self) -> None:
        if self.features.ndim != 3:
            raise ValueError(f"features must be (B, N, C), got shape {tuple(self.features.shape)}")
        if self.features.shape[1] != math.prod(self.grid):
            raise ValueError(
                f"features have N={self.features.shape[1]} positions but grid {self.grid} has {math.prod(self.grid)}"
            )
        if self.pooled.ndim != 2 or self.pooled.shape[0] != self.features.shape[0]:
            raise ValueError(
                f"pooled must be (B, C_pooled) with B={self.features.shape[0]}, got {tuple(self.pooled.shape)}"
            )

    def feature_map(self) -> torch.Tensor:
        """``features`` as a map (B, C, *grid)."""
        b, _, c = self.features.shape
        return self.features.transpose(1, 2).reshape(b, c, *self.grid)


class ImageEncoder(nn.Module):
    """Base class: the attributes a pre-training or fine-tuning model may rely on, and input checks.

    Attributes (set by subclasses):
        spatial_dims: 2 or 3.
        in_channels: image channels C_in of the (B, C_in, *spatial) input.
        feature_dim: C of ``EncoderOutput.features``.
        pooled_dim: C_pooled of ``EncoderOutput.pooled``.
        img_size: the only accepted spatial size, or None if any multiple of ``size_divisor`` works.
        feature_stride: input voxels per feature cell along each axis (grid = spatial // stride).
        size_divisor: every spatial size must be a multiple of it.
    """

    spatial_dims: int
    in_channels: int
    feature_dim: int
    pooled_dim: int
    img_size: tuple[int, ...] | None
    feature_stride: int
    size_divisor: int

    def feature_grid(self, spatial_size: Sequence[int]) -> tuple[int, ...]:
        """The feature grid for an input of ``spatial_size`` (validated like an input)."""
        self._check_spatial(tuple(int(s) for s in spatial_size), shape_for_message=tuple(spatial_size))
        return tuple(int(s) // self.feature_stride for s in spatial_size)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is (B, in_channels, *spatial) with an accepted size."""
        name = type(self).__name__
        expected = 2 + self.spatial_dims
        if x.ndim != expected:
            axes = "(B, C, H, W, D)" if self.spatial_dims == 3 else "(B, C, H, W)"
            raise ValueError(f"{name} expects a {expected}D input {axes}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{name} was built for {self.in_channels} input channel(s), got shape {tuple(x.shape)} "
                f"with {x.shape[1]}"
            )
        self._check_spatial(tuple(x.shape[2:]), shape_for_message=tuple(x.shape))

    def _check_spatial(self, spatial: tuple[int, ...], shape_for_message: tuple[int, ...]) -> None:
        name = type(self).__name__
        if len(spatial) != self.spatial_dims:
            raise ValueError(f"{name} is {self.spatial_dims}D, got spatial size {spatial}")
        if self.img_size is not None and spatial != self.img_size:
            # A ViT's learned position embedding has one entry per patch of img_size: other sizes
            # would need interpolated embeddings, which UNETR does not do either.
            raise ValueError(
                f"{name} was built for img_size {self.img_size}, got input shape {shape_for_message}; "
                f"crop/pad the image or build the encoder with img_size={spatial}"
            )
        if any(s % self.size_divisor or s == 0 for s in spatial):
            raise ValueError(
                f"{name} needs spatial sizes that are positive multiples of {self.size_divisor}, "
                f"got input shape {shape_for_message}"
            )


def _as_size(img_size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    size = (int(img_size),) * spatial_dims if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if len(size) != spatial_dims:
        raise ValueError(f"img_size must have {spatial_dims} entries, got {img_size!r}")
    return size


class UNETRViTEncoder(ImageEncoder):
    """The ViT encoder of MONAI's UNETR, as an image encoder for report-supervised pre-training.

    ``self.vit`` is a ``monai.networks.nets.ViT`` built with the arguments ``UNETR`` uses (16-voxel
    patches, ``proj_type="conv"``, learnable position embedding, ``classification=False``), so its
    weights load into ``UNETR(..., hidden_size, mlp_dim, num_heads, img_size, qkv_bias)`` with
    ``load_encoder_into_unetr``.

    UNETR always builds 12 transformer blocks and reads block outputs 3, 6, 9 as skips; an encoder
    meant to initialise a UNETR must therefore keep ``num_layers=12`` (make it cheap with a small
    ``hidden_size`` instead). Other depths are allowed for pre-training-only experiments.

    Args:
        in_channels: image channels.
        img_size: the fixed input size (H, W, D), each a multiple of 16; may be anisotropic.
        hidden_size: token width (feature_dim and pooled_dim).
        mlp_dim: width of each block's MLP.
        num_layers: transformer blocks (12 for UNETR).
        num_heads: attention heads; must divide ``hidden_size``.
        dropout: dropout rate inside the ViT, in [0, 1).
        qkv_bias: bias of the qkv projection (UNETR's default is False).
        spatial_dims: 3 (UNETR also supports 2).

    Output of ``forward(x)`` with x (B, in_channels, *img_size):
        features: (B, N, hidden_size), the layer-normed last block output (what UNETR feeds its
            bottleneck), N = prod(img_size // 16); pooled: (B, hidden_size), its mean over tokens;
        hidden_states: the ``num_layers`` raw block outputs, each (B, N, hidden_size).

    Example:
        >>> enc = UNETRViTEncoder(img_size=(32, 32, 16), hidden_size=48, mlp_dim=96, num_heads=4)
        >>> out = enc(torch.zeros(2, 1, 32, 32, 16))
        >>> out.features.shape, out.grid, len(out.hidden_states)
        (torch.Size([2, 4, 48]), (2, 2, 1), 12)
    """

    def __init__(
        self,
        in_channels: int = 1,
        img_size: int | Sequence[int] = (96, 96, 96),
        hidden_size: int = 192,
        mlp_dim: int = 384,
        num_layers: int = UNETR_NUM_LAYERS,
        num_heads: int = 4,
        dropout: float = 0.0,
        qkv_bias: bool = False,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        size = _as_size(img_size, spatial_dims)
        if any(s < UNETR_PATCH_SIZE or s % UNETR_PATCH_SIZE for s in size):
            raise ValueError(f"img_size {size} must be positive multiples of the patch size {UNETR_PATCH_SIZE}")
        for name, value in (("in_channels", in_channels), ("hidden_size", hidden_size), ("mlp_dim", mlp_dim),
                            ("num_layers", num_layers), ("num_heads", num_heads)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")

        self.spatial_dims = spatial_dims
        self.in_channels = int(in_channels)
        self.img_size = size
        self.hidden_size = int(hidden_size)
        self.mlp_dim = int(mlp_dim)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.qkv_bias = bool(qkv_bias)
        self.feature_dim = self.hidden_size
        self.pooled_dim = self.hidden_size
        self.feature_stride = UNETR_PATCH_SIZE
        self.size_divisor = UNETR_PATCH_SIZE
        self.grid = tuple(s // UNETR_PATCH_SIZE for s in size)
        if importlib.util.find_spec("einops") is None:
            # MONAI imports einops lazily and fails deep inside ViT's attention block otherwise.
            raise ImportError(
                "the UNETR ViT encoder needs the einops package (MONAI's ViT attention uses it): pip install einops"
            )
        # The same call as in monai.networks.nets.UNETR.__init__ (arguments it leaves at their
        # defaults are left at their defaults here too), so the parameter names and shapes match.
        self.vit = ViT(
            in_channels=self.in_channels,
            img_size=size,
            patch_size=(UNETR_PATCH_SIZE,) * spatial_dims,
            hidden_size=self.hidden_size,
            mlp_dim=self.mlp_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            proj_type="conv",
            classification=False,
            dropout_rate=self.dropout,
            spatial_dims=spatial_dims,
            qkv_bias=self.qkv_bias,
            save_attn=False,
        )

    def unetr_kwargs(self) -> dict[str, Any]:
        """Arguments of a ``monai.networks.nets.UNETR`` whose ``vit`` matches this encoder.

        Add ``out_channels`` (and optionally ``feature_size``, ``norm_name`` ...) and build
        ``UNETR(**encoder.unetr_kwargs(), out_channels=14)``.

        Raises:
            ValueError: ``num_layers`` is not 12, which UNETR cannot hold.
        """
        if self.num_layers != UNETR_NUM_LAYERS:
            raise ValueError(
                f"UNETR always has {UNETR_NUM_LAYERS} transformer blocks; this encoder has {self.num_layers}"
            )
        return {
            "in_channels": self.in_channels,
            "img_size": self.img_size,
            "hidden_size": self.hidden_size,
            "mlp_dim": self.mlp_dim,
            "num_heads": self.num_heads,
            "proj_type": "conv",
            "dropout_rate": self.dropout,
            "spatial_dims": self.spatial_dims,
            "qkv_bias": self.qkv_bias,
        }

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Encode ``x`` (B, in_channels, *img_size); see the class docstring for the output.

        Raises:
            ValueError: wrong number of dims, channels, or a spatial size other than ``img_size``.
        """
        self.check_input(x)
        tokens, blocks = self.vit(x)
        return EncoderOutput(features=tokens, grid=self.grid, pooled=tokens.mean(dim=1), hidden_states=tuple(blocks))


class BasicUNetEncoder(ImageEncoder):
    """The encoder half of MONAI's ``BasicUNet``, as an image encoder for pre-training.

    The five levels are ``conv_0`` (stride 1), ``down_1`` (2), ``down_2`` (4), ``down_3`` (8),
    ``down_4`` (16), named and built as in ``BasicUNet``, so they load into
    ``BasicUNet(spatial_dims, in_channels, out_channels, features, act, norm, bias, dropout)`` with
    ``load_encoder_into_basic_unet`` (``basic_unet_kwargs()`` gives the matching arguments).

    The tag head reads one level, ``feature_level`` (default 2, stride 4: DESIGN.md section 5 saw
    small organs such as the kidneys missed by one stride-8 cell), optionally projected by a 1x1
    convolution ``feature_proj`` to ``feature_dim`` channels. With ``feature_path="decoder"`` the
    encoder also builds BasicUNet's decoder blocks ``upcat_4`` ... down to ``feature_level`` and the
    tag head reads that decoder level instead: features that know the anatomy seen by the deepest
    level (a receptive field over most of the image) and still resolve small organs at stride
    ``2**feature_level``. The decoder blocks are named and built as in ``BasicUNet``; only the
    encoder blocks are loaded into a segmenter (``load_encoder_into_basic_unet``).

    Normalisation defaults to BatchNorm: in the 2D prototype (DESIGN.md section 5) GroupNorm
    collapsed the pooled image embeddings (cosine 0.9995 between images, both losses at chance)
    where BatchNorm did not. Note that BatchNorm in training mode needs more than one value per
    channel, i.e. B * prod(spatial / 16) > 1.

    Args:
        in_channels: image channels.
        features: six widths as in ``BasicUNet``: five encoder levels and the last decoder width
            (unused here, kept so the same tuple builds the matching ``BasicUNet``).
        feature_level: which level feeds the tag head: 0-4 of the encoder, or 0-3 of the decoder.
        feature_path: ``"encoder"`` (default) or ``"decoder"`` (see above).
        feature_dim: if given, project that level to this many channels with a 1x1 convolution;
            if None, ``feature_dim = features[feature_level]``.
        norm: MONAI norm name or (name, args), e.g. ``"batch"``, ``("instance", {"affine": True})``.
        act: MONAI activation name or (name, args); BasicUNet's LeakyReLU(0.1) by default.
        bias: convolution bias, as in ``BasicUNet``.
        dropout: dropout rate in [0, 1).
        spatial_dims: 2 (``BasicUNet`` also supports 3).

    Output of ``forward(x)`` with x (B, in_channels, H, W), H and W multiples of 16:
        features: (B, (H/s)*(W/s), feature_dim), s = 2**feature_level; pooled: (B, features[4]),
        the global average of the deepest level; hidden_states: the five encoder levels
        (B, features[i], H/2**i, W/2**i), i = 0..4 (never the decoder's, so that a segmenter
        decoder reuses exactly what ``BasicUNet`` would).

    Example:
        >>> enc = BasicUNetEncoder(features=(8, 8, 16, 16, 32, 8))
        >>> out = enc(torch.zeros(2, 1, 32, 32))
        >>> out.features.shape, out.grid, out.pooled.shape
        (torch.Size([2, 64, 16]), (8, 8), torch.Size([2, 32]))
    """

    def __init__(
        self,
        in_channels: int = 1,
        features: Sequence[int] = (16, 16, 32, 64, 128, 16),
        feature_level: int = 2,
        feature_dim: int | None = None,
        norm: str | tuple = "batch",
        act: str | tuple = _BASIC_UNET_ACT,
        bias: bool = True,
        dropout: float = 0.0,
        spatial_dims: int = 2,
        feature_path: str = "encoder",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        fea = tuple(int(f) for f in features)
        if len(fea) != 6 or any(f < 1 for f in fea):
            raise ValueError(
                f"features must be six positive widths as in BasicUNet (five encoder levels and the last "
                f"decoder width), got {tuple(features)!r}"
            )
        if feature_path not in FEATURE_PATHS:
            raise ValueError(f"feature_path must be one of {list(FEATURE_PATHS)}, got {feature_path!r}")
        top = len(BASIC_UNET_LEVELS) - (1 if feature_path == "encoder" else 2)
        if not 0 <= feature_level <= top:
            raise ValueError(f"feature_level must be in 0..{top} for the {feature_path} path, got {feature_level!r}")
        if feature_dim is not None and feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1 or None, got {feature_dim!r}")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")

        self.spatial_dims = spatial_dims
        self.in_channels = int(in_channels)
        self.features = fea
        self.feature_level = int(feature_level)
        self.feature_path = feature_path
        self.norm = norm
        self.act = act
        self.bias = bool(bias)
        self.dropout = float(dropout)
        self.img_size = None
        self.feature_stride = 2**self.feature_level
        self.size_divisor = 2 ** (len(BASIC_UNET_LEVELS) - 1)
        self.pooled_dim = fea[4]

        # Built exactly as in BasicUNet.__init__ so that names and shapes match.
        self.conv_0 = TwoConv(spatial_dims, self.in_channels, fea[0], act, norm, bias, dropout)
        self.down_1 = Down(spatial_dims, fea[0], fea[1], act, norm, bias, dropout)
        self.down_2 = Down(spatial_dims, fea[1], fea[2], act, norm, bias, dropout)
        self.down_3 = Down(spatial_dims, fea[2], fea[3], act, norm, bias, dropout)
        self.down_4 = Down(spatial_dims, fea[3], fea[4], act, norm, bias, dropout)
        level_width = fea[self.feature_level]
        if feature_path == "decoder":
            # BasicUNet's decoder from the deepest level up to ``feature_level`` (same names, widths).
            widths = {4: (fea[4], fea[3], fea[3]), 3: (fea[3], fea[2], fea[2]), 2: (fea[2], fea[1], fea[1]),
                      1: (fea[1], fea[0], fea[5])}
            for level in range(4, self.feature_level, -1):
                in_ch, cat_ch, out_ch = widths[level]
                setattr(self, f"upcat_{level}", UpCat(spatial_dims, in_ch, cat_ch, out_ch, act, norm, bias, dropout,
                                                      "deconv", halves=level != 1))
            level_width = widths[self.feature_level + 1][2]
        if feature_dim is None:
            self.feature_dim = level_width
            self.feature_proj: nn.Module = nn.Identity()
        else:
            self.feature_dim = int(feature_dim)
            conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
            self.feature_proj = conv(level_width, self.feature_dim, kernel_size=1)

    def basic_unet_kwargs(self) -> dict[str, Any]:
        """Arguments of a ``monai.networks.nets.BasicUNet`` whose encoder matches this one.

        Add ``out_channels`` (and ``upsample`` if wanted): ``BasicUNet(**enc.basic_unet_kwargs(), out_channels=14)``.
        """
        return {
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "features": self.features,
            "act": self.act,
            "norm": self.norm,
            "bias": self.bias,
            "dropout": self.dropout,
        }

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Encode ``x`` (B, in_channels, H, W); see the class docstring for the output.

        Raises:
            ValueError: wrong number of dims, channels, or a spatial size that is not a multiple of 16.
        """
        self.check_input(x)
        levels = [self.conv_0(x)]
        for name in BASIC_UNET_LEVELS[1:]:
            levels.append(getattr(self, name)(levels[-1]))
        if self.feature_path == "decoder":
            up = levels[-1]
            for level in range(4, self.feature_level, -1):
                up = getattr(self, f"upcat_{level}")(up, levels[level - 1])
            fmap = self.feature_proj(up)
        else:
            fmap = self.feature_proj(levels[self.feature_level])
        grid = tuple(fmap.shape[2:])
        pooled = levels[-1].flatten(2).mean(dim=2)
        return EncoderOutput(
            features=fmap.flatten(2).transpose(1, 2), grid=grid, pooled=pooled, hidden_states=tuple(levels)
        )


@register_model(
    "vit3d",
    kind="image_encoder",
    test_kwargs={"img_size": (32, 32, 16), "hidden_size": 48, "mlp_dim": 96, "num_heads": 4},
)
def vit3d(
    in_channels: int = 1,
    img_size: int | Sequence[int] = (96, 96, 96),
    hidden_size: int = 192,
    mlp_dim: int = 384,
    num_layers: int = UNETR_NUM_LAYERS,
    num_heads: int = 4,
    dropout: float = 0.0,
    qkv_bias: bool = False,
) -> UNETRViTEncoder:
    """UNETR's 3D ViT encoder (see ``UNETRViTEncoder``); defaults are CPU-sized (hidden 192)."""
    return UNETRViTEncoder(
        in_channels=in_channels,
        img_size=img_size,
        hidden_size=hidden_size,
        mlp_dim=mlp_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        dropout=dropout,
        qkv_bias=qkv_bias,
        spatial_dims=3,
    )


@register_model("unet2d", kind="image_encoder", test_kwargs={"features": (8, 8, 16, 16, 32, 8)})
def unet2d(
    in_channels: int = 1,
    features: Sequence[int] = (16, 16, 32, 64, 128, 16),
    feature_level: int = 2,
    feature_dim: int | None = None,
    norm: str | tuple = "batch",
    act: str | tuple = _BASIC_UNET_ACT,
    bias: bool = True,
    dropout: float = 0.0,
    feature_path: str = "encoder",
) -> BasicUNetEncoder:
    """BasicUNet's 2D encoder half (see ``BasicUNetEncoder``); tag-head features at stride 4."""
    return BasicUNetEncoder(
        in_channels=in_channels,
        features=features,
        feature_level=feature_level,
        feature_dim=feature_dim,
        norm=norm,
        act=act,
        bias=bias,
        dropout=dropout,
        spatial_dims=2,
        feature_path=feature_path,
    )


def load_encoder_into_unetr(
    encoder_state: Mapping[str, torch.Tensor] | nn.Module, unetr: nn.Module, prefix: str = ""
) -> int:
    """Copy a ``UNETRViTEncoder``'s ``vit.*`` weights into a ``monai.networks.nets.UNETR``.

    Args:
        encoder_state: the encoder or its state dict; keys ``{prefix}vit.*`` are used, anything
            else (e.g. a tag head saved in the same checkpoint) is ignored.
        unetr: the target network; its ``vit`` is overwritten in place, the rest is untouched.
        prefix: prefix of the encoder's keys in ``encoder_state`` (e.g. ``"image_encoder."`` for a
            whole pre-training model's state dict).

    Returns:
        The number of tensors copied.

    Raises:
        ValueError: a ``vit.*`` tensor of the UNETR is missing from the state (e.g. an encoder with
            fewer than 12 blocks), the state has ``vit.*`` tensors the UNETR lacks, or shapes differ
            (different hidden_size, mlp_dim, img_size, in_channels or qkv_bias).
    """
    return _load_blocks(encoder_state, unetr, ("vit",), prefix, target_name="UNETR")


def load_encoder_into_basic_unet(
    encoder_state: Mapping[str, torch.Tensor] | nn.Module, unet: nn.Module, prefix: str = ""
) -> int:
    """Copy a ``BasicUNetEncoder``'s ``conv_0``/``down_*`` weights into a ``monai.networks.nets.BasicUNet``.

    Args:
        encoder_state: the encoder or its state dict; only the five encoder blocks are used (not
            ``feature_proj``, which BasicUNet has no place for).
        unet: the target network; its encoder blocks are overwritten in place, its decoder is untouched.
        prefix: prefix of the encoder's keys in ``encoder_state``.

    Returns:
        The number of tensors copied (BatchNorm running statistics included).

    Raises:
        ValueError: missing, unexpected or differently shaped tensors (different ``features``,
            ``norm``, ``bias`` or ``in_channels``).
    """
    return _load_blocks(encoder_state, unet, BASIC_UNET_LEVELS, prefix, target_name="BasicUNet")


def _load_blocks(
    encoder_state: Mapping[str, torch.Tensor] | nn.Module,
    target: nn.Module,
    blocks: Sequence[str],
    prefix: str,
    target_name: str,
) -> int:
    """Strictly copy the tensors of top-level submodules ``blocks`` from a state into ``target``."""
    state = encoder_state.state_dict() if isinstance(encoder_state, nn.Module) else dict(encoder_state)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"no key of the encoder state starts with prefix {prefix!r}")
    blocks = tuple(blocks)
    source = {k: v for k, v in state.items() if k.split(".", 1)[0] in blocks}
    wanted = {k: v for k, v in target.state_dict().items() if k.split(".", 1)[0] in blocks}
    if not source:
        raise ValueError(f"the encoder state has no {'/'.join(blocks)} tensors to load into the {target_name}")
    missing = sorted(set(wanted) - set(source))
    unexpected = sorted(set(source) - set(wanted))
    mismatched = [
        f"{k}: encoder {tuple(source[k].shape)} vs {target_name} {tuple(wanted[k].shape)}"
        for k in sorted(set(source) & set(wanted))
        if source[k].shape != wanted[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} {target_name} tensor(s) missing from the encoder state: {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} encoder tensor(s) the {target_name} lacks: {_few(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_few(mismatched)}")
    if problems:
        raise ValueError(
            f"cannot load the encoder into the {target_name} (build both with the same arguments): "
            + "; ".join(problems)
        )
    result = target.load_state_dict(source, strict=False)
    if result.unexpected_keys:  # cannot happen after the checks above; guard against future MONAI changes
        raise ValueError(f"{target_name} rejected encoder tensors: {_few(result.unexpected_keys)}")
    return len(source)


def _few(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")
