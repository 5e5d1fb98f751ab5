"""Labelled scans for fine-tuning: the cohort, the label-scarce split, and the MONAI pipelines.

With ``skip_bad_cases`` every labelled case is opened once before the split
(:func:`~mosmoskit.data.screening.screen_cases`) and the broken ones are left out and listed
(:attr:`FinetuneData.screening`); otherwise a broken case stops the run where it is first read.
The training cache is sized from the file headers before anything is loaded, and refused with a
:class:`~mosmoskit.resources.ResourceError` when it would not fit the host memory.

The split follows the protocol of DESIGN.md section 2 (see :mod:`mosmoskit.data.protocol`):

1. the cohort is cut once, by patient, into test / validation / training with
   :func:`~mosmoskit.data.protocol.patient_split` and ``split_seed``. Nothing else enters that
   split, so the test set is the same for every label fraction, seed and variant of a study (and
   for a phantom cohort, whose ``phantom_seed`` is fixed too, the same files);
2. the labelled cases are a subset of the training patients chosen by
   :func:`~mosmoskit.data.protocol.select_labelled_subset` with the run ``seed``: nested across
   fractions, at least one patient, paired across variants run with the same seed.

2D slices of one phantom patient share that patient (``parent_case``), so they always land on the
same side of every split.

Training samples go through one flat MONAI ``Compose``: load (RAS, optional resampling to
``spacing``), label check, the pre-trained attention maps of the whole image (for a segmenter that
fuses maps from a frozen map branch: :func:`fusion_map_transform`), HU window, then the
left-right-safe augmentations and the foreground balanced random crops of
:func:`~mosmoskit.data.augment.segmentation_train_transforms`. The deterministic prefix, maps
included, is cached by ``CacheDataset``; the random suffix is re-seeded per sample by the training
loop, which keeps a resumed run exact.

The maps (key ``"maps"``, K float32 channels) are made once per case on the whole image in HU,
at the pre-training geometry (:func:`mosmoskit.pretraining.maps.whole_image_maps`), before the
intensity window and every augmentation; every crop, rotation, scaling and flip then applies to
them as to the image (a left-right mirror also exchanges the left/right organ channels), and no
intensity augmentation touches them. Validation cases carry them whole, and the sliding window
cuts them with the image (:func:`mosmoskit.finetuning.task.sliding_window_probabilities`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mosmoskit.data.protocol import patient_split, select_labelled_subset
from mosmoskit.data.screening import ScreenResult
from mosmoskit.finetuning.config import FinetuneConfig
from mosmoskit.labels import LabelMap, load_label_map
from mosmoskit.pretraining.data import patient_of

__all__ = [
    "FinetuneData",
    "FinetuneSplit",
    "cache_memory_bytes",
    "canonical_spacing",
    "class_voxel_counts",
    "ensure_phantom_cohort",
    "eval_transforms",
    "fusion_map_transform",
    "make_train_dataset",
    "make_val_loader",
    "median_spacing",
    "patient_of",
    "prepare_finetuning_data",
    "train_transforms",
]

KEYS = ("image", "label")
#: the sample key of the pre-trained attention maps (K channels, made on the whole image)
MAPS_KEY = "maps"


@dataclass(frozen=True)
class FinetuneSplit:
    """Case ids of one run of the label-scarce protocol (each tuple sorted).

    Attributes:
        train_pool: every case of the training patients (what the label fraction is a share of).
        labelled: the cases whose labels train the model (a subset of ``train_pool``).
        val: the cases validated during training: from ``train_pool`` only, never from ``test``.
        test: the fixed held-out cases the final metrics are computed on.
        groups: case id -> patient id.
    """

    train_pool: tuple[str, ...]
    labelled: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    groups: dict[str, str] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.labelled or not self.test:
            raise ValueError(f"a fine-tuning split needs labelled and test cases, got {len(self.labelled)} labelled, "
                             f"{len(self.test)} test")
        if set(self.test) & (set(self.train_pool) | set(self.val)):
            raise ValueError("test cases overlap training or validation cases")
        if not set(self.labelled) <= set(self.train_pool):
            raise ValueError("labelled cases must come from the training pool")

    def patients(self, name: str) -> list[str]:
        """The sorted patient ids of one part (``"train_pool"``, ``"labelled"``, ``"val"``, ``"test"``)."""
        return sorted({self.groups[c] for c in getattr(self, name)})

    def summary(self) -> dict[str, Any]:
        """Counts of cases and patients per part, and the ids (JSON-able, for metrics.json)."""
        out: dict[str, Any] = {}
        for name in ("train_pool", "labelled", "val", "test"):
            ids = getattr(self, name)
            out[name] = {"cases": len(ids), "patients": len(self.patients(name)), "case_ids": list(ids)}
        return out


@dataclass(frozen=True)
class FinetuneData:
    """The cohort of a fine-tuning run and its split.

    Attributes:
        cases: case id -> case dict (``case_id``, ``image`` path, ``label`` path, ...).
        split: the :class:`FinetuneSplit`.
        label_map: the masks' label map.
        source: the ``dataset.json`` the cases came from.
        screening: with ``skip_bad_cases``, what the screening kept and skipped (every skipped
            case with its file and reason); None when the cases were not screened.
    """

    cases: dict[str, dict[str, Any]]
    split: FinetuneSplit
    label_map: LabelMap
    source: Path
    screening: ScreenResult | None = None

    def items(self, case_ids: Sequence[str]) -> list[dict[str, Any]]:
        """MONAI data dicts ``{"image", "label", "case_id"}`` of ``case_ids``."""
        return [{"image": self.cases[c]["image"], "label": self.cases[c]["label"], "case_id": c} for c in case_ids]


# ------------------------------------------------------------------------------------- the cohort
def ensure_phantom_cohort(root: str | Path, config: FinetuneConfig, progress: bool = True) -> Path:
    """Generate the phantom cohort a config asks for into ``root``, or reuse the one already there.

    A cohort in ``root`` is reused only when its ``dataset.json`` records the same generator
    settings (seed, number of patients, grid, spacing, dimensions, slices per patient); otherwise
    it is regenerated, so a folder never silently holds another cohort than the config says
    (:func:`mosmoskit.data.phantom.ensure_cohort`).

    Returns:
        ``root``.
    """
    from mosmoskit.data.phantom import ensure_cohort

    return ensure_cohort(root, n=config.phantom_cases, seed=config.phantom_seed, shape=config.phantom_shape or None,
                         spacing=config.phantom_spacing or None, spatial_dims=config.spatial_dims,
                         slices_per_case=config.phantom_slices_per_case, progress=progress)


def prepare_finetuning_data(config: FinetuneConfig, progress: bool = True) -> FinetuneData:
    """Find (or generate) the labelled cohort and split it by the label-scarce protocol.

    With ``config.skip_bad_cases`` every labelled case is read once first and the broken ones
    are left out of the cohort before it is split (:attr:`FinetuneData.screening` lists them).

    Args:
        config: ``dataset``, ``label_map``, the phantom settings, ``skip_bad_cases`` and the
            protocol fields.
        progress: show a progress bar while generating phantoms or screening cases.

    Returns:
        :class:`FinetuneData`.

    Raises:
        FileNotFoundError: a dataset folder without ``dataset.json``, or missing files.
        ValueError: no labelled case, images of another dimension than ``spatial_dims``, a
            label map that disagrees with the data set's, or a split that leaves no training or
            test patient (the messages name the file or the fraction); with
            ``skip_bad_cases``, every labelled case broken (the message lists them).
    """
    from mosmoskit.data.datalists import load_dataset
    from mosmoskit.data.readers import load_image
    from mosmoskit.data.screening import screen_cases

    label_map = load_label_map(config.label_map)
    if config.dataset == "phantom":
        root = ensure_phantom_cohort(Path(config.output_dir) / "data", config, progress=progress)
    else:
        root = Path(config.dataset).expanduser()
        if not (root / "dataset.json").is_file():
            raise FileNotFoundError(
                f"dataset {config.dataset!r}: expected 'phantom' or a folder with a dataset.json (MSD layout), "
                f"but {root / 'dataset.json'} does not exist"
            )
    cases = load_dataset(root, label_map=label_map)
    labelled_cases = [c for c in cases.cases if c.get("label")]
    if not labelled_cases:
        raise ValueError(f"{cases.source}: no training entry has a 'label'; fine-tuning needs labelled scans")
    if any(isinstance(c["image"], list) for c in labelled_cases):
        raise ValueError(f"{cases.source}: multi-channel images (a list of files per case) are not supported yet")
    screening = None
    if config.skip_bad_cases:
        screening = screen_cases(labelled_cases, label_map, skip_bad=True, progress=progress)
        if not screening.good:
            raise ValueError(
                f"{cases.source}: every one of the {screening.n_cases} labelled cases is broken, nothing is left to "
                f"train on:\n{screening.report(root)}"
            )
        labelled_cases = screening.good
    first = load_image(labelled_cases[0]["image"])
    if first.ndim != config.spatial_dims:
        raise ValueError(
            f"{labelled_cases[0]['image']} is a {first.ndim}D image but spatial_dims={config.spatial_dims}; "
            f"set spatial_dims (and roi_size) to match the data"
        )
    by_id = {c["case_id"]: c for c in labelled_cases}
    groups = {c["case_id"]: patient_of(c) for c in labelled_cases}
    parts = patient_split(sorted(by_id), groups, test_fraction=config.test_fraction,
                          val_fraction=config.val_fraction, seed=config.split_seed)
    pool = parts["train"]
    if config.n_labelled:
        labelled = select_labelled_subset(pool, n_labelled=config.n_labelled, seed=config.seed, groups=groups)
    else:
        labelled = select_labelled_subset(pool, label_fraction=config.label_fraction, seed=config.seed, groups=groups)
    if parts["val"]:
        val = parts["val"]
    else:
        # Spread over the labelled cases (slices of several patients rather than one patient's).
        step = max(1, len(labelled) // config.val_max_cases)
        val = labelled[::step][: config.val_max_cases]
    split = FinetuneSplit(
        train_pool=tuple(pool), labelled=tuple(labelled), val=tuple(sorted(val)), test=tuple(parts["test"]),
        groups=groups,
    )
    return FinetuneData(cases=by_id, split=split, label_map=label_map, source=Path(cases.source),
                        screening=screening)


def canonical_spacing(path: str | Path, ndim: int) -> tuple[float, ...]:
    """Voxel size (mm) along the canonical RAS axes of an image, read from its header only.

    Equals ``load_image(path).spacing`` without reading the voxels for NIfTI files (DICOM series
    are read).
    """
    import nibabel as nib

    from mosmoskit.data.readers import affine_nd, image_format, load_image

    path = Path(path)
    if image_format(path) != "nifti":
        return load_image(path).spacing
    affine = affine_nd(nib.load(str(path)).affine, ndim)
    stored = np.linalg.norm(affine[:ndim, :ndim], axis=0)
    ornt = nib.orientations.io_orientation(affine)
    out = [0.0] * ndim
    for axis, (target, _) in enumerate(ornt):
        out[int(target)] = float(stored[axis])
    return tuple(out)


def median_spacing(paths: Sequence[str | Path], ndim: int) -> tuple[float, ...]:
    """Per-axis median voxel size (mm, RAS axes) of several images."""
    if not paths:
        raise ValueError("median_spacing needs at least one image")
    per_file = [canonical_spacing(p, ndim) for p in paths]
    return tuple(float(statistics.median(s[i] for s in per_file)) for i in range(ndim))


def class_voxel_counts(data: FinetuneData, config: FinetuneConfig, progress: bool = False) -> list[int]:
    """Voxels of each class over the labelled training masks, on the training grid.

    Each mask is read through the training pipeline's own loading and resampling (nearest), so the
    counts are what the loss sees before cropping. Used for the class weights of the
    cross-entropy (``config.ce_class_weights``).

    Returns:
        ``label_map.num_classes`` counts, background first.
    """
    from tqdm.auto import tqdm

    from mosmoskit.data.readers import quiet_monai_readers
    from mosmoskit.data.transforms import load_transforms

    num_classes = data.label_map.num_classes
    load = load_transforms(("label",), spacing=config.spacing or None, orientation="RAS"[: config.spatial_dims],
                           label_keys=("label",))
    counts = np.zeros(num_classes, dtype=np.int64)
    with quiet_monai_readers():
        for item in tqdm(data.items(data.split.labelled), desc="counting class voxels", unit="case",
                         disable=not progress, leave=False):
            mask = np.asarray(load({"label": item["label"]})["label"]).astype(np.int64).ravel()
            counts += np.bincount(mask.clip(0, num_classes - 1), minlength=num_classes)[:num_classes]
    return [int(c) for c in counts]


# ----------------------------------------------------------------------------------- pipelines
def fusion_map_transform(model: Any, device: str = "cpu") -> Any:
    """The transform that adds a segmenter's fused maps to each whole case, or None.

    Args:
        model: the segmenter to fine-tune (a ``MosmosSegmenter``).
        device: where the maps are made (a frozen CPU copy of the map branch by default).

    Returns:
        A :class:`~mosmoskit.pretraining.maps.WholeImageMapsd` (key ``"maps"``) with a frozen copy
        of ``model.map_model``, its pre-training config and its map settings, when the model
        fuses maps from a frozen map branch of its own (``model.precomputed_maps``); None
        otherwise (no fusion, a shared encoder, or ``tune_tag_head``: those make their maps in
        the network).
    """
    from mosmoskit.pretraining.maps import WholeImageMapsd

    if not getattr(model, "precomputed_maps", False):
        return None
    return WholeImageMapsd(model.map_model, model.pretrain_config, image_key="image", maps_key=MAPS_KEY,
                           normalize=model.map_normalize, scale_by_probability=model.scale_by_probability,
                           device=device)


def _base(config: FinetuneConfig, label_map: LabelMap, map_transform: Any = None) -> list[Any]:
    from mosmoskit.data.transforms import CheckLabelsd, ct_intensity_transform, load_transforms

    # 2D images take two axis codes (MONAI warns about a 3-letter code on a 2D image).
    load = load_transforms(KEYS, spacing=config.spacing or None, orientation="RAS"[: config.spatial_dims])
    # The maps are made from the whole image in HU, before the window and every augmentation.
    maps = [] if map_transform is None else [map_transform]
    return [*load.transforms, CheckLabelsd(("label",), label_map), *maps, ct_intensity_transform(config.window)]


def _keys(map_transform: Any) -> tuple[str, ...]:
    return KEYS if map_transform is None else (*KEYS, map_transform.maps_key)


def train_transforms(config: FinetuneConfig, label_map: LabelMap, map_transform: Any = None) -> Any:
    """Load + (maps) + window + augment + ``crops_per_case`` random crops of ``roi_size``, as one flat ``Compose``.

    Args:
        config: the run's config.
        label_map: the masks' label map.
        map_transform: :func:`fusion_map_transform` of the segmenter, or None (no maps).

    Returns:
        A ``monai.transforms.Compose`` mapping ``{"image": path, "label": path}`` to a list of
        ``crops_per_case`` dicts with plain tensors ``image`` (1, *roi_size) float32 in [0, 1]
        (before intensity augmentation), ``label`` (1, *roi_size) of class ids and, with
        ``map_transform``, ``maps`` (K, *roi_size): the whole image's maps, cropped and
        augmented with the image.
    """
    from monai.transforms import Compose, EnsureTyped, SpatialPadd

    from mosmoskit.data.augment import ClassIndicesd, segmentation_train_transforms

    keys = _keys(map_transform)
    indices_key = "label_cls_indices" if config.class_balanced_crops else None
    augment = segmentation_train_transforms(
        config.roi_size, label_map, spatial_dims=config.spatial_dims, pos_neg_ratio=config.pos_neg_ratio,
        num_samples=config.crops_per_case, allow_lr_flip=config.allow_lr_flip,
        class_balanced=config.class_balanced_crops, label_indices_key=indices_key,
        map_key=None if map_transform is None else map_transform.maps_key,
    )
    # Pad (as the augmentation would) and find each class's voxels once, in the cached prefix: the
    # class-balanced crop then draws its centre from stored indices instead of scanning the mask.
    cached: list[Any] = [*_base(config, label_map, map_transform)]
    if indices_key:
        cached += [SpatialPadd(keys, spatial_size=config.roi_size),
                   ClassIndicesd("label", label_map.num_classes, output_key=indices_key)]
    # One flat chain: CacheDataset caches up to the first random transform, and a nested Compose
    # counts as random, which would switch caching off.
    tail: list[Any] = [EnsureTyped(keys, track_meta=False)]
    if indices_key:
        from monai.transforms import DeleteItemsd

        tail.insert(0, DeleteItemsd(indices_key))  # the crops need them no more; the batch must not carry them
    return Compose([*cached, *augment.transforms, *tail])


def eval_transforms(config: FinetuneConfig, label_map: LabelMap, map_transform: Any = None) -> Any:
    """Load + (maps) + window, no augmentation: whole cases ``image`` (1, *shape), ``label`` (1, *shape)
    and, with ``map_transform``, ``maps`` (K, *shape)."""
    from monai.transforms import Compose, EnsureTyped

    return Compose([*_base(config, label_map, map_transform), EnsureTyped(_keys(map_transform), track_meta=False)])


#: Class indices kept per class by the class-balanced crops (``ClassIndicesd``'s default).
_INDICES_PER_CLASS = 200_000


def cache_memory_bytes(items: Sequence[dict[str, Any]], config: FinetuneConfig, num_classes: int,
                       num_maps: int = 0) -> int:
    """Host memory the training cache of ``items`` takes, from the file headers alone (bytes).

    Per case: the image and the label as float32 on the training grid (resampled to
    ``config.spacing`` if set), the ``num_maps`` float32 attention-map channels, plus, with
    ``class_balanced_crops``, the int64 voxel indices kept per class (at most one per voxel, at
    most 200 000 per class). The padding to ``roi_size`` and MONAI's metadata are left out (small
    next to the volumes).

    Args:
        items: the case dicts that will be cached (``image``, ``label`` paths).
        config: ``spatial_dims``, ``spacing``, ``class_balanced_crops``.
        num_classes: classes of the label map, background included.
        num_maps: K, map channels cached per case (0: the model fuses no precomputed maps).
    """
    from mosmoskit.resources import case_voxels

    spacing = tuple(config.spacing) or None
    total = 0
    for item in items:
        voxels = case_voxels(item["image"], config.spatial_dims, spacing)
        total += 4 * voxels * (1 + int(num_maps)) + 4 * case_voxels(item["label"], config.spatial_dims, spacing)
        if config.class_balanced_crops:
            total += 8 * min(voxels, num_classes * _INDICES_PER_CLASS)
    return total


def make_train_dataset(data: FinetuneData, config: FinetuneConfig, progress: bool = False,
                       map_transform: Any = None) -> Any:
    """A MONAI ``CacheDataset`` of the labelled cases (each item: a list of ``crops_per_case`` crops).

    Before anything is loaded, the cache's size is estimated from the file headers
    (:func:`cache_memory_bytes`) and compared with the available host memory. With
    ``map_transform`` (:func:`fusion_map_transform`) the cache holds each case's whole-image maps
    too, made once while it is filled.

    Raises:
        ResourceError: (a ``MemoryError``) the cache would take more than 80 % of the available
            host memory; the message gives both sizes and what to lower.
    """
    from monai.data import CacheDataset

    from mosmoskit import resources
    from mosmoskit.data.readers import quiet_monai_readers

    items = data.items(data.split.labelled)
    # CacheDataset caches the first int(n * cache_rate) items, so the estimate sums exactly those.
    n_cached = min(len(items), int(len(items) * config.cache_rate))
    num_maps = 0 if map_transform is None else len(data.label_map.foreground_names)
    needed = cache_memory_bytes(items[:n_cached], config, data.label_map.num_classes, num_maps=num_maps)
    resources.check_fits(
        needed, resources.available_memory()["host_bytes"],
        what=f"caching {n_cached} of {len(items)} training cases in memory (cache_rate={config.cache_rate})",
        hint="lower cache_rate (uncached cases are read from disk at every use), set spacing to a coarser voxel "
             "size, or free host memory",
    )
    with quiet_monai_readers():
        return CacheDataset(
            items, transform=train_transforms(config, data.label_map, map_transform),
            cache_rate=config.cache_rate, num_workers=max(1, config.num_workers), progress=progress,
        )


def make_val_loader(data: FinetuneData, config: FinetuneConfig, map_transform: Any = None) -> Any:
    """A DataLoader of whole validation cases, one per batch (their shapes differ); with
    ``map_transform`` each carries its whole-image maps (``maps``, (1, K, *shape))."""
    from monai.data import Dataset
    from torch.utils.data import DataLoader

    dataset = Dataset(data.items(data.split.val), transform=eval_transforms(config, data.label_map, map_transform))
    return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=config.num_workers,
                      collate_fn=_collate_whole)


def _collate_whole(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    import torch

    batch = {
        "image": torch.stack([i["image"] for i in items]),
        "label": torch.stack([i["label"] for i in items]),
        "case_id": [i["case_id"] for i in items],
    }
    if items and MAPS_KEY in items[0]:
        batch[MAPS_KEY] = torch.stack([i[MAPS_KEY] for i in items])
    return batch
