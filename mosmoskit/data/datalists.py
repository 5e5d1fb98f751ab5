"""Data lists: which files make a case, read from the formats data sets ship with.

Three inputs are understood:

* an **MSD ``dataset.json``** (Medical Segmentation Decathlon; also AMOS, BTCV as converted by
  MONAI, and the phantom cohort): ``labels`` (MSD's id -> name, ``{"0": "background", "1":
  "spleen"}``, or name -> id), and sections ``training``/``validation``/``test`` of
  ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}`` entries;
* an **image-report manifest**, CSV (columns ``image``, ``report``; optional ``case_id``,
  ``label``) or JSONL (one object per line with the same keys, e.g. the phantom's
  ``reports.jsonl``, which adds ``tags`` and ``findings``);
* a **folder** holding a ``dataset.json`` (and a ``reports.jsonl`` next to it, joined by image).

Paths are resolved relative to the file that names them and must stay inside the data root
(symlinks resolved), so a data list cannot point a training job at ``../../etc/passwd``; pass
``allow_outside_root=True`` for data sets that keep images elsewhere on purpose. Every file must
exist: errors list the missing ones (first 10 and a count) instead of failing at epoch 3.

Every case dict has a ``case_id`` (from the entry, or the image file name without ``.nii.gz``),
``image`` (absolute path string, or a list for multi-file images) and, when known, ``label`` and
``report``; other keys of the entry are kept.

:func:`split_cases` makes deterministic patient-level splits.

Example:
    >>> from mosmoskit.data.datalists import load_dataset, split_cases      # doctest: +SKIP
    >>> data = load_dataset("runs/phantoms")                                  # doctest: +SKIP
    >>> data.cases[0]["report"][:40], data.label_map.name                     # doctest: +SKIP
    >>> split_cases([c["case_id"] for c in data.cases], {"train": 0.8, "test": 0.2}, seed=0)
    ... # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from mosmoskit.labels import LabelMap, available_label_maps, canonical_name, load_label_map

__all__ = [
    "CaseList",
    "MAX_LISTED",
    "case_id_from_path",
    "load_dataset",
    "load_image_report_pairs",
    "load_msd_datalist",
    "resolve_data_path",
    "split_cases",
]

#: How many offending items an error message lists before it says "... and N more".
MAX_LISTED = 10
#: Keys of a case dict that hold file paths (resolved and checked).
PATH_KEYS = ("image", "label")
_MANIFEST_SUFFIXES = (".csv", ".jsonl")
_NIFTI_GZ = ".nii.gz"


def _listing(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    shown = "\n".join(f"  {item}" for item in items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return shown + more


def case_id_from_path(path: str | Path) -> str:
    """Case id from an image path: the file name without ``.nii.gz``/``.nii``/``.dcm`` (a DICOM
    folder keeps its name)."""
    name = Path(path).name
    lower = name.lower()
    for suffix in (_NIFTI_GZ, ".nii", ".dcm"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def resolve_data_path(
    value: str | Path, base: Path, root: Path, allow_outside_root: bool = False, where: str = ""
) -> Path:
    """Resolve one path from a data list.

    Args:
        value: the path as written (relative to ``base``, or absolute).
        base: folder relative paths are resolved against.
        root: folder the resolved path (symlinks followed) must lie in.
        allow_outside_root: skip the containment check.
        where: file and entry for the message (``"dataset.json training[3]"``).

    Returns:
        The absolute, symlink-free path (it may not exist; callers check that).

    Raises:
        ValueError: empty or non-string path, or a path that leaves ``root``.
    """
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise ValueError(f"{where}: path must be a non-empty string, got {value!r}")
    resolved = (base / Path(str(value).strip()).expanduser()).resolve()
    if not allow_outside_root:
        root_resolved = root.resolve()
        if not resolved.is_relative_to(root_resolved):
            raise ValueError(
                f"{where}: path {value!r} resolves to {resolved}, outside the data root {root_resolved}; "
                f"pass allow_outside_root=True if the data set keeps files elsewhere on purpose"
            )
    return resolved


def _resolve_entry_paths(
    entry: dict[str, Any], base: Path, root: Path, allow_outside_root: bool, where: str, missing: list[str]
) -> dict[str, Any]:
    """Resolve the path keys of one case dict in place; append missing files to ``missing``."""
    for key in PATH_KEYS:
        if key not in entry or entry[key] is None:
            continue
        value = entry[key]
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise ValueError(f"{where}: {key!r} is an empty list")
        out = []
        for v in values:
            p = resolve_data_path(v, base, root, allow_outside_root, where=f"{where} {key!r}")
            if not p.exists():
                missing.append(f"{where} {key}: {p}")
            out.append(str(p))
        entry[key] = out if isinstance(value, (list, tuple)) else out[0]
    return entry


def _raise_missing(source: Path, missing: list[str]) -> None:
    if missing:
        raise FileNotFoundError(f"{source}: {len(missing)} file(s) listed do not exist:\n{_listing(missing)}")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err


# ---------------------------------------------------------------------------------------------
# MSD dataset.json
# ---------------------------------------------------------------------------------------------
def _is_int_like(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()


def _json_labels(labels: Any, source: Path) -> dict[int, str]:
    """The ``labels`` field as value -> canonical name, accepting MSD's id -> name and name -> id."""
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError(f"{source}: 'labels' must be a non-empty object such as {{\"0\": \"background\", \"1\": \"spleen\"}}")
    if all(_is_int_like(k) for k in labels) and all(isinstance(v, str) for v in labels.values()):
        pairs = [(int(k), v) for k, v in labels.items()]
    elif all(isinstance(k, str) for k in labels) and all(_is_int_like(v) for v in labels.values()):
        pairs = [(int(v), k) for k, v in labels.items()]
    else:
        raise ValueError(
            f"{source}: 'labels' must map ids to names ({{\"0\": \"background\"}}, MSD's form) or names to ids, "
            f"got {dict(list(labels.items())[:5])}"
        )
    out: dict[int, str] = {}
    for value, name in pairs:
        cname = canonical_name(name)
        if value in out:
            raise ValueError(f"{source}: label value {value} is given twice ({out[value]!r}, {cname!r})")
        if cname in out.values():
            raise ValueError(f"{source}: label name {name!r} is given twice")
        out[value] = cname
    return out


def _label_map_agrees(json_labels: dict[int, str], label_map: LabelMap, source: Path) -> None:
    """Raise unless the json's value -> name pairs equal the map's (ids, or raw values if it has them)."""
    def pairs(table: Mapping[str, int]) -> dict[int, str]:
        return {int(v): canonical_name(k) for k, v in table.items()}

    candidates = [("ids", pairs(label_map.labels))]
    if label_map.raw_values is not None:
        candidates.append(("raw values", pairs(label_map.raw_values)))
    for _, expected in candidates:
        if expected == json_labels:
            return
    # explain against the numbering the json most resembles (same values: raw values, else ids)
    kind, expected = max(candidates, key=lambda c: len(set(c[1]) & set(json_labels)))
    only_json = sorted(set(json_labels.values()) - set(expected.values()))
    only_map = sorted(set(expected.values()) - set(json_labels.values()))
    by_name_json = {n: v for v, n in json_labels.items()}
    by_name_map = {n: v for v, n in expected.items()}
    moved = sorted(
        f"{n}: {by_name_json[n]} in the json, {by_name_map[n]} in the map"
        for n in set(by_name_json) & set(by_name_map)
        if by_name_json[n] != by_name_map[n]
    )
    details = []
    if only_json:
        details.append(f"only in the json: {only_json}")
    if only_map:
        details.append(f"only in label map {label_map.name!r}: {only_map}")
    if moved:
        details.append(f"different {kind}: {moved}")
    raise ValueError(
        f"{source}: 'labels' disagree with label map {label_map.name!r} (names compared after "
        f"canonical_name): " + "; ".join(details)
    )


def _label_map_from_json(json_labels: dict[int, str], data: Mapping[str, Any], source: Path) -> LabelMap:
    name = str(data.get("name") or source.parent.name or "dataset")
    labels = {n: v for v, n in json_labels.items()}
    try:
        return LabelMap(name=name, labels=labels, description=str(data.get("description", "")), source=str(source))
    except ValueError as err:
        raise ValueError(
            f"{source}: its 'labels' do not form a label map ({err}). If the files store values such as "
            f"205/420/... (MMWHS) or 0/1/2/4 (BraTS), pass label_map= a map with raw_values "
            f"(one of {available_label_maps()} or a JSON file)"
        ) from err


def load_msd_datalist(
    dataset_json: str | Path,
    section: str = "training",
    data_root: str | Path | None = None,
    label_map: str | Path | LabelMap | None = None,
    allow_outside_root: bool = False,
) -> tuple[list[dict[str, Any]], LabelMap]:
    """Read one section of an MSD-style ``dataset.json``.

    Args:
        dataset_json: the file.
        section: ``"training"``, ``"validation"``, ``"test"`` or any list-valued key.
        data_root: folder the entries' paths are relative to, and that they must stay inside;
            default the json file's folder.
        label_map: the map the data set must use (a shipped name, a JSON path or a
            :class:`LabelMap`); it must agree with the json's ``labels`` by name. Default: the
            map named by the json's ``"label_map"`` key if present, else one built from ``labels``
            (names passed through :func:`~mosmoskit.labels.canonical_name`).
        allow_outside_root: accept paths that resolve outside ``data_root``.

    Returns:
        (cases, label_map). Each case: ``case_id``, ``image`` (absolute path, or list of them),
        ``label`` when the entry has one, and any other keys of the entry. MSD's bare-string test
        entries become ``{"image": ...}``.

    Raises:
        FileNotFoundError: the json or any listed file is missing (first 10 listed, and a count).
        ValueError: invalid JSON, unknown section (the message lists the sections), malformed
            entries, labels that disagree with ``label_map``, paths outside the root, duplicate
            case ids.
    """
    source = Path(dataset_json).expanduser()
    data = _read_json(source)
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a JSON object at the top level, got {type(data).__name__}")
    json_labels = _json_labels(data.get("labels"), source)
    if label_map is None and data.get("label_map") is not None:
        named = data["label_map"]
        if not isinstance(named, str):
            raise ValueError(f"{source}: 'label_map' must name a label map, got {named!r}")
        # a path in the json is relative to the json's folder
        label_map = named if named in available_label_maps() else str((source.parent / named))
    if label_map is not None:
        label_map = load_label_map(label_map)
        _label_map_agrees(json_labels, label_map, source)
    else:
        label_map = _label_map_from_json(json_labels, data, source)

    sections = [k for k, v in data.items() if isinstance(v, list)]
    if section not in data or not isinstance(data[section], list):
        raise ValueError(f"{source}: no section {section!r}; list-valued sections are {sections}")
    root = Path(data_root).expanduser() if data_root is not None else source.parent
    base = root
    cases: list[dict[str, Any]] = []
    missing: list[str] = []
    for i, raw in enumerate(data[section]):
        where = f"{source.name} {section}[{i}]"
        if isinstance(raw, str):
            entry: dict[str, Any] = {"image": raw}
        elif isinstance(raw, Mapping):
            entry = dict(raw)
        else:
            raise ValueError(f"{source}: {section}[{i}] must be an object with 'image' or a path string, got {raw!r}")
        if "image" not in entry:
            raise ValueError(f"{source}: {section}[{i}] has no 'image' key (keys: {sorted(entry)})")
        _resolve_entry_paths(entry, base, root, allow_outside_root, where, missing)
        first_image = entry["image"][0] if isinstance(entry["image"], list) else entry["image"]
        entry["case_id"] = str(entry.get("case_id") or case_id_from_path(first_image))
        cases.append(entry)
    _raise_missing(source, missing)
    _check_unique_ids(cases, source)
    return cases, label_map


def _check_unique_ids(cases: Sequence[Mapping[str, Any]], source: Path) -> None:
    seen: dict[str, int] = {}
    dups = []
    for i, case in enumerate(cases):
        cid = case["case_id"]
        if cid in seen:
            dups.append(f"{cid!r} (entries {seen[cid]} and {i})")
        seen.setdefault(cid, i)
    if dups:
        raise ValueError(f"{source}: case ids must be unique; repeated:\n{_listing(dups)}")


# ---------------------------------------------------------------------------------------------
# image-report manifests
# ---------------------------------------------------------------------------------------------
def _manifest_rows(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    """Yield (where, row) for a CSV (header = row 1) or JSONL manifest."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            lacking = [c for c in ("image", "report") if c not in columns]
            if lacking:
                raise ValueError(f"{path}: missing column(s) {lacking}; header has {columns} (need image, report)")
            for k, row in enumerate(reader, start=2):
                if None in row:
                    raise ValueError(f"{path} row {k}: more fields than the header's {len(columns)} columns")
                yield f"{path} row {k}", dict(row)
    elif suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for k, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path} line {k}: not valid JSON: {err}") from err
                if not isinstance(row, dict):
                    raise ValueError(f"{path} line {k}: expected a JSON object, got {type(row).__name__}")
                yield f"{path} line {k}", row
    else:
        raise ValueError(f"{path}: manifest must be .csv or .jsonl, got {path.suffix!r}")


def load_image_report_pairs(
    path: str | Path,
    data_root: str | Path | None = None,
    allow_outside_root: bool = False,
) -> list[dict[str, Any]]:
    """Read an image-report manifest (CSV or JSONL) into case dicts.

    Args:
        path: ``.csv`` (header with ``image`` and ``report``; optional ``case_id``, ``label``) or
            ``.jsonl`` (one object per line with at least ``image`` and ``report``).
        data_root: folder paths are relative to and must stay inside; default the manifest's folder.
        allow_outside_root: accept paths that resolve outside ``data_root``.

    Returns:
        One dict per row: ``case_id`` (given, or the image file name), ``image`` (absolute path),
        ``report`` (str), ``label`` if given (empty CSV cells count as absent), and any other keys.

    Raises:
        FileNotFoundError: the manifest or any listed file is missing (rows named, first 10).
        ValueError: unknown suffix, missing column, malformed JSON line, a row without image,
            an empty or non-string report, duplicate case ids, or no rows at all; each message
            names the file and the row (CSV, header is row 1) or line (JSONL).
    """
    source = Path(path).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such manifest file")
    root = Path(data_root).expanduser() if data_root is not None else source.parent
    cases: list[dict[str, Any]] = []
    missing: list[str] = []
    problems: list[str] = []
    for where, row in _manifest_rows(source):
        report = row.get("report")
        if not isinstance(report, str) or not report.strip():
            problems.append(f"{where}: report must be non-empty text, got {report!r}")
            continue
        if not row.get("image"):
            problems.append(f"{where}: no image path")
            continue
        entry = {k: v for k, v in row.items() if not (k == "label" and v in ("", None))}
        if isinstance(entry.get("case_id"), str) and not entry["case_id"].strip():
            del entry["case_id"]
        _resolve_entry_paths(entry, root, root, allow_outside_root, where, missing)
        first_image = entry["image"][0] if isinstance(entry["image"], list) else entry["image"]
        entry["case_id"] = str(entry.get("case_id") or case_id_from_path(first_image))
        cases.append(entry)
    if problems:
        raise ValueError(f"{source}: {len(problems)} invalid row(s):\n{_listing(problems)}")
    _raise_missing(source, missing)
    if not cases:
        raise ValueError(f"{source}: manifest holds no rows")
    _check_unique_ids(cases, source)
    return cases


# ---------------------------------------------------------------------------------------------
# one entry point
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseList:
    """Cases of one data set, as :func:`load_dataset` found them.

    Attributes:
        cases: the case dicts (``case_id``, ``image``, optional ``label``, ``report``, ...).
        label_map: the data set's label map (``None`` for a manifest without masks).
        source: the file the list came from (``dataset.json`` or the manifest).
        kind: ``"msd"``, ``"msd+reports"`` or ``"manifest"``.
    """

    cases: list[dict[str, Any]]
    label_map: LabelMap | None
    source: Path
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in ("msd", "msd+reports", "manifest"):
            raise ValueError(f"CaseList.kind must be 'msd', 'msd+reports' or 'manifest', got {self.kind!r}")

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def case_ids(self) -> list[str]:
        return [c["case_id"] for c in self.cases]

    @property
    def with_reports(self) -> list[dict[str, Any]]:
        """The cases that have a report (for pre-training)."""
        return [c for c in self.cases if "report" in c]


def _join_reports(cases: list[dict[str, Any]], reports: list[dict[str, Any]], source: Path) -> list[dict[str, Any]]:
    """Add each report row's fields to the case with the same image path (else same case id)."""
    by_image = {}
    for case in cases:
        key = case["image"] if isinstance(case["image"], str) else tuple(case["image"])
        by_image[key] = case
    by_id = {c["case_id"]: c for c in cases}
    joined = {c["case_id"]: dict(c) for c in cases}
    for row in reports:
        key = row["image"] if isinstance(row["image"], str) else tuple(row["image"])
        case = by_image.get(key) or by_id.get(row["case_id"])
        if case is None:
            continue  # a report for an image the section does not list (another section)
        if "label" in row and "label" in case and row["label"] != case["label"]:
            raise ValueError(
                f"{source}: case {case['case_id']!r} has label {case['label']} in dataset.json but "
                f"{row['label']} in the report manifest"
            )
        out = joined[case["case_id"]]
        for k, v in row.items():
            if k not in ("image", "case_id", "label"):
                out[k] = v
    return [joined[c["case_id"]] for c in cases]


def load_dataset(
    root_or_file: str | Path,
    section: str = "training",
    label_map: str | Path | LabelMap | None = None,
    allow_outside_root: bool = False,
) -> CaseList:
    """Load a data set from whatever the user points at.

    * a folder with ``dataset.json``: its ``section``, joined with ``reports.jsonl`` from the same
      folder if present (by image path, else case id: each case gains ``report`` and the row's
      other keys such as ``tags``; cases without a report keep none);
    * a folder with only ``reports.jsonl``: that manifest;
    * a ``.json`` file: an MSD ``dataset.json`` (no report join);
    * a ``.csv`` or ``.jsonl`` file: an image-report manifest.

    Args:
        root_or_file: folder or file, as above.
        section: MSD section to read.
        label_map: see :func:`load_msd_datalist` (ignored for manifests).
        allow_outside_root: see :func:`load_msd_datalist`.

    Raises:
        FileNotFoundError: the path does not exist, or a folder has neither file.
        ValueError: as the readers above.
    """
    path = Path(root_or_file).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        dataset_json, reports = path / "dataset.json", path / "reports.jsonl"
        if dataset_json.is_file():
            cases, lmap = load_msd_datalist(dataset_json, section, label_map=label_map, allow_outside_root=allow_outside_root)
            if reports.is_file():
                rows = load_image_report_pairs(reports, data_root=path, allow_outside_root=allow_outside_root)
                return CaseList(_join_reports(cases, rows, reports), lmap, dataset_json, "msd+reports")
            return CaseList(cases, lmap, dataset_json, "msd")
        if reports.is_file():
            return CaseList(load_image_report_pairs(reports, allow_outside_root=allow_outside_root), None, reports, "manifest")
        raise FileNotFoundError(f"{path}: folder holds neither dataset.json nor reports.jsonl")
    suffix = path.suffix.lower()
    if suffix == ".json":
        cases, lmap = load_msd_datalist(path, section, label_map=label_map, allow_outside_root=allow_outside_root)
        return CaseList(cases, lmap, path, "msd")
    if suffix in _MANIFEST_SUFFIXES:
        return CaseList(load_image_report_pairs(path, allow_outside_root=allow_outside_root), None, path, "manifest")
    raise ValueError(f"{path}: expected a data folder, a dataset.json, or a .csv/.jsonl manifest")


# ---------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------
def _split_sizes(sizes: Mapping[str, float | int | None], n: int) -> dict[str, int]:
    """Turn fractions or counts into counts that sum to ``n``."""
    if not sizes:
        raise ValueError("split sizes must name at least one split, e.g. {'train': 0.8, 'test': 0.2}")
    rest = [k for k, v in sizes.items() if v is None]
    if len(rest) > 1:
        raise ValueError(f"at most one split may be None ('the rest'), got {rest}")
    given = {k: v for k, v in sizes.items() if v is not None}
    for k, v in given.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"split size {k!r} must be a non-negative number, got {v!r}")
    # ints are counts, floats are fractions; 0 fits both
    as_counts = all(isinstance(v, (int, np.integer)) for v in given.values())
    if not as_counts and any(isinstance(v, (int, np.integer)) and v != 0 for v in given.values()):
        raise ValueError(
            f"split sizes mix counts (ints) and fractions (floats): {dict(sizes)}; write fractions as floats (1.0)"
        )
    if as_counts:
        counts = {k: int(v) for k, v in given.items()}
        total = sum(counts.values())
        if rest:
            if total > n:
                raise ValueError(f"split counts {counts} need {total} cases, only {n} given")
            counts[rest[0]] = n - total
        elif total != n:
            raise ValueError(
                f"split counts {counts} sum to {total}, but there are {n} cases (or patients); make them "
                f"sum to {n}, give one split as None for the rest, or use fractions (floats)"
            )
        return {k: counts[k] for k in sizes}
    fractions = {k: float(v) for k, v in given.items()}
    total = sum(fractions.values())
    if rest:
        if total > 1 + 1e-9:
            raise ValueError(f"split fractions {fractions} sum to {total:.6g} > 1")
        fractions[rest[0]] = max(0.0, 1.0 - total)
    elif abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions {fractions} sum to {total:.6g}; they must sum to 1 (or give one split as None)")
    # largest remainder, then make sure every split asked for (> 0) gets at least one case
    exact = {k: fractions[k] * n for k in sizes}
    counts = {k: int(math.floor(v)) for k, v in exact.items()}
    for k in sorted(sizes, key=lambda k: (-(exact[k] - counts[k]), list(sizes).index(k)))[: n - sum(counts.values())]:
        counts[k] += 1
    wanted = [k for k in sizes if fractions[k] > 0]
    if len(wanted) > n:
        raise ValueError(f"{len(wanted)} non-empty splits {wanted} need at least {len(wanted)} cases, got {n}")
    for k in wanted:
        if counts[k] == 0:
            donor = max(counts, key=lambda d: (counts[d], -list(sizes).index(d)))
            counts[donor] -= 1
            counts[k] += 1
    return counts


def split_cases(
    case_ids: Iterable[str],
    sizes: Mapping[str, float | int | None],
    seed: int = 0,
    groups: Mapping[str, str] | Callable[[str], str] | None = None,
) -> dict[str, list[str]]:
    """Deterministic, patient-level split of case ids.

    The ids (or their groups) are sorted, shuffled by ``numpy.random.default_rng(seed)`` and cut
    into consecutive chunks in the order of ``sizes``; each split's ids are returned sorted. So
    the result depends only on the *set* of ids, ``sizes`` and ``seed``, never on input order.

    Args:
        case_ids: unique ids (e.g. ``phantom_0003`` or ``phantom_0003_s05``).
        sizes: split name -> fraction (floats summing to 1) or count (ints summing to the number
            of ids/groups); one value may be ``None`` for "the rest". With fractions every split
            with a fraction > 0 gets at least one id (largest-remainder rounding otherwise).
        seed: shuffling seed.
        groups: case id -> patient id (mapping or function). Cases of one patient always land in
            the same split and sizes count patients, so slices of one volume cannot leak from
            training into test. Default: each case is its own patient.

    Returns:
        Split name -> sorted case ids, in the order of ``sizes``.

    Raises:
        ValueError: duplicate ids, bad sizes (negative, mixed, not summing up), more non-empty
            splits than patients, or a case missing from ``groups``.

    Example:
        >>> split_cases(["c", "a", "b", "d"], {"train": 0.5, "test": 0.5}, seed=0) == \\
        ...     split_cases(["d", "c", "b", "a"], {"train": 0.5, "test": 0.5}, seed=0)
        True
    """
    ids = [str(c) for c in case_ids]
    if len(set(ids)) != len(ids):
        seen, dups = set(), []
        for c in ids:
            if c in seen:
                dups.append(c)
            seen.add(c)
        raise ValueError(f"case ids must be unique; repeated: {sorted(set(dups))[:MAX_LISTED]}")
    if groups is None:
        group_of = {c: c for c in ids}
    else:
        lookup = groups if callable(groups) else groups.__getitem__
        group_of = {}
        lacking = []
        for c in ids:
            try:
                group_of[c] = str(lookup(c))
            except KeyError:
                lacking.append(c)
        if lacking:
            raise ValueError(f"groups has no patient for case ids {lacking[:MAX_LISTED]}")
    units = sorted(set(group_of.values()))
    if not units:
        raise ValueError("split_cases needs at least one case id")
    counts = _split_sizes(sizes, len(units))
    order = np.random.default_rng(seed).permutation(len(units))
    shuffled = [units[i] for i in order]
    split_of_unit: dict[str, str] = {}
    start = 0
    for name in sizes:
        for unit in shuffled[start : start + counts[name]]:
            split_of_unit[unit] = name
        start += counts[name]
    out: dict[str, list[str]] = {name: [] for name in sizes}
    for c in sorted(ids):
        out[split_of_unit[group_of[c]]].append(c)
    return out
