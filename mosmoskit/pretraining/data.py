"""Image-report pairs for pre-training: loading, organ tags from the reports, shifts.

The organ tags used for training are read from the report text by the rule-based parser
(:func:`mosmoskit.reports.extract_tags`), exactly as for real data: the phantom generator's own
tags are used only to *measure* the parser, never to train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mosmoskit.data.datalists import CaseList, load_dataset, split_cases
from mosmoskit.data.readers import load_image, load_label
from mosmoskit.labels import LabelMap, load_label_map

__all__ = [
    "ImageReportDataset",
    "center_crop_or_pad",
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


def patient_of(case: dict[str, Any]) -> str:
    """The patient a case belongs to: 2D slices carry their volume's id in ``parent_case``."""
    return str(case.get("parent_case") or case.get("patient_id") or case["case_id"])


class ImageReportDataset(Dataset):
    """Image-report pairs held in memory, with organ tags parsed from the reports.

    Each item is a dict:

    - ``image``: float32 tensor (1, *image_size), HU windowed to [0, 1], randomly shifted by up to
      ``max_shift`` voxels per axis when ``max_shift > 0``;
    - ``report``: the report text;
    - ``tags``: float32 tensor (K,) in {1, 0, -1} (present, absent, not mentioned) from the parser;
    - ``case_id``: str;
    - ``label``: int64 tensor (*image_size) with the same shift, only when ``with_labels`` (for
      evaluating attention maps; never used by the pre-training losses).

    Randomness: the training loop wraps the dataset in
    :class:`~mosmoskit.training.loop.SeededDataset`, which calls :meth:`set_random_state` with a seed
    derived from ``(run seed, epoch, index)`` before each item, so a run resumed mid-epoch sees exactly
    the images an uninterrupted run would. Used on its own (validation), item ``i`` always gets the
    shift drawn from ``(seed, i)``: a fixed set of shifted images.

    Args:
        cases: dicts with ``case_id``, ``image`` (path) and ``report`` (text); ``label`` (path) if
            ``with_labels``.
        label_map: the organ tags are its foreground names.
        image_size: network input grid; images are centre-cropped/padded to it.
        window: HU window mapped to [0, 1].
        max_shift: random translation in voxels per axis (0 = off).
        seed: base seed of the shifts.
        with_labels: also load the masks (evaluation of attention maps on phantoms).
        progress: show a progress bar while loading.

    Raises:
        ValueError: a case without a report, an empty report, an image of another dimension than
            ``image_size``; the reader's errors (naming the file) pass through.
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
    ) -> None:
        from mosmoskit.reports import extract_tags

        if not cases:
            raise ValueError("no image-report pairs to load (the case list is empty)")
        self.label_map = label_map
        self.image_size = tuple(int(s) for s in image_size)
        self.max_shift = int(max_shift)
        self.seed = int(seed)
        self._next_seed: int | None = None
        self.with_labels = bool(with_labels)
        self.case_ids: list[str] = []
        self.reports: list[str] = []
        self.images: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        tags = []
        iterator = cases
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(cases, desc="loading pairs", leave=False)
        for case in iterator:
            where = f"case {case.get('case_id', '?')} ({case.get('image', '?')})"
            report = case.get("report")
            if not isinstance(report, str) or not report.strip():
                raise ValueError(f"{where}: the report is missing or empty")
            volume = load_image(case["image"])
            if volume.array.ndim != len(self.image_size):
                raise ValueError(
                    f"{case['image']}: a {volume.array.ndim}D image, but image_size {self.image_size} is "
                    f"{len(self.image_size)}D (set spatial_dims/image_size to match the data)"
                )
            low = float(window[0])
            self.images.append(
                window_intensity(center_crop_or_pad(volume.array, self.image_size, fill=low), window)
            )
            if self.with_labels:
                if not case.get("label"):
                    raise ValueError(f"{where}: with_labels=True but the case has no label file")
                mask = load_label(case["label"], label_map, reference=volume).array
                self.labels.append(center_crop_or_pad(mask.astype(np.int64), self.image_size, fill=0))
            self.case_ids.append(str(case["case_id"]))
            self.reports.append(report)
            parsed = extract_tags(report, label_map)
            tags.append([parsed[name] for name in label_map.foreground_names])
        self.tags = np.asarray(tags, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.images)

    def set_random_state(self, seed: int) -> None:
        """Seed the shift of the next item (called by the training loop's ``SeededDataset``)."""
        self._next_seed = int(seed)

    def shift_of(self, index: int, seed: int | None = None) -> tuple[int, ...]:
        """The translation of item ``index``: from ``seed`` if given, else from ``(self.seed, index)``."""
        if self.max_shift == 0:
            return (0,) * len(self.image_size)
        rng = np.random.default_rng(seed if seed is not None else (self.seed, int(index)))
        return tuple(int(s) for s in rng.integers(-self.max_shift, self.max_shift + 1, size=len(self.image_size)))

    def __getitem__(self, index: int) -> dict[str, Any]:
        shift = self.shift_of(index, self._next_seed)
        self._next_seed = None
        image = shift_with_padding(self.images[index], shift, fill=0.0)
        item = {
            "image": torch.from_numpy(image[None]),
            "report": self.reports[index],
            "tags": torch.from_numpy(self.tags[index]),
            "case_id": self.case_ids[index],
        }
        if self.with_labels:
            item["label"] = torch.from_numpy(shift_with_padding(self.labels[index], shift, fill=0))
        return item


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
        progress: show a progress bar while generating phantoms.

    Returns:
        The case list and ``{"train": [...], "val": [...]}`` case dicts (only cases with reports).
    """
    label_map = load_label_map(label_map)
    if dataset == "phantom":
        from mosmoskit.data.phantom import PhantomConfig, ensure_cohort

        # A cohort left in the folder by a run with other phantom settings is regenerated, not reused.
        source: str | Path = ensure_cohort(
            Path(output_dir) / "data", n=phantom_cases, seed=seed, shape=tuple(phantom_shape) or None,
            spacing=tuple(phantom_spacing) or None, spatial_dims=spatial_dims,
            slices_per_case=phantom_slices_per_case, progress=progress,
            config=PhantomConfig(scan_range_prob=phantom_scan_range_prob),
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
