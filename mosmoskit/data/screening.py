"""Open every case of a cohort once, and keep the good ones or stop at the first bad one.

Real cohorts hold a few broken cases: a ``.nii.gz`` cut short by an interrupted copy, a mask with
a stray value, a mask exported on another grid than its scan. Without screening the first of them
stops a run whenever a data loader reaches it, possibly hours in. :func:`screen_cases` reads every
case up front with the kit's readers (:func:`~mosmoskit.data.readers.load_image`,
:func:`~mosmoskit.data.readers.load_label` with the label map's value check and the alignment
check against the image) and either

* raises at the first bad case (``skip_bad=False``): the message names the file and the problem,
  exactly as the reader said it; or
* skips the bad cases (``skip_bad=True``) but drops none silently: the :class:`ScreenResult` lists
  every skipped case with the file and the reason, :meth:`ScreenResult.report` prints them as a
  table and :meth:`ScreenResult.write_report` keeps them as JSON next to the run's results.

Only data errors count as "bad": ``ValueError`` (which :class:`~mosmoskit.data.readers.ImageReadError`
is) and ``OSError`` (a missing or unreadable file). Anything else, a ``MemoryError`` included, is
not a property of one case and propagates.

Example:
    >>> from mosmoskit.data.datalists import load_dataset                       # doctest: +SKIP
    >>> cohort = load_dataset("data/btcv", label_map="btcv")                    # doctest: +SKIP
    >>> result = screen_cases(cohort.cases, cohort.label_map, skip_bad=True)    # doctest: +SKIP
    >>> print(result.report())                                                  # doctest: +SKIP
    screened 30 cases: 28 kept, 2 skipped
    case     file                       reason
    img0007  labelsTr/label0007.nii.gz  label values [14] are not in label map 'btcv' ...
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from mosmoskit.io import atomic_write_text
from mosmoskit.labels import LabelMap, load_label_map

__all__ = ["SCREEN_ERRORS", "ScreenResult", "SkippedCase", "screen_cases", "screen_summary"]

#: The exceptions that make a case "bad" (a property of its files); all others propagate.
SCREEN_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


@dataclass(frozen=True)
class SkippedCase:
    """One case left out by :func:`screen_cases`, and why.

    Attributes:
        case_id: the case's id.
        path: the file (or DICOM folder) that failed: the image, or the label.
        reason: the reader's message (names the file and what is wrong).
        error: the exception's type name (``ImageReadError``, ``ValueError``, ``FileNotFoundError`` ...).
    """

    case_id: str
    path: str
    reason: str
    error: str = ""


@dataclass(frozen=True)
class ScreenResult:
    """The cases :func:`screen_cases` kept and the ones it skipped.

    Attributes:
        good: the case dicts that opened cleanly, in input order (the input dicts themselves).
        skipped: one :class:`SkippedCase` per case left out, in input order.
        checked_labels: whether the labels were read and checked (``check_labels``).
    """

    good: list[dict[str, Any]]
    skipped: list[SkippedCase] = field(default_factory=list)
    checked_labels: bool = True

    @property
    def n_cases(self) -> int:
        """How many cases were screened."""
        return len(self.good) + len(self.skipped)

    @property
    def good_ids(self) -> list[str]:
        """Case ids of the kept cases."""
        return [str(c["case_id"]) for c in self.good]

    @property
    def skipped_ids(self) -> list[str]:
        """Case ids of the skipped cases."""
        return [s.case_id for s in self.skipped]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: counts, kept ids, and every skipped case with its file and reason."""
        return {
            "cases": self.n_cases,
            "kept": len(self.good),
            "skipped": len(self.skipped),
            "checked_labels": self.checked_labels,
            "kept_case_ids": self.good_ids,
            "skipped_cases": [asdict(s) for s in self.skipped],
        }

    def report(self, root: str | Path | None = None) -> str:
        """A printable table of the skipped cases (case, file, reason), under a one-line count.

        Args:
            root: shorten file paths under this folder (e.g. the data set's folder).

        Returns:
            The text; each reason on one line (line breaks of multi-line messages become ``"; "``),
            without the file path it starts with (the file has its own column) and with paths
            under ``root`` shortened. The JSON report keeps the messages as they were.
        """
        head = f"screened {self.n_cases} cases: {len(self.good)} kept, {len(self.skipped)} skipped"
        if not self.skipped:
            return head
        rows = [(s.case_id, _short_path(s.path, root), _one_line(s.reason, s.path, root)) for s in self.skipped]
        widths = [max(len(r[i]) for r in [("case", "file", "reason"), *rows]) for i in range(2)]
        lines = [head, f"{'case':<{widths[0]}}  {'file':<{widths[1]}}  reason"]
        lines += [f"{c:<{widths[0]}}  {f:<{widths[1]}}  {r}" for c, f, r in rows]
        return "\n".join(lines)

    def write_report(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (atomically); returns ``path``."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")


def _short_path(path: str, root: str | Path | None) -> str:
    if root is not None:
        try:
            return str(Path(path).relative_to(Path(root)))
        except ValueError:
            pass
    return str(path)


def _one_line(reason: str, path: str, root: str | Path | None) -> str:
    """The reason as one line, without the ``"<path>: "`` prefix the readers start with, and
    with other paths under ``root`` shortened."""
    text = reason[len(path) + 2:] if reason.startswith(f"{path}: ") else reason
    if root is not None:
        text = text.replace(f"{Path(root)}{os.sep}", "")
    out = ""
    for line in (" ".join(raw.split()) for raw in text.splitlines()):
        if line:
            out += (" " if out.endswith(":") else "; ") + line if out else line
    return out


def _paths(value: Any) -> list[str]:
    """One file or a list of files (multi-channel images) as a list of strings."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def _screen_one(case: Mapping[str, Any], label_map: LabelMap, check_labels: bool) -> tuple[str, BaseException] | None:
    """Read one case; returns None if it is good, else (the file that failed, the error)."""
    from mosmoskit.data.readers import check_aligned, load_image, load_label

    if "image" not in case:
        return str(case.get("case_id", "?")), ValueError(f"case {case.get('case_id')!r} has no 'image' entry")
    images = _paths(case["image"])
    reference = None
    for path in images:
        try:
            volume = load_image(path)
            if reference is not None:
                check_aligned(volume, reference)  # the channels of one case share one grid
        except SCREEN_ERRORS as err:
            return path, err
        if reference is None:
            reference = volume
    label = case.get("label")
    if label:
        try:
            if check_labels:
                load_label(label, label_map, reference=reference)
            elif not Path(label).exists():
                raise FileNotFoundError(f"{label}: no such file or folder")
        except SCREEN_ERRORS as err:
            return str(label), err
    return None


def screen_cases(
    cases: Iterable[Mapping[str, Any]],
    label_map: str | LabelMap,
    *,
    skip_bad: bool,
    check_labels: bool = True,
    progress: bool = False,
) -> ScreenResult:
    """Open every case once; raise at the first bad one, or skip and list the bad ones.

    Args:
        cases: case dicts with ``case_id``, ``image`` (a file, a DICOM folder, or a list of files
            for a multi-channel case) and optionally ``label`` (as
            :func:`~mosmoskit.data.datalists.load_dataset` gives them).
        label_map: the map the labels' values must belong to (a name, a JSON path or a
            :class:`~mosmoskit.labels.LabelMap`).
        skip_bad: ``False``: the first bad case raises; ``True``: bad cases are skipped and listed.
        check_labels: read each label, check its values against ``label_map`` and its grid
            against its image; ``False`` only checks that the label file exists (a cheaper pass
            over images alone).
        progress: show a progress bar.

    Returns:
        A :class:`ScreenResult`: the good cases (the input dicts, in order) and the skipped ones.

    Raises:
        ValueError, OSError: with ``skip_bad=False``, the first bad case's error, unchanged: its
            message names the file and the problem (an unreadable or truncated file, label values
            not in the map, a mask on another grid than its image, a missing file).
        ValueError: a case id that appears twice (its files would be screened, and counted, twice).
    """
    from tqdm.auto import tqdm

    label_map = load_label_map(label_map)
    cases = list(cases)
    seen: set[str] = set()
    for case in cases:
        case_id = str(case.get("case_id", ""))
        if case_id in seen:
            raise ValueError(f"screen_cases: case id {case_id!r} appears twice; case ids must be unique")
        seen.add(case_id)
    good: list[dict[str, Any]] = []
    skipped: list[SkippedCase] = []
    for case in tqdm(cases, desc="screening cases", unit="case", disable=not progress):
        failure = _screen_one(case, label_map, check_labels)
        if failure is None:
            good.append(case)  # type: ignore[arg-type]
            continue
        path, err = failure
        if not skip_bad:
            raise err
        skipped.append(SkippedCase(case_id=str(case.get("case_id", "")), path=path, reason=str(err),
                                   error=type(err).__name__))
    return ScreenResult(good=good, skipped=skipped, checked_labels=check_labels)


def screen_summary(result: ScreenResult | None) -> dict[str, Any]:
    """The counts a run records (metrics.json's ``data`` entry): screened or not, kept, skipped."""
    if result is None:
        return {"screened": False}
    return {"screened": True, "cases": result.n_cases, "kept": len(result.good), "skipped": len(result.skipped),
            "skipped_case_ids": result.skipped_ids}

