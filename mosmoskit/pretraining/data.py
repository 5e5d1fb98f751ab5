"""Image-report pairs for pre-training: loading, organ tags from the reports, shifts.

The organ tags used for training are read from the report text by the rule-based parser
(:func:`mosmoskit.reports.extract_tags`), exactly as for real data: the phantom generator's own
tags are used only to *measure* the parser, never to train.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from monai.data import CacheDataset
from monai.transforms import Compose, EnsureTyped, ResizeWithPadOrCropd, Transform
from torch.utils.data import Dataset

from scipy import ndimage

from mosmoskit import resources
from mosmoskit.data.datalists import CaseList, load_dataset, split_cases
from mosmoskit.data.readers import quiet_monai_readers
from mosmoskit.data.transforms import (
    CheckLabelsd,
    ct_intensity_transform,
    load_transforms,
    unwrap_transform_errors,
)
from mosmoskit.labels import LabelMap, load_label_map

__all__ = [
    "ImageReportDataset",
    "Move",
    "center_crop_or_pad",
    "move_image",
    "pair_cache_bytes",
    "pair_transforms",
    "tag_mosaics",
    "tags_without_negatives",
    "training_masks",
    "patient_of",
    "prepare_pretraining_data",
    "shift_with_padding",
    "window_intensity",
]


def window_intensity(array: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Map HU in ``window`` (low, high) linearly to [0, 1], clipping outside."""
    low, high = float(window[0]), float(window[1])
    return np.clip((array - low) / (high - low), 0.0, 1.0).astype(np.float32)


def center_crop_or_pad(array: np.ndarray, size: Sequence[int], fill: float = 0.0) -> np.ndarray:
    """Crop (centred) or pad (centred, with ``fill``) each axis of ``array`` to ``size``."""
    if array.ndim != len(size):
        raise ValueError(f"cannot fit an array of shape {array.shape} to a {len(size)}D size {tuple(size)}")
    out = np.full(tuple(size), fill, dtype=array.dtype)
    src, dst = [], []
    for have, want in zip(array.shape, size):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = array[tuple(src)]
    return out


def shift_with_padding(array: np.ndarray, shift: Sequence[int], fill: float = 0.0) -> np.ndarray:
    """Translate ``array`` by ``shift`` voxels per axis; what leaves the grid is lost, what enters is ``fill``.

    Unlike ``np.roll`` nothing wraps around: an organ shifted off the right edge must not reappear
    on the left, or the attention maps would learn a wrapped anatomy.
    """
    out = np.full_like(array, fill)
    src, dst = [], []
    for n, s in zip(array.shape, shift):
        s = int(s)
        if abs(s) >= n:
            return out
        src.append(slice(max(0, -s), n - max(0, s)))
        dst.append(slice(max(0, s), n - max(0, -s)))
    out[tuple(dst)] = array[tuple(src)]
    return out


@dataclass(frozen=True)
class Move:
    """A rigid-plus-scale move of an image about its centre: what a patient's position does.

    Attributes:
        shift: translation in voxels per axis.
        rotation_deg: in-plane rotation (2D) or rotation about the craniocaudal (last) axis (3D),
            degrees.
        scale: zoom factor (1 = none; 1.1 makes the anatomy 10% larger).
    """

    shift: tuple[int, ...]
    rotation_deg: float = 0.0
    scale: float = 1.0

    @property
    def is_shift_only(self) -> bool:
        return self.rotation_deg == 0.0 and self.scale == 1.0


def move_image(array: np.ndarray, move: Move, fill: float = 0.0, order: int = 1) -> np.ndarray:
    """Apply ``move`` to ``array`` (2D or 3D); what leaves the grid is lost, what enters is ``fill``.

    A pure shift goes through :func:`shift_with_padding` (exact, no interpolation); otherwise the
    image is resampled with ``scipy.ndimage.affine_transform`` (``order`` 1 for images, 0 for
    label masks) about the grid centre.
    """
    if move.is_shift_only:
        return shift_with_padding(array, move.shift, fill=fill)
    angle = np.deg2rad(move.rotation_deg)
    c, s = np.cos(angle), np.sin(angle)
    forward = np.eye(array.ndim)
    forward[:2, :2] = [[c, -s], [s, c]]
    forward *= move.scale
    if array.ndim == 3:  # the zoom is isotropic, the rotation only in the axial plane
        forward[2, 2] = move.scale
    # affine_transform maps output coordinates to input ones: x_in = A^-1 (x_out - centre - shift) + centre
    inverse = np.linalg.inv(forward)
    centre = (np.asarray(array.shape, dtype=np.float64) - 1.0) / 2.0
    offset = centre - inverse @ (centre + np.asarray(move.shift, dtype=np.float64))
    out = ndimage.affine_transform(array, inverse, offset=offset, order=order, mode="constant", cval=fill,
                                   prefilter=False)
    return out.astype(array.dtype, copy=False)


def tag_mosaics(
    images: torch.Tensor, tags: torch.Tensor, count: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """2x2 mosaics of images of a batch, for the tag loss: an organ can then be anywhere.

    Each mosaic shrinks four images of the batch (drawn without replacement) by half (2x2 mean)
    and tiles them. Its tags are the union of the tiles' report tags: 1 if any tile's report says
    the organ is there, 0 if every tile's report says it is not, else -1 (unmentioned).

    Args:
        images: (B, C, H, W) with H and W even and B >= 4.
        tags: (B, K) in {1, 0, -1}.
        count: mosaics to make.
        generator: draws the tiles (seed it from the batch for a reproducible run).

    Returns:
        mosaics (count, C, H, W) and their tags (count, K).

    Raises:
        ValueError: fewer than 4 images, odd sizes, or not 2D images.
    """
    if images.ndim != 4 or images.shape[0] < 4 or images.shape[2] % 2 or images.shape[3] % 2:
        raise ValueError(f"mosaics need >= 4 2D images (B, C, H, W) with even H and W, got {tuple(images.shape)}")
    small = torch.nn.functional.avg_pool2d(images, kernel_size=2)
    mosaics, mosaic_tags = [], []
    for _ in range(int(count)):
        pick = torch.randperm(images.shape[0], generator=generator)[:4].to(images.device)
        tiles = small[pick]
        top = torch.cat([tiles[0], tiles[1]], dim=2)
        bottom = torch.cat([tiles[2], tiles[3]], dim=2)
        mosaics.append(torch.cat([top, bottom], dim=1))
        t = tags[pick]
        union = torch.full_like(t[0], -1.0)
        union[(t == 0).all(dim=0)] = 0.0
        union[(t == 1).any(dim=0)] = 1.0
        mosaic_tags.append(union)
    return torch.stack(mosaics), torch.stack(mosaic_tags)


def patient_of(case: dict[str, Any]) -> str:
    """The patient a case belongs to: 2D slices carry their volume's id in ``parent_case``."""
    return str(case.get("parent_case") or case.get("patient_id") or case["case_id"])


def pair_transforms(image_size: Sequence[int], window: Sequence[float], label_map: LabelMap | None = None,
                    spacing: Sequence[float] | None = None) -> Any:
    """The MONAI chain that brings one pre-training image (and mask) to the network's grid.

    Load (the kit's readers, RAS), resample to ``spacing`` when given
    (:func:`~mosmoskit.data.transforms.resample_transform`, as fine-tuning does), check the image's
    dimension and the mask's values, window the HU to [0, 1], then centre-crop or pad to
    ``image_size`` (padding is 0, the window's low end). The same chain as fine-tuning's up to the
    window; every step is deterministic, so ``CacheDataset`` may keep its output.

    Args:
        image_size: the network input grid.
        window: HU window mapped to [0, 1].
        label_map: also load, check and fit the ``label`` key (nearest resampling), or None.
        spacing: voxel size (mm) to resample to, or None (each file's own).
    """
    size = tuple(int(s) for s in image_size)
    keys = ("image", "label") if label_map is not None else ("image",)
    label_keys = ("label",) if label_map is not None else ()
    load = load_transforms(keys, spacing=spacing or None, orientation="RAS"[: len(size)], label_keys=label_keys)
    chain: list[Any] = [*load.transforms, _CheckDimensions(size)]
    if label_map is not None:
        chain.append(CheckLabelsd(("label",), label_map))
    chain += [ct_intensity_transform(window), ResizeWithPadOrCropd(keys, spatial_size=size, mode="constant"),
              EnsureTyped(keys, track_meta=False)]
    return Compose(chain)


class _CheckDimensions(Transform):
    """Refuse an image whose dimension is not the network's, naming the file.

    A MONAI ``Transform`` (deterministic), so ``CacheDataset`` caches past it: a plain callable would
    count as random and stop the cache before the window and the crop.
    """

    def __init__(self, image_size: Sequence[int]) -> None:
        self.image_size = tuple(image_size)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        image = data["image"]
        if image.ndim - 1 != len(self.image_size):
            source = getattr(image, "meta", {}).get("filename_or_obj", "image")
            raise ValueError(
                f"{source}: a {image.ndim - 1}D image, but image_size {self.image_size} is {len(self.image_size)}D "
                f"(set spatial_dims/image_size to match the data)"
            )
        if "label" in data and tuple(data["label"].shape[1:]) != tuple(image.shape[1:]):
            source = getattr(data["label"], "meta", {}).get("filename_or_obj", "label")
            raise ValueError(f"{source}: mask grid {tuple(data['label'].shape[1:])} differs from its image's "
                             f"{tuple(image.shape[1:])}")
        return data


def pair_cache_bytes(n_cases: int, image_size: Sequence[int], with_labels: bool) -> int:
    """Host memory of ``n_cases`` cached pre-training images (float32) and masks (float32), in bytes."""
    return int(n_cases) * math.prod(int(s) for s in image_size) * 4 * (2 if with_labels else 1)


class ImageReportDataset(Dataset):
    """Image-report pairs read from disk through MONAI, with organ tags parsed from the reports.

    Each item is a dict:

    - ``image``: float32 tensor (1, *image_size), HU windowed to [0, 1], randomly shifted by up to
      ``max_shift`` voxels per axis when ``max_shift > 0``, rotated by up to ``max_rotation_deg``
      and zoomed by up to ``max_scale`` when those are set (see :class:`Move`);
    - ``report``: the report text;
    - ``tags``: float32 tensor (K,) in {1, 0, -1} (present, absent, not mentioned) from the parser;
    - ``case_id``: str;
    - ``label``: int64 tensor (*image_size) with the same move, only when ``with_labels`` (for
      evaluating attention maps; never used by the pre-training losses).

    Images go through :func:`pair_transforms` (the kit's readers, RAS, optional resampling to
    ``spacing``, window, centre crop or pad) in a MONAI ``CacheDataset`` that keeps the first
    ``cache_rate`` share of them in memory once loaded; the others are read from disk at every
    use, so memory is bounded by ``cache_rate`` rather than growing with the cohort. Only the
    reports and their tags (text) are held for every case. A cache estimated to need more than 80 %
    of the available host memory is refused before anything is loaded.

    Randomness: the training loop wraps the dataset in
    :class:`~mosmoskit.training.loop.SeededDataset`, which calls :meth:`set_random_state` with a seed
    derived from ``(run seed, epoch, index)`` before each item, so a run resumed mid-epoch sees exactly
    the images an uninterrupted run would. Used on its own (validation), item ``i`` always gets the
    move drawn from ``(seed, i)``: a fixed set of moved images.

    Args:
        cases: dicts with ``case_id``, ``image`` (path) and ``report`` (text); ``label`` (path) if
            ``with_labels``.
        label_map: the organ tags are its foreground names.
        image_size: network input grid; images are centre-cropped/padded to it.
        window: HU window mapped to [0, 1].
        max_shift: random translation in voxels per axis (0 = off).
        seed: base seed of the moves.
        with_labels: also load the masks (evaluation of attention maps on phantoms).
        progress: show a progress bar while filling the cache.
        max_rotation_deg: random in-plane rotation in degrees, uniform in +-this (0 = off).
        max_scale: random zoom, uniform in 1 +- this (0 = off).
        spacing: resample every image to this voxel size in mm (None: each file's own).
        cache_rate: share of the cases kept in memory once loaded, in [0, 1].
        num_workers: threads that fill the cache.

    Raises:
        ValueError: a case without a report, an empty report; (when an image is read) an image of
            another dimension than ``image_size`` or a mask with values outside the label map,
            naming the file; the reader's errors (naming the file) pass through.
        ResourceError: the cache would not fit the host memory (lower ``cache_rate``).
    """

    def __init__(
        self,
        cases: Sequence[dict[str, Any]],
        label_map: LabelMap,
        image_size: Sequence[int],
        window: Sequence[float] = (-175.0, 250.0),
        max_shift: int = 0,
        seed: int = 0,
        with_labels: bool = False,
        progress: bool = False,
        max_rotation_deg: float = 0.0,
        max_scale: float = 0.0,
        spacing: Sequence[float] | None = None,
        cache_rate: float = 1.0,
        num_workers: int = 0,
    ) -> None:
        from mosmoskit.reports import extract_tags

        if not cases:
            raise ValueError("no image-report pairs to load (the case list is empty)")
        self.label_map = label_map
        self.image_size = tuple(int(s) for s in image_size)
        self.max_shift = int(max_shift)
        self.max_rotation_deg = float(max_rotation_deg)
        self.max_scale = float(max_scale)
        if self.max_shift < 0 or self.max_rotation_deg < 0 or not 0.0 <= self.max_scale < 1.0:
            raise ValueError(f"moves must be max_shift >= 0, max_rotation_deg >= 0 and max_scale in [0, 1), got "
                             f"{max_shift!r}, {max_rotation_deg!r}, {max_scale!r}")
        if not 0.0 <= float(cache_rate) <= 1.0:
            raise ValueError(f"cache_rate must be in [0, 1], got {cache_rate!r}")
        self.seed = int(seed)
        self._next_seed: int | None = None
        self.with_labels = bool(with_labels)
        self.case_ids: list[str] = []
        self.reports: list[str] = []
        items = []
        tags = []
        for case in cases:
            where = f"case {case.get('case_id', '?')} ({case.get('image', '?')})"
            report = case.get("report")
            if not isinstance(report, str) or not report.strip():
                raise ValueError(f"{where}: the report is missing or empty")
            item = {"image": case["image"]}
            if self.with_labels:
                if not case.get("label"):
                    raise ValueError(f"{where}: with_labels=True but the case has no label file")
                item["label"] = case["label"]
            items.append(item)
            self.case_ids.append(str(case["case_id"]))
            self.reports.append(report)
            parsed = extract_tags(report, label_map)
            tags.append([parsed[name] for name in label_map.foreground_names])
        self.tags = np.asarray(tags, dtype=np.float32)
        n_cached = min(len(items), int(len(items) * float(cache_rate)))
        resources.check_fits(
            pair_cache_bytes(n_cached, self.image_size, self.with_labels), resources.available_memory()["host_bytes"],
            what=f"caching {n_cached} of {len(items)} pre-training images in memory (cache_rate={cache_rate})",
            hint="lower cache_rate (uncached images are read from disk at every use) or free host memory",
        )
        transform = pair_transforms(self.image_size, window, label_map if self.with_labels else None, spacing)
        with quiet_monai_readers(), unwrap_transform_errors():
            self._store = CacheDataset(items, transform=transform, cache_rate=float(cache_rate),
                                       num_workers=max(1, int(num_workers)), progress=progress)

    def __len__(self) -> int:
        return len(self.case_ids)

    def set_random_state(self, seed: int) -> None:
        """Seed the move of the next item (called by the training loop's ``SeededDataset``)."""
        self._next_seed = int(seed)

    def shift_of(self, index: int, seed: int | None = None) -> tuple[int, ...]:
        """The translation of item ``index``: from ``seed`` if given, else from ``(self.seed, index)``."""
        return self.move_of(index, seed).shift

    def move_of(self, index: int, seed: int | None = None) -> Move:
        """The move of item ``index``: from ``seed`` if given, else from ``(self.seed, index)``.

        The shift is drawn first, so a dataset without rotation and zoom moves its items exactly as
        one made before those options existed.
        """
        dims = len(self.image_size)
        if self.max_shift == 0 and self.max_rotation_deg == 0 and self.max_scale == 0:
            return Move((0,) * dims)
        rng = np.random.default_rng(seed if seed is not None else (self.seed, int(index)))
        shift = (0,) * dims
        if self.max_shift:
            shift = tuple(int(s) for s in rng.integers(-self.max_shift, self.max_shift + 1, size=dims))
        rotation = float(rng.uniform(-self.max_rotation_deg, self.max_rotation_deg)) if self.max_rotation_deg else 0.0
        scale = float(rng.uniform(1.0 - self.max_scale, 1.0 + self.max_scale)) if self.max_scale else 1.0
        return Move(shift, rotation, scale)

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Item ``index`` on the network grid before any move: windowed image (*image_size) float32 and
        mask (*image_size) int64 (None without labels)."""
        with quiet_monai_readers(), unwrap_transform_errors():
            loaded = self._store[index]
        image = np.asarray(loaded["image"], dtype=np.float32)[0]
        mask = np.asarray(loaded["label"])[0].astype(np.int64) if self.with_labels else None
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        move = self.move_of(index, self._next_seed)
        self._next_seed = None
        image, mask = self.arrays(index)
        item = {
            "image": torch.from_numpy(move_image(image, move, fill=0.0)[None]),
            "report": self.reports[index],
            "tags": torch.from_numpy(self.tags[index]),
            "case_id": self.case_ids[index],
        }
        if mask is not None:
            item["label"] = torch.from_numpy(move_image(mask, move, fill=0, order=0))
        return item


def tags_without_negatives(tags: np.ndarray, names: Sequence[str], unmentioned: str = "mask") -> list[str]:
    """Tags no training report says are absent: a loss on them only teaches "always present".

    Args:
        tags: (N, K) parsed tags in {1, 0, -1} of the training pairs (``ImageReportDataset.tags``).
        names: the K tag names.
        unmentioned: the tag loss's rule; with ``"negative"`` an unmentioned tag counts as absent.

    Returns:
        The names of the tags with no negative, in vocabulary order.
    """
    tags = np.asarray(tags)
    if tags.ndim != 2 or tags.shape[1] != len(names):
        raise ValueError(f"tags must be (N, {len(names)}), got shape {tags.shape}")
    negative = (tags == 0) | ((tags == -1) if unmentioned == "negative" else False)
    return [name for name, count in zip(names, negative.sum(axis=0)) if count == 0]


def training_masks(cases: Sequence[dict[str, Any]], label_map: LabelMap, size: Sequence[int],
                   spacing: Sequence[float] | None = None) -> list[np.ndarray]:
    """Masks of the training cases on the pre-training grid, for the fixed-position baseline only
    (never for training); empty when a case has no mask. Read through the pre-training chain
    (:func:`pair_transforms`: RAS, ``spacing``, centre crop or pad to ``size``)."""
    if not cases or not all(case.get("label") for case in cases):
        return []
    size = tuple(int(s) for s in size)
    load = load_transforms(("label",), spacing=spacing or None, orientation="RAS"[: len(size)], label_keys=("label",))
    chain = Compose([*load.transforms, CheckLabelsd(("label",), label_map),
                     ResizeWithPadOrCropd(("label",), spatial_size=size, mode="constant")])
    masks = []
    with quiet_monai_readers(), unwrap_transform_errors():
        for case in cases:
            masks.append(np.asarray(chain({"label": case["label"]})["label"])[0].astype(np.int64))
    return masks


def prepare_pretraining_data(
    dataset: str,
    output_dir: str | Path,
    label_map: str | LabelMap,
    spatial_dims: int,
    val_fraction: float,
    seed: int,
    phantom_cases: int = 40,
    phantom_slices_per_case: int = 8,
    progress: bool = True,
    phantom_shape: Sequence[int] = (),
    phantom_spacing: Sequence[float] = (),
    phantom_scan_range_prob: float = 0.0,
    phantom_preset: str = "pretraining",
) -> tuple[CaseList, dict[str, list[dict[str, Any]]]]:
    """Find (or generate) the image-report pairs and split them by patient.

    Args:
        dataset: ``"phantom"`` (a cohort is generated into ``output_dir/data`` unless one with the
            same settings is already there), a data folder (``dataset.json`` + ``reports.jsonl``) or a CSV/JSONL manifest.
        output_dir: the run folder.
        label_map: its foreground names are the tags.
        spatial_dims: 2 or 3 (phantoms: slices or volumes).
        val_fraction: share of patients held out.
        seed: cohort and split seed.
        phantom_cases, phantom_slices_per_case, phantom_shape, phantom_spacing: the generated
            cohort (empty shape/spacing: the generator's defaults).
        phantom_scan_range_prob: (3D) share of limited-range scans
            (:attr:`~mosmoskit.data.phantom.PhantomConfig.scan_range_prob`).
        phantom_preset: ``"pretraining"`` (default, as ``PretrainConfig``) or ``"default"`` (the generator settings, see
            :attr:`~mosmoskit.pretraining.config.PretrainConfig.phantom_preset`).
        progress: show a progress bar while generating phantoms.

    Returns:
        The case list and ``{"train": [...], "val": [...]}`` case dicts (only cases with reports).
    """
    label_map = load_label_map(label_map)
    if dataset == "phantom":
        from mosmoskit.data.phantom import PhantomConfig, ensure_cohort

        base = PhantomConfig.pretraining() if phantom_preset == "pretraining" else PhantomConfig()
        # A cohort left in the folder by a run with other phantom settings is regenerated, not reused.
        source: str | Path = ensure_cohort(
            Path(output_dir) / "data", n=phantom_cases, seed=seed, shape=tuple(phantom_shape) or None,
            spacing=tuple(phantom_spacing) or None, spatial_dims=spatial_dims,
            slices_per_case=phantom_slices_per_case, progress=progress,
            config=dataclasses.replace(base, scan_range_prob=phantom_scan_range_prob),
        )
    else:
        source = Path(dataset).expanduser()
    cases = load_dataset(source, label_map=label_map if dataset != "phantom" else None)
    paired = cases.with_reports
    if not paired:
        raise ValueError(f"{cases.source}: no case has a report; pre-training needs image-report pairs")
    by_id = {c["case_id"]: c for c in paired}
    groups = {c["case_id"]: patient_of(c) for c in paired}
    split = split_cases(sorted(by_id), {"train": None, "val": val_fraction}, seed=seed, groups=groups)
    return cases, {name: [by_id[i] for i in ids] for name, ids in split.items()}
