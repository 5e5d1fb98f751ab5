"""Inspect a fine-tuned segmenter case by case: which organs fail where, and why (notebook 04).

:func:`run_inspection` takes an :class:`InspectionConfig` (its fields are notebook 04's
parameters) and

1. reads the fine-tuning checkpoint (:func:`open_checkpoint`): the model, its config and label
   map, checked against ``label_map`` when one is given;
2. finds the images to look at (:func:`inspection_cases`): the checkpoint's own held-out test set
   (as its run folder's ``metrics.json`` records it), the labelled cases of another data set
   (a folder with ``dataset.json``), or a single scan without ground truth, and groups them into
   *cases* (:func:`group_cases`): a volume is a case; the 2D slices of one patient together are
   one case, scored the way notebook 03 scores 2D networks (their voxels pooled, per patient);
3. segments the images of up to ``max_cases`` cases with the whole-scan sliding window of
   :func:`~mosmoskit.inference.predict_volume` and scores each organ
   (:func:`~mosmoskit.evaluation.segmentation.organ_metrics`: Dice, HD95 in mm;
   :func:`~mosmoskit.evaluation.segmentation.pool_by_group` for the slices of a patient);
4. picks the case to view (``case_id``, or the worst by mean Dice), computes its pixel-tag
   attention maps when the model fuses them (:func:`~mosmoskit.inference.attention_maps_volume`:
   the very maps ``predict`` fused, made once on each whole image at the pre-training geometry by
   :func:`~mosmoskit.pretraining.maps.whole_image_maps`), and
5. writes its prediction as NIfTI in the scan's own orientation, shape and affine (one file per
   image file; :func:`~mosmoskit.data.readers.save_like`, atomic), refusing to replace an existing
   file unless ``overwrite``.

The :class:`InspectionResult` gives the sortable Dice table (:meth:`InspectionResult.dice_table`)
and the viewer (:meth:`InspectionResult.viewer`) of :mod:`mosmoskit.viz.viewer`.

Example:
    >>> from mosmoskit.inspection import InspectionConfig, run_inspection
    >>> result = run_inspection(InspectionConfig(checkpoint="runs/finetune/last.pt"))  # doctest: +SKIP
    >>> result.show_dice_table(); result.viewer().show()                              # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mosmoskit.config import check_choice
from mosmoskit.labels import LabelMap, load_label_map
from mosmoskit.viz.viewer import AUTO_WINDOW, VIEW_AXES, WINDOW_PRESETS

__all__ = [
    "WINDOW_PRESET_NAMES",
    "InspectionConfig",
    "InspectionResult",
    "describe_inspection",
    "evaluate_cases",
    "export_prediction",
    "group_cases",
    "inspection_cases",
    "open_checkpoint",
    "prediction_paths",
    "run_inspection",
    "worst_case",
]

#: The values of ``InspectionConfig.window_preset``.
WINDOW_PRESET_NAMES: tuple[str, ...] = (*WINDOW_PRESETS, AUTO_WINDOW)
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class InspectionConfig:
    """What notebook 04 inspects and how it first shows it.

    Args:
        checkpoint: a fine-tuning checkpoint (``last.pt`` of a ``run_finetuning`` folder); it must
            exist.
        label_map: the label map the checkpoint must segment (a name such as ``"btcv"`` or a JSON
            file); ``""`` accepts the checkpoint's own. A mismatch fails and names both.
        dataset: ``""``: the checkpoint's own held-out test set, as its run folder's
            ``metrics.json`` records it; or a folder with an MSD-style ``dataset.json`` (its
            labelled cases are scored).
        scan: ``""`` or one NIfTI file / DICOM series folder to segment; it has no ground truth,
            so there are no metrics and no difference view. Excludes ``dataset``.
        case_id: the case to view (a scan, or a patient whose 2D slices form one case; the id of
            one slice opens its patient at that slice); ``""``: the worst case by mean Dice (the
            scan in ``scan`` mode).
        organ: the organ whose attention map is drawn as a heat overlay (``""``: none); needs a
            checkpoint fine-tuned with maps (``fusion`` ``"input"`` or ``"decoder"``).
        axis: the first view of a volume: ``"axial"``, ``"coronal"`` or ``"sagittal"`` (2D images
            are shown axially whatever it says).
        window_preset: grey-level window: ``"abdomen"``, ``"liver"``, ``"bone"``, ``"lung"``,
            ``"brain"`` (CT presets in HU) or ``"auto"`` (the image's 1st-99th percentile, for MR).
        opacity: opacity of the label overlay and attention heat, in [0, 1].
        max_cases: at most this many cases (scans, or patients of 2D slices) are segmented and
            scored; the requested ``case_id`` always is.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ...
        output_dir: where the prediction of the viewed case is exported.
        export_prediction: write ``output_dir/<image>_prediction.nii.gz`` (+ a JSON sidecar) for
            each image file of the viewed case, in the file's own orientation, shape and affine.
        overwrite: replace exported files that already exist (otherwise that is an error).

    Raises:
        ValueError: a field with an invalid value (the message names the field); a checkpoint,
            data set or scan that does not exist.

    Example:
        >>> InspectionConfig(checkpoint="runs/finetune/last.pt", organ="liver")   # doctest: +SKIP
    """

    checkpoint: str = "runs/finetune/last.pt"
    label_map: str = ""
    dataset: str = ""
    scan: str = ""
    case_id: str = ""
    organ: str = ""
    axis: str = "axial"
    window_preset: str = "abdomen"
    opacity: float = 0.5
    max_cases: int = 8
    device: str = "auto"
    output_dir: str = "runs/inspect"
    export_prediction: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("str", str) and not isinstance(value, str):
                raise ValueError(f"{f.name} must be a string, got {value!r}")
        if not self.checkpoint:
            raise ValueError("checkpoint must name a fine-tuning checkpoint (notebook 03 writes <output_dir>/last.pt)")
        if not Path(self.checkpoint).expanduser().is_file():
            raise ValueError(
                f"checkpoint {self.checkpoint!r} does not exist (relative paths start from the working folder, "
                f"{Path.cwd()}); run notebook 03 / `python -m mosmoskit finetune` first or give the path of its last.pt"
            )
        if self.label_map:
            try:
                load_label_map(self.label_map)
            except (ValueError, FileNotFoundError) as err:
                raise ValueError(f"label_map: {err}") from None
        if self.dataset and self.scan:
            raise ValueError(f"give dataset or scan, not both (dataset={self.dataset!r}, scan={self.scan!r})")
        if self.dataset and not (Path(self.dataset).expanduser() / "dataset.json").is_file():
            raise ValueError(
                f"dataset {self.dataset!r} must be '' (the checkpoint's own test set) or a folder with a "
                f"dataset.json, but {Path(self.dataset) / 'dataset.json'} does not exist"
            )
        if self.scan and not Path(self.scan).expanduser().exists():
            raise ValueError(f"scan {self.scan!r} does not exist; give a NIfTI file or a DICOM series folder")
        check_choice("axis", self.axis, VIEW_AXES)
        check_choice("window_preset", self.window_preset, WINDOW_PRESET_NAMES)
        if isinstance(self.opacity, bool) or not isinstance(self.opacity, (int, float)) or not 0 <= self.opacity <= 1:
            raise ValueError(f"opacity must be a number in [0, 1], got {self.opacity!r}")
        if isinstance(self.max_cases, bool) or not isinstance(self.max_cases, int) or self.max_cases < 1:
            raise ValueError(f"max_cases must be an integer >= 1, got {self.max_cases!r}")
        if not self.device:
            raise ValueError("device must be 'auto', 'cpu', 'cuda', ... (got '')")
        if not self.output_dir:
            raise ValueError("output_dir must name a folder for the exported prediction (got '')")


# --------------------------------------------------------------------------------- checkpoint
def open_checkpoint(config: InspectionConfig) -> Any:
    """Read the fine-tuning checkpoint and check it against ``config``.

    Returns:
        The :class:`~mosmoskit.finetuning.run.FinetuneCheckpoint` (model on the CPU, eval mode).

    Raises:
        FileNotFoundError, CheckpointError: as :func:`~mosmoskit.finetuning.run.read_finetune_checkpoint`.
        ValueError: not a fine-tuning checkpoint; a label map other than ``config.label_map``
            (the message names both and the organs that differ); an ``organ`` not in the label
            map, or an ``organ`` asked of a model fine-tuned without attention maps.
    """
    from mosmoskit.finetuning.config import variant_name
    from mosmoskit.finetuning.run import read_finetune_checkpoint

    loaded = read_finetune_checkpoint(Path(config.checkpoint).expanduser())
    theirs: LabelMap = loaded.label_map
    if config.label_map:
        wanted = load_label_map(config.label_map)
        if dict(wanted.labels) != dict(theirs.labels):
            only_theirs = [n for n in theirs.foreground_names if n not in wanted.labels]
            only_wanted = [n for n in wanted.foreground_names if n not in theirs.labels]
            detail = (f"only in the checkpoint: {only_theirs}; only in {wanted.name!r}: {only_wanted}"
                      if only_theirs or only_wanted else "same organs, other ids")
            raise ValueError(
                f"label_map: checkpoint {config.checkpoint} segments label map {theirs.name!r} "
                f"({len(theirs.foreground_names)} organs) but label_map={config.label_map!r} "
                f"({len(wanted.foreground_names)} organs) was asked for ({detail}); use a checkpoint fine-tuned "
                f"with that label map, or label_map='' to accept the checkpoint's"
            )
    if config.organ:
        if config.organ not in theirs.foreground_names:
            raise ValueError(f"organ {config.organ!r} is not in the checkpoint's label map {theirs.name!r}; "
                             f"known: {list(theirs.foreground_names)}")
        if loaded.config.fusion == "none":
            raise ValueError(
                f"organ={config.organ!r} asks for an attention map, but checkpoint {config.checkpoint} was "
                f"fine-tuned without maps ({variant_name(loaded.config)}, fusion='none'); set organ='' or inspect a "
                f"checkpoint fine-tuned with fusion='input' or 'decoder'"
            )
    return loaded


# -------------------------------------------------------------------------------------- cases
def _case_name(path: Path) -> str:
    name = path.name
    for suffix in _NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem if path.suffix.lower() == ".dcm" else name


def _own_test_set(loaded: Any, progress: bool) -> tuple[dict[str, dict[str, Any]], str]:
    """The held-out test cases of the run that wrote ``loaded``, as its metrics.json records them."""
    from mosmoskit.data.datalists import load_dataset
    from mosmoskit.finetuning.data import ensure_phantom_cohort, prepare_finetuning_data
    from mosmoskit.finetuning.run import METRICS_NAME

    run_dir = loaded.path.parent
    ft = loaded.config
    metrics_json = run_dir / METRICS_NAME
    if not metrics_json.is_file():
        # An interrupted run: the split is a function of the config alone (split_seed), so redo it.
        data = prepare_finetuning_data(replace(ft, output_dir=str(run_dir)), progress=progress)
        return ({c: dict(data.cases[c]) for c in data.split.test},
                f"the held-out test set of {run_dir} (recomputed from its config: no {METRICS_NAME})")
    record = json.loads(metrics_json.read_text(encoding="utf-8"))
    test_ids = list(((record.get("split") or {}).get("test") or {}).get("case_ids") or [])
    if not test_ids:
        raise ValueError(f"{metrics_json} records no test cases (split.test.case_ids); set dataset to a folder instead")
    if ft.dataset == "phantom":
        # The run generated its cohort into <run>/data; the generator is seeded, so a missing
        # folder is regenerated identically.
        root = ensure_phantom_cohort(run_dir / "data", ft, progress=progress)
    else:
        root = Path(ft.dataset).expanduser()
        if not (root / "dataset.json").is_file():
            raise FileNotFoundError(
                f"dataset='' inspects the checkpoint's own test set, but the data set it was fine-tuned on, "
                f"{ft.dataset!r} (recorded in {loaded.path}), has no dataset.json here; set dataset to its folder"
            )
    by_id = {c["case_id"]: c for c in load_dataset(root, label_map=loaded.label_map).cases}
    missing = [c for c in test_ids if c not in by_id]
    if missing:
        raise ValueError(f"{metrics_json}: test cases {missing[:5]} are not in {root / 'dataset.json'}; "
                         f"has the data set changed since fine-tuning?")
    return {c: dict(by_id[c]) for c in test_ids}, f"the held-out test set of {run_dir} ({root})"


def inspection_cases(
    config: InspectionConfig, loaded: Any, progress: bool = False,
) -> tuple[dict[str, dict[str, Any]], str]:
    """The image files ``config`` asks to inspect (:func:`group_cases` makes cases of them).

    Args:
        config: ``dataset`` / ``scan`` say where the images come from.
        loaded: the checkpoint (:func:`open_checkpoint`), for its run folder and label map.
        progress: show a progress bar if a phantom cohort has to be regenerated.

    Returns:
        ``(images, description)``: image id -> its data-set entry (``image`` path, ``label``
        path or absent, ``parent_case`` ...), and a sentence saying what they are.

    Raises:
        FileNotFoundError: the run's data set cannot be found (the message says what to set).
        ValueError: a data set whose labels disagree with the checkpoint's label map, or
            multi-channel images.
    """
    from mosmoskit.data.datalists import load_dataset

    if config.scan:
        path = Path(config.scan).expanduser()
        return {_case_name(path): {"image": str(path)}}, f"the scan {path} (no ground truth)"
    if not config.dataset:
        cases, description = _own_test_set(loaded, progress)
    else:
        listed = load_dataset(Path(config.dataset).expanduser(), label_map=loaded.label_map)
        cases = {c["case_id"]: dict(c) for c in sorted(listed.cases, key=lambda c: str(c["case_id"]))}
        description = f"the cases of {listed.source}"
    multi = [c for c, v in cases.items() if isinstance(v.get("image"), list)]
    if multi:
        raise ValueError(
            f"cases {multi[:5]} have several image files (multi-channel); inspection reads one image per case")
    return cases, description


def group_cases(images: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Group images into the cases inspection scores and shows: one per patient.

    A 3D scan is its own case. The 2D slices of one patient (``parent_case`` or ``patient_id``
    in their data-set entry, as the phantom's 2D cohort and MSD lists with reports have) form one
    case, its slices in anatomical order (``z_mm``, else ``slice_index``, else the id), exactly
    as notebook 03 scores a 2D network per patient.

    Args:
        images: image id -> data-set entry (``image``, optional ``label``, ``parent_case``, ...).

    Returns:
        Case id (the patient) -> its image ids, cases in the order their first image comes.
    """
    from mosmoskit.pretraining.data import patient_of

    def position(image_id: str) -> tuple[float, str]:
        entry = images[image_id]
        for key in ("z_mm", "slice_index"):
            value = entry.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                return float(value), image_id
        return 0.0, image_id

    cases: dict[str, list[str]] = {}
    for image_id, entry in images.items():
        cases.setdefault(patient_of({**entry, "case_id": image_id}), []).append(image_id)
    return {case: sorted(ids, key=position) for case, ids in cases.items()}


def _resolve_case_id(case_id: str, cases: Mapping[str, list[str]]) -> tuple[str, int | None]:
    """``case_id`` (a case, or one image of a case) -> (its case, the image's position or None)."""
    if case_id in cases:
        return case_id, None
    for case, ids in cases.items():
        if case_id in ids:
            return case, ids.index(case_id)
    names = list(cases)
    shown = ", ".join(names[:10]) + (f" ... (+{len(names) - 10})" if len(names) > 10 else "")
    raise ValueError(f"case_id {case_id!r} is neither one of the {len(names)} cases inspected ({shown}) "
                     f"nor an image of one")


# --------------------------------------------------------------------------------- evaluation
def evaluate_cases(
    loaded: Any,
    images: Mapping[str, Mapping[str, Any]],
    progress: bool = False,
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, np.ndarray]]:
    """Segment each image with the checkpoint's model and score the ones with a ground truth.

    Args:
        loaded: the checkpoint (:func:`open_checkpoint`), its model on the device to run on.
        images: image id -> ``{"image": path, "label": path (optional)}``.
        progress: show a progress bar.

    Returns:
        ``(per_image, predictions)``: image id -> organ -> ``organ_metrics`` (labelled images
        only), and image id -> predicted ids on the image's canonical (RAS) grid.

    Raises:
        ValueError, FileNotFoundError: unreadable images or labels (the message names the file),
            a label grid that differs from its image's.
    """
    from tqdm.auto import tqdm

    from mosmoskit.data.readers import load_image, load_label
    from mosmoskit.evaluation.segmentation import organ_metrics
    from mosmoskit.inference import predict_volume

    per_image: dict[str, dict[str, dict[str, Any]]] = {}
    predictions: dict[str, np.ndarray] = {}
    for image_id, entry in tqdm(images.items(), desc="segmenting", unit="image", disable=not progress):
        volume = load_image(entry["image"])
        predicted, _ = predict_volume(loaded.model, volume, loaded.config, training_spacing=loaded.training_spacing,
                                      on_spacing_mismatch="warn")
        predictions[image_id] = predicted
        if entry.get("label"):
            truth = load_label(entry["label"], loaded.label_map, reference=volume)
            per_image[image_id] = organ_metrics(predicted, truth.array, loaded.label_map, spacing=volume.spacing,
                                                source=str(image_id))
    return per_image, predictions


def _stackable(ids: list[str], predictions: Mapping[str, np.ndarray]) -> bool:
    """Several 2D images of one grid size can be shown as one stack of slices."""
    shapes = {predictions[i].shape for i in ids}
    return len(ids) > 1 and len(shapes) == 1 and len(next(iter(shapes))) == 2


def _case_metrics(
    cases: Mapping[str, list[str]], per_image: Mapping[str, dict[str, dict[str, Any]]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Case -> organ -> metrics: an image's own, or a patient's slices pooled (pool_by_group)."""
    from mosmoskit.evaluation.segmentation import pool_by_group

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for case, ids in cases.items():
        scored = [i for i in ids if i in per_image]
        if len(scored) == 1 and len(ids) == 1:
            out[case] = per_image[scored[0]]
        elif scored:
            out[case] = pool_by_group({i: per_image[i] for i in scored}, {i: case for i in scored})[case]
    return out


def worst_case(per_case: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The case with the lowest mean Dice over its scored organs (cases without any Dice never win).

    Raises:
        ValueError: no case has a Dice value.
    """
    from mosmoskit.viz.viewer import case_mean_dice, sort_cases

    ranked = sort_cases(per_case, "mean") if per_case else []
    if not ranked or math.isnan(case_mean_dice(per_case[ranked[0]])):
        raise ValueError("no case has a Dice value (no ground truth, or no organ in it); give case_id")
    return ranked[0]


# ------------------------------------------------------------------------------------- export
def prediction_paths(output_dir: str | Path, image_id: str) -> tuple[Path, Path]:
    """``(<output_dir>/<image>_prediction.nii.gz, <output_dir>/<image>_prediction.json)``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(image_id)).strip("._") or "case"
    folder = Path(output_dir)
    return folder / f"{safe}_prediction.nii.gz", folder / f"{safe}_prediction.json"


def _refuse_existing(paths: list[Path]) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        shown = ", ".join(existing[:3]) + (f" (+{len(existing) - 3})" if len(existing) > 3 else "")
        raise FileExistsError(f"{shown} already exist(s); set overwrite=True to replace, or choose another output_dir")


def export_prediction(
    prediction: np.ndarray,
    volume: Any,
    output_dir: str | Path,
    image_id: str,
    label_map: LabelMap,
    overwrite: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a prediction on top of its image: NIfTI in the file's own orientation, shape and affine.

    Both files are written atomically (a killed process leaves no half-written file), and neither
    is written when one of them exists and ``overwrite`` is false.

    Args:
        prediction: ids on the image's canonical grid (``volume.shape``).
        volume: the image's :class:`~mosmoskit.data.readers.Volume`.
        output_dir: the folder (created).
        image_id: names the files (:func:`prediction_paths`).
        label_map: written into the JSON sidecar (name -> id), with the voxels per organ.
        overwrite: replace existing files.
        metadata: more entries for the sidecar (checkpoint, Dice, ...).

    Returns:
        The NIfTI path.

    Raises:
        FileExistsError: a file exists and ``overwrite`` is false (the message names it and the
            ``overwrite`` parameter).
        ValueError: a prediction not on the image's grid, or values the label map lacks.
    """
    from mosmoskit.data.readers import save_like
    from mosmoskit.io import atomic_write_text

    nifti, sidecar = prediction_paths(output_dir, image_id)
    if not overwrite:
        _refuse_existing([nifti, sidecar])
    label_map.check_mask(prediction, source=f"prediction of {image_id}")
    dtype = np.uint8 if label_map.num_classes <= 256 else np.int16
    save_like(np.asarray(prediction).astype(dtype, copy=False), volume, nifti, dtype=dtype, overwrite=overwrite)
    counts = np.bincount(np.asarray(prediction, dtype=np.int64).ravel(), minlength=label_map.num_classes)
    record = {
        "prediction": str(nifti),
        "image_id": str(image_id),
        "input": str(volume.source),
        "input_shape": list(volume.original_shape),
        "input_axcodes": "".join(volume.axcodes_original),
        "label_map": label_map.name,
        "labels": dict(label_map.labels),
        "voxels_per_label": {n: int(counts[i]) for n, i in label_map.labels.items() if i},
        **dict(metadata or {}),
    }
    atomic_write_text(sidecar, json.dumps(_json_safe(record), indent=1) + "\n", overwrite=overwrite)
    return nifti


def _json_safe(value: Any) -> Any:
    """NaN (an undefined Dice or HD95) becomes null: strict JSON has no NaN."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ----------------------------------------------------------------------------------- the run
@dataclass
class InspectionResult:
    """What :func:`run_inspection` found.

    Attributes:
        config: the inspection's config.
        checkpoint: the fine-tuning checkpoint (``FinetuneCheckpoint``).
        label_map: the checkpoint's label map.
        source: a sentence saying which images were inspected.
        n_available: how many cases that source holds (``max_cases`` of them were segmented).
        evaluated: case id -> its image ids, for the cases segmented.
        per_case: case id -> organ -> Dice, HD95 (mm), status, voxel counts (cases with a ground
            truth only; a patient's 2D slices pooled).
        per_image: image id -> organ -> the metrics of that image alone.
        summary: per-organ summary over the scored cases
            (:func:`~mosmoskit.evaluation.segmentation.summarize_metrics`), None without any.
        case_id: the viewed case.
        chosen_because: why that case (``"case_id"``, ``"worst mean Dice"``, ``"the scan"``, ...).
        case: its :class:`~mosmoskit.viz.viewer.CaseView` (scan, ground truth, prediction, maps;
            a stack of slices for a patient's 2D images).
        volumes: its image files as read (:class:`~mosmoskit.data.readers.Volume`, for their
            original space), by image id.
        exported: the exported NIfTI files (one per image of the viewed case).
        first_index: the slice to open the viewer at (the image ``case_id`` named), or None.
        seconds: wall time of the inspection.
    """

    config: InspectionConfig
    checkpoint: Any
    label_map: LabelMap
    source: str
    n_available: int
    evaluated: dict[str, list[str]]
    per_case: dict[str, dict[str, dict[str, Any]]]
    per_image: dict[str, dict[str, dict[str, Any]]]
    summary: dict[str, Any] | None
    case_id: str
    chosen_because: str
    case: Any
    volumes: dict[str, Any]
    exported: list[Path] = field(default_factory=list)
    first_index: int | None = None
    seconds: float = 0.0

    def initial_state(self) -> Any:
        """The viewer's first :class:`~mosmoskit.viz.viewer.ViewState`: the difference (or the
        prediction, without ground truth) on the config's axis, at the slice richest in ``organ``."""
        from mosmoskit.viz.viewer import ViewState, best_index, window_limits

        axis = self.config.axis if self.config.axis in self.case.axes else "axial"
        mode = "difference" if "difference" in self.case.modes else self.case.modes[0]
        index = self.first_index if self.first_index is not None else best_index(self.case, axis, self.config.organ)
        return ViewState(axis=axis, index=index, mode=mode, opacity=float(self.config.opacity),
                         attention=self.config.organ, window=window_limits(self.config.window_preset, self.case.image))

    def viewer(self, display_size: int | None = None) -> Any:
        """The :class:`~mosmoskit.viz.viewer.MaskViewer` of the viewed case, at :meth:`initial_state`."""
        from mosmoskit.viz.viewer import DEFAULT_DISPLAY_SIZE, MaskViewer

        return MaskViewer(self.case, self.initial_state(), window_preset=self.config.window_preset,
                          display_size=DEFAULT_DISPLAY_SIZE if display_size is None else display_size)

    def dice_table(self, sort_by: str = "mean") -> Any:
        """The :class:`~mosmoskit.viz.viewer.DiceTable` of the scored cases, the viewed one marked.

        Raises:
            ValueError: nothing was scored (a scan without ground truth).
        """
        from mosmoskit.viz.viewer import DiceTable

        if not self.per_case:
            raise ValueError(f"no Dice to tabulate: {self.source} has no ground truth")
        return DiceTable(self.per_case, self.label_map, sort_by=sort_by, highlight=self.case_id)

    def show_dice_table(self, sort_by: str = "mean", live: bool | None = None) -> None:
        """Display :meth:`dice_table` (a sortable widget, or static HTML headless), or say why there is none."""
        if not self.per_case:
            print(f"No Dice table: {self.source} has no ground truth.")
            return
        self.dice_table(sort_by).show(live=live)


def _case_view(loaded: Any, case_id: str, ids: list[str], images: Mapping[str, Mapping[str, Any]],
               predictions: Mapping[str, np.ndarray]) -> tuple[Any, dict[str, Any]]:
    """The viewed case's CaseView (a stack for several 2D slices) and its volumes by image id."""
    from mosmoskit.data.readers import load_image, load_label
    from mosmoskit.finetuning.config import variant_name
    from mosmoskit.inference import attention_maps_volume
    from mosmoskit.viz.viewer import CaseView

    volumes = {i: load_image(images[i]["image"]) for i in ids}
    truths = [load_label(images[i]["label"], loaded.label_map, reference=volumes[i]).array
              if images[i].get("label") else None for i in ids]
    maps: list[np.ndarray] | None = None
    note = ""
    if loaded.config.fusion != "none":
        maps = [attention_maps_volume(loaded.model, volumes[i], loaded.config) for i in ids]
    else:
        note = f"the model was fine-tuned without maps ({variant_name(loaded.config)}, fusion='none')"
    first = volumes[ids[0]]
    if len(ids) == 1:
        return CaseView(image=first.array, label_map=loaded.label_map, prediction=predictions[ids[0]],
                        truth=truths[0], maps=None if maps is None else maps[0], spacing=first.spacing,
                        case_id=str(case_id), maps_note=note), volumes
    # A patient's 2D slices, stacked along axis 2 for the slice slider (axial view only).
    return CaseView(
        image=np.stack([volumes[i].array for i in ids], axis=-1), label_map=loaded.label_map,
        prediction=np.stack([predictions[i] for i in ids], axis=-1),
        truth=None if any(t is None for t in truths) else np.stack(truths, axis=-1),
        maps=None if maps is None else np.stack(maps, axis=-1), spacing=first.spacing, case_id=str(case_id),
        maps_note=note, slice_ids=tuple(ids),
    ), volumes


def run_inspection(config: InspectionConfig, progress: bool = True) -> InspectionResult:
    """Segment and score the cases of ``config``, prepare the viewed case and export its prediction.

    Args:
        config: what to inspect.
        progress: show progress bars.

    Returns:
        :class:`InspectionResult`.

    Raises:
        ValueError: a checkpoint of another kind or label map, an unknown ``case_id`` or
            ``organ``, attention asked of a model without maps, cases without any Dice and no
            ``case_id`` (the messages name the field).
        FileNotFoundError: the data set of the checkpoint's run cannot be found.
        FileExistsError: the export exists and ``overwrite`` is false.
    """
    from mosmoskit.device import resolve_device
    from mosmoskit.evaluation.segmentation import summarize_metrics
    from mosmoskit.finetuning.config import variant_name
    from mosmoskit.viz.viewer import case_mean_dice

    start = time.perf_counter()
    loaded = open_checkpoint(config)
    images, source = inspection_cases(config, loaded, progress=progress)
    grouped = group_cases(images)
    wanted, first_index = _resolve_case_id(config.case_id, grouped) if config.case_id else ("", None)
    if wanted and config.export_prediction and not config.overwrite:
        # Fail before minutes of segmentation when the answer is already known.
        _refuse_existing([p for i in grouped[wanted] for p in prediction_paths(config.output_dir, i)])
    chosen = list(grouped)[: config.max_cases]
    if wanted and wanted not in chosen:
        chosen.append(wanted)
    loaded.model.to(resolve_device(config.device))
    per_image, predictions = evaluate_cases(loaded, {i: images[i] for c in chosen for i in grouped[c]},
                                            progress=progress)
    # A case is shown as one picture: several images of a patient that are not 2D slices of one
    # size (e.g. two 3D scans) become one case each.
    cases: dict[str, list[str]] = {}
    for case in chosen:
        ids = grouped[case]
        if len(ids) == 1 or _stackable(ids, predictions):
            cases[case] = ids
        else:
            cases.update({i: [i] for i in ids})
            if case == wanted:
                wanted, first_index = ids[first_index or 0], None
    per_case = _case_metrics(cases, per_image)

    if wanted:
        case_id, because = wanted, "case_id"
    elif config.scan:
        case_id, because = next(iter(cases)), "the scan"
    elif any(not math.isnan(case_mean_dice(m)) for m in per_case.values()):
        case_id, because = worst_case(per_case), "worst mean Dice"
    else:
        case_id, because = next(iter(cases)), "first case (nothing to score)"
    view, volumes = _case_view(loaded, case_id, cases[case_id], images, predictions)

    exported: list[Path] = []
    if config.export_prediction:
        if not config.overwrite:
            _refuse_existing([p for i in cases[case_id] for p in prediction_paths(config.output_dir, i)])
        for image_id in cases[case_id]:
            metadata = {"case_id": str(case_id), "checkpoint": str(loaded.path), "variant": variant_name(loaded.config),
                        "dice": {o: m["dice"] for o, m in per_image.get(image_id, {}).items()} or None}
            exported.append(export_prediction(predictions[image_id], volumes[image_id], config.output_dir, image_id,
                                              loaded.label_map, overwrite=config.overwrite, metadata=metadata))
    if config.scan and not loaded.config.spacing and loaded.training_spacing is None:
        # predict_volume compares a scan's voxel size with the training scans' only when it knows them.
        warnings.warn(f"checkpoint {loaded.path} records no training spacing: the voxel size of {config.scan} "
                      f"could not be checked against the training scans'", stacklevel=2)
    return InspectionResult(
        config=config, checkpoint=loaded, label_map=loaded.label_map, source=source, n_available=len(grouped),
        evaluated=cases, per_case=per_case, per_image=per_image,
        summary=summarize_metrics(per_case) if per_case else None, case_id=str(case_id), chosen_because=because,
        case=view, volumes=volumes, exported=exported, first_index=first_index,
        seconds=time.perf_counter() - start,
    )


def describe_inspection(result: InspectionResult) -> str:
    """A few lines saying what was inspected, which case is shown and why, and what was written."""
    from mosmoskit.finetuning.config import variant_name
    from mosmoskit.viz.viewer import case_mean_dice

    loaded = result.checkpoint
    n_images = sum(len(ids) for ids in result.evaluated.values())
    lines = [
        f"Checkpoint: {loaded.path} ({variant_name(loaded.config)}, {loaded.config.spatial_dims}D, "
        f"label map {result.label_map.name!r}, step {loaded.step})",
        f"Cases: {result.source}; {len(result.evaluated)} of {result.n_available} segmented ({n_images} image(s))"
        + (f", {len(result.per_case)} scored" if result.per_case else ", none scored (no ground truth)"),
    ]
    if result.summary is not None:
        lines.append(f"Mean Dice over the scored cases: {result.summary['mean_dice']:.3f} "
                     f"(never learned: {result.summary['never_learned']})")
    case = result.case
    why = result.chosen_because
    if result.case_id in result.per_case:
        why += f", mean Dice {case_mean_dice(result.per_case[result.case_id]):.3f}"
    spacing = next(iter(result.volumes.values())).spacing
    if case.slice_ids:
        size = f"{len(case.slice_ids)} slices of {'x'.join(str(s) for s in case.image.shape[:2])} pixels"
    else:
        size = f"{'x'.join(str(s) for s in case.image.shape)} voxels"
    lines.append(f"Viewing: {result.case_id} ({why}); {size} of {' x '.join(f'{s:g}' for s in spacing)} mm")
    maps = "yes, one per organ" if case.maps is not None else f"none: {case.maps_note}"
    lines.append(f"Attention maps: {maps}")
    for path in result.exported:
        lines.append(f"Exported prediction: {path} (its image's own orientation and affine)")
    return "\n".join(lines)
