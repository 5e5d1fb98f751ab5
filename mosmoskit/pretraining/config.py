"""The configuration of a report-supervised pre-training run.

Its fields are, one for one, the parameters of ``notebooks/02_report_pretraining.ipynb`` and the
options of ``python -m mosmoskit pretrain`` (a test keeps the three equal). Everything a run needs
is here, so the copy stored in each checkpoint is enough to rebuild the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mosmoskit.config import check_choice, check_phantom_grid, check_positive

__all__ = ["FIRST_VERSION", "MAP_RECIPE", "PretrainConfig"]

ENCODER_DIMS = {"unet2d": 2, "vit3d": 3}
#: the map recipe of docs/maps.md: these options are the defaults, listed here to say which they are
MAP_RECIPE: dict[str, Any] = {
    "phantom_preset": "pretraining", "tag_readout": "competition", "tag_pos_encoding": "sincos",
    "feature_path": "decoder", "feature_level": 2, "organ_hu": (-50.0, 250.0), "affinity_weight": 1.0,
    "max_shift": 15, "max_rotation_deg": 12.0, "max_scale": 0.1, "mosaic_per_batch": 4, "equivariance_weight": 1.0,
    "max_steps": 1200,
}
#: the first version's defaults for the same options (``PretrainConfig(**FIRST_VERSION)`` repeats
#: the "before" rows of docs/maps.md: the evidence readout on the default cohort)
FIRST_VERSION: dict[str, Any] = {
    "phantom_preset": "default", "tag_readout": "evidence", "tag_pos_encoding": "sincos",
    "feature_path": "encoder", "feature_level": 2, "organ_hu": (), "affinity_weight": 0.0,
    "max_shift": 12, "max_rotation_deg": 0.0, "max_scale": 0.0, "mosaic_per_batch": 0, "equivariance_weight": 0.0,
    "max_steps": 400,
}
#: the phantom generator settings a pre-training cohort can be drawn with (``phantom_preset``)
PHANTOM_PRESETS = ("default", "pretraining")


@dataclass(frozen=True)
class PretrainConfig:
    """Report-supervised pre-training (MOSMOS objectives A and B).

    Data:
        dataset: ``"phantom"`` (a cohort is generated into ``output_dir/data``), a folder with a
            ``dataset.json`` and ``reports.jsonl``, or a CSV/JSONL image-report manifest.
        label_map: the label map whose foreground names are the organ tags.
        phantom_cases: cohort size when ``dataset == "phantom"`` (in 2D: volumes; each gives
            ``phantom_slices_per_case`` slices).
        phantom_slices_per_case: axial slices per phantom volume in 2D.
        phantom_shape: phantom grid in voxels (empty: the generator's default, 96x96x64 or 128x128).
            In 3D, a grid equal to ``image_size`` lets the ViT see the whole body its report
            describes (a centre crop of a larger grid cuts off lateral organs the report names).
        phantom_spacing: phantom voxel size in mm (empty: the generator's default, 4x4x5 or 3x3).
        phantom_preset: ``"default"`` (the generator's defaults, as fine-tuning cohorts use) or
            ``"pretraining"`` (:meth:`~mosmoskit.data.phantom.PhantomConfig.pretraining`: every organ
            absent, atrophic, enlarged or lesioned in an enriched share of patients, anatomy that
            varies as much as real anatomy; a tag can then only be checked by looking at the organ).
        phantom_scan_range_prob: (3D) share of phantom scans that cover only part of the abdomen
            (a chest CT reaching the upper abdomen, a pelvic CT reaching the lower one); their
            reports say which organs lie outside the field of view, which gives the organ tags of
            whole-abdomen volumes something to learn. See
            :attr:`mosmoskit.data.phantom.PhantomConfig.scan_range_prob`. 0: whole volumes.
        val_fraction: share of cases held out (patient-level) for retrieval/tag/localisation metrics.
        spacing: resample every image to this voxel size (mm, one value per spatial axis) with the
            MONAI ``Spacingd`` fine-tuning uses, before the window and the crop or pad to
            ``image_size`` (empty: each file's own spacing). Fine-tuning and ``predict`` then make
            the maps at this spacing too, whatever spacing they work at.
        cache_rate: share of the training (and held-out) images kept in memory once loaded, in
            [0, 1]; the rest are read from disk at every use, so memory does not grow with the
            cohort (0: nothing kept). A cache that would not fit 80 % of the available host
            memory is refused before loading, with what to lower.
        image_size: the network input grid; images are centre-cropped/padded to it.
        max_shift: random translation in voxels per axis during training (maps must follow the organ,
            not a fixed position).
        max_rotation_deg, max_scale: random rotation (degrees, in the axial plane) and zoom (1 +-
            max_scale) during training, for the same reason; 0 switches each off.
        window: HU window mapped to [0, 1].

    The defaults are the map recipe of ``docs/maps.md`` (:data:`MAP_RECIPE`: the best maps
    measured, from the competition readout on decoder features with intensity constraints, moves
    and mosaics on the enriched cohort); :data:`FIRST_VERSION` holds the first version's values.

    Model:
        spatial_dims: 2 (U-Net encoder on axial slices) or 3 (UNETR's ViT on volumes).
        image_encoder: a registered image encoder (``"unet2d"``, ``"vit3d"``).
        encoder_width: base width: U-Net features of the first level, or the ViT hidden size
            (0 = the encoder's default: 16 for unet2d, 96 for vit3d).
        text_encoder: ``"minilm"`` (packaged all-MiniLM-L6-v2), ``"tiny"`` (small BERT for tests), or
            a local folder with a transformers model.
        text_freeze: ``"none"``, ``"all"``, ``"embeddings"`` or ``"all_but_last_<n>"``. Default
            ``"all"``: the text encoder is fixed and its report vectors are cached, which makes CPU
            runs several times faster; only the text projection learns. Unfreeze on a GPU.
        embed_dim: width of the shared image-report space.
        tag_head_dim, tag_head_layers, tag_head_heads: the tag decoder.
        tag_readout: ``"competition"`` (every pixel is a softmax over background and the K organs,
            a tag's probability pools its organ's pixels: tags cannot share a pixel),
            ``"evidence"`` (tag logit = log-sum-exp of the tag's pixel attention scores, so a
            present tag must point somewhere) or ``"decoder"`` (logit from the decoder's query;
            localised poorly on the phantoms). See ``TagHead``.
        tag_pool_fraction: (competition) share of the pixels each tag's probability is pooled from.
        tag_pos_encoding: ``"sincos"`` (absolute position added to the tag head's keys) or
            ``"none"`` (the maps follow image content only; a CNN still knows position near borders).
        feature_path: (2D U-Net; the 3D ViT ignores it) ``"encoder"``: the tag head reads U-Net
            encoder level ``feature_level``; ``"decoder"``: it reads BasicUNet's decoder at that level
            (deep context, fine grid).
        feature_level: U-Net level the tag head reads (1 = stride 2, 2 = stride 4, 3 = stride 8; 2D only).
        organ_hu: (competition readout; others ignore it) (low, high) HU range organ pixels lie in;
            pixels outside it (air, fat, lung, dense bone: read from the intensities, no label) are
            taught to be background with weight ``organ_hu_weight`` (gas inside the body may also be
            a hollow organ). A side beyond ``window`` is not used (the window clips those values).
            Empty switches it off.
        organ_hu_weight: weight of that term (``background`` in the logs).
        affinity_weight: (competition readout, 2D; ignored otherwise) weight of the intensity-affinity term (``affinity`` in the
            logs): neighbouring pixels of similar intensity share a class, so a tag's pixels spread
            over its organ's homogeneous extent and stop at the fat around it. 0 switches it off.
        affinity_sigma_hu: intensity scale of that affinity in HU.
        mosaic_per_batch: (2D; ignored in 3D) 2x2 mosaics of four images of the batch (each shrunk by half, from
            different patients) added to every batch for the tag loss only; a mosaic's tag is 1 if
            any tile's is, 0 if every tile's is, else unmentioned. Breaks the "where in the image"
            shortcut: an organ can then be anywhere.
        equivariance_weight: (competition readout, 2D; ignored otherwise) weight of the
            equivariance term (``equivariance`` in the logs): every batch is seen once more, moved
            within ``max_shift``/``max_rotation_deg``/``max_scale``, and its pixel classes must be the
            originals' moved alike (see :mod:`mosmoskit.losses.equivariance`). Costs a second
            image forward pass. 0 switches it off.

    Objectives:
        contrastive_weight: weight of the image-report InfoNCE term (0 switches it off).
        tag_loss_weight: lambda, weight of the organ-tag term (0 switches it off).
        tag_loss: ``"bce"`` or ``"asl"`` (asymmetric loss).
        unmentioned: organs a report does not mention: ``"mask"`` (ignored) or ``"negative"``.

    Optimisation:
        max_steps, batch_size, lr, text_lr_scale (the text encoder's lr = lr * text_lr_scale),
        weight_decay, warmup_steps, grad_clip_norm, grad_accum_steps, val_every, checkpoint_every,
        num_workers, device ("auto", "cpu", "cuda", ...), seed, output_dir, overwrite (reuse a folder
        that holds results; otherwise resume there if it holds a checkpoint).
    """

    dataset: str = "phantom"
    label_map: str = "btcv"
    phantom_cases: int = 40
    phantom_slices_per_case: int = 8
    phantom_shape: tuple[int, ...] = ()
    phantom_spacing: tuple[float, ...] = ()
    phantom_preset: str = "pretraining"
    phantom_scan_range_prob: float = 0.0
    val_fraction: float = 0.2
    spacing: tuple[float, ...] = ()
    cache_rate: float = 1.0
    image_size: tuple[int, ...] = (128, 128)
    max_shift: int = 15
    max_rotation_deg: float = 12.0
    max_scale: float = 0.1
    window: tuple[float, float] = (-175.0, 250.0)

    spatial_dims: int = 2
    image_encoder: str = "unet2d"
    encoder_width: int = 0
    text_encoder: str = "minilm"
    text_freeze: str = "all"
    embed_dim: int = 128
    tag_head_dim: int = 128
    tag_head_layers: int = 1
    tag_head_heads: int = 4
    tag_readout: str = "competition"
    tag_pool_fraction: float = 0.01
    tag_pos_encoding: str = "sincos"
    feature_path: str = "decoder"
    feature_level: int = 2
    organ_hu: tuple[float, ...] = (-50.0, 250.0)
    organ_hu_weight: float = 1.0
    affinity_weight: float = 1.0
    affinity_sigma_hu: float = 20.0
    mosaic_per_batch: int = 4
    equivariance_weight: float = 1.0

    contrastive_weight: float = 1.0
    tag_loss_weight: float = 1.0
    tag_loss: str = "bce"
    unmentioned: str = "mask"

    max_steps: int = 1200
    batch_size: int = 16
    lr: float = 1e-3
    text_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    grad_clip_norm: float = 1.0
    grad_accum_steps: int = 1
    val_every: int = 100
    checkpoint_every: int = 100
    num_workers: int = 0
    device: str = "auto"
    seed: int = 0
    output_dir: str = "runs/pretrain"
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_choice("spatial_dims", self.spatial_dims, (2, 3))
        check_choice("image_encoder", self.image_encoder, tuple(ENCODER_DIMS))
        if ENCODER_DIMS[self.image_encoder] != self.spatial_dims:
            raise ValueError(
                f"image_encoder {self.image_encoder!r} is {ENCODER_DIMS[self.image_encoder]}D but spatial_dims is "
                f"{self.spatial_dims}; use 'unet2d' with spatial_dims=2 or 'vit3d' with spatial_dims=3"
            )
        if len(self.image_size) != self.spatial_dims or any(int(s) < 1 for s in self.image_size):
            raise ValueError(f"image_size must have {self.spatial_dims} positive sizes, got {self.image_size}")
        if self.image_encoder == "vit3d" and any(s % 16 for s in self.image_size):
            raise ValueError(f"vit3d uses 16-voxel patches: image_size {self.image_size} must be divisible by 16")
        if self.image_encoder == "unet2d" and any(s % 16 for s in self.image_size):
            raise ValueError(f"unet2d downsamples 4 times: image_size {self.image_size} must be divisible by 16")
        if self.window[0] >= self.window[1]:
            raise ValueError(f"window must be (low, high) with low < high, got {self.window}")
        if self.spacing and (len(self.spacing) != self.spatial_dims
                             or not all(math.isfinite(float(v)) and float(v) > 0 for v in self.spacing)):
            raise ValueError(f"spacing must be empty or {self.spatial_dims} positive numbers (mm), got {self.spacing}")
        if not 0.0 <= float(self.cache_rate) <= 1.0:
            raise ValueError(f"cache_rate must be in [0, 1], got {self.cache_rate!r}")
        check_phantom_grid(self.phantom_shape, self.phantom_spacing, self.spatial_dims)
        check_choice("phantom_preset", self.phantom_preset, PHANTOM_PRESETS)
        if not 0.0 <= float(self.phantom_scan_range_prob) <= 1.0:
            raise ValueError(
                f"phantom_scan_range_prob must be a probability in [0, 1], got {self.phantom_scan_range_prob!r}"
            )
        if self.phantom_scan_range_prob and self.spatial_dims != 3:
            raise ValueError("phantom_scan_range_prob applies to 3D phantom volumes only; a 2D slice report already "
                             "names the organs outside its slice")
        check_choice("tag_loss", self.tag_loss, ("bce", "asl"))
        check_choice("tag_readout", self.tag_readout, ("competition", "evidence", "decoder"))
        check_choice("tag_pos_encoding", self.tag_pos_encoding, ("sincos", "none"))
        check_choice("feature_path", self.feature_path, ("encoder", "decoder"))
        check_choice("feature_level", self.feature_level, (0, 1, 2, 3) if self.feature_path == "decoder" else (0, 1, 2, 3, 4))
        if not 0.0 < float(self.tag_pool_fraction) <= 1.0:
            raise ValueError(f"tag_pool_fraction must be in (0, 1], got {self.tag_pool_fraction!r}")
        if self.organ_hu and (len(self.organ_hu) != 2 or self.organ_hu[0] >= self.organ_hu[1]):
            raise ValueError(f"organ_hu must be empty or (low, high) with low < high, got {self.organ_hu!r}")
        if self.organ_hu and len(self.organ_hu) == 2 and not (self.organ_hu[0] < self.window[1]
                                                              and self.organ_hu[1] > self.window[0]):
            raise ValueError(f"organ_hu {tuple(self.organ_hu)} does not overlap the window {tuple(self.window)}: every "
                             "pixel the windowed image shows would be background")
        if not 0.0 <= float(self.max_scale) < 1.0:
            raise ValueError(f"max_scale must be in [0, 1), got {self.max_scale!r}")

        check_choice("unmentioned", self.unmentioned, ("mask", "negative"))
        for name in ("contrastive_weight", "tag_loss_weight", "weight_decay"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if self.contrastive_weight == 0 and self.tag_loss_weight == 0:
            raise ValueError("contrastive_weight and tag_loss_weight are both 0: nothing to train")
        for name in ("max_steps", "batch_size", "lr", "embed_dim", "affinity_sigma_hu", "tag_head_dim", "tag_head_layers",
                     "tag_head_heads", "grad_accum_steps", "val_every", "checkpoint_every",
                     "phantom_cases", "phantom_slices_per_case"):
            check_positive(name, getattr(self, name))
        for name in ("encoder_width", "max_shift", "max_rotation_deg", "organ_hu_weight", "mosaic_per_batch",
                     "affinity_weight", "equivariance_weight",
                     "num_workers", "warmup_steps", "text_lr_scale", "grad_clip_norm"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if (self.equivariance_weight and self.spatial_dims == 2 and self.tag_readout == "competition"
                and not (self.max_shift or self.max_rotation_deg or self.max_scale)):
            raise ValueError("equivariance_weight > 0 needs moves to be equivariant under: set max_shift, "
                             "max_rotation_deg or max_scale")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.contrastive_weight > 0 and self.batch_size * self.grad_accum_steps < 2 and self.batch_size < 2:
            raise ValueError("the contrastive loss needs batch_size >= 2 (negatives come from the batch)")
        if self.tag_head_dim % self.tag_head_heads:
            raise ValueError(
                f"tag_head_dim ({self.tag_head_dim}) must be divisible by tag_head_heads ({self.tag_head_heads})"
            )

    def phantom_settings(self) -> dict[str, Any]:
        """The phantom cohort's settings as keyword arguments of
        :func:`~mosmoskit.pretraining.data.prepare_pretraining_data`, so every caller asks for the
        same cohort (a caller that forgot one would regenerate the run's cohort on another grid)."""
        return {
            "phantom_cases": self.phantom_cases, "phantom_slices_per_case": self.phantom_slices_per_case,
            "phantom_shape": self.phantom_shape, "phantom_spacing": self.phantom_spacing,
            "phantom_scan_range_prob": self.phantom_scan_range_prob, "phantom_preset": self.phantom_preset,
        }
