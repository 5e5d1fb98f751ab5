"""The configuration of one fine-tuning run (MOSMOS transfer step, or one of its baselines).

Its fields are, one for one, the parameters of ``notebooks/03_finetuning.ipynb`` and the options of
``python -m mosmoskit finetune``. The resolved config is stored in every fine-tuning checkpoint,
next to the label map and the pre-training config, so a checkpoint alone rebuilds the model.

The variants of DESIGN.md section 2 are parameter choices, not code paths:

- random init: ``pretrained_checkpoint=""``, ``fusion="none"``;
- random init with the pre-training architecture (the fairest baseline): a checkpoint,
  ``fusion="none"``, ``init_encoder=False``;
- pre-trained encoder without maps: a checkpoint, ``fusion="none"``, ``init_encoder=True``;
- maps without the pre-trained encoder: a checkpoint, ``fusion="input"`` or ``"decoder"``,
  ``init_encoder=False``;
- full MOSMOS: a checkpoint, ``fusion="input"`` or ``"decoder"``, ``init_encoder=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from mosmoskit.config import check_choice, check_positive

__all__ = ["CLASS_WEIGHTINGS", "DEFAULT_LR", "FinetuneConfig", "ROI_DIVISOR", "variant_name"]

#: Both segmenters need sizes divisible by 16: UNETR's ViT has 16-voxel patches, BasicUNet pools 4 times.
ROI_DIVISOR = 16
_FUSION_MODES = ("none", "input", "decoder")
#: How the cross-entropy weights classes (FinetuneConfig.ce_class_weights).
CLASS_WEIGHTINGS = ("sqrt_inverse_frequency", "none")
#: Peak learning rate per network when ``lr`` is 0: measured on the phantoms (README, fine-tuning
#: section): BasicUNet (2D and 3D) trains well at 3e-3; UNETR's ViT needs about ten times less.
DEFAULT_LR = {"unet2d-seg": 3e-3, "unet3d-seg": 3e-3, "unetr3d": 4e-4}
#: The segmenter of each dimension when ``segmenter`` is empty (and no checkpoint decides).
_DEFAULT_NETWORK = {2: "unet2d-seg", 3: "unetr3d"}
_NETWORKS = {2: ("unet2d-seg",), 3: ("unetr3d", "unet3d-seg")}


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning a segmenter on labelled scans, with or without the pre-trained model.

    Data:
        dataset: ``"phantom"`` (a cohort is generated into ``output_dir/data``, or reused when the
            one there was made with the same settings) or a folder with an MSD-style
            ``dataset.json`` whose training entries have labels.
        label_map: the label map of the masks and of the network's output channels.
        phantom_cases: phantom patients (in 2D each gives ``phantom_slices_per_case`` slices).
        phantom_slices_per_case: axial slices per phantom patient in 2D.
        phantom_shape: phantom grid in voxels (empty: the generator's default, 96x96x64 or 128x128).
        phantom_spacing: phantom voxel size in mm (empty: the generator's default, 4x4x5 or 3x3).
        phantom_seed: seed of the phantom cohort. It is fixed for a whole study (the cohort, and so
            the test set, must not change with ``seed``); its default differs from the
            pre-training default seed 0, so fine-tuning phantoms are other patients than the
            pre-training ones.
        spacing: resample every scan to this voxel size (mm, one value per spatial axis) for
            training and inference (empty: keep each file's own spacing; ``predict`` then warns
            about scans whose spacing differs from the training scans').
        window: HU window mapped to [0, 1], as in pre-training.
        skip_bad_cases: open every labelled case once before the split (image, label values,
            label grid against the image) and leave out the broken ones (truncated or unreadable
            files, label values not in the map, masks on another grid) instead of stopping at
            the first one; each skipped case and the reason are written to
            ``output_dir/skipped_cases.json`` and counted in ``metrics.json`` (``data``). Costs
            one read of every case. The split is made from the cases kept, so fix the files
            rather than skip them for a study's final runs. False (default): no screening; a
            broken case stops the run when it is first read, naming the file.

    Label-scarce protocol:
        label_fraction: share of the training patients whose labels are used, in (0, 1]; the
            subset is nested across fractions for one ``seed`` and has at least one patient.
        n_labelled: number of labelled training patients instead of ``label_fraction`` (0: use
            ``label_fraction``).
        test_fraction: share of patients held out for testing, in (0, 1). The test set comes from
            ``split_seed`` alone, so it is the same for every label fraction, seed and variant.
            The defaults (60 phantom patients, 0.25) hold out 15 patients, so one patient moves
            an organ's mean Dice by at most about 7 points (10 for an organ 10 of them show).
        val_fraction: share of patients held out for validation, in [0, 1). 0 (default): the
            validation Dice is measured on up to ``val_max_cases`` labelled training cases, so no
            extra labels are used; > 0: a fixed validation split that costs labelled patients.
            Either way validation never touches the test set, and the final model is the last
            one (no checkpoint selection).
        val_max_cases: cases validated when ``val_fraction`` is 0.
        split_seed: seed of the fixed test/validation split; keep it fixed for a study.

    Model:
        spatial_dims: 2 (BasicUNet on axial slices) or 3 (UNETR, or a 3D BasicUNet, on volumes).
        segmenter: the network without a pre-trained encoder: ``""`` (default: ``"unet2d-seg"`` in
            2D, ``"unetr3d"`` in 3D) or ``"unet3d-seg"`` (MONAI's 3D BasicUNet: a convolutional 3D
            network that learns within a CPU's budget, where UNETR needs a GPU's). With
            ``pretrained_checkpoint`` the pre-trained encoder decides (``"vit3d"`` -> UNETR) and
            another value here is refused when the model is built.
        roi_size: the network's input patch (training crops and sliding-window inference); each
            size a multiple of 16. With a pre-trained UNETR it must equal the pre-training
            image_size.
        pretrained_checkpoint: a pre-training checkpoint (``""``: none: random initialisation).
        fusion: where the pixel-tag attention maps enter: ``"none"``, ``"input"`` (concatenated
            to the image channels) or ``"decoder"`` (to the last decoder features); needs
            ``pretrained_checkpoint``.
        init_encoder: initialise the segmenter's encoder from the pre-trained image encoder (only
            with ``pretrained_checkpoint``; ignored without one).
        tune_tag_head: train the map branch (tag head and its encoder copy) too; frozen otherwise.
        share_encoder: decoder fusion with a pre-trained encoder: compute the maps from the
            segmenter's own (fine-tuned) encoder instead of a frozen copy of the pre-trained one.
            Saves one encoder pass per step, but the frozen tag head then reads drifting
            features; off by default (a two-seed pilot scored 1.2-1.4 Dice points lower with it:
            README, evidence study).
        gradient_checkpointing: UNETR: recompute each ViT block's activations in the backward
            pass instead of keeping them (less GPU memory for a larger batch or crop, about one
            more ViT forward per step); same results. Ignored in 2D.
        encoder_width: without a pre-trained checkpoint, the network width: BasicUNet's first
            level (2D or 3D; features w, w, 2w, 4w, 8w, w) or UNETR's ViT hidden size (MLP 2w, 4 heads);
            0 = MONAI's defaults. With a checkpoint the encoder comes from its config: leave 0 or give
            the checkpoint's width (a study then sets one width for random and pre-trained runs);
            another width is refused when the checkpoint is read.
        decoder_width: UNETR's decoder width (``feature_size``; 0 = 16); unused in 2D.

    Augmentation:
        crops_per_case: random crops of ``roi_size`` drawn per loaded case (the batch holds
            ``batch_size * crops_per_case`` crops).
        pos_neg_ratio: crops centred on an organ per crop centred on background.
        class_balanced_crops: centre organ crops on each organ equally often, rather than on a
            random organ voxel (which mostly lands in the liver); helps small organs.
        allow_lr_flip: mirror left-right with left/right organ ids swapped (never plain flips of
            the left-right axis; keep off for hearts).
        cache_rate: share of the training cases whose loaded, windowed volumes are kept in memory;
            a cache estimated (from the file headers) to need more than 80 % of the available
            host memory is refused before loading starts, with the numbers and what to lower.

    Loss:
        batch_dice: Dice per organ over all crops of a batch rather than per crop, then averaged
            (nnU-Net's choice). Per crop, a crop that misses a small organ scores that organ's
            Dice 0 for any false positive, which teaches the network to never predict it.
        ce_class_weights: ``"sqrt_inverse_frequency"`` (default): the cross-entropy weights each
            class by ``sqrt(most frequent class's voxels / its voxels)``, counted once over the
            labelled training masks on the training grid
            (:func:`~mosmoskit.losses.segmentation.frequency_class_weights`; written to
            ``metrics.json``); ``"none"``: every voxel alike. Without weights the 2D phantom
            baseline never learned either adrenal (Dice 0.00) and half the esophagus; with them
            0.8 and 0.7 (README, fine-tuning section).

    Optimisation:
        lr: peak learning rate of AdamW; 0 (default) picks the network's: 3e-3 for the U-Nets (2D
            and 3D), 4e-4 for UNETR, whose transformer diverges at the U-Net's rate
            (:attr:`learning_rate`).
        encoder_lr_scale: a pre-trained segmenter encoder (``init_encoder`` with a checkpoint)
            learns at ``lr * encoder_lr_scale``, the rest at ``lr``; the usual way to keep what
            pre-training put there. 1 (default): one rate. A random encoder always learns at ``lr``,
            so one value serves every setting of a study.
        max_steps, batch_size, weight_decay, warmup_steps, grad_clip_norm (0: no clipping),
        val_every (0: only at the end), checkpoint_every, num_workers, device ("auto", "cpu",
        "cuda", ...), seed (training and labelled-subset seed), output_dir, overwrite (reuse a
        folder that holds a finished run; otherwise an interrupted run there is resumed).

    Inference:
        sw_overlap: overlap of neighbouring sliding windows, in [0, 1).
        sw_batch_size: windows per forward pass.
        save_predictions: write each test case's predicted mask (in the input file's own
            orientation and affine) to ``output_dir/predictions``.

    Raises:
        ValueError: a field with an invalid value or a contradictory combination; the message
            names the field(s), the value and the allowed range.
    """

    dataset: str = "phantom"
    label_map: str = "btcv"
    phantom_cases: int = 60
    phantom_slices_per_case: int = 8
    phantom_shape: tuple[int, ...] = ()
    phantom_spacing: tuple[float, ...] = ()
    phantom_seed: int = 1
    spacing: tuple[float, ...] = ()
    window: tuple[float, float] = (-175.0, 250.0)
    skip_bad_cases: bool = False

    label_fraction: float = 1.0
    n_labelled: int = 0
    test_fraction: float = 0.25
    val_fraction: float = 0.0
    val_max_cases: int = 4
    split_seed: int = 0

    spatial_dims: int = 2
    segmenter: str = ""
    roi_size: tuple[int, ...] = (96, 96)
    pretrained_checkpoint: str = ""
    fusion: str = "none"
    init_encoder: bool = True
    tune_tag_head: bool = False
    share_encoder: bool = False
    gradient_checkpointing: bool = False
    encoder_width: int = 0
    decoder_width: int = 0

    crops_per_case: int = 2
    pos_neg_ratio: float = 1.0
    class_balanced_crops: bool = True
    allow_lr_flip: bool = False
    cache_rate: float = 1.0

    batch_dice: bool = True
    ce_class_weights: str = "sqrt_inverse_frequency"

    max_steps: int = 1500
    batch_size: int = 8
    lr: float = 0.0
    encoder_lr_scale: float = 1.0
    weight_decay: float = 1e-5
    warmup_steps: int = 50
    grad_clip_norm: float = 1.0
    val_every: int = 100
    checkpoint_every: int = 100
    num_workers: int = 0
    sw_overlap: float = 0.25
    sw_batch_size: int = 4
    save_predictions: bool = True
    device: str = "auto"
    seed: int = 0
    output_dir: str = "runs/finetune"
    overwrite: bool = False

    def __post_init__(self) -> None:
        # Lists (JSON, papermill) become tuples so that the frozen config stays hashable and equal.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        check_choice("spatial_dims", self.spatial_dims, (2, 3))
        check_choice("fusion", self.fusion, _FUSION_MODES)
        check_choice("ce_class_weights", self.ce_class_weights, CLASS_WEIGHTINGS)
        if self.segmenter:
            check_choice("segmenter", self.segmenter, _NETWORKS[self.spatial_dims])
        dims = self.spatial_dims
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"dataset must be 'phantom' or a folder with a dataset.json, got {self.dataset!r}")

        if len(self.roi_size) != dims or any(int(s) < 1 for s in self.roi_size):
            raise ValueError(f"roi_size must have {dims} positive sizes for spatial_dims={dims}, got {self.roi_size}")
        if any(int(s) % ROI_DIVISOR for s in self.roi_size):
            raise ValueError(
                f"roi_size {self.roi_size} must be divisible by {ROI_DIVISOR} (UNETR's patch size; BasicUNet "
                f"pools four times)"
            )
        for name in ("spacing", "phantom_spacing"):
            value = getattr(self, name)
            if value and (len(value) != dims or not all(math.isfinite(float(v)) and float(v) > 0 for v in value)):
                raise ValueError(f"{name} must be empty or {dims} positive numbers (mm), got {value}")
        if self.phantom_shape and (len(self.phantom_shape) != dims or any(int(s) < 1 for s in self.phantom_shape)):
            raise ValueError(f"phantom_shape must be empty or {dims} positive sizes, got {self.phantom_shape}")
        if len(self.window) != 2 or not self.window[0] < self.window[1]:
            raise ValueError(f"window must be (low, high) HU with low < high, got {self.window}")

        if isinstance(self.label_fraction, bool) or not 0.0 < float(self.label_fraction) <= 1.0:
            raise ValueError(
                f"label_fraction must be in (0, 1] (a share of the training patients; 1.0 = all), got "
                f"{self.label_fraction!r}; use n_labelled for a number of patients"
            )
        check_positive("n_labelled", self.n_labelled, allow_zero=True)
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1): the run is evaluated on a held-out test set, got "
                             f"{self.test_fraction!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.test_fraction + self.val_fraction >= 1.0:
            raise ValueError(
                f"test_fraction ({self.test_fraction}) + val_fraction ({self.val_fraction}) must leave training "
                f"patients (sum < 1)"
            )

        if self.fusion != "none" and not self.pretrained_checkpoint:
            raise ValueError(
                f"fusion={self.fusion!r} fuses the pre-trained tag head's attention maps: set pretrained_checkpoint "
                f"to a pre-training checkpoint, or use fusion='none'"
            )
        if self.tune_tag_head and self.fusion == "none":
            raise ValueError(
                "tune_tag_head=True needs fusion 'input' or 'decoder' (with fusion='none' there is no tag head)"
            )
        for name in ("phantom_cases", "phantom_slices_per_case", "val_max_cases", "crops_per_case", "max_steps",
                     "batch_size", "checkpoint_every", "sw_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("phantom_seed", "split_seed", "seed", "encoder_width", "decoder_width", "warmup_steps",
                     "val_every", "num_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        check_positive("lr", self.lr, allow_zero=True)
        check_positive("encoder_lr_scale", self.encoder_lr_scale)
        for name in ("weight_decay", "grad_clip_norm", "pos_neg_ratio"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if not 0.0 < self.cache_rate <= 1.0:
            raise ValueError(f"cache_rate must be in (0, 1], got {self.cache_rate!r}")
        if not 0.0 <= self.sw_overlap < 1.0:
            raise ValueError(f"sw_overlap must be in [0, 1), got {self.sw_overlap!r}")
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError(f"output_dir must be a non-empty folder path, got {self.output_dir!r}")

    @property
    def network(self) -> str:
        """The segmenter this config asks for without a checkpoint: ``segmenter`` or the dimension's default
        (a pre-trained ``"vit3d"`` encoder always builds ``"unetr3d"``, ``"unet2d"`` ``"unet2d-seg"``)."""
        return self.segmenter or _DEFAULT_NETWORK[self.spatial_dims]

    @property
    def learning_rate(self) -> float:
        """The peak learning rate used: ``lr``, or the network's default when ``lr`` is 0."""
        if self.lr:
            return float(self.lr)
        return DEFAULT_LR[self.network]

    @property
    def uses_pretrained(self) -> bool:
        """Whether any weights come from the pre-trained checkpoint (encoder or tag head)."""
        return bool(self.pretrained_checkpoint) and (self.init_encoder or self.fusion != "none")


def variant_name(config: FinetuneConfig) -> str:
    """The baseline or method a config runs, as written next to its numbers.

    Returns:
        ``"random_init"``, ``"pretrained_encoder"`` (no maps), ``"maps_only"`` (maps without the
        pre-trained encoder) or ``"mosmos"`` (both).
    """
    encoder = bool(config.pretrained_checkpoint) and config.init_encoder
    maps = config.fusion != "none"
    if encoder and maps:
        return "mosmos"
    if maps:
        return "maps_only"
    return "pretrained_encoder" if encoder else "random_init"
