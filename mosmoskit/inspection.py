"""What notebook 04 (mask inspection) needs: a fine-tuned model's predictions on a few cases, scored.

:func:`inspect_cases` loads a fine-tuning checkpoint, segments the cases to look at (the run's own
held-out test set, the labelled cases of another data set, or one scan without labels), computes the
per-organ Dice of each against its ground truth, and - when the model fuses attention maps - the
maps too. :func:`dice_table` and :func:`worst_cases` sort the result; :func:`export_prediction`
writes a prediction as NIfTI in its scan's own space. The drawing lives in
:mod:`mosmoskit.viz.viewer`.

Example:
    >>> config = InspectionConfig(checkpoint="runs/finetune/last.pt", max_cases=4)   # doctest: +SKIP
    >>> cases = inspect_cases(config)                                                 # doctest: +SKIP
    >>> dice_table(cases)[0]                                       # the worst case first  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mosmoskit.config import check_choice

__all__ = [
    "InspectedCase",
    "InspectionConfig",
    "choose_case",
    "dice_table",
    "export_prediction",
    "figure_case_views",
    "inspect_cases",
    "save_figure",
    "save_table",
    "table_html",
    "worst_cases",
]

_AXES = ("axial", "coronal", "sagittal")
_WINDOWS = ("abdomen", "liver", "bone", "lung", "brain")


@dataclass(frozen=True)
class InspectionConfig:
    """Which model and which scans notebook 04 shows.

    Args:
        checkpoint: a fine-tuning checkpoint (``last.pt`` of a ``finetune`` run).
        dataset: ``""``: the run's own held-out test cases (the split recorded in the checkpoint's
            config); or a folder with a ``dataset.json`` whose labelled cases are shown.
        scan: one NIfTI file or DICOM folder without labels, instead of ``dataset`` (prediction and
            attention only).
        label_map: the label map expected of the checkpoint (``""``: take the checkpoint's); a
            mismatch stops the notebook with both names.
        case_id: the case shown first (``""``: the worst by mean Dice).
        organ: the organ whose attention map is overlaid (``""``: none).
        axis: first view, ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        window: CT window preset: abdomen, liver, bone, lung, brain.
        opacity: mask opacity in [0, 1].
        max_cases: cases segmented at most.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        output_dir: where figures, the Dice table and exported predictions go.
        export_prediction: write the shown case's prediction to ``output_dir`` as NIfTI.
        overwrite: replace files in ``output_dir`` (otherwise an existing export is an error).

    Raises:
        ValueError: a field out of range; the message names it.
    """

    checkpoint: str = "runs/finetune/last.pt"
    dataset: str = ""
    scan: str = ""
    label_map: str = ""
    case_id: str = ""
    organ: str = ""
    axis: str = "axial"
    window: str = "abdomen"
    opacity: float = 0.5
    max_cases: int = 8
    device: str = "auto"
    output_dir: str = "runs/inspect"
    export_prediction: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_choice("axis", self.axis, _AXES)
        check_choice("window", self.window, _WINDOWS)
        if not isinstance(self.checkpoint, str) or not self.checkpoint:
            raise ValueError("checkpoint must name a fine-tuning checkpoint (e.g. runs/finetune/last.pt)")
        if self.dataset and self.scan:
            raise ValueError(f"give dataset ({self.dataset!r}) or scan ({self.scan!r}), not both")
        if not 0.0 <= float(self.opacity) <= 1.0:
            raise ValueError(f"opacity must be in [0, 1], got {self.opacity!r}")
        if isinstance(self.max_cases, bool) or not isinstance(self.max_cases, int) or self.max_cases < 1:
            raise ValueError(f"max_cases must be an integer >= 1, got {self.max_cases!r}")
        if not self.output_dir:
            raise ValueError("output_dir must be a folder path")


@dataclass
class InspectedCase:
    """One segmented case.

    Attributes:
        case_id: its id.
        image: (X, Y[, Z]) float32 intensities in RAS.
        spacing: voxel size in mm.
        prediction: predicted ids, the image's shape.
        truth: ground-truth ids or None (a scan without labels).
        attention: (K, *shape) maps, or None (a model with ``fusion="none"``).
        metrics: organ -> :func:`~mosmoskit.evaluation.segmentation.organ_metrics` entry ({} without truth).
        source: the image file (for exporting in its own space).
        label_map: the checkpoint's label map (masks and maps).
    """

    case_id: str
    image: np.ndarray
    spacing: tuple[float, ...]
    prediction: np.ndarray
    truth: np.ndarray | None
    attention: np.ndarray | None
    metrics: dict[str, dict[str, Any]]
    source: str
    label_map: Any = None

    @property
    def mean_dice(self) -> float:
        values = [m["dice"] for m in self.metrics.values() if not math.isnan(m["dice"])]
        return float(np.mean(values)) if values else float("nan")


def _cases_to_show(config: InspectionConfig, loaded: Any) -> list[tuple[str, str, str | None]]:
    """(case id, image path, label path or None) of the cases to segment."""
    from mosmoskit.data.datalists import load_dataset

    if config.scan:
        path = Path(config.scan)
        if not path.exists():
            raise FileNotFoundError(f"scan {path} does not exist")
        return [(path.name.split(".")[0], str(path), None)]
    if config.dataset:
        root = Path(config.dataset)
        if not (root / "dataset.json").is_file():
            raise FileNotFoundError(f"dataset {root}: no dataset.json there (expected an MSD-style folder)")
        found = [c for c in load_dataset(root, label_map=loaded.label_map).cases if c.get("label")]
        if not found:
            raise ValueError(f"dataset {root}: no case with a label to compare with")
        return [(c["case_id"], c["image"], c["label"]) for c in found[: config.max_cases]]
    from mosmoskit.finetuning.data import prepare_finetuning_data

    data = prepare_finetuning_data(loaded.config, progress=False)
    test = list(data.split.test)[: config.max_cases]
    return [(c, data.cases[c]["image"], data.cases[c]["label"]) for c in test]


def inspect_cases(config: InspectionConfig, progress: bool = True) -> list[InspectedCase]:
    """Segment and score the cases ``config`` names.

    Raises:
        FileNotFoundError: the checkpoint, data set or scan does not exist.
        ValueError: a checkpoint of another label map than ``config.label_map`` (both named), or
            not a fine-tuning checkpoint.
    """
    from tqdm.auto import tqdm

    from mosmoskit.data.readers import load_image, load_label
    from mosmoskit.device import resolve_device
    from mosmoskit.evaluation.segmentation import organ_metrics
    from mosmoskit.finetuning.run import read_finetune_checkpoint
    from mosmoskit.inference import attention_maps_volume, predict_volume

    path = Path(config.checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist: set checkpoint to the last.pt of a fine-tuning run (notebook 03 or "
            f"python -m mosmoskit finetune)"
        )
    device = resolve_device(config.device)
    loaded = read_finetune_checkpoint(path, map_location=str(device))
    if config.label_map and config.label_map != loaded.label_map.name:
        raise ValueError(
            f"{path} segments the label map {loaded.label_map.name!r}, but label_map={config.label_map!r}: use a "
            f"checkpoint trained on {config.label_map!r} or set label_map to {loaded.label_map.name!r} (or '')"
        )
    out = []
    for case_id, image_path, label_path in tqdm(_cases_to_show(config, loaded), desc="segmenting", unit="case",
                                                disable=not progress):
        volume = load_image(image_path)
        prediction, _ = predict_volume(loaded.model, volume, loaded.config, on_spacing_mismatch="warn",
                                       training_spacing=loaded.training_spacing)
        truth = metrics = None
        if label_path:
            truth = load_label(label_path, loaded.label_map, reference=volume).array
            metrics = organ_metrics(prediction, truth, loaded.label_map, spacing=volume.spacing[: volume.ndim],
                                    source=str(case_id))
        attention = None
        if loaded.config.fusion != "none":
            attention = attention_maps_volume(loaded.model, volume, loaded.config)
        out.append(InspectedCase(case_id=str(case_id), image=np.asarray(volume.array, dtype=np.float32),
                                 spacing=tuple(float(s) for s in volume.spacing[: volume.ndim]),
                                 prediction=np.asarray(prediction), truth=None if truth is None else np.asarray(truth),
                                 attention=attention, metrics=metrics or {}, source=str(image_path),
                                 label_map=loaded.label_map))
    return out


def dice_table(cases: Sequence[InspectedCase], sort_by: str = "mean") -> list[dict[str, Any]]:
    """One row per case: ``case_id``, ``mean`` Dice and one column per organ; worst first.

    Args:
        cases: from :func:`inspect_cases`.
        sort_by: ``"mean"`` or an organ name: the column sorted ascending (NaN last).

    Raises:
        ValueError: ``sort_by`` is not a column.
    """
    rows = []
    for case in cases:
        row: dict[str, Any] = {"case_id": case.case_id, "mean": case.mean_dice}
        row.update({organ: m["dice"] for organ, m in case.metrics.items()})
        rows.append(row)
    columns = {k for r in rows for k in r} - {"case_id"}
    if sort_by not in columns:
        raise ValueError(f"sort_by must be 'mean' or an organ of the table, got {sort_by!r}")
    return sorted(rows, key=lambda r: (math.isnan(r.get(sort_by, math.nan)), r.get(sort_by, math.nan)))


def worst_cases(cases: Sequence[InspectedCase], n: int = 1) -> list[InspectedCase]:
    """The ``n`` cases with the lowest mean Dice (cases without a ground truth last)."""
    return sorted(cases, key=lambda c: (math.isnan(c.mean_dice), c.mean_dice))[:n]


def table_html(rows: Sequence[dict[str, Any]], organs: Sequence[str] | None = None) -> str:
    """An HTML table of :func:`dice_table` rows, Dice below 0.5 in red."""
    cols = ["case_id", "mean", *(organs or [k for k in rows[0] if k not in ("case_id", "mean")])] if rows else []
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = []
    for row in rows:
        cells = []
        for c in cols:
            v = row.get(c)
            if isinstance(v, float):
                style = ' style="color:#c00"' if not math.isnan(v) and v < 0.5 else ""
                cells.append(f"<td{style}>{'-' if math.isnan(v) else f'{v:.2f}'}</td>")
            else:
                cells.append(f"<td>{v}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def export_prediction(case: InspectedCase, output_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a case's prediction as NIfTI in its scan's own space (shape, orientation, affine).

    Returns:
        The written file, ``output_dir/<case_id>_prediction.nii.gz``, with a JSON sidecar of names.

    Raises:
        FileExistsError: the file exists and ``overwrite`` is false.
    """
    from mosmoskit.data.readers import load_image, save_like
    from mosmoskit.io import atomic_write_text

    target = Path(output_dir) / f"{case.case_id}_prediction.nii.gz"
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists: set overwrite=True to replace it, or choose another output_dir")
    target.parent.mkdir(parents=True, exist_ok=True)
    save_like(case.prediction, load_image(case.source), target, dtype=case.prediction.dtype)
    atomic_write_text(target.with_name(f"{case.case_id}_prediction.json"),
                      json.dumps({"source": case.source, "case_id": case.case_id}, indent=1) + "\n")
    return target


def figure_case_views(case: InspectedCase, organ: str = "", opacity: float = 0.5, window: str = "abdomen") -> Any:
    """One case in every view and mode, as a matplotlib figure.

    Rows: ground truth, prediction, difference (prediction only without a ground truth); columns:
    axial, coronal, sagittal (axial only for 2D), plus the axial view with ``organ``'s attention map
    when the model has maps and ``organ`` is set. Each panel is :func:`~mosmoskit.viz.viewer.plot_view`.
    """
    import matplotlib.pyplot as plt

    from mosmoskit.viz.viewer import ViewState, plot_view

    has_truth = case.truth is not None
    views = ["axial"] if case.image.ndim == 2 else ["axial", "coronal", "sagittal"]
    modes = ["ground_truth", "prediction", "difference"] if has_truth else ["prediction"]
    heat = bool(organ) and case.attention is not None
    columns = views + (["axial"] if heat else [])
    fig, axes = plt.subplots(len(modes), len(columns), figsize=(3.4 * len(columns), 3.2 * len(modes)), squeeze=False)
    reference = case.truth if has_truth else case.prediction
    for r, mode in enumerate(modes):
        for c, view in enumerate(columns):
            index = _most_labelled(reference, view)
            state = ViewState(axis=view, index=index, mode=mode, opacity=opacity, window=window,
                              attention_organ=organ if heat and c == len(views) else "")
            plot_view(axes[r, c], case.image, case.label_map, state, truth=case.truth, prediction=case.prediction,
                      attention=case.attention, spacing=case.spacing, legend=c == len(columns) - 1)
    fig.suptitle(case.case_id + (f"  (mean Dice {case.mean_dice:.3f})" if has_truth else ""), fontsize=10)
    fig.tight_layout()
    return fig


def _most_labelled(mask: np.ndarray, axis: str) -> int | None:
    if mask.ndim == 2:
        return None
    dim = {"axial": 2, "coronal": 1, "sagittal": 0}[axis]
    counts = (mask > 0).sum(axis=tuple(d for d in range(3) if d != dim))
    return int(np.argmax(counts)) if counts.any() else None


def choose_case(cases: Sequence[InspectedCase], case_id: str = "") -> InspectedCase:
    """The case called ``case_id``, or the worst by mean Dice when it is empty.

    Raises:
        ValueError: no cases, or no case of that id (the ids are listed).
    """
    if not cases:
        raise ValueError("no case was segmented: check dataset / scan / max_cases")
    if not case_id:
        return worst_cases(cases, 1)[0]
    for case in cases:
        if case.case_id == case_id:
            return case
    raise ValueError(f"case_id {case_id!r} is not among the segmented cases {[c.case_id for c in cases]}")


def save_table(rows: Sequence[dict[str, Any]], path: str | Path, overwrite: bool = False) -> Path:
    """Write :func:`dice_table` rows as CSV (atomically; an existing file needs ``overwrite``)."""
    import csv
    import io

    from mosmoskit.io import atomic_write_text

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: set overwrite=True to replace it, or choose another output_dir")
    columns = list(rows[0]) if rows else ["case_id", "mean"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return atomic_write_text(path, buffer.getvalue())


def save_figure(figure: Any, path: str | Path, overwrite: bool = False) -> Path:
    """Save a matplotlib figure atomically (an existing file needs ``overwrite``)."""
    from mosmoskit.io import atomic_path

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: set overwrite=True to replace it, or choose another output_dir")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


def config_fields() -> list[str]:
    """The parameter names of notebook 04, in order."""
    return [f.name for f in fields(InspectionConfig)]
