"""The MOSMOS pre-training model: image encoder, text encoder, projections and the organ-tag head.

::

    image (B, C, *spatial) --f_v--> features (B, N, C_f) --tag head--> logits (B, K), maps (B, K, *grid)
                                  \\-> pooled (B, C_p) --proj--> image_emb (B, E) --\\
    reports (B strings) --f_t--> (B, H) -------------------proj--> text_emb (B, E) ---> InfoNCE

The text encoder is needed only to train (reports) and to initialise the tag queries (organ
names); turning an image into attention maps needs the image encoder and the tag head alone, which
is what fine-tuning and ``predict`` load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mosmoskit.labels import LabelMap
from mosmoskit.models import EncoderOutput, ImageEncoder, TagHead, TagHeadOutput, create_model
from mosmoskit.models.tag_head import scale_maps_by_probability, upsample_maps
from mosmoskit.pretraining.config import PretrainConfig

__all__ = ["MosmosPretrainModel", "PretrainOutput", "build_image_encoder", "build_pretrain_model"]

#: default ``encoder_width`` per encoder when the config leaves it at 0
DEFAULT_WIDTH = {"unet2d": 16, "vit3d": 96}


@dataclass(frozen=True, eq=False)
class PretrainOutput:
    """What :meth:`MosmosPretrainModel.forward` returns.

    Attributes:
        image_emb: (B, E) L2-normalised image embeddings.
        text_emb: (B, E) L2-normalised report embeddings, or None when no reports were given.
        tags: the tag head's output (logits (B, K), attention (B, K, N), maps (B, K, *grid)).
        encoder: the image encoder's output (features, grid, pooled, hidden states).
    """

    image_emb: torch.Tensor
    text_emb: torch.Tensor | None
    tags: TagHeadOutput
    encoder: EncoderOutput


class MosmosPretrainModel(nn.Module):
    """Image encoder + text encoder + projection heads + organ-tag head.

    Args:
        image_encoder: a registered image encoder (``create_model("unet2d")``...).
        tag_head: a :class:`~mosmoskit.models.TagHead` over the encoder's features.
        text_encoder: a :class:`~mosmoskit.models.text_encoder.TextEncoder`, or None for an
            image-only model (inference of attention maps).
        embed_dim: E, the width of the shared image-report space.
        text_dim: the text encoder's output width; needed when ``text_encoder`` is None but the
            text projection's weights should exist (to load a full checkpoint).
    """

    def __init__(
        self,
        image_encoder: ImageEncoder,
        tag_head: TagHead,
        text_encoder: nn.Module | None = None,
        embed_dim: int = 128,
        text_dim: int | None = None,
    ) -> None:
        super().__init__()
        if tag_head.feature_dim != image_encoder.feature_dim:
            raise ValueError(
                f"tag head reads {tag_head.feature_dim}-channel features but the image encoder gives "
                f"{image_encoder.feature_dim}"
            )
        self.image_encoder = image_encoder
        self.tag_head = tag_head
        self.text_encoder = text_encoder
        # A small MLP on the image side (as in ConVIRT/GLoRIA): the pooled CNN/ViT vector is not yet
        # in a space comparable to sentence embeddings.
        self.image_proj = nn.Sequential(
            nn.Linear(image_encoder.pooled_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim)
        )
        width = text_encoder.hidden_size if text_encoder is not None else text_dim
        self.text_proj = nn.Linear(width, embed_dim) if width else None
        # A fully frozen text encoder maps a report to the same vector every epoch: remember it
        # (not part of the state dict). On a CPU the text encoder is otherwise the costliest part.
        self._text_cache: dict[str, torch.Tensor] = {}

    def embed_reports(self, reports: Sequence[str]) -> torch.Tensor:
        """Text encoder output (B, H) of ``reports``; cached when the text encoder is fully frozen."""
        if self.text_encoder is None:
            raise ValueError("this model was built without a text encoder; it cannot embed reports")
        if getattr(self.text_encoder, "freeze", None) != "all":
            return self.text_encoder(list(reports))
        missing = [r for r in dict.fromkeys(reports) if r not in self._text_cache]
        if missing:
            with torch.no_grad():
                # One report at a time: in a batch, padding to the longest report changes the
                # matrix shapes and so the last bits of every vector, and which reports share the
                # batch that first meets a report depends on when the run started; a run resumed
                # from a checkpoint would then read other vectors than the uninterrupted run.
                for text in missing:
                    self._text_cache[text] = self.text_encoder([text]).float()[0].cpu()
        device = self.text_proj.weight.device
        return torch.stack([self._text_cache[r] for r in reports]).to(device)

    @property
    def spatial_dims(self) -> int:
        return self.image_encoder.spatial_dims

    def forward(self, image: torch.Tensor, reports: Sequence[str] | None = None) -> PretrainOutput:
        """Encode images (and reports if given).

        Args:
            image: (B, C, H, W) or (B, C, H, W, D).
            reports: report texts of the first B' <= B images, or None. Images after the B'-th
                have no report of their own (e.g. the mosaics of the tag loss): they still get
                tags, maps and image embeddings, but no text embedding. One forward pass for both
                keeps BatchNorm's statistics those of the whole batch.

        Returns:
            :class:`PretrainOutput` (``text_emb`` (B', E)).
        """
        enc = self.image_encoder(image)
        tags = self.tag_head(enc.features, enc.grid)
        image_emb = F.normalize(self.image_proj(enc.pooled), dim=-1)
        text_emb = None
        if reports is not None:
            if not 0 < len(reports) <= image.shape[0]:
                raise ValueError(f"{len(reports)} reports for {image.shape[0]} images")
            text_emb = F.normalize(self.text_proj(self.embed_reports(reports)), dim=-1)
        return PretrainOutput(image_emb=image_emb, text_emb=text_emb, tags=tags, encoder=enc)

    @torch.no_grad()
    def attention_maps(
        self, image: torch.Tensor, normalize: str = "max", scale_by_probability: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel-tag attention maps at the image's resolution.

        Args:
            image: (B, C, *spatial).
            normalize: ``"max"`` (peak 1 per map), ``"sum"`` (a distribution) or ``"none"``.
            scale_by_probability: multiply each map by its tag probability (absent organs fade).

        Returns:
            maps (B, K, *spatial) and tag logits (B, K).
        """
        enc = self.image_encoder(image)
        out = self.tag_head(enc.features, enc.grid)
        maps = upsample_maps(out.maps, image.shape[2:], normalize=normalize)
        if scale_by_probability:
            maps = scale_maps_by_probability(maps, out.logits)
        return maps, out.logits


def build_image_encoder(config: PretrainConfig) -> ImageEncoder:
    """The image encoder a config describes (shared by pre-training and fine-tuning)."""
    width = config.encoder_width or DEFAULT_WIDTH[config.image_encoder]
    if config.image_encoder == "unet2d":
        w = width
        return create_model("unet2d", features=(w, w, 2 * w, 4 * w, 8 * w, w), feature_level=config.feature_level,
                            feature_path=config.feature_path)  # the ViT has one token grid: no feature path
    if config.image_encoder == "vit3d":
        return create_model(
            "vit3d", img_size=tuple(config.image_size), hidden_size=width, mlp_dim=2 * width,
            num_heads=4 if width % 4 == 0 else 1,
        )
    raise ValueError(f"unknown image_encoder {config.image_encoder!r}")


def build_pretrain_model(
    config: PretrainConfig, label_map: LabelMap, with_text_encoder: bool = True, text_dim: int | None = None
) -> MosmosPretrainModel:
    """Build the model a :class:`PretrainConfig` describes.

    Args:
        config: the run's config.
        label_map: its foreground names are the K organ tags.
        with_text_encoder: load the text encoder (training); without it (inference of maps) the
            tag queries are not re-derived from text (their values come from the checkpoint).
        text_dim: width of the text encoder when it is not loaded, so that the text projection exists.
    """
    image_encoder = build_image_encoder(config)
    text_encoder = None
    query_init = None
    if with_text_encoder:
        from mosmoskit.models.text_encoder import load_text_encoder

        text_encoder = load_text_encoder(config.text_encoder, freeze=config.text_freeze)
        query_init = text_encoder.embed_names(list(label_map.foreground_names))
    elif text_dim:
        # Shapes must match the checkpoint: a placeholder of the text width, overwritten on load.
        query_init = torch.zeros(len(label_map.foreground_names), text_dim)
    tag_head = TagHead(
        num_tags=len(label_map.foreground_names),
        feature_dim=image_encoder.feature_dim,
        embed_dim=config.tag_head_dim,
        num_layers=config.tag_head_layers,
        num_heads=config.tag_head_heads,
        query_init=query_init,
        readout=config.tag_readout,
        pos_encoding=config.tag_pos_encoding,
        pool_fraction=config.tag_pool_fraction,
    )
    return MosmosPretrainModel(image_encoder, tag_head, text_encoder, embed_dim=config.embed_dim, text_dim=text_dim)
