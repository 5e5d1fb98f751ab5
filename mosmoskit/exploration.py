"""Look at a data set before training on it (notebook 01): labels, grids, intensities, organs, reports.

:class:`ExplorationConfig` holds notebook 01's parameters. The steps, each a function that returns
plain data (dicts, lists, arrays) and, separately, a function that draws or formats that data:

1. :func:`open_cohort` finds the cases (a phantom cohort generated into ``output_dir/data``, or a
   folder with an MSD-style ``dataset.json``), refuses an ``output_dir`` that already holds results,
   and keeps at most ``max_cases`` of them, spread over the cohort.
2. :func:`scan_cohort` reads every chosen case **once** (image and mask, in RAS orientation) and
   keeps what the later steps need: the grid, the values in the mask, voxels per organ and an
   intensity histogram per organ. A bad mask does not stop the scan; it is recorded.
3. :func:`label_audit` compares the values found in each mask with the label map and **raises**
   on any value outside it (or a mask off its image's grid), naming every bad file: a silently
   wrong label is a wrong training target.
4. :func:`case_table`: shape, spacing and axis codes per case (axis codes of the affine as stored,
   e.g. ``LPS`` for DICOM-derived files; the arrays are used in RAS).
5. :func:`hu_histograms`: intensity histograms per organ over ``hu_range`` (every voxel counts;
   voxels outside the range are counted as ``below``/``above``), drawn by
   :func:`plot_hu_histograms` in the label map's colours.
6. :func:`organ_volumes`: millilitres per organ and case (cm^2 for 2D slices), with the cases where
   the organ is absent counted, drawn by :func:`plot_organ_volumes`.
7. :func:`report_examples` / :func:`highlight_report`: reports as HTML with the words that decided
   each organ tag coloured (from :func:`mosmoskit.reports.explain_tags`); :func:`tag_frequencies`
   counts present / absent / uncertain / unmentioned per organ, drawn by :func:`plot_tag_frequencies`.
8. :func:`plot_orthogonal_slices`: axial, coronal and sagittal slices of one case with its labels.
9. :func:`exploration_record` and :func:`write_exploration` write ``exploration.json`` and the
   figures into ``output_dir`` (atomically; ``exploration.json`` last, so a folder holding it holds
   a finished exploration).

:func:`run_exploration` runs all of it without a notebook.

Why not :func:`mosmoskit.data.summary.summarize_cohort`? It answers similar questions for the
``summarize`` command, but it reads every case of a folder and keeps no voxel intensities per organ;
here each chosen case is read once and ``max_cases`` caps slow reads of large real scans.

Example:
    >>> from mosmoskit.exploration import ExplorationConfig, run_exploration   # doctest: +SKIP
    >>> result = run_exploration(ExplorationConfig(phantom_cases=4, output_dir="runs/explore"))  # doctest: +SKIP
    >>> result["written"]["json"]                                                # doctest: +SKIP
    PosixPath('runs/explore/exploration.json')
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mosmoskit.config import check_choice, check_phantom_grid, config_to_dict
from mosmoskit.data.summary import _first as _summary_first
from mosmoskit.data.summary import _stored_values as _summary_stored_values
from mosmoskit.labels import LabelMap, load_label_map

__all__ = [
    "EXPLORATION_FILE",
    "HISTOGRAM_BINS",
    "TAG_CATEGORIES",
    "CaseScan",
    "Cohort",
    "CohortScan",
    "ExplorationConfig",
    "case_table",
    "describe_cohort",
    "exploration_record",
    "format_case_table",
    "format_label_audit",
    "format_organ_volumes",
    "format_tag_frequencies",
    "highlight_report",
    "hu_histograms",
    "label_audit",
    "open_cohort",
    "organ_histograms",
    "organ_volumes",
    "plot_hu_histograms",
    "plot_organ_volumes",
    "plot_orthogonal_slices",
    "plot_tag_frequencies",
    "report_examples",
    "report_examples_html",
    "run_exploration",
    "scan_cohort",
    "tag_frequencies",
    "write_exploration",
]

#: The file that marks a finished exploration (written last by :func:`write_exploration`).
EXPLORATION_FILE = "exploration.json"
#: Bins of the intensity histograms over ``hu_range`` (10 HU each over the default -300..400).
HISTOGRAM_BINS = 70
#: How a report speaks about an organ, in the order of the tables and bars.
TAG_CATEGORIES = ("present", "absent", "uncertain", "unmentioned")
#: Colours of the tag categories, in the highlighted reports and the frequency bars.
TAG_COLORS = {"present": "#b7e4c7", "absent": "#f4a6a6", "uncertain": "#ffd58a", "unmentioned": "#d9d9d9"}
#: Soft-tissue display window (HU) for CT slices; other modalities use percentiles of the image.
CT_DISPLAY_WINDOW = (-160.0, 240.0)
NON_CT_WINDOW_PERCENTILES = (1.0, 99.0)
#: Size units: voxel size is mm^3 (1 ml = 1000 mm^3) for volumes, mm^2 (1 cm^2 = 100 mm^2) for slices.
_SIZE_UNITS = {3: ("ml", 1000.0), 2: ("cm2", 100.0)}
#: Dash characters a report may use where the parser's terms have "-" (it folds them the same way).
_DASH_CLASS = "[-\u2010\u2011\u2012\u2013\u2014\u2212]"


# =============================================================================================
# config
# =============================================================================================
@dataclass(frozen=True)
class ExplorationConfig:
    """What notebook 01 explores and where it writes.

    Args:
        dataset: ``"phantom"`` (a seeded cohort is generated into ``output_dir/data``, or reused when
            the one there was made with the same settings) or a folder with an MSD-style
            ``dataset.json`` (optionally ``reports.jsonl``); relative paths start from the working
            folder (the notebook's folder under papermill).
        label_map: the map the masks must use: a shipped name (``btcv``, ``amos``, ...) or a JSON file.
        spatial_dims: 3 for volumes, 2 for axial slices (phantoms are generated so; a data folder's
            images must have this many axes).
        phantom_cases: phantom patients to generate.
        phantom_slices_per_case: axial slices per phantom patient when ``spatial_dims`` is 2.
        phantom_shape: phantom grid in voxels (empty: the generator's default, 96x96x64 or 128x128).
        phantom_spacing: phantom voxel size in mm (empty: the generator's default, 4x4x5 or 3x3).
        phantom_seed: seed of the phantom cohort.
        max_cases: look at no more than this many cases, spread evenly over the data list (0: all);
            a cap for large real data sets, whose scans are slow to read.
        n_report_examples: reports shown with their tags highlighted.
        hu_range: (low, high) intensity range of the per-organ histograms (HU for CT).
        seed: seed of the choice of example reports.
        output_dir: where ``exploration.json`` and the figures go.
        overwrite: replace the results of an earlier exploration in ``output_dir``.

    Raises:
        ValueError: a field with an invalid value; the message names the field and says what to
            change (an unknown label map, a dataset folder without ``dataset.json`` or whose
            ``dataset.json`` lists no training case, ...).

    Example:
        >>> ExplorationConfig(phantom_cases=4, hu_range=(-200.0, 300.0)).hu_range
        (-200.0, 300.0)
    """

    dataset: str = "phantom"
    label_map: str = "btcv"
    spatial_dims: int = 3
    phantom_cases: int = 8
    phantom_slices_per_case: int = 8
    phantom_shape: tuple[int, ...] = ()
    phantom_spacing: tuple[float, ...] = ()
    phantom_seed: int = 0
    max_cases: int = 0
    n_report_examples: int = 3
    hu_range: tuple[float, float] = (-300.0, 400.0)
    seed: int = 0
    output_dir: str = "runs/explore"
    overwrite: bool = False

    def __post_init__(self) -> None:
        # Lists (JSON, papermill) become tuples so that the frozen config stays hashable and equal.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        for name in ("dataset", "label_map", "output_dir"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        check_choice("spatial_dims", self.spatial_dims, (2, 3))
        for name in ("phantom_cases", "phantom_slices_per_case"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("phantom_seed", "max_cases", "n_report_examples", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        check_phantom_grid(self.phantom_shape, self.phantom_spacing, self.spatial_dims)
        if (len(self.hu_range) != 2 or not all(math.isfinite(float(v)) for v in self.hu_range)
                or not float(self.hu_range[0]) < float(self.hu_range[1])):
            raise ValueError(f"hu_range must be [low, high] with low < high (HU for CT), got {list(self.hu_range)}")
        object.__setattr__(self, "hu_range", (float(self.hu_range[0]), float(self.hu_range[1])))
        try:
            load_label_map(self.label_map)
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f"label_map: {err}") from None
        if self.dataset != "phantom":
            _check_dataset_folder(self.dataset)


def _check_dataset_folder(dataset: str) -> None:
    """Fail at configuration time on a folder that cannot give a single case (cheap: one small JSON)."""
    path = Path(dataset).expanduser() / "dataset.json"
    if not path.is_file():
        raise ValueError(
            f"dataset {dataset!r} must be 'phantom' or a folder with a dataset.json, but {path} does not exist "
            f"(relative paths start from {Path.cwd()}); generate one with `python -m mosmoskit phantoms --out DIR` "
            f"or write a dataset.json for your data"
        )
    try:
        training = json.loads(path.read_text(encoding="utf-8")).get("training")
    except (ValueError, AttributeError) as err:
        raise ValueError(f"dataset {dataset!r}: {path} is not a JSON object ({err})") from None
    if not isinstance(training, list) or not training:
        raise ValueError(
            f"dataset {dataset!r}: {path} lists no case (its 'training' section is "
            f"{'missing' if training is None else 'empty' if training == [] else 'not a list'}); add entries "
            f'{{"image": ..., "label": ...}} or point dataset at another folder'
        )


# =============================================================================================
# the cases
# =============================================================================================
@dataclass(frozen=True)
class Cohort:
    """The cases an exploration looks at (from :func:`open_cohort`).

    Attributes:
        root: the data folder (holding ``dataset.json``).
        cases: the chosen case dicts (``case_id``, ``image``, ``label``, ``report``, ``tags``, ...),
            in data-list order.
        n_total: cases the data list holds (``len(cases)`` unless ``max_cases`` capped it).
        label_map: the map the masks must use.
        modality: what ``dataset.json`` says (``"CT"``, ``"MRI"``, ...; ``""`` if it says nothing).
        output_dir: where the results go.
    """

    root: Path
    cases: tuple[dict[str, Any], ...]
    n_total: int
    label_map: LabelMap
    modality: str
    output_dir: Path

    @property
    def is_ct(self) -> bool:
        """Whether intensities are Hounsfield units (the modality says CT)."""
        return self.modality.upper() == "CT"

    @property
    def intensity_unit(self) -> str:
        return "HU" if self.is_ct else "a.u."

    @property
    def reports(self) -> list[dict[str, Any]]:
        """The chosen cases that have a report."""
        return [c for c in self.cases if isinstance(c.get("report"), str)]


def _modality(dataset_json: Path) -> str:
    try:
        modality = json.loads(dataset_json.read_text(encoding="utf-8")).get("modality", {})
    except (OSError, ValueError, AttributeError):
        return ""
    if isinstance(modality, Mapping):
        return "+".join(str(v) for v in modality.values())
    return str(modality or "")


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices of ``0..n-1`` spread evenly from the first to the last (all when ``k`` is 0 or >= n)."""
    if k <= 0 or k >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def open_cohort(config: ExplorationConfig, progress: bool = True) -> Cohort:
    """Find (or generate) the cases to explore, after checking that ``output_dir`` may be written.

    Args:
        config: ``dataset``, ``label_map``, the phantom settings, ``max_cases``, ``output_dir`` and
            ``overwrite``.
        progress: show a progress bar while phantoms are generated.

    Returns:
        A :class:`Cohort`.

    Raises:
        FileExistsError: ``output_dir`` holds an earlier exploration (``exploration.json``) and
            ``overwrite`` is false.
        FileNotFoundError: a file that ``dataset.json`` lists is missing.
        ValueError: ``dataset.json`` is malformed, disagrees with ``label_map``, or lists no case.
    """
    from mosmoskit.data.datalists import load_dataset
    from mosmoskit.io import ensure_new_dir

    out = Path(config.output_dir).expanduser()
    try:
        ensure_new_dir(out, overwrite=config.overwrite, marker=EXPLORATION_FILE)
    except FileExistsError as err:
        raise FileExistsError(f"output_dir: {err}") from None
    if config.dataset == "phantom":
        # The finetuning helper reads only the phantom_* fields and spatial_dims, which this config
        # shares by name: one rule decides when a cohort on disk may be reused.
        from mosmoskit.finetuning.data import ensure_phantom_cohort

        root = ensure_phantom_cohort(out / "data", config, progress=progress)  # type: ignore[arg-type]
    else:
        root = Path(config.dataset).expanduser()
    data = load_dataset(root, label_map=config.label_map)
    if not data.cases:
        raise ValueError(
            f"dataset {config.dataset!r}: {data.source} lists no case in its 'training' section; add entries "
            f"({{\"image\": ..., \"label\": ...}}) or point dataset at another folder"
        )
    chosen = tuple(data.cases[i] for i in _spread(len(data.cases), config.max_cases))
    return Cohort(root=root.resolve(), cases=chosen, n_total=len(data.cases), label_map=data.label_map,
                  modality=_modality(root / "dataset.json"), output_dir=out)


def describe_cohort(cohort: Cohort) -> str:
    """A few lines saying which cases the exploration looks at."""
    lm = cohort.label_map
    shown = len(cohort.cases)
    lines = [
        f"data: {cohort.root}",
        f"cases: {shown}"
        + (f" of {cohort.n_total} (max_cases), spread over the data list" if shown < cohort.n_total else ""),
        f"modality: {cohort.modality or 'not stated in dataset.json'}; label map {lm.name!r} with "
        f"{len(lm.foreground_names)} structures: {', '.join(lm.foreground_names)}",
        f"reports: {len(cohort.reports)} of the {shown} case(s)",
        f"results will go to: {cohort.output_dir}",
    ]
    return "\n".join(lines)


# =============================================================================================
# reading every case once
# =============================================================================================
def organ_histograms(
    image: np.ndarray, label: np.ndarray, label_map: LabelMap, hu_range: Sequence[float], bins: int = HISTOGRAM_BINS,
) -> dict[str, Any]:
    """Intensity histogram of each structure of one image.

    Every voxel of a structure counts once: inside ``hu_range`` in one of ``bins`` equal bins (the
    last bin includes ``high``, as in :func:`numpy.histogram`), else in ``below`` or ``above``. So
    for each organ ``counts.sum() + below + above == voxels``.

    Args:
        image: intensities, any shape.
        label: ids of ``label_map``, the same shape.
        label_map: names the ids.
        hu_range: (low, high) of the binned range.
        bins: number of bins.

    Returns:
        ``{"edges": (bins + 1,) array, "counts": {organ: (bins,) int64 array}, "below": {organ: int},
        "above": {organ: int}, "voxels": {organ: int}, "sum": {organ: float}}`` for the organs with
        at least one voxel (``sum``: of their intensities, for exact means).

    Raises:
        ValueError: shapes differ, ``bins < 1`` or ``hu_range`` not increasing.
    """
    img = np.asarray(image)
    lab = np.asarray(label)
    if img.shape != lab.shape:
        raise ValueError(f"image shape {img.shape} and label shape {lab.shape} differ")
    if isinstance(bins, bool) or int(bins) < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    lo, hi = float(hu_range[0]), float(hu_range[1])
    if not lo < hi:
        raise ValueError(f"hu_range must be (low, high) with low < high, got {tuple(hu_range)}")
    bins = int(bins)
    k = label_map.num_classes
    ids = lab.ravel().astype(np.int64, copy=False)
    values = img.ravel().astype(np.float64, copy=False)
    voxels = np.bincount(ids, minlength=k)
    sums = np.bincount(ids, weights=values, minlength=k)
    below = np.bincount(ids[values < lo], minlength=k)
    above = np.bincount(ids[values > hi], minlength=k)
    inside = (values >= lo) & (values <= hi)
    # One bincount over (id, bin) pairs instead of one histogram per organ: linear in the voxels.
    which = np.minimum(((values[inside] - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)
    joint = np.bincount(ids[inside] * bins + which, minlength=k * bins).reshape(k, bins)
    out: dict[str, Any] = {"edges": np.linspace(lo, hi, bins + 1), "counts": {}, "below": {}, "above": {},
                           "voxels": {}, "sum": {}}
    for i, name in enumerate(label_map.foreground_names, start=1):
        if voxels[i]:
            out["counts"][name] = joint[i].astype(np.int64)
            out["below"][name] = int(below[i])
            out["above"][name] = int(above[i])
            out["voxels"][name] = int(voxels[i])
            out["sum"][name] = float(sums[i])
    return out


@dataclass(frozen=True)
class CaseScan:
    """One case as :func:`scan_cohort` read it.

    Attributes:
        case_id: the case id from the data list.
        image: the image file.
        label: the mask file, or ``None`` for a case without mask.
        shape: spatial shape in RAS orientation (what the models see).
        stored_shape: spatial shape as stored in the file.
        spacing: mm per voxel along each RAS axis.
        axcodes: axis codes of the stored array, from its affine (``("R", "A", "S")`` for the
            phantom, often ``("L", "P", "S")`` for scans converted from DICOM).
        intensity_min, intensity_max, intensity_mean: over the whole image.
        values_found: distinct values of the mask as stored in the file.
        expected_values: the values the label map allows in a file (ids, or raw values for maps
            with ``raw_values``).
        problem: why the mask (or image) failed, or ``None``.
        organ_voxels: organ -> voxel count, for organs present in an audited mask.
        voxel_size: mm^3 per voxel (mm^2 per pixel in 2D).
        histograms: the output of :func:`organ_histograms` for an audited mask, else ``None``.
    """

    case_id: str
    image: str
    label: str | None
    shape: tuple[int, ...] = ()
    stored_shape: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()
    axcodes: tuple[str, ...] = ()
    intensity_min: float | None = None
    intensity_max: float | None = None
    intensity_mean: float | None = None
    values_found: tuple[int, ...] = ()
    expected_values: tuple[int, ...] = ()
    problem: str | None = None
    organ_voxels: Mapping[str, int] = field(default_factory=dict)
    voxel_size: float | None = None
    histograms: Mapping[str, Any] | None = None

    @property
    def unexpected_values(self) -> tuple[int, ...]:
        """Values in the mask that the label map does not have."""
        allowed = set(self.expected_values)
        return tuple(v for v in self.values_found if v not in allowed)


@dataclass(frozen=True)
class CohortScan:
    """Every chosen case of a :class:`Cohort`, read once.

    Attributes:
        cohort: what was read.
        cases: one :class:`CaseScan` per case, in data-list order.
        hu_range: the binned range of the histograms.
        bins: their number of bins.
        spatial_dims: 2 or 3 (``None`` when no image could be read).
    """

    cohort: Cohort
    cases: tuple[CaseScan, ...]
    hu_range: tuple[float, float]
    bins: int
    spatial_dims: int | None

    @property
    def label_map(self) -> LabelMap:
        return self.cohort.label_map

    @property
    def audited(self) -> list[CaseScan]:
        """Cases with a mask that passed the audit (the ones organ statistics use)."""
        return [c for c in self.cases if c.label is not None and c.problem is None]

    @property
    def size_unit(self) -> str:
        """``"ml"`` for volumes, ``"cm2"`` for 2D slices."""
        return _SIZE_UNITS[self.spatial_dims or 3][0]


# Reading helpers shared with the cohort summary (one home: mosmoskit.data.summary).
_first = _summary_first
_stored_values = _summary_stored_values


def _expected_values(label_map: LabelMap) -> tuple[int, ...]:
    stored = label_map.raw_values if label_map.raw_values is not None else label_map.labels
    return tuple(sorted(int(v) for v in stored.values()))


def _scan_case(case: Mapping[str, Any], label_map: LabelMap, hu_range: Sequence[float], bins: int,
               spatial_dims: int) -> CaseScan:
    from mosmoskit.data.readers import load_image, load_label

    image_path = _first(case["image"])
    label_path = None if case.get("label") is None else _first(case["label"])
    expected = _expected_values(label_map)
    try:
        image = load_image(image_path)
    except (ValueError, FileNotFoundError) as err:
        return CaseScan(case["case_id"], image_path, label_path, expected_values=expected, problem=f"image: {err}")
    if image.ndim != spatial_dims:
        raise ValueError(
            f"spatial_dims={spatial_dims} but {image_path} is a {image.ndim}D image (shape {image.shape}); "
            f"set spatial_dims={image.ndim}"
        )
    arr = image.array
    base = dict(
        case_id=case["case_id"], image=image_path, label=label_path, shape=image.shape,
        stored_shape=image.original_shape, spacing=image.spacing, axcodes=image.axcodes_original,
        intensity_min=float(arr.min()), intensity_max=float(arr.max()),
        intensity_mean=float(arr.mean(dtype=np.float64)), expected_values=expected,
        voxel_size=float(np.prod(image.spacing)),
    )
    if label_path is None:
        return CaseScan(**base)
    try:
        label = load_label(label_path, label_map, reference=image)
    except (ValueError, FileNotFoundError) as err:
        return CaseScan(**base, values_found=_stored_values(label_path), problem=f"label: {err}")
    hist = organ_histograms(arr, label.array, label_map, hu_range, bins)
    ids = np.flatnonzero(np.bincount(label.array.ravel(), minlength=label_map.num_classes))
    # the file stores raw values for maps that have them (MMWHS 205/420/..., BraTS 0/1/2/4)
    raw = label_map.raw_values
    found = tuple(sorted(int(raw[label_map.name_of(i)]) if raw else int(i) for i in ids))
    return CaseScan(**base, values_found=found, organ_voxels=dict(hist["voxels"]), histograms=hist)


def scan_cohort(
    cohort: Cohort, hu_range: Sequence[float] = (-300.0, 400.0), bins: int = HISTOGRAM_BINS, progress: bool = True,
    spatial_dims: int = 3,
) -> CohortScan:
    """Read each case of ``cohort`` once and keep its grid, mask values, organ sizes and histograms.

    A mask with values outside the label map, an unreadable file or a mask off its image's grid
    does not stop the scan: it is recorded in :attr:`CaseScan.problem` and :func:`label_audit`
    raises on it, listing every bad file at once.

    Args:
        cohort: from :func:`open_cohort`.
        hu_range: (low, high) of the intensity histograms (``config.hu_range``).
        bins: histogram bins.
        progress: show a progress bar.
        spatial_dims: the number of image axes the exploration expects (``config.spatial_dims``).

    Returns:
        A :class:`CohortScan`.

    Raises:
        ValueError: an image with another number of axes than ``spatial_dims`` (the message names
            the file and the value to set).
    """
    from tqdm.auto import tqdm

    lo, hi = float(hu_range[0]), float(hu_range[1])
    scans = tuple(
        _scan_case(case, cohort.label_map, (lo, hi), int(bins), int(spatial_dims))
        for case in tqdm(cohort.cases, desc="reading cases", unit="case", disable=not progress, leave=False)
    )
    dims = {len(s.shape) for s in scans if s.shape}
    return CohortScan(cohort=cohort, cases=scans, hu_range=(lo, hi), bins=int(bins),
                      spatial_dims=dims.pop() if len(dims) == 1 else None)


# =============================================================================================
# 1. label audit
# =============================================================================================
def label_audit(scan: CohortScan, strict: bool = True) -> dict[str, Any]:
    """Values found in each mask against the values the label map allows.

    Args:
        scan: from :func:`scan_cohort`.
        strict: raise when any case fails (the default: the notebook stops here).

    Returns:
        ``{"label_map", "expected_values", "ok", "n_checked", "n_without_label", "cases": [{"case_id",
        "label", "values_found", "unexpected_values", "ok", "problem"}], "failures": {case_id: problem}}``.

    Raises:
        ValueError: with ``strict``, when any mask holds a value outside the label map, cannot be
            read, or does not lie on its image's grid; the message lists every failing case with its
            file and the problem (the unexpected values among them).
    """
    lm = scan.label_map
    expected = list(_expected_values(lm))
    rows = []
    for c in scan.cases:
        rows.append({"case_id": c.case_id, "label": c.label, "values_found": list(c.values_found),
                     "unexpected_values": list(c.unexpected_values), "ok": c.problem is None, "problem": c.problem})
    failures = {c.case_id: c.problem for c in scan.cases if c.problem is not None}
    audit = {
        "label_map": lm.name, "expected_values": expected, "ok": not failures,
        "n_checked": sum(1 for c in scan.cases if c.label is not None),
        "n_without_label": sum(1 for c in scan.cases if c.label is None),
        "cases": rows, "failures": failures,
    }
    if strict and failures:
        by_id = {c.case_id: c for c in scan.cases}
        lines = []
        for case_id, problem in failures.items():
            c = by_id[case_id]
            path = c.image if problem.startswith("image:") else c.label or c.image
            # the readers' messages start with the file; name it where one does not
            where = "" if path in problem else f" ({path})"
            lines.append(f"  {case_id}{where}: {problem}")
        raise ValueError(
            f"label audit failed for {len(failures)} of {len(scan.cases)} case(s) (label map {lm.name!r}, expected "
            f"values {expected}):\n" + "\n".join(lines)
            + "\nFix these files, or set label_map to the map the masks use."
        )
    return audit


def _values_text(values: Sequence[int]) -> str:
    values = list(values)
    if values and values == list(range(values[0], values[-1] + 1)) and len(values) > 3:
        return f"{values[0]}..{values[-1]}"
    return ", ".join(str(v) for v in values) or "-"


def format_label_audit(audit: Mapping[str, Any]) -> str:
    """The audit as a text table: per case the values found, the unexpected ones and the verdict."""
    rows = [[r["case_id"], _values_text(r["values_found"]),
             _values_text(r["unexpected_values"]) if r["unexpected_values"] else "-", "ok" if r["ok"] else "FAILED"]
            for r in audit["cases"]]
    head = (f"Label audit against {audit['label_map']!r}: expected values {_values_text(audit['expected_values'])}; "
            + ("all masks pass" if audit["ok"] else f"{len(audit['failures'])} case(s) FAILED"))
    return head + "\n" + _text_table(["case", "values found", "unexpected", "audit"], rows)


def _text_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, header))] + [[str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# =============================================================================================
# 2. grids
# =============================================================================================
def case_table(scan: CohortScan) -> list[dict[str, Any]]:
    """Shape, spacing and orientation per case.

    Returns:
        One dict per case: ``case_id``, ``shape`` (RAS), ``stored_shape``, ``spacing`` (mm, RAS axes),
        ``axcodes`` (of the file's affine, e.g. ``"LPS"``), ``field_of_view_mm`` (shape x spacing),
        ``intensity_min``/``intensity_max``/``intensity_mean`` and ``organs`` (number present,
        ``None`` without an audited mask).
    """
    rows = []
    for c in scan.cases:
        rows.append({
            "case_id": c.case_id, "shape": list(c.shape), "stored_shape": list(c.stored_shape),
            "spacing": [round(s, 4) for s in c.spacing], "axcodes": "".join(c.axcodes),
            "field_of_view_mm": [round(n * s, 1) for n, s in zip(c.shape, c.spacing)],
            "intensity_min": c.intensity_min, "intensity_max": c.intensity_max, "intensity_mean": c.intensity_mean,
            "organs": len(c.organ_voxels) if c.label is not None and c.problem is None else None,
        })
    return rows


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_case_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """:func:`case_table` as text, with a line on how many distinct grids and orientations there are."""
    body = [[r["case_id"], "x".join(map(str, r["shape"])) or "-", " x ".join(f"{s:g}" for s in r["spacing"]) or "-",
             r["axcodes"] or "-", " x ".join(f"{v:g}" for v in r["field_of_view_mm"]) or "-",
             _num(r["intensity_min"], 0), _num(r["intensity_max"], 0), "-" if r["organs"] is None else r["organs"]]
            for r in rows]
    spacings = {tuple(r["spacing"]) for r in rows if r["spacing"]}
    codes = {r["axcodes"] for r in rows if r["axcodes"]}
    note = (f"{len(rows)} case(s): {len(spacings)} distinct spacing(s), orientation(s) as stored: "
            f"{', '.join(sorted(codes)) or '-'} (arrays are read in RAS)")
    return _text_table(["case", "shape (RAS)", "spacing (mm)", "axes", "field of view (mm)", "min", "max", "organs"],
                       body) + "\n" + note


# =============================================================================================
# 3. intensities per organ
# =============================================================================================
def hu_histograms(scan: CohortScan) -> dict[str, Any]:
    """The per-case histograms of :func:`organ_histograms` summed over the audited cases.

    Returns:
        ``{"edges": list, "unit": "HU" | "a.u.", "n_cases": int, "organs": {organ: {"counts": list,
        "below": int, "above": int, "voxels": int, "mean": float, "n_cases": int}}}`` in label-map
        order, for organs with voxels in at least one case; ``mean`` is over all the organ's voxels
        (in range or not). For each organ ``sum(counts) + below + above == voxels``.
    """
    lm = scan.label_map
    organs: dict[str, Any] = {}
    for name in lm.foreground_names:
        parts = [c.histograms for c in scan.audited if c.histograms and name in c.histograms["voxels"]]
        if not parts:
            continue
        voxels = sum(p["voxels"][name] for p in parts)
        organs[name] = {
            "counts": np.sum([p["counts"][name] for p in parts], axis=0).astype(int).tolist(),
            "below": sum(p["below"][name] for p in parts), "above": sum(p["above"][name] for p in parts),
            "voxels": voxels, "mean": sum(p["sum"][name] for p in parts) / voxels, "n_cases": len(parts),
        }
    edges = np.linspace(scan.hu_range[0], scan.hu_range[1], scan.bins + 1)
    return {"edges": edges.tolist(), "unit": scan.cohort.intensity_unit, "n_cases": len(scan.audited), "organs": organs}


def plot_hu_histograms(histograms: Mapping[str, Any], label_map: LabelMap | str, ax: Any | None = None) -> Any:
    """One line per organ: the share of its voxels per intensity unit, in the label map's colours.

    Each line is normalised by all the organ's voxels (also those outside the range), so large
    and small organs are comparable and the area under a line is the share inside the range.

    Args:
        histograms: from :func:`hu_histograms`.
        label_map: gives the colours (and the order of the legend).
        ax: matplotlib Axes to draw into; a new figure is made when ``None``.

    Returns:
        The Axes drawn into; without labelled voxels (no masks) it says so instead of drawing lines.
    """
    organs = histograms.get("organs") or {}
    lm = load_label_map(label_map)
    colors = lm.colors()
    edges = np.asarray(histograms["edges"], dtype=float)
    centres = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(8.0, 4.0))
    if not organs:
        ax.text(0.5, 0.5, "no organ voxels: no case has a mask that passed the audit", ha="center", va="center",
                transform=ax.transAxes)
    for name in lm.foreground_names:
        if name not in organs:
            continue
        o = organs[name]
        density = np.asarray(o["counts"], dtype=float) / o["voxels"] / width
        ax.plot(centres, density, color=colors[name], linewidth=1.4, label=f"{name} (mean {o['mean']:.0f})")
    unit = histograms.get("unit", "HU")
    ax.set_xlabel(f"intensity ({unit})")
    ax.set_ylabel(f"share of the organ's voxels per {unit}")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(bottom=0)
    ax.set_title(f"Intensity per organ ({histograms.get('n_cases', '?')} case(s))", fontsize=10)
    if organs:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    ax.figure.tight_layout()
    return ax


# =============================================================================================
# 4. organ sizes
# =============================================================================================
def organ_volumes(scan: CohortScan) -> dict[str, Any]:
    """Size of each organ in each audited case, and the cases where it is absent.

    Returns:
        ``{"unit": "ml" | "cm2", "n_cases": int, "organs": {organ: {"sizes": {case_id: size},
        "absent_cases": [case_id, ...], "n_present": int, "n_absent": int, "median": float | None,
        "min": float | None, "max": float | None}}}`` for every foreground organ in label-map order.
        Size = voxel count x voxel size (ml for volumes, cm^2 for 2D slices).
    """
    unit, per_unit = _SIZE_UNITS[scan.spatial_dims or 3]
    audited = scan.audited
    organs = {}
    for name in scan.label_map.foreground_names:
        sizes = {c.case_id: c.organ_voxels[name] * c.voxel_size / per_unit for c in audited if name in c.organ_voxels}
        values = list(sizes.values())
        organs[name] = {
            "sizes": sizes, "absent_cases": [c.case_id for c in audited if name not in c.organ_voxels],
            "n_present": len(values), "n_absent": len(audited) - len(values),
            "median": float(np.median(values)) if values else None,
            "min": float(min(values)) if values else None, "max": float(max(values)) if values else None,
        }
    return {"unit": unit, "n_cases": len(audited), "organs": organs}


def format_organ_volumes(volumes: Mapping[str, Any]) -> str:
    """:func:`organ_volumes` as a text table (median and range over the cases where the organ is present)."""
    unit = volumes["unit"].replace("cm2", "cm^2")
    rows = [[name, f"{o['n_present']}/{volumes['n_cases']}", o["n_absent"], _num(o["median"], 1),
             "-" if o["min"] is None else f"{o['min']:.1f}-{o['max']:.1f}"] for name, o in volumes["organs"].items()]
    return _text_table(["organ", "present", "absent", f"median ({unit})", f"range ({unit})"], rows)


def plot_organ_volumes(volumes: Mapping[str, Any], label_map: LabelMap | str, ax: Any | None = None) -> Any:
    """A box and the single cases (dots) per organ on a log scale, with the absent cases counted.

    Args:
        volumes: from :func:`organ_volumes`.
        label_map: gives the colours.
        ax: matplotlib Axes to draw into; a new figure is made when ``None``.

    Returns:
        The Axes drawn into. Organs never present get no box; every organ absent from some cases
        gets an ``absent n/N`` note (``not in slice n/N`` for 2D slices).
    """
    lm = load_label_map(label_map)
    colors = lm.colors()
    names = list(volumes["organs"])
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(names) + 1.5), 4.2))
    rng = np.random.default_rng(0)  # fixed jitter: the same data always gives the same picture
    # in 2D an organ missing from a slice is usually above or below it, not removed
    absent = "absent" if volumes["unit"] == "ml" else "not in slice"
    n_cases = volumes["n_cases"]
    for i, name in enumerate(names):
        o = volumes["organs"][name]
        values = np.asarray(list(o["sizes"].values()), dtype=float)
        if values.size:
            ax.boxplot([values], positions=[i], widths=0.6, showfliers=False, medianprops={"color": "black"},
                       boxprops={"color": "0.4"}, whiskerprops={"color": "0.4"}, capprops={"color": "0.4"})
            ax.scatter(i + rng.uniform(-0.18, 0.18, values.size), values, s=14, color=colors[name],
                       edgecolor="black", linewidth=0.4, zorder=3)
        if o["n_absent"]:
            ax.text(i, 1.0, f"{absent}\n{o['n_absent']}/{n_cases}", transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=6.5, color="tab:red")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    if any(volumes["organs"][n]["n_present"] for n in names):
        ax.set_yscale("log")
    unit = volumes["unit"].replace("cm2", "cm$^2$")
    ax.set_ylabel(f"size ({unit}, log scale)")
    ax.set_title(f"Organ sizes over {n_cases} case(s)", fontsize=10, pad=22)
    ax.figure.tight_layout()
    return ax


# =============================================================================================
# 5. reports and their tags
# =============================================================================================
def _category(tag: int, evidence_values: Sequence[int]) -> str:
    """present / absent / uncertain (a hedged statement only) / unmentioned (no statement)."""
    if tag == 1:
        return "present"
    if tag == 0:
        return "absent"
    return "uncertain" if evidence_values else "unmentioned"


def _report_tags(text: str, label_map: LabelMap) -> tuple[dict[str, str], list[Any]]:
    """Category per organ, and the parser's evidence (one vote per mention and tag)."""
    from mosmoskit.reports import explain_tags, extract_tags

    tags = extract_tags(text, label_map, allow_empty=True)
    evidence = explain_tags(text, label_map) if text.strip() else []
    votes: dict[str, list[int]] = {}
    for e in evidence:
        votes.setdefault(e.tag, []).append(e.value)
    return {o: _category(t, votes.get(o, [])) for o, t in tags.items()}, evidence


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    """Case-insensitive pattern for a phrase the parser matched in its lower-cased, dash-folded text."""
    parts = [re.escape(ch) if ch != "-" else _DASH_CLASS for ch in phrase]
    return re.compile("".join(parts), re.IGNORECASE)


def _evidence_spans(text: str, evidence: Sequence[Any]) -> list[tuple[int, int, list[Any]]]:
    """Where in ``text`` each vote's words are: ``(start, end, votes)`` sorted, without overlaps.

    The parser reports the matched words and their clause (lower-cased), in reading order, but no
    offsets; they are found again in the original text by walking forward clause by clause, so a
    word repeated in two sentences is marked where each vote came from. Consecutive votes of one
    term in one clause for different tags (``kidneys``: left and right) share one span.
    """
    spans: list[tuple[int, int, list[Any]]] = []
    clause: tuple[str, int, int] | None = None  # (text, start, end) of the clause being read
    term_cursor = 0
    for ev in evidence:
        last = spans[-1][2] if spans else None
        if last and last[-1].term == ev.term and last[-1].clause == ev.clause and all(v.tag != ev.tag for v in last):
            last.append(ev)
            continue
        hit = None
        if clause is not None and clause[0] == ev.clause:
            hit = _phrase_pattern(ev.term).search(text, term_cursor, clause[2])
        while hit is None and ev.clause:
            found = _phrase_pattern(ev.clause).search(text, clause[2] if clause is not None else 0)
            if found is None:
                break  # not found again (a character whose lower case is longer): leave it unmarked
            clause, term_cursor = (ev.clause, found.start(), found.end()), found.start()
            hit = _phrase_pattern(ev.term).search(text, term_cursor, clause[2])
        if hit is None:
            continue
        spans.append((hit.start(), hit.end(), [ev]))
        term_cursor = hit.end()
    spans.sort(key=lambda s: (s[0], -s[1]))
    kept: list[tuple[int, int, list[Any]]] = []
    for span in spans:
        if not kept or span[0] >= kept[-1][1]:
            kept.append(span)
    return kept


_VALUE_NAMES = {1: "present", 0: "absent", -1: "uncertain"}


def highlight_report(text: str, label_map: LabelMap | str) -> str:
    """A report as HTML with the words that decided an organ tag marked and coloured.

    Each marked phrase is a ``<mark>`` coloured by what it says (present green, absent red,
    uncertain orange); its ``data-tags`` attribute and tooltip name the organ(s), the value and the
    parser's rule. The rest of the text is escaped and kept as it is (line breaks included).

    Args:
        text: the report.
        label_map: the map whose organs are tagged (a name or a :class:`LabelMap`).

    Returns:
        An HTML fragment (a ``<div>``).

    Raises:
        TypeError: ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"report must be a str, got {type(text).__name__}")
    lm = load_label_map(label_map)
    _, evidence = _report_tags(text, lm)
    out, pos = [], 0
    for start, end, votes in _evidence_spans(text, evidence):
        value = _VALUE_NAMES[min(votes, key=lambda v: {0: 0, 1: 1, -1: 2}[v.value]).value]
        tags = " ".join(f"{v.tag}={_VALUE_NAMES[v.value]}" for v in votes)
        tip = "; ".join(f"{v.tag}: {_VALUE_NAMES[v.value]} ({v.reason})" for v in votes)
        out.append(html.escape(text[pos:start]))
        out.append(f'<mark data-tags="{html.escape(tags)}" data-value="{value}" title="{html.escape(tip)}" '
                   f'style="background:{TAG_COLORS[value]};padding:0 2px;border-radius:3px">'
                   f"{html.escape(text[start:end])}</mark>")
        pos = end
    out.append(html.escape(text[pos:]))
    return '<div style="white-space:pre-wrap;line-height:1.5">' + "".join(out) + "</div>"


def _pick_examples(reports: Sequence[Mapping[str, Any]], categories: Sequence[Mapping[str, str]], n: int,
                   seed: int) -> list[int]:
    """``n`` report indices: first one with an absent organ and one with an uncertain one (the
    statements students should see), then the rest at random (seeded)."""
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(len(reports))]
    chosen: list[int] = []
    for wanted in ("absent", "uncertain"):
        for i in order:
            if len(chosen) < n and i not in chosen and wanted in categories[i].values():
                chosen.append(i)
                break
    chosen += [i for i in order if i not in chosen][: max(0, n - len(chosen))]
    return sorted(chosen)


def report_examples(cohort: Cohort, n: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` reports of the cohort with their tags and the highlighted HTML.

    Reports with an organ said to be absent, and with an uncertain statement, are chosen first
    when there are such reports; the rest at random with ``seed``.

    Returns:
        One dict per report, in data-list order: ``case_id``, ``report``, ``tags`` (organ ->
        category of :data:`TAG_CATEGORIES`), ``html``; an empty list when there are no reports.

    Raises:
        ValueError: ``n < 0``.
    """
    if isinstance(n, bool) or int(n) < 0:
        raise ValueError(f"n (number of report examples) must be >= 0, got {n!r}")
    reports = cohort.reports
    categories = [_report_tags(c["report"], cohort.label_map)[0] for c in reports]
    picks = _pick_examples(reports, categories, int(n), seed)
    return [{"case_id": reports[i]["case_id"], "report": reports[i]["report"], "tags": categories[i],
             "html": highlight_report(reports[i]["report"], cohort.label_map)} for i in picks]


def report_examples_html(examples: Sequence[Mapping[str, Any]]) -> str:
    """The examples of :func:`report_examples` as one HTML block: a legend, then per report its case
    id, the highlighted text and its tags grouped by category."""
    legend = " ".join(f'<span style="background:{TAG_COLORS[c]};padding:0 4px;border-radius:3px">{c}</span>'
                      for c in TAG_CATEGORIES[:3])
    parts = [f"<div><p>Marked words decided a tag: {legend}. Hover over a word for the organ and the rule.</p>"]
    if not examples:
        parts.append("<p>(no reports in this data set)</p>")
    for ex in examples:
        groups = {c: [o for o, v in ex["tags"].items() if v == c] for c in TAG_CATEGORIES}
        summary = "; ".join(f"<b>{c}</b>: {', '.join(groups[c]) or '-'}" for c in TAG_CATEGORIES[:3])
        parts.append(f'<h4 style="margin-bottom:2px">{html.escape(ex["case_id"])}</h4>{ex["html"]}'
                     f'<p style="font-size:90%">{summary}; <b>unmentioned</b>: {len(groups["unmentioned"])} organ(s)</p>')
    parts.append("</div>")
    return "\n".join(parts)


def tag_frequencies(cohort: Cohort) -> dict[str, Any]:
    """How the reports speak about each organ, as read by the rule-based parser.

    Returns:
        ``{"n_reports": int, "organs": {organ: {category: count}}, "generator_agreement": {"n_pairs",
        "n_agree", "accuracy"} | None}`` with the categories of :data:`TAG_CATEGORIES` (their counts
        sum to ``n_reports`` per organ). ``generator_agreement`` compares the parser with the
        ground-truth ``tags`` the phantom generator writes next to each report (uncertain counts as
        -1, as in training); ``None`` when the reports carry none.
    """
    lm = cohort.label_map
    counts = {o: dict.fromkeys(TAG_CATEGORIES, 0) for o in lm.foreground_names}
    n_pairs = n_agree = 0
    code = {"present": 1, "absent": 0, "uncertain": -1, "unmentioned": -1}
    for case in cohort.reports:
        categories, _ = _report_tags(case["report"], lm)
        for organ, category in categories.items():
            counts[organ][category] += 1
        truth = case.get("tags")
        if isinstance(truth, Mapping):
            for organ, category in categories.items():
                if organ not in truth:
                    continue
                if isinstance(truth[organ], bool) or truth[organ] not in (1, 0, -1):
                    raise ValueError(f"report of case {case['case_id']!r}: ground-truth tag of {organ!r} must be "
                                     f"1, 0 or -1, got {truth[organ]!r}")
                n_pairs += 1
                n_agree += int(code[category] == int(truth[organ]))
    agreement = {"n_pairs": n_pairs, "n_agree": n_agree, "accuracy": n_agree / n_pairs} if n_pairs else None
    return {"n_reports": len(cohort.reports), "organs": counts, "generator_agreement": agreement}


def format_tag_frequencies(frequencies: Mapping[str, Any]) -> str:
    """:func:`tag_frequencies` as a text table, with the parser's agreement with the generator."""
    rows = [[o, *(c[k] for k in TAG_CATEGORIES)] for o, c in frequencies["organs"].items()]
    text = f"Tags read from {frequencies['n_reports']} report(s)\n" + _text_table(["organ", *TAG_CATEGORIES], rows)
    g = frequencies.get("generator_agreement")
    if g:
        text += (f"\nparser vs the generator's tags: {g['n_agree']}/{g['n_pairs']} (case, organ) pairs agree "
                 f"({g['accuracy']:.3f})")
    return text


def plot_tag_frequencies(frequencies: Mapping[str, Any], ax: Any | None = None) -> Any:
    """Stacked horizontal bars per organ: present, absent, uncertain and unmentioned reports.

    Returns:
        The Axes drawn into (a new figure when ``ax`` is ``None``); without reports it says so.
    """
    organs = list(frequencies["organs"])
    n_reports = int(frequencies.get("n_reports") or 0)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7.5, 0.32 * len(organs) + 1.4))
    if not n_reports:
        ax.text(0.5, 0.5, "no reports in this data set (no reports.jsonl)", ha="center", va="center",
                transform=ax.transAxes)
    y = np.arange(len(organs))
    left = np.zeros(len(organs))
    for category in TAG_CATEGORIES:
        widths = np.array([frequencies["organs"][o][category] for o in organs], dtype=float)
        ax.barh(y, widths, left=left, color=TAG_COLORS[category], edgecolor="black", linewidth=0.4, label=category)
        left += widths
    ax.set_yticks(y)
    ax.set_yticklabels(organs, fontsize=8)
    ax.invert_yaxis()  # label-map order from the top
    ax.set_xlabel("reports")
    ax.set_xlim(0, max(n_reports, 1))
    ax.set_title(f"What {n_reports} report(s) say about each organ", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.figure.tight_layout()
    return ax


# =============================================================================================
# 6. slices
# =============================================================================================
def plot_orthogonal_slices(scan: CohortScan, case_id: str = "", window: Sequence[float] | None = None) -> Any:
    """Axial, coronal and sagittal slices of one case with its label overlay (axial only in 2D).

    Each view shows the slice with the most labelled voxels, in radiological convention (the
    patient's right on the viewer's left), with a physical aspect ratio.

    Args:
        scan: from :func:`scan_cohort`.
        case_id: the case to show; ``""``: the audited case with the most organs.
        window: (low, high) display window; default soft tissue for CT, percentiles otherwise.

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: an unknown ``case_id`` (the message lists the known ones) or a case that failed
            the audit; no case can be shown.
    """
    from mosmoskit.data.readers import load_image, load_label
    from mosmoskit.viz.slices import plot_overlay

    by_id = {c.case_id: c for c in scan.cases}
    if case_id:
        if case_id not in by_id:
            raise ValueError(f"case_id {case_id!r} is not among the explored cases: {sorted(by_id)[:20]}")
        case = by_id[case_id]
        if case.problem is not None:
            raise ValueError(f"case {case_id!r} failed the audit ({case.problem}); choose another case")
    else:
        good = [c for c in scan.cases if c.problem is None]
        if not good:
            raise ValueError("no case could be read: nothing to show")
        case = max(good, key=lambda c: len(c.organ_voxels))  # first of the fullest: stable choice
    lm = scan.label_map
    image = load_image(case.image)
    label = None if case.label is None else load_label(case.label, lm, reference=image).array
    if window is None:
        if scan.cohort.is_ct:
            window = CT_DISPLAY_WINDOW
        else:
            lo, hi = np.percentile(image.array, NON_CT_WINDOW_PERCENTILES)
            window = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
    views = ("axial", "coronal", "sagittal") if image.ndim == 3 else ("axial",)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(views), figsize=(3.6 * len(views) + 1.8, 4.0), squeeze=False)
    for ax, view in zip(axes[0], views):
        plot_overlay(image.array, label, lm, axis=view, ax=ax, window=tuple(window), legend=False,
                     spacing=image.spacing)
    spacing = " x ".join(f"{s:g}" for s in image.spacing)
    fig.suptitle(f"{case.case_id}: {'x'.join(map(str, image.shape))} voxels of {spacing} mm", fontsize=10)
    if label is not None and case.organ_voxels:
        from matplotlib.patches import Patch

        colors = lm.colors()
        handles = [Patch(color=colors[n], label=n) for n in lm.foreground_names if n in case.organ_voxels]
        fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.8 / (3.6 * len(views) + 1.8), 1))
    return fig


# =============================================================================================
# 7. writing
# =============================================================================================
def _finite(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become ``None``, numpy scalars and arrays plain Python."""
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_finite(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def exploration_record(
    config: ExplorationConfig,
    cohort: Cohort,
    audit: Mapping[str, Any] | None = None,
    cases: Sequence[Mapping[str, Any]] | None = None,
    histograms: Mapping[str, Any] | None = None,
    volumes: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    examples: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The summary numbers of an exploration, as ``exploration.json`` holds them.

    Args:
        config: the exploration's config (stored in full).
        cohort: the cases explored.
        audit, cases, histograms, volumes, tags: the outputs of :func:`label_audit`,
            :func:`case_table`, :func:`hu_histograms`, :func:`organ_volumes`, :func:`tag_frequencies`
            (``None``: a step that was not run).
        examples: from :func:`report_examples` (their case ids and tags are kept, not the HTML).

    Returns:
        A JSON-able dict (no NaN).
    """
    from mosmoskit import __version__

    return _finite({
        "config": config_to_dict(config), "kit_version": __version__,
        "data": {"root": str(cohort.root), "n_cases": len(cohort.cases), "n_total": cohort.n_total,
                 "case_ids": [c["case_id"] for c in cohort.cases], "modality": cohort.modality,
                 "label_map": cohort.label_map.name, "n_reports": len(cohort.reports)},
        "label_audit": audit, "cases": list(cases) if cases is not None else None,
        "intensity_histograms": histograms, "organ_sizes": volumes, "tags": tags,
        "report_examples": None if examples is None else [
            {"case_id": e["case_id"], "tags": e["tags"]} for e in examples],
    })


def write_exploration(
    config: ExplorationConfig,
    record: Mapping[str, Any],
    figures: Mapping[str, Any] | None = None,
    report_html: str | None = None,
) -> dict[str, Path]:
    """Write the figures, ``report_examples.html`` and ``exploration.json`` into ``config.output_dir``.

    Every file is written atomically (a temporary file renamed into place), ``exploration.json``
    last: a folder holding it holds a complete exploration.

    Args:
        config: gives ``output_dir`` and ``overwrite``.
        record: from :func:`exploration_record`.
        figures: file stem -> matplotlib Figure or Axes (saved as ``<stem>.png``); ``None`` values
            are skipped.
        report_html: from :func:`report_examples_html` (saved as ``report_examples.html``).

    Returns:
        What was written: ``"json"``, ``"report_html"`` and each figure stem -> path.

    Raises:
        FileExistsError: ``output_dir`` holds an earlier exploration and ``overwrite`` is false.
        ValueError: a figure stem that is not a plain file name.
    """
    from mosmoskit.io import atomic_path, atomic_write_text, ensure_new_dir

    out = Path(config.output_dir).expanduser()
    try:
        ensure_new_dir(out, overwrite=config.overwrite, marker=EXPLORATION_FILE)
    except FileExistsError as err:
        raise FileExistsError(f"output_dir: {err}") from None
    written: dict[str, Path] = {}
    for stem, figure in (figures or {}).items():
        if figure is None:
            continue
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", stem) or stem in (".", ".."):
            raise ValueError(f"figure name {stem!r} must be a plain file name (letters, digits, _ . -)")
        fig = getattr(figure, "figure", figure)  # an Axes knows its Figure
        path = out / f"{stem}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        written[stem] = path
    if report_html is not None:
        page = ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Report examples</title></head><body>\n"
                f"{report_html}\n</body></html>\n")
        written["report_html"] = atomic_write_text(out / "report_examples.html", page)
    record = dict(record)
    record["files"] = {k: p.name for k, p in written.items()}
    text = json.dumps(_finite(record), indent=1, allow_nan=False) + "\n"
    written["json"] = atomic_write_text(out / EXPLORATION_FILE, text)
    return written


def run_exploration(config: ExplorationConfig, progress: bool = True) -> dict[str, Any]:
    """Every step of notebook 01 without a notebook: read, audit (raising on bad masks), summarise, write.

    Returns:
        ``{"cohort", "scan", "record", "written"}``: the :class:`Cohort`, the :class:`CohortScan`,
        the dict written to ``exploration.json`` and the paths written.

    Raises:
        As :func:`open_cohort`, :func:`scan_cohort`, :func:`label_audit` and :func:`write_exploration`.
    """
    import matplotlib.pyplot as plt

    cohort = open_cohort(config, progress=progress)
    scan = scan_cohort(cohort, config.hu_range, progress=progress, spatial_dims=config.spatial_dims)
    audit = label_audit(scan)
    histograms, volumes = hu_histograms(scan), organ_volumes(scan)
    tags = tag_frequencies(cohort)
    examples = report_examples(cohort, config.n_report_examples, seed=config.seed)
    figures: dict[str, Any] = {}
    try:
        figures["hu_histograms"] = plot_hu_histograms(histograms, cohort.label_map)
        figures["organ_sizes"] = plot_organ_volumes(volumes, cohort.label_map)
        figures["tag_frequencies"] = plot_tag_frequencies(tags)
        figures["orthogonal_slices"] = plot_orthogonal_slices(scan)
        record = exploration_record(config, cohort, audit, case_table(scan), histograms, volumes, tags, examples)
        written = write_exploration(config, record, figures, report_examples_html(examples))
    finally:
        for fig in figures.values():
            if fig is not None:
                plt.close(getattr(fig, "figure", fig))
    return {"cohort": cohort, "scan": scan, "record": json.loads(written["json"].read_text(encoding="utf-8")),
            "written": written}
