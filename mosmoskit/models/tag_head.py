"""The organ-tag head (objective B) and the pixel-tag attention maps it yields.

K learnable tag queries (initialised from the text encoder's embedding of each organ name) pass
through a small pre-norm transformer decoder: cross-attention over the image encoder's pixel
features, self-attention among the tags, a feed-forward block. Each decoded query gives one logit
(a per-tag linear, ``GroupFC``). The cross-attention weights of one decoder layer, averaged over
heads, are the pixel-tag attention maps: for every tag a distribution over the feature grid that
is learnt without any pixel label (DESIGN.md section 2).

Fusion into a segmenter then uses ``upsample_maps`` (to the image grid) and
``scale_maps_by_probability`` (DESIGN.md section 5: an absent organ still gets a map, so weight it
by its tag probability).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "TagHead",
    "TagHeadOutput",
    "TagDecoderLayer",
    "GroupFC",
    "POS_ENCODINGS",
    "MAP_NORMALIZATIONS",
    "sincos_position_encoding",
    "normalize_maps",
    "upsample_maps",
    "scale_maps_by_probability",
]

POS_ENCODINGS: tuple[str, ...] = ("sincos", "none")
READOUTS: tuple[str, ...] = ("decoder", "evidence", "competition")
MAP_NORMALIZATIONS: tuple[str, ...] = ("sum", "max", "none")


@dataclass(frozen=True, eq=False)
class TagHeadOutput:
    """What ``TagHead.forward`` returns.

    Attributes:
        logits: (B, K) one logit per organ tag (feed to ``BCEWithLogitsLoss``, not a sigmoid first).
        attention: (B, K, N) cross-attention of decoder layer ``map_layer`` averaged over heads;
            each row is a distribution over the N feature positions (sums to 1).
        maps: (B, K, *grid) the same numbers reshaped to the feature grid:
            ``maps[b, k].flatten() == attention[b, k]``.
        pixel_logits: (competition readout only) (B, K + 1, N) class scores of every pixel,
            background first; None for the other readouts.

    In the ``"competition"`` readout ``attention`` and ``maps`` hold each pixel's probability of
    being organ k (in [0, 1], competing with the other organs and the background), not a
    distribution over pixels.
    """

    logits: torch.Tensor
    attention: torch.Tensor
    maps: torch.Tensor
    pixel_logits: torch.Tensor | None = None


class GroupFC(nn.Module):
    """One independent linear classifier per tag: ``logit[b, k] = <x[b, k], w[k]> + bias[k]``.

    A shared ``nn.Linear(E, 1)`` would force every tag to read the same direction of its decoded
    query; a per-tag weight lets each tag keep its own (as in ML-Decoder's group fully-connected
    layer).

    Args:
        num_tags: K.
        embed_dim: E.

    Shapes:
        input (B, K, E) -> output (B, K).
    """

    def __init__(self, num_tags: int, embed_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_tags, embed_dim))
        self.bias = nn.Parameter(torch.zeros(num_tags))
        # Same scale as nn.Linear(E, 1)'s default initialisation.
        bound = 1.0 / math.sqrt(embed_dim)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).sum(dim=-1) + self.bias


class TagDecoderLayer(nn.Module):
    """Pre-norm decoder layer: cross-attention over pixels, self-attention among tags, FFN.

    The cross-attention has no attention dropout, so the weights it returns are exactly the ones
    that mixed the pixel values, and each row sums to 1 in training too; dropout acts on the
    residual branches instead.

    Args:
        embed_dim: E, width of the queries and of the pixel memory.
        num_heads: attention heads (divides E).
        ffn_dim: hidden width of the feed-forward block.
        dropout: dropout rate on residual branches and inside self-attention.

    Shapes (forward):
        queries (B, K, E), memory (B, N, E) pixel values, keys (B, N, E) pixel values plus
        position encoding -> (queries (B, K, E), attention (B, K, N) averaged over heads).
    """

    def __init__(self, embed_dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_cross = nn.LayerNorm(embed_dim)
        self.cross_attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=0.0, batch_first=True)
        self.norm_self = nn.LayerNorm(embed_dim)
        self.self_attn = nn.MultiheadAttention(embed_dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(embed_dim)
        self.ffn = nn.Sequential(
            nn.Linear(embed_dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, embed_dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self, queries: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attended, attention = self.cross_attn(
            self.norm_cross(queries), keys, memory, need_weights=True, average_attn_weights=True
        )
        queries = queries + self.drop(attended)
        q = self.norm_self(queries)
        queries = queries + self.drop(self.self_attn(q, q, q, need_weights=False)[0])
        queries = queries + self.drop(self.ffn(self.norm_ffn(queries)))
        return queries, attention


def sincos_position_encoding(
    grid: Sequence[int], dim: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Fixed Fourier-feature position encoding of a 1-3D grid, flattened row-major.

    Cell centres get coordinates in (-1, 1) per axis; each axis gets ``dim // (2 * len(grid))``
    frequency bands spaced geometrically from one cycle over the image to the axis' Nyquist
    frequency (half a cycle per cell), encoded as sin and cos. Remaining channels are zero.
    Normalised coordinates make a position mean the same place in the image whatever the grid.

    Args:
        grid: the spatial grid, e.g. (h, w) or (h, w, d).
        dim: output width E; needs at least 2 channels per axis.

    Returns:
        (prod(grid), dim) encoding; row i belongs to the i-th cell in row-major (C) order.

    Raises:
        ValueError: empty grid, a non-positive size, or ``dim`` too small.
    """
    grid = tuple(int(g) for g in grid)
    if not grid or any(g < 1 for g in grid):
        raise ValueError(f"grid must be a non-empty tuple of positive sizes, got {grid}")
    bands = dim // (2 * len(grid))
    if bands < 1:
        raise ValueError(f"dim {dim} is too small for a {len(grid)}D position encoding (needs >= {2 * len(grid)})")
    axes = [(torch.arange(n, device=device, dtype=torch.float64) + 0.5) / n * 2.0 - 1.0 for n in grid]
    mesh = torch.meshgrid(*axes, indexing="ij")  # "ij" keeps the row-major order of features.flatten
    parts = []
    for coord, n in zip(mesh, grid):
        nyquist = max(n / 2.0, 1.0)
        freqs = torch.logspace(0.0, math.log10(nyquist), bands, device=device, dtype=torch.float64)
        phase = math.pi * coord.reshape(-1, 1) * freqs
        parts += [torch.sin(phase), torch.cos(phase)]
    encoding = torch.cat(parts, dim=1)
    encoding = F.pad(encoding, (0, dim - encoding.shape[1]))
    return encoding.to(dtype)


class TagHead(nn.Module):
    """Multi-label organ-tag recognition whose cross-attention gives pixel-tag attention maps.

    Pixel features are projected to ``embed_dim`` and layer-normed (the memory); a fixed sin/cos
    position encoding is added to the attention *keys* only (as in DETR), so where a tag looks can
    depend on position while what it reads (the values) is image content.

    Args:
        num_tags: K, the organ tags (label-map foreground names).
        feature_dim: C of the encoder features (``encoder.feature_dim``).
        embed_dim: E, decoder width.
        num_layers: decoder layers.
        num_heads: attention heads; must divide ``embed_dim``.
        dropout: dropout rate on residual branches (never on the map-producing attention weights).
        query_init: optional (K, d_text) text embeddings of the tag names. The queries start as
            ``layer_norm(Linear(d_text -> E)(query_init))`` (unit scale, like the random init) plus a
            zero-initialised per-tag offset; the projection and the offset are learnt. The text
            embeddings are kept as a buffer, so a checkpoint carries them. If None, queries are
            learnt from N(0, 1).
        map_layer: the decoder layer whose cross-attention becomes the maps (negative counts from
            the end). Default 0: in the 2D prototype (DESIGN.md section 5) the first layer
            localised better than a deeper last one.
        ffn_dim: hidden width of each feed-forward block; default 4 * embed_dim.
        pos_encoding: ``"sincos"`` (see ``sincos_position_encoding``) or ``"none"`` (ablation:
            attention by content only).
        readout: how a tag's logit is formed.
            ``"decoder"``: the decoder's output query through a per-tag linear layer (Query2Label).
            The logit may then rest on any mixture of pixels, and all tags may attend to the same
            place (observed on the phantoms: tag AUROC 0.8, pointing game near 0).
            ``"evidence"``: one cross-attention of the tag queries over the pixels whose scores
            s_kn are also the evidence: ``logit_k = log mean_n exp(s_kn) + b_k`` (log-sum-exp
            pooling, as in weakly supervised localisation) and the map is ``softmax_n(s_kn)``. A tag
            can only be "present" where some pixel scores high, so the map has to find the organ.
            The decoder layers are not built in this mode.
            ``"competition"``: multi-class multiple-instance learning. Every pixel's scores form a
            softmax over background plus the K organs, ``p_kn = softmax_k(s_kn)`` with
            ``s_kn = <q_k, key_n> / sqrt(E) + b_k`` (a learnt background query is class 0), so two
            tags cannot claim the same pixel. A tag's probability pools its organ's pixel
            probabilities, ``P_k = mean of the top ceil(pool_fraction * N) values of p_kn``, and the
            logit is ``log P_k - log(1 - P_k)``: an absent organ must have no pixel, a present one
            some pixels. The map of tag k is ``p_kn`` itself (a probability per pixel, not a
            distribution over pixels), and ``TagHeadOutput.pixel_logits`` holds the K + 1 class
            scores for losses on the pixels (e.g. intensity-based background).
        pool_fraction: (competition) share of the pixels a tag's probability is pooled from.

    Shapes (forward):
        features (B, N, C), grid with prod(grid) == N -> ``TagHeadOutput`` with logits (B, K),
        attention (B, K, N), maps (B, K, *grid).

    Raises:
        ValueError: invalid sizes, ``query_init`` not (num_tags, d_text), ``map_layer`` out of range.

    Example:
        >>> head = TagHead(num_tags=13, feature_dim=32, embed_dim=64)
        >>> out = head(torch.randn(2, 8 * 8, 32), grid=(8, 8))
        >>> out.logits.shape, out.maps.shape
        (torch.Size([2, 13]), torch.Size([2, 13, 8, 8]))
    """

    def __init__(
        self,
        num_tags: int,
        feature_dim: int,
        embed_dim: int = 128,
        num_layers: int = 1,
        num_heads: int = 4,
        dropout: float = 0.0,
        query_init: torch.Tensor | None = None,
        map_layer: int = 0,
        ffn_dim: int | None = None,
        pos_encoding: str = "sincos",
        readout: str = "decoder",
        pool_fraction: float = 0.01,
    ) -> None:
        super().__init__()
        for name, value in (("num_tags", num_tags), ("feature_dim", feature_dim), ("embed_dim", embed_dim),
                            ("num_layers", num_layers), ("num_heads", num_heads)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not -num_layers <= map_layer < num_layers:
            raise ValueError(f"map_layer must be in [{-num_layers}, {num_layers - 1}] for {num_layers} layer(s), "
                             f"got {map_layer!r}")
        if not 0.0 < float(pool_fraction) <= 1.0:
            raise ValueError(f"pool_fraction must be in (0, 1], got {pool_fraction!r}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {list(READOUTS)}, got {readout!r}")
        if pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"pos_encoding must be one of {list(POS_ENCODINGS)}, got {pos_encoding!r}")
        ffn_dim = 4 * embed_dim if ffn_dim is None else int(ffn_dim)
        if ffn_dim < 1:
            raise ValueError(f"ffn_dim must be >= 1, got {ffn_dim!r}")

        self.num_tags = int(num_tags)
        self.feature_dim = int(feature_dim)
        self.embed_dim = int(embed_dim)
        self.num_layers = int(num_layers)
        self.map_layer = int(map_layer) % self.num_layers
        self.pos_encoding = pos_encoding
        self.readout = readout
        self.pool_fraction = float(pool_fraction)

        if query_init is None:
            self.query_embed = nn.Parameter(torch.randn(self.num_tags, self.embed_dim))
            self.query_proj = None
        else:
            query_init = torch.as_tensor(query_init, dtype=torch.float32)
            if query_init.ndim != 2 or query_init.shape[0] != self.num_tags:
                raise ValueError(
                    f"query_init must be (num_tags={self.num_tags}, d_text), got shape {tuple(query_init.shape)}"
                )
            self.register_buffer("query_text", query_init.detach().clone())
            self.query_proj = nn.Linear(query_init.shape[1], self.embed_dim)
            self.query_embed = nn.Parameter(torch.zeros(self.num_tags, self.embed_dim))

        self.input_proj = nn.Linear(self.feature_dim, self.embed_dim)
        self.input_norm = nn.LayerNorm(self.embed_dim)
        if readout == "decoder":
            self.layers = nn.ModuleList(
                TagDecoderLayer(self.embed_dim, num_heads, ffn_dim, dropout) for _ in range(self.num_layers)
            )
            self.output_norm = nn.LayerNorm(self.embed_dim)
            self.classifier = GroupFC(self.num_tags, self.embed_dim)
        else:
            # Nothing unused is built: every parameter gets a gradient (DDP needs no
            # find_unused_parameters) and checkpoints hold only what the maps are made from.
            self.evidence_query = nn.Linear(self.embed_dim, self.embed_dim)
            self.evidence_key = nn.Linear(self.embed_dim, self.embed_dim)
            self.evidence_bias = nn.Parameter(torch.zeros(self.num_tags))
        if readout == "competition":
            # The background is a class of its own: most pixels of a CT slice belong to no organ.
            self.background_query = nn.Parameter(torch.randn(1, self.embed_dim) / math.sqrt(self.embed_dim))
        # Tags a cohort never teaches (no negative report: "present" is always right, so nothing
        # makes the map find the organ) are left out: their maps are zero, everywhere they are used.
        self.register_buffer("learned", torch.ones(self.num_tags, dtype=torch.bool))

    def leave_out(self, tags: Sequence[int] | torch.Tensor) -> None:
        """Mark tags (indices into the K tags) as not learned: their maps become zero in every
        output (fusion, ``predict``, the map check) and the pre-training loss skips them."""
        index = torch.as_tensor(list(tags) if not isinstance(tags, torch.Tensor) else tags, dtype=torch.long)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_tags):
            raise ValueError(f"tag indices must be in [0, {self.num_tags - 1}], got {index.tolist()}")
        self.learned[index] = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001 (torch's signature)
        # Checkpoints written before tags could be left out have no ``learned``: every tag was learned.
        state_dict.setdefault(prefix + "learned", torch.ones(self.num_tags, dtype=torch.bool))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _without_left_out(self, out: TagHeadOutput) -> TagHeadOutput:
        if bool(self.learned.all()):
            return out
        keep = self.learned.to(out.maps.dtype)
        return replace(out, attention=out.attention * keep[None, :, None],
                       maps=out.maps * keep.reshape(1, -1, *([1] * (out.maps.ndim - 2))))

    def tag_queries(self) -> torch.Tensor:
        """The K initial decoder queries, (K, E)."""
        if self.query_proj is None:
            return self.query_embed
        projected = F.layer_norm(self.query_proj(self.query_text), (self.embed_dim,))
        return projected + self.query_embed

    def _compete(self, keys: torch.Tensor, grid: tuple[int, ...]) -> TagHeadOutput:
        """The ``"competition"`` readout (see the class docstring); ``keys`` (B, N, E)."""
        batch = keys.shape[0]
        queries = torch.cat([self.background_query, self.tag_queries()])  # (K + 1, E), background first
        bias = F.pad(self.evidence_bias, (1, 0))  # the background's score has no offset of its own
        scores = torch.einsum("ke,bne->bkn", self.evidence_query(queries), self.evidence_key(keys))
        scores = scores / math.sqrt(self.embed_dim) + bias[None, :, None]  # (B, K + 1, N)
        organ_probs = scores.float().softmax(dim=1)[:, 1:]  # (B, K, N): each pixel's share per organ
        pooled = _top_fraction_mean(organ_probs, self.pool_fraction).clamp(1e-6, 1.0 - 1e-6)
        logits = torch.log(pooled) - torch.log1p(-pooled)
        return TagHeadOutput(logits=logits, attention=organ_probs,
                             maps=organ_probs.reshape(batch, self.num_tags, *grid), pixel_logits=scores)

    def forward(self, features: torch.Tensor, grid: Sequence[int]) -> TagHeadOutput:
        """Recognise tags and return their attention maps.

        Args:
            features: (B, N, C) encoder features (``EncoderOutput.features``).
            grid: their spatial grid (``EncoderOutput.grid``), prod(grid) == N.

        Returns:
            ``TagHeadOutput`` (logits (B, K), attention (B, K, N), maps (B, K, *grid)).

        Raises:
            ValueError: features not (B, N, feature_dim) or N != prod(grid).
        """
        grid = tuple(int(g) for g in grid)
        if features.ndim != 3 or features.shape[2] != self.feature_dim:
            raise ValueError(
                f"TagHead expects features (B, N, {self.feature_dim}), got shape {tuple(features.shape)}"
            )
        if not grid or math.prod(grid) != features.shape[1]:
            raise ValueError(
                f"grid {grid} has {math.prod(grid) if grid else 0} cells but features have N={features.shape[1]}"
            )
        batch = features.shape[0]
        memory = self.input_norm(self.input_proj(features))
        keys = memory
        if self.pos_encoding == "sincos":
            keys = memory + sincos_position_encoding(grid, self.embed_dim, memory.device, memory.dtype)
        if self.readout == "competition":
            return self._without_left_out(self._compete(keys, grid))
        if self.readout == "evidence":
            query = self.evidence_query(self.tag_queries())  # (K, E)
            scores = torch.einsum("ke,bne->bkn", query, self.evidence_key(keys)) / math.sqrt(self.embed_dim)
            attention = scores.softmax(dim=-1)
            logits = torch.logsumexp(scores, dim=-1) - math.log(scores.shape[-1]) + self.evidence_bias
            return self._without_left_out(TagHeadOutput(logits=logits, attention=attention,
                                                        maps=attention.reshape(batch, self.num_tags, *grid)))
        queries = self.tag_queries().unsqueeze(0).expand(batch, -1, -1)
        attention = None
        for index, layer in enumerate(self.layers):
            queries, layer_attention = layer(queries, memory, keys)
            if index == self.map_layer:
                attention = layer_attention
        logits = self.classifier(self.output_norm(queries))
        return self._without_left_out(
            TagHeadOutput(logits=logits, attention=attention, maps=attention.reshape(batch, self.num_tags, *grid)))


def _top_fraction_mean(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the largest ``ceil(fraction * N)`` entries along the last axis (N = its length)."""
    count = max(1, math.ceil(fraction * values.shape[-1]))
    return values.topk(count, dim=-1).values.mean(dim=-1)


def _check_maps(maps: torch.Tensor, what: str = "maps") -> None:
    if maps.ndim not in (4, 5):
        raise ValueError(f"{what} must be (B, K, H, W) or (B, K, H, W, D), got shape {tuple(maps.shape)}")


def normalize_maps(maps: torch.Tensor, how: str = "sum", eps: float = 1e-12) -> torch.Tensor:
    """Rescale each map (over its spatial axes) independently.

    Args:
        maps: (B, K, *spatial), non-negative.
        how: ``"sum"`` (each map sums to 1: a spatial distribution), ``"max"`` (peak 1: a
            resolution-independent input channel for a segmenter), ``"none"``.
        eps: floor of the divisor, so an all-zero map stays zero instead of becoming NaN.

    Returns:
        (B, K, *spatial).
    """
    if how not in MAP_NORMALIZATIONS:
        raise ValueError(f"how must be one of {list(MAP_NORMALIZATIONS)}, got {how!r}")
    if how == "none":
        return maps
    flat = maps.flatten(2)
    scale = flat.sum(dim=2) if how == "sum" else flat.amax(dim=2)
    return maps / scale.clamp_min(eps).reshape(*scale.shape, *([1] * (maps.ndim - 2)))


def upsample_maps(
    maps: torch.Tensor, size: Sequence[int], mode: str | None = None, normalize: str = "sum"
) -> torch.Tensor:
    """Resize attention maps from the feature grid to the image grid.

    Linear modes use ``align_corners=False``: each feature cell's value sits at the centre of the
    patch of voxels it covers, which is how a strided encoder lays its cells over the image.
    Interpolation keeps values non-negative but changes a map's total mass by the zoom factor, so
    the result is renormalised as asked.

    Args:
        maps: (B, K, h, w) or (B, K, h, w, d) attention maps (``TagHeadOutput.maps``).
        size: target spatial size (H, W) or (H, W, D).
        mode: ``"bilinear"`` (2D) / ``"trilinear"`` (3D), the default for the maps' dimension, or
            ``"nearest"``.
        normalize: ``"sum"`` (default: each map stays a distribution over the voxels, sums to 1),
            ``"max"`` (peak 1, the scale to feed a segmenter), or ``"none"`` (keep the attention
            values per voxel). See ``normalize_maps``.

    Returns:
        (B, K, *size).

    Raises:
        ValueError: wrong ranks, ``size`` of another dimension, or a mode that does not fit it.
    """
    _check_maps(maps)
    spatial_dims = maps.ndim - 2
    size = tuple(int(s) for s in size)
    if len(size) != spatial_dims or any(s < 1 for s in size):
        raise ValueError(
            f"size must be {spatial_dims} positive sizes for maps of shape {tuple(maps.shape)}, got {size}"
        )
    linear = {2: "bilinear", 3: "trilinear"}[spatial_dims]
    mode = linear if mode is None else mode
    if mode not in (linear, "nearest"):
        raise ValueError(f"mode must be {linear!r} or 'nearest' for {spatial_dims}D maps, got {mode!r}")
    resized = F.interpolate(maps, size=size, mode=mode, **({"align_corners": False} if mode == linear else {}))
    return normalize_maps(resized, normalize)


def scale_maps_by_probability(maps: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Multiply each tag's map by its predicted probability, sigmoid(logit).

    An organ that is absent still receives an attention map (every row of a softmax sums to 1);
    weighting by the tag probability keeps such a map from telling the segmenter "the organ is
    here" (DESIGN.md section 5). Apply it after ``upsample_maps(..., normalize="max")`` to get maps
    in [0, p_k].

    Args:
        maps: (B, K, *spatial).
        logits: (B, K) tag logits (``TagHeadOutput.logits``).

    Returns:
        (B, K, *spatial).

    Raises:
        ValueError: ``logits`` is not (B, K) for the maps' B and K.
    """
    _check_maps(maps)
    if logits.shape != maps.shape[:2]:
        raise ValueError(f"logits must be (B, K) = {tuple(maps.shape[:2])} for maps {tuple(maps.shape)}, "
                         f"got {tuple(logits.shape)}")
    probability = torch.sigmoid(logits).to(maps.dtype)
    return maps * probability.reshape(*probability.shape, *([1] * (maps.ndim - 2)))
