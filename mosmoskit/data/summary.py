"""What is in a data folder: cases, image grids, a label audit, organ sizes and report tags.

The first thing to do with a new data set (or a freshly generated phantom cohort) is to look at it.
:func:`summarize_cohort` reads a folder in the MSD layout (``imagesTr/``, ``labelsTr/``,
``dataset.json``, optionally ``reports.jsonl``), the layout of the phantom cohort and of real data
sets such as BTCV and AMOS, and answers:

* **Images**: per case the shape, spacing, axis codes as stored (``('L', 'P', 'S')`` ...) and the
  intensity range (Hounsfield units for CT). Arrays are read in RAS orientation by
  :mod:`mosmoskit.data.readers`, so shapes are the shapes the models see.
* **Label audit**: every mask is checked against the label map (values) and against its image
  (same grid). All failures are collected, then one ``ValueError`` lists every bad case, so one
  run tells you everything to fix instead of one problem per run.
* **Organs**: in how many cases each organ is present, its median size (ml for volumes, cm^2 for
  2D slices: voxel count x voxel size) and its mean intensity (pooled over the organ's voxels in
  all cases).
* **Reports** (when ``reports.jsonl`` exists): the tags the rule-based parser
  (:func:`mosmoskit.reports.extract_tags`) reads from each report, counted per organ
  (present / absent / unmentioned); when the rows carry ground-truth tags (the phantom generator
  writes them), how often the parser agrees with them, overall, per true value and per organ,
  with the confusion table; and whether the parser's "present"/"absent" agree with the masks
  (an organ tagged present should have voxels, one tagged absent should have none).

Why the last check matters: tags are the supervision of pre-training objective B. A parser that
calls a resected spleen "present" teaches the tag head the wrong thing, silently.

:func:`write_summary` writes ``summary.json`` (everything, machine-readable), ``summary.md`` (the
tables) and ``cohort_overview.png`` (a few cases with their label overlay and report).

Example:
    >>> from mosmoskit.data.summary import summarize_cohort, write_summary   # doctest: +SKIP
    >>> summary = summarize_cohort("runs/demo/data3d")                        # doctest: +SKIP
    >>> summary.reports.generator.accuracy                                    # doctest: +SKIP
    0.97...
    >>> write_summary(summary, "runs/demo/summary3d")                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mosmoskit.labels import LabelMap

__all__ = [
    "TAG_NAMES",
    "CaseStats",
    "CohortSummary",
    "LabelAudit",
    "MaskAgreement",
    "OrganStats",
    "ReportStats",
    "TagAgreement",
    "format_summary",
    "plot_cohort_overview",
    "summarize_cohort",
    "write_summary",
]

#: Tag value -> the word used in tables and JSON keys (the values of ``extract_tags``).
TAG_NAMES: dict[int, str] = {1: "present", 0: "absent", -1: "unmentioned"}
#: How many disagreements (case, organ, ...) a summary keeps as examples.
DEFAULT_MAX_EXAMPLES = 20
#: How many cases the overview figure shows by default.
DEFAULT_FIGURE_CASES = 3
#: Display window (HU) for CT in the overview figure (soft tissue).
CT_WINDOW_HU = (-160.0, 240.0)
#: The figure gets a colour legend only up to this many structures (the label map's 20 colours
#: repeat beyond it, and a legend of 60 TotalSegmentator structures buries the images).
MAX_LEGEND_ENTRIES = 20
#: Size of one panel of the overview figure (inches) and its resolution.
PANEL_INCHES = 3.4
FIGURE_DPI = 100
#: For other modalities the figure window spans these percentiles of the image.
NON_CT_WINDOW_PERCENTILES = (1.0, 99.0)
#: Size units: a volume's voxel size is in mm^3 (1 ml = 1000 mm^3), a slice's pixel in mm^2
#: (1 cm^2 = 100 mm^2).
_SIZE_UNITS = {3: ("ml", 1000.0), 2: ("cm2", 100.0)}


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


# =============================================================================================
# result records
# =============================================================================================
@dataclass(frozen=True)
class CaseStats:
    """One case as read from disk.

    Attributes:
        case_id: the case id from the data list.
        image: image path relative to the cohort folder (absolute if outside it).
        label: label path likewise, or ``None`` for a case without mask.
        shape: spatial shape in RAS orientation, (X, Y, Z) or (X, Y).
        spacing: mm per voxel along each axis.
        axcodes: axis codes of the array as stored in the file (``("R", "A", "S")`` for the phantom).
        intensity_min, intensity_max, intensity_mean: over the whole image (HU for CT).
        values_found: distinct values in the mask (ids of the label map; for a mask that failed
            the audit, the values as stored).
        organ_voxels: organ -> voxel count, for organs present in the mask.
        organ_mean_intensity: organ -> mean image intensity over the organ's voxels.
        voxel_size: mm^3 per voxel (mm^2 per pixel for 2D).
        problem: why the case failed the audit (unreadable file, values not in the label map, mask
            not on the image grid), or ``None``.
    """

    case_id: str
    image: str
    label: str | None
    shape: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()
    axcodes: tuple[str, ...] = ()
    intensity_min: float | None = None
    intensity_max: float | None = None
    intensity_mean: float | None = None
    values_found: tuple[int, ...] = ()
    organ_voxels: Mapping[str, int] = field(default_factory=dict)
    organ_mean_intensity: Mapping[str, float] = field(default_factory=dict)
    voxel_size: float | None = None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id, "image": self.image, "label": self.label, "shape": list(self.shape),
            "spacing": list(self.spacing), "axcodes": "".join(self.axcodes),
            "intensity_min": self.intensity_min, "intensity_max": self.intensity_max,
            "intensity_mean": self.intensity_mean, "values_found": list(self.values_found),
            "organ_voxels": dict(self.organ_voxels), "organ_mean_intensity": dict(self.organ_mean_intensity),
            "voxel_size": self.voxel_size, "problem": self.problem,
        }


@dataclass(frozen=True)
class LabelAudit:
    """Result of checking every mask against the label map and its image.

    Attributes:
        label_map: name of the map the masks were checked against.
        expected_values: the values a mask may hold (ids; raw values for maps with ``raw_values``).
        n_checked: number of cases with a label file.
        n_without_label: cases listed without a label (they are not audited).
        failures: case id -> what is wrong, for every failing case.
    """

    label_map: str
    expected_values: tuple[int, ...]
    n_checked: int
    n_without_label: int
    failures: Mapping[str, str]

    @property
    def ok(self) -> bool:
        """True when no case failed."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"label_map": self.label_map, "expected_values": list(self.expected_values),
                "n_checked": self.n_checked, "n_without_label": self.n_without_label, "ok": self.ok,
                "failures": dict(self.failures)}


@dataclass(frozen=True)
class OrganStats:
    """One organ over the cohort (cases that passed the audit).

    Attributes:
        name: label map name.
        n_present: cases whose mask holds the organ.
        n_cases: cases with a mask that passed the audit.
        median_size, min_size, max_size: over the cases where it is present, in ``size_unit``
            (``None`` when it is never present).
        mean_intensity: mean image intensity over all its voxels in all cases (HU for CT).
    """

    name: str
    n_present: int
    n_cases: int
    median_size: float | None
    min_size: float | None
    max_size: float | None
    mean_intensity: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"n_present": self.n_present, "n_cases": self.n_cases, "median_size": self.median_size,
                "min_size": self.min_size, "max_size": self.max_size, "mean_intensity": self.mean_intensity}


@dataclass(frozen=True)
class TagAgreement:
    """The report parser's tags compared with ground-truth tags (the phantom generator's).

    Every (case, organ) pair whose ground truth is known counts once.

    Attributes:
        n_pairs: number of (case, organ) pairs compared.
        n_correct: pairs where the parser gives the true value.
        accuracy: ``n_correct / n_pairs``.
        accuracy_by_true: true value name (``present``/``absent``/``unmentioned``) -> accuracy
            among the pairs with that true value (``None`` when there are none).
        count_by_true: true value name -> number of pairs.
        accuracy_by_organ: organ -> accuracy over its pairs.
        confusion: true value name -> predicted value name -> count; all entries sum to ``n_pairs``.
        examples: up to ``max_examples`` disagreements ``{case_id, organ, true, predicted}``.
    """

    n_pairs: int
    n_correct: int
    accuracy: float | None
    accuracy_by_true: Mapping[str, float | None]
    count_by_true: Mapping[str, int]
    accuracy_by_organ: Mapping[str, float | None]
    confusion: Mapping[str, Mapping[str, int]]
    examples: tuple[Mapping[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"n_pairs": self.n_pairs, "n_correct": self.n_correct, "accuracy": self.accuracy,
                "accuracy_by_true": dict(self.accuracy_by_true), "count_by_true": dict(self.count_by_true),
                "accuracy_by_organ": dict(self.accuracy_by_organ),
                "confusion": {k: dict(v) for k, v in self.confusion.items()},
                "examples": [dict(e) for e in self.examples]}


@dataclass(frozen=True)
class MaskAgreement:
    """The parser's "present"/"absent" tags compared with the label masks.

    Attributes:
        n_tagged_present: (case, organ) pairs the parser calls present.
        n_present_in_mask: of those, how many have at least one voxel in the mask.
        n_tagged_absent: pairs the parser calls absent.
        n_absent_in_mask: of those, how many have no voxel in the mask.
        per_organ: organ -> ``{"present": [agree, total], "absent": [agree, total]}``.
        examples: up to ``max_examples`` disagreements ``{case_id, organ, tag, voxels}``.
    """

    n_tagged_present: int
    n_present_in_mask: int
    n_tagged_absent: int
    n_absent_in_mask: int
    per_organ: Mapping[str, Mapping[str, tuple[int, int]]]
    examples: tuple[Mapping[str, Any], ...] = ()

    @property
    def present_agreement(self) -> float | None:
        """Share of "present" tags whose organ is in the mask."""
        return _ratio(self.n_present_in_mask, self.n_tagged_present)

    @property
    def absent_agreement(self) -> float | None:
        """Share of "absent" tags whose organ is not in the mask."""
        return _ratio(self.n_absent_in_mask, self.n_tagged_absent)

    def to_dict(self) -> dict[str, Any]:
        return {"n_tagged_present": self.n_tagged_present, "n_present_in_mask": self.n_present_in_mask,
                "present_agreement": self.present_agreement, "n_tagged_absent": self.n_tagged_absent,
                "n_absent_in_mask": self.n_absent_in_mask, "absent_agreement": self.absent_agreement,
                "per_organ": {o: {k: list(v) for k, v in d.items()} for o, d in self.per_organ.items()},
                "examples": [dict(e) for e in self.examples]}


@dataclass(frozen=True)
class ReportStats:
    """What the reports say, as read by the rule-based parser.

    Attributes:
        n_reports: cases with a report.
        extracted_counts: organ -> ``{"present": n, "absent": n, "unmentioned": n}``.
        generator: parser vs ground-truth tags, when the report rows carry ``tags``; else ``None``.
        mask: parser vs label masks, over reported cases with a mask that passed the audit; ``None``
            when there is no such case.
    """

    n_reports: int
    extracted_counts: Mapping[str, Mapping[str, int]]
    generator: TagAgreement | None
    mask: MaskAgreement | None

    def to_dict(self) -> dict[str, Any]:
        return {"n_reports": self.n_reports,
                "extracted_counts": {o: dict(c) for o, c in self.extracted_counts.items()},
                "generator": None if self.generator is None else self.generator.to_dict(),
                "mask": None if self.mask is None else self.mask.to_dict()}


@dataclass(frozen=True)
class CohortSummary:
    """Everything :func:`summarize_cohort` found in a data folder.

    Attributes:
        root: the folder (absolute).
        kind: ``"msd"`` (no reports) or ``"msd+reports"``.
        spatial_dims: 2 or 3 (the images' number of axes; ``None`` if no image could be read).
        modality: the modality named by ``dataset.json`` (``"CT"``, ``"MRI"``, ...) or ``""``.
        label_map: the map masks were checked against.
        cases: per-case records, in data-list order (failing cases included, with ``problem``).
        audit: the label audit.
        organs: organ -> :class:`OrganStats`, in label map order.
        size_unit: ``"ml"`` for volumes, ``"cm2"`` for 2D slices.
        reports: report statistics, or ``None`` without ``reports.jsonl``.
    """

    root: str
    kind: str
    spatial_dims: int | None
    modality: str
    label_map: LabelMap
    cases: tuple[CaseStats, ...]
    audit: LabelAudit
    organs: Mapping[str, OrganStats]
    size_unit: str
    reports: ReportStats | None

    @property
    def n_cases(self) -> int:
        return len(self.cases)

    @property
    def intensity_unit(self) -> str:
        """``"HU"`` for CT, ``"a.u."`` otherwise."""
        return "HU" if self.modality.upper() == "CT" else "a.u."

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (``summary.json``)."""
        return {
            "root": self.root, "kind": self.kind, "n_cases": self.n_cases, "spatial_dims": self.spatial_dims,
            "modality": self.modality, "intensity_unit": self.intensity_unit, "size_unit": self.size_unit,
            "label_map": self.label_map.to_dict(), "audit": self.audit.to_dict(),
            "organs": {n: o.to_dict() for n, o in self.organs.items()},
            "reports": None if self.reports is None else self.reports.to_dict(),
            "cases": [c.to_dict() for c in self.cases],
        }


# =============================================================================================
# reading one case
# =============================================================================================
def _relative(path: str | None, root: Path) -> str | None:
    if path is None:
        return None
    p = Path(path)
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


def _first(path: Any) -> str:
    """A case's image may be a list of files (multi-file images): the first one stands for it."""
    return str(path[0]) if isinstance(path, (list, tuple)) else str(path)


def _stored_values(path: str) -> tuple[int, ...]:
    """Distinct values of a mask file as stored (for the audit message of a failing mask)."""
    import nibabel as nib

    try:
        data = np.asanyarray(nib.load(path).dataobj)
        return tuple(int(v) for v in np.unique(data[np.isfinite(data)]))
    except Exception:  # noqa: BLE001 - the audit already records why the file is bad
        return ()


def _read_case(case: Mapping[str, Any], root: Path, label_map: LabelMap, channel: int | None) -> CaseStats:
    """Read one case's image and mask; any read or audit error goes into ``problem``."""
    from mosmoskit.data.readers import load_image, load_label

    image_path = _first(case["image"])
    label_path = None if case.get("label") is None else _first(case["label"])
    rel_image, rel_label = _relative(image_path, root), _relative(label_path, root)
    try:
        image = load_image(image_path, channel=channel)
    except (ValueError, FileNotFoundError) as err:
        return CaseStats(case["case_id"], rel_image, rel_label, problem=f"image: {err}")
    arr = image.array
    base = dict(
        case_id=case["case_id"], image=rel_image, label=rel_label, shape=image.shape, spacing=image.spacing,
        axcodes=image.axcodes_original, intensity_min=float(arr.min()), intensity_max=float(arr.max()),
        intensity_mean=float(arr.mean(dtype=np.float64)), voxel_size=float(np.prod(image.spacing)),
    )
    if label_path is None:
        return CaseStats(**base)
    try:
        label = load_label(label_path, label_map, reference=image)
    except (ValueError, FileNotFoundError) as err:
        return CaseStats(**base, values_found=_stored_values(label_path), problem=f"label: {err}")
    ids = label.array.ravel().astype(np.int64, copy=False)
    counts = np.bincount(ids, minlength=label_map.num_classes)
    sums = np.bincount(ids, weights=arr.ravel().astype(np.float64), minlength=label_map.num_classes)
    present = np.flatnonzero(counts)
    organs = [(label_map.name_of(i), int(i)) for i in present if i != 0]
    return CaseStats(
        **base,
        values_found=tuple(int(v) for v in present),
        organ_voxels={name: int(counts[i]) for name, i in organs},
        organ_mean_intensity={name: float(sums[i] / counts[i]) for name, i in organs},
    )


# =============================================================================================
# aggregation
# =============================================================================================
def _organ_stats(cases: Sequence[CaseStats], label_map: LabelMap, per_unit: float) -> dict[str, OrganStats]:
    audited = [c for c in cases if c.label is not None and c.problem is None]
    out = {}
    for organ in label_map.foreground_names:
        sizes = [c.organ_voxels[organ] * c.voxel_size / per_unit for c in audited if organ in c.organ_voxels]
        voxels = sum(c.organ_voxels.get(organ, 0) for c in audited)
        # pooled over voxels (not an average of case means): large organs of every case weigh alike
        weighted = sum(c.organ_mean_intensity[organ] * c.organ_voxels[organ] for c in audited if organ in c.organ_voxels)
        out[organ] = OrganStats(
            name=organ, n_present=len(sizes), n_cases=len(audited),
            median_size=float(np.median(sizes)) if sizes else None,
            min_size=float(min(sizes)) if sizes else None, max_size=float(max(sizes)) if sizes else None,
            mean_intensity=weighted / voxels if voxels else None,
        )
    return out


def _check_tag(value: Any, where: str) -> int:
    if isinstance(value, bool) or value not in TAG_NAMES:
        raise ValueError(f"{where}: tag must be one of {sorted(TAG_NAMES)} (1 present, 0 absent, -1 unmentioned), got {value!r}")
    return int(value)


def _tag_agreement(pairs: Sequence[tuple[str, str, int, int]], organs: Sequence[str], max_examples: int) -> TagAgreement:
    """``pairs``: (case_id, organ, true, predicted)."""
    names = list(TAG_NAMES.values())
    confusion = {t: {p: 0 for p in names} for t in names}
    by_organ: dict[str, list[int]] = {o: [0, 0] for o in organs}
    examples = []
    for case_id, organ, true, pred in pairs:
        confusion[TAG_NAMES[true]][TAG_NAMES[pred]] += 1
        by_organ[organ][1] += 1
        if true == pred:
            by_organ[organ][0] += 1
        elif len(examples) < max_examples:
            examples.append({"case_id": case_id, "organ": organ, "true": TAG_NAMES[true], "predicted": TAG_NAMES[pred]})
    n_correct = sum(confusion[n][n] for n in names)
    count_by_true = {t: sum(confusion[t].values()) for t in names}
    return TagAgreement(
        n_pairs=len(pairs), n_correct=n_correct, accuracy=_ratio(n_correct, len(pairs)),
        accuracy_by_true={t: _ratio(confusion[t][t], count_by_true[t]) for t in names},
        count_by_true=count_by_true,
        accuracy_by_organ={o: _ratio(*v) for o, v in by_organ.items()},
        confusion=confusion, examples=tuple(examples),
    )


def _mask_agreement(rows: Sequence[tuple[CaseStats, Mapping[str, int]]], organs: Sequence[str], max_examples: int) -> MaskAgreement:
    """``rows``: (case with audited mask, extracted tags)."""
    per_organ = {o: {"present": [0, 0], "absent": [0, 0]} for o in organs}
    examples = []
    for case, tags in rows:
        for organ in organs:
            tag = tags.get(organ, -1)
            if tag == -1:
                continue
            voxels = int(case.organ_voxels.get(organ, 0))
            key = TAG_NAMES[tag]
            agree = voxels > 0 if tag == 1 else voxels == 0
            per_organ[organ][key][1] += 1
            per_organ[organ][key][0] += int(agree)
            if not agree and len(examples) < max_examples:
                examples.append({"case_id": case.case_id, "organ": organ, "tag": key, "voxels": voxels})
    total = {k: [sum(d[k][i] for d in per_organ.values()) for i in (0, 1)] for k in ("present", "absent")}
    return MaskAgreement(
        n_tagged_present=total["present"][1], n_present_in_mask=total["present"][0],
        n_tagged_absent=total["absent"][1], n_absent_in_mask=total["absent"][0],
        per_organ={o: {k: tuple(v) for k, v in d.items()} for o, d in per_organ.items()},
        examples=tuple(examples),
    )


def _report_stats(
    raw_cases: Sequence[Mapping[str, Any]], stats: Sequence[CaseStats], label_map: LabelMap, max_examples: int,
    progress: bool,
) -> ReportStats:
    from tqdm.auto import tqdm

    from mosmoskit.reports import extract_tags

    organs = label_map.foreground_names
    counts = {o: {n: 0 for n in TAG_NAMES.values()} for o in organs}
    truth_pairs: list[tuple[str, str, int, int]] = []
    mask_rows = []
    n_reports = 0
    with_report = [(c, s) for c, s in zip(raw_cases, stats) if isinstance(c.get("report"), str)]
    for case, case_stats in tqdm(with_report, desc="reports", unit="report", disable=not progress, leave=False):
        n_reports += 1
        where = f"report of case {case['case_id']!r}"
        extracted = {o: _check_tag(v, f"extract_tags on the {where}, organ {o!r}")
                     for o, v in extract_tags(case["report"], label_map).items() if o in counts}
        for organ in organs:
            counts[organ][TAG_NAMES[extracted.get(organ, -1)]] += 1
        truth = case.get("tags")
        if truth is not None:
            if not isinstance(truth, Mapping):
                raise ValueError(f"{where}: 'tags' must be an object organ -> 1/0/-1, got {type(truth).__name__}")
            for organ in organs:  # organs the map has; tags for other structures are not comparable
                if organ in truth:
                    true = _check_tag(truth[organ], f"{where}, ground-truth tag of {organ!r}")
                    truth_pairs.append((case["case_id"], organ, true, extracted.get(organ, -1)))
        if case_stats.label is not None and case_stats.problem is None:
            mask_rows.append((case_stats, extracted))
    return ReportStats(
        n_reports=n_reports,
        extracted_counts=counts,
        generator=_tag_agreement(truth_pairs, organs, max_examples) if truth_pairs else None,
        mask=_mask_agreement(mask_rows, organs, max_examples) if mask_rows else None,
    )


def _modality(dataset_json: Path) -> str:
    try:
        modality = json.loads(dataset_json.read_text(encoding="utf-8")).get("modality", {})
    except (OSError, ValueError, AttributeError):
        return ""
    if isinstance(modality, Mapping):
        return "+".join(str(v) for v in modality.values())
    return str(modality or "")


def _audit_error(root: Path, audit: LabelAudit, n_cases: int) -> ValueError:
    lines = "\n".join(f"  {cid}: {msg}" for cid, msg in audit.failures.items())
    return ValueError(
        f"{root}: label audit failed for {len(audit.failures)} of {n_cases} case(s) "
        f"(label map {audit.label_map!r}, expected values {list(audit.expected_values)}):\n{lines}\n"
        f"Fix these files, pass the right label map, or use strict=False (--lenient) to summarise the rest."
    )


def summarize_cohort(
    folder: str | Path,
    label_map: str | Path | LabelMap | None = None,
    progress: bool = True,
    strict: bool = True,
    channel: int | None = None,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
) -> CohortSummary:
    """Read a data folder in the MSD layout and summarise it.

    Args:
        folder: holds ``dataset.json`` (its ``training`` section is read) and optionally
            ``reports.jsonl``, joined to the cases by image path (see
            :func:`mosmoskit.data.datalists.load_dataset`).
        label_map: the map masks must use (shipped name, JSON path or :class:`LabelMap`); default
            the one ``dataset.json`` names or implies.
        progress: show progress bars.
        strict: raise when any case fails the audit; ``False`` records the failures in
            ``summary.audit`` and summarises the cases that passed.
        channel: for images holding several volumes (BraTS' 4 MR sequences), which one to read.
        max_examples: how many disagreements the report statistics keep as examples.

    Returns:
        A :class:`CohortSummary`.

    Raises:
        FileNotFoundError: ``folder`` does not exist or holds no ``dataset.json``; a file that
            ``dataset.json`` lists is missing.
        ValueError: ``dataset.json`` is malformed or lists no case; with ``strict``, one or more
            cases fail the audit (the message lists every one and what is wrong); a report row
            with malformed ``tags``.
    """
    from tqdm.auto import tqdm

    from mosmoskit.data.datalists import load_dataset

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such data folder")
    dataset_json = root / "dataset.json"
    if not dataset_json.is_file():
        raise FileNotFoundError(
            f"{root}: no dataset.json; summarize_cohort reads the MSD layout (imagesTr/, labelsTr/, "
            f"dataset.json, optional reports.jsonl). Write one for your data, or generate a phantom cohort "
            f"with: python -m mosmoskit phantoms --out DIR"
        )
    if int(max_examples) < 0:
        raise ValueError(f"max_examples must be >= 0, got {max_examples!r}")
    data = load_dataset(root, label_map=label_map)
    lmap = data.label_map
    if not data.cases:
        raise ValueError(f"{dataset_json}: the 'training' section lists no case")
    root_abs = root.resolve()
    stats = [
        _read_case(case, root_abs, lmap, channel)
        for case in tqdm(data.cases, desc="cases", unit="case", disable=not progress, leave=False)
    ]
    raw = lmap.raw_values is not None
    audit = LabelAudit(
        label_map=lmap.name,
        expected_values=tuple(sorted((lmap.raw_values if raw else lmap.labels).values())),
        n_checked=sum(1 for s in stats if s.label is not None),
        n_without_label=sum(1 for s in stats if s.label is None),
        failures={s.case_id: s.problem for s in stats if s.problem is not None},
    )
    if strict and not audit.ok:
        raise _audit_error(root, audit, len(stats))
    dims = {len(s.shape) for s in stats if s.shape}
    if len(dims) > 1:
        raise ValueError(f"{root}: cases mix 2D and 3D images ({sorted(dims)}); summarise them separately")
    spatial_dims = dims.pop() if dims else None
    size_unit, per_unit = _SIZE_UNITS[spatial_dims or 3]
    reports = None
    if data.kind == "msd+reports":
        reports = _report_stats(data.cases, stats, lmap, int(max_examples), progress)
    return CohortSummary(
        root=str(root_abs), kind=data.kind, spatial_dims=spatial_dims, modality=_modality(dataset_json),
        label_map=lmap, cases=tuple(stats), audit=audit,
        organs=_organ_stats(stats, lmap, per_unit), size_unit=size_unit, reports=reports,
    )


# =============================================================================================
# tables
# =============================================================================================
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _tuple_text(values: Sequence[Any], digits: int | None = None) -> str:
    if digits is None:
        return "x".join(str(v) for v in values)
    return " x ".join(f"{v:.{digits}g}" for v in values)


def format_summary(summary: CohortSummary, max_case_rows: int | None = None) -> str:
    """The summary as Markdown tables (what ``summary.md`` holds and the CLI prints).

    Args:
        summary: from :func:`summarize_cohort`.
        max_case_rows: show at most this many rows of the per-case table (``None``: all).

    Returns:
        Markdown text.
    """
    s = summary
    hu = s.intensity_unit
    lm = s.label_map
    out = [
        f"# Cohort summary: {Path(s.root).name}",
        "",
        f"- folder: `{s.root}`",
        f"- cases: {s.n_cases} ({s.spatial_dims}D images, modality {s.modality or 'unknown'}), "
        f"label map `{lm.name}` ({len(lm.foreground_names)} structures)",
        f"- reports: {s.reports.n_reports if s.reports else 'none (no reports.jsonl)'}",
        "",
        "## Images",
        "",
    ]
    shapes = sorted({_tuple_text(c.shape) for c in s.cases if c.shape})
    spacings = sorted({_tuple_text(c.spacing, 4) for c in s.cases if c.spacing})
    codes = sorted({"".join(c.axcodes) for c in s.cases if c.axcodes})
    out += [f"shapes (RAS): {', '.join(shapes) or '-'}; spacings (mm): {', '.join(spacings) or '-'}; "
            f"axis codes as stored: {', '.join(codes) or '-'}", ""]
    shown = s.cases if max_case_rows is None else s.cases[: max(0, int(max_case_rows))]
    rows = [
        [c.case_id, _tuple_text(c.shape) or "-", _tuple_text(c.spacing, 4) or "-", "".join(c.axcodes) or "-",
         _fmt(c.intensity_min, 0), _fmt(c.intensity_max, 0), _fmt(c.intensity_mean, 1),
         len(c.organ_voxels) if c.problem is None and c.label is not None else "-", "FAILED" if c.problem else "ok"]
        for c in shown
    ]
    out.append(_table(["case", "shape", "spacing (mm)", "axes", f"min {hu}", f"max {hu}", f"mean {hu}",
                       "organs", "audit"], rows))
    if len(shown) < s.n_cases:
        out.append(f"\n... {s.n_cases - len(shown)} more case(s) in summary.json")
    out += ["", "## Label audit", ""]
    a = s.audit
    if a.ok:
        out.append(f"OK: {'all ' if a.n_checked > 1 else ''}{a.n_checked} mask(s) hold only values {a.expected_values[0]}..{a.expected_values[-1]} "
                   f"of label map `{a.label_map}` and lie on their image's grid"
                   + (f"; {a.n_without_label} case(s) have no mask." if a.n_without_label else "."))
    else:
        out.append(f"FAILED for {len(a.failures)} of {a.n_checked + a.n_without_label} case(s) "
                   f"(expected values {list(a.expected_values)}):")
        out.append("")
        found = {c.case_id: c.values_found for c in s.cases}
        out.append(_table(["case", "values found", "problem"],
                          [[cid, list(found.get(cid, ())), msg.splitlines()[0]] for cid, msg in a.failures.items()]))
    out += ["", "## Organs", ""]
    unit = s.size_unit.replace("cm2", "cm^2")
    out.append(_table(
        ["organ", "cases present", f"median size ({unit})", f"range ({unit})", f"mean {hu}"],
        [[o.name, f"{o.n_present}/{o.n_cases}", _fmt(o.median_size, 1),
          "-" if o.min_size is None else f"{o.min_size:.1f}-{o.max_size:.1f}", _fmt(o.mean_intensity, 1)]
         for o in s.organs.values()],
    ))
    if s.reports is not None:
        out += _format_reports(s.reports, lm)
    return "\n".join(out) + "\n"


def _format_reports(r: ReportStats, lm: LabelMap) -> list[str]:
    names = list(TAG_NAMES.values())
    out = ["", "## Reports", "", f"Tags read by the rule-based parser from {r.n_reports} report(s):", ""]
    out.append(_table(["organ", *names], [[o, *(r.extracted_counts[o][n] for n in names)] for o in lm.foreground_names]))
    g = r.generator
    if g is not None:
        out += ["", "### Parser vs ground-truth tags", "",
                f"accuracy {_fmt(g.accuracy)} ({g.n_correct}/{g.n_pairs} (case, organ) pairs); by true value: "
                + ", ".join(f"{t} {_fmt(g.accuracy_by_true[t])} (n={g.count_by_true[t]})" for t in names), "",
                "Confusion (rows: true, columns: parser):", ""]
        out.append(_table(["true \\ parser", *names], [[t, *(g.confusion[t][p] for p in names)] for t in names]))
        out += ["", _table(["organ", "accuracy"], [[o, _fmt(v)] for o, v in g.accuracy_by_organ.items()])]
        if g.examples:
            out += ["", "Disagreements (first ones): " + "; ".join(
                f"{e['case_id']} {e['organ']}: true {e['true']}, parser {e['predicted']}" for e in g.examples)]
    m = r.mask
    if m is not None:
        out += ["", "### Parser vs label masks", "",
                f"tagged present and in the mask: {m.n_present_in_mask}/{m.n_tagged_present} "
                f"({_fmt(m.present_agreement)}); tagged absent and empty in the mask: "
                f"{m.n_absent_in_mask}/{m.n_tagged_absent} ({_fmt(m.absent_agreement)})"]
        if m.examples:
            out += ["", "Disagreements (first ones): " + "; ".join(
                f"{e['case_id']} {e['organ']}: tagged {e['tag']}, {e['voxels']} voxels" for e in m.examples)]
    return out


# =============================================================================================
# writing
# =============================================================================================
def _figure_cases(summary: CohortSummary, n: int) -> list[CaseStats]:
    """Up to ``n`` audited cases spread over the cohort (for slices: different levels and patients)."""
    good = [c for c in summary.cases if c.problem is None and c.shape]
    if not good or n <= 0:
        return []
    picks = np.unique(np.linspace(0, len(good) - 1, min(n, len(good))).round().astype(int))
    return [good[i] for i in picks]


def _window(image: np.ndarray, modality: str) -> tuple[float, float]:
    if modality.upper() == "CT":
        return CT_WINDOW_HU
    lo, hi = np.percentile(image, NON_CT_WINDOW_PERCENTILES)
    return (float(lo), float(hi) if hi > lo else float(lo) + 1.0)


def plot_cohort_overview(summary: CohortSummary, n_cases: int = DEFAULT_FIGURE_CASES, channel: int | None = None) -> Any:
    """A figure with one row per case: its views with the label overlay, and its report.

    Args:
        summary: from :func:`summarize_cohort` (images are re-read from ``summary.root``).
        n_cases: how many cases (spread over the cohort; failing cases are skipped).
        channel: as in :func:`summarize_cohort`.

    Returns:
        A matplotlib ``Figure`` (made without pyplot, so no GUI backend is touched), or ``None``
        when there is no case to show. The report panel appears when the cohort has reports; the
        colour legend when at most :data:`MAX_LEGEND_ENTRIES` structures are shown.
    """
    from matplotlib.figure import Figure

    from mosmoskit.data.readers import load_image, load_label
    from mosmoskit.viz.slices import plot_case_overview

    chosen = _figure_cases(summary, n_cases)
    if not chosen:
        return None
    views = ("axial", "coronal", "sagittal") if summary.spatial_dims == 3 else ("axial",)
    reports = {}
    if summary.reports is not None:
        from mosmoskit.data.datalists import load_dataset

        data = load_dataset(summary.root, label_map=summary.label_map)
        reports = {c["case_id"]: c.get("report") for c in data.cases}
    root = Path(summary.root)
    n_cols = len(views) + (1 if reports else 0)
    # the extra height leaves room for the legend under the panels
    fig = Figure(figsize=(PANEL_INCHES * n_cols, PANEL_INCHES * len(chosen) + 0.6), layout="constrained")
    grid = fig.subplots(len(chosen), n_cols, squeeze=False)
    shown: set[str] = set()
    for row, case in zip(grid, chosen):
        shown.update(case.organ_voxels)
        image = load_image(root / case.image, channel=channel)
        label = None if case.label is None else load_label(root / case.label, summary.label_map, reference=image).array
        report = (reports.get(case.case_id) or "(no report)") if reports else None
        plot_case_overview(image.array, label, summary.label_map, views=views, report=report,
                           spacing=image.spacing, axes=list(row), window=_window(image.array, summary.modality))
        row[0].set_ylabel(case.case_id, fontsize=9)
    fig.suptitle(f"{Path(summary.root).name}: {len(chosen)} of {summary.n_cases} cases", fontsize=11)
    if 0 < len(shown) <= MAX_LEGEND_ENTRIES:
        from matplotlib.patches import Patch

        colors = summary.label_map.colors()
        handles = [Patch(color=colors[n], label=n) for n in summary.label_map.foreground_names if n in shown]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize=7, frameon=False)
    return fig


def write_summary(
    summary: CohortSummary, out_dir: str | Path, figure_cases: int = DEFAULT_FIGURE_CASES, channel: int | None = None
) -> dict[str, Path]:
    """Write ``summary.json``, ``summary.md`` and ``cohort_overview.png`` into ``out_dir`` (atomically).

    Args:
        summary: from :func:`summarize_cohort`.
        out_dir: created if needed; these three files are replaced, nothing else is touched.
        figure_cases: cases shown in the figure (0: no figure).
        channel: as in :func:`summarize_cohort`.

    Returns:
        File kind (``"json"``, ``"markdown"``, ``"figure"``) -> path written.

    Raises:
        ValueError: ``figure_cases < 0``.
    """
    from mosmoskit.io import atomic_path, atomic_write_text

    if int(figure_cases) < 0:
        raise ValueError(f"figure_cases must be >= 0, got {figure_cases!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {
        "json": atomic_write_text(out / "summary.json", json.dumps(summary.to_dict(), indent=1, allow_nan=False) + "\n"),
        "markdown": atomic_write_text(out / "summary.md", format_summary(summary)),
    }
    fig = plot_cohort_overview(summary, int(figure_cases), channel=channel) if figure_cases else None
    if fig is not None:
        path = out / "cohort_overview.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=FIGURE_DPI)
        written["figure"] = path
    return written
