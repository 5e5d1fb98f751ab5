"""The label-scarce protocol: a fixed held-out split, and nested labelled subsets of the rest.

DESIGN.md section 2: fine-tune on 1 %, 5 %, 10 %, 25 % and 100 % of the labelled training cases,
several seeds, and report per-organ metrics on a *fixed* held-out split. Two functions make the
case lists, and both work on patients, never on files, so the slices of one volume can never sit
on both sides of a split:

* :func:`patient_split` cuts the cohort once into test / validation / training patients. It does
  not know about label fractions, so the test set cannot change when the fraction does; the test
  set is the first chunk of one seeded permutation, so it does not change with ``val_fraction``
  either.
* :func:`select_labelled_subset` picks the labelled training cases. For one seed it shuffles the
  (sorted) patients once and takes a prefix, so the subsets are *nested*: the 5 % subset is
  contained in the 10 % subset, which is contained in the 25 % subset. Differences between
  fractions then come from adding labelled cases, not from drawing different ones, and two
  methods run with the same seed are compared on the same cases (paired).

:class:`LabelScarceProtocol` bundles the fractions, seeds and split settings, lists every run,
and writes itself as a dict to store next to each number.

Example:
    >>> from mosmoskit.data.protocol import patient_split, select_labelled_subset
    >>> cases = [f"case_{i:02d}" for i in range(20)]
    >>> split = patient_split(cases, test_fraction=0.2, seed=0)
    >>> len(split["test"]), len(split["train"])
    (4, 16)
    >>> small = select_labelled_subset(split["train"], label_fraction=0.1, seed=1)
    >>> large = select_labelled_subset(split["train"], label_fraction=0.25, seed=1)
    >>> len(small), len(large), set(small) <= set(large)
    (2, 4, True)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from mosmoskit.data.datalists import split_cases

__all__ = ["DEFAULT_LABEL_FRACTIONS", "LabelScarceProtocol", "patient_split", "select_labelled_subset"]

#: The label fractions of DESIGN.md section 2.
DEFAULT_LABEL_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.25, 1.0)
# fraction * n is computed in floating point: 0.1 * 30 is 3.0000000000000004, which a bare ceil
# would turn into 4 cases. Products within this tolerance of an integer count as that integer.
_COUNT_TOLERANCE = 1e-9

Groups = Mapping[str, str] | Callable[[str], str] | None


def _unique_ids(case_ids: Iterable[str]) -> list[str]:
    ids = [str(c) for c in case_ids]
    seen: set[str] = set()
    dups: set[str] = set()
    for c in ids:
        (dups if c in seen else seen).add(c)
    if dups:
        raise ValueError(f"case ids must be unique; repeated: {sorted(dups)[:10]}")
    if not ids:
        raise ValueError("no case ids given: the protocol needs at least one case")
    return ids


def _patients(ids: list[str], groups: Groups) -> dict[str, list[str]]:
    """Patient id -> its sorted case ids (each case its own patient when ``groups`` is None)."""
    if groups is None:
        return {c: [c] for c in sorted(ids)}
    lookup = groups if callable(groups) else groups.__getitem__
    out: dict[str, list[str]] = {}
    lacking = []
    for c in sorted(ids):
        try:
            patient = str(lookup(c))
        except KeyError:
            lacking.append(c)
            continue
        out.setdefault(patient, []).append(c)
    if lacking:
        raise ValueError(f"groups has no patient for case ids {lacking[:10]}{' ...' if len(lacking) > 10 else ''}")
    return out


def _check_fraction(value: Any, name: str, low_open: bool, allow_one: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    ok_low = v > 0.0 if low_open else v >= 0.0
    ok_high = v <= 1.0 if allow_one else v < 1.0
    if not (math.isfinite(v) and ok_low and ok_high):
        interval = f"{'(' if low_open else '['}0, 1{']' if allow_one else ')'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return v


def select_labelled_subset(
    case_ids: Iterable[str],
    label_fraction: float | None = None,
    n_labelled: int | None = None,
    seed: int = 0,
    groups: Groups = None,
) -> list[str]:
    """The labelled training cases of one run of the label-scarce protocol.

    The patients are sorted, shuffled once with ``numpy.random.default_rng(seed)``, and the first
    ``n`` are taken with all their cases. So, for one seed and one set of cases:

    * the result does not depend on the order of ``case_ids``;
    * subsets are nested: a smaller fraction (or count) gives a subset of a larger one;
    * at least one patient is always taken.

    Args:
        case_ids: the training cases (unique ids; never the test cases).
        label_fraction: share of the *patients* to label, in (0, 1]; the count is
            ``ceil(label_fraction * n_patients)``, at least 1, so a fraction never gets fewer
            cases than it asks for (1 % of 30 patients is 1 patient, 10 % of 30 is 3).
        n_labelled: number of patients to label, 1..n_patients (instead of ``label_fraction``).
        seed: the subset seed. Runs with different seeds draw different subsets; every method
            compared under one seed sees the same subset.
        groups: case id -> patient id (mapping or function), for 2D slices or several scans of
            one patient: all cases of a patient are in or out together, and both
            ``label_fraction`` and ``n_labelled`` count patients. Default: one case per patient.

    Returns:
        The selected case ids, sorted.

    Raises:
        ValueError: both or neither of ``label_fraction`` and ``n_labelled``; a fraction outside
            (0, 1] or a count outside 1..n_patients (the message gives the range); no or
            duplicate case ids; a case missing from ``groups``.
    """
    if (label_fraction is None) == (n_labelled is None):
        raise ValueError(
            f"give exactly one of label_fraction and n_labelled, got label_fraction={label_fraction!r}, "
            f"n_labelled={n_labelled!r}"
        )
    ids = _unique_ids(case_ids)
    patients = _patients(ids, groups)
    units = sorted(patients)
    if label_fraction is not None:
        fraction = _check_fraction(label_fraction, "label_fraction", low_open=True, allow_one=True)
        count = max(1, math.ceil(fraction * len(units) - _COUNT_TOLERANCE))
    else:
        if isinstance(n_labelled, bool) or not isinstance(n_labelled, (int, np.integer)):
            raise ValueError(f"n_labelled must be an integer, got {n_labelled!r}")
        count = int(n_labelled)
        if not 1 <= count <= len(units):
            raise ValueError(
                f"n_labelled must be in 1..{len(units)} (the number of patients), got {n_labelled!r}"
            )
    order = np.random.default_rng(seed).permutation(len(units))
    chosen = [units[i] for i in order[:count]]
    return sorted(c for p in chosen for c in patients[p])


def patient_split(
    case_ids: Iterable[str],
    groups: Groups = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> dict[str, list[str]]:
    """The fixed held-out split of the protocol, by patient.

    The patients are sorted and shuffled once with ``seed`` (by
    :func:`mosmoskit.data.datalists.split_cases`); the first ``round(test_fraction * n)`` are the
    test set, the next ``round(val_fraction * n)`` the validation set, the rest training. The
    test set therefore depends only on the set of patients, ``test_fraction`` and ``seed``: not
    on the input order, not on ``val_fraction``, and not on any label fraction (those subsample
    ``"train"`` later, with :func:`select_labelled_subset`).

    Args:
        case_ids: all cases of the cohort (unique ids).
        groups: case id -> patient id (mapping or function); a patient's cases never straddle
            two sets. Default: one case per patient.
        test_fraction: share of patients held out for testing, in [0, 1). A positive fraction
            gets at least one patient.
        val_fraction: share of patients for validation (model selection), in [0, 1).
        seed: the split seed. Keep it fixed across all runs of a study.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted; ``"val"`` is empty when
        ``val_fraction`` is 0.

    Raises:
        ValueError: a fraction outside [0, 1), fractions that leave no training patient, no or
            duplicate case ids, or a case missing from ``groups``.
    """
    test_fraction = _check_fraction(test_fraction, "test_fraction", low_open=False, allow_one=False)
    val_fraction = _check_fraction(val_fraction, "val_fraction", low_open=False, allow_one=False)
    ids = _unique_ids(case_ids)
    n = len(_patients(ids, groups))

    def count(fraction: float) -> int:
        # half-up rounding (not Python's banker's rounding) and at least one patient if asked for
        return max(1, math.floor(fraction * n + 0.5)) if fraction > 0 else 0

    n_test, n_val = count(test_fraction), count(val_fraction)
    if n_test + n_val >= n:
        raise ValueError(
            f"test_fraction={test_fraction} and val_fraction={val_fraction} take {n_test} + {n_val} of {n} "
            f"patients and leave none for training; lower them or add cases"
        )
    # Counts in this order make split_cases take test first from its single permutation.
    parts = split_cases(ids, {"test": n_test, "val": n_val, "train": None}, seed=seed, groups=groups)
    return {"train": parts["train"], "val": parts["val"], "test": parts["test"]}


@dataclass(frozen=True)
class LabelScarceProtocol:
    """Fractions, seeds and split settings of a label-scarce study, in one place.

    Args:
        label_fractions: shares of the training patients to label, each in (0, 1], increasing.
        seeds: subset seeds; each (fraction, seed) pair is one run.
        split_seed: seed of the fixed held-out split (the same for every run).
        test_fraction: share of patients held out for testing, in [0, 1).
        val_fraction: share of patients for validation, in [0, 1).

    Raises:
        ValueError: empty, repeated, unsorted or out-of-range fractions; no or repeated seeds;
            bad split fractions.

    Example:
        >>> protocol = LabelScarceProtocol(label_fractions=(0.1, 1.0), seeds=(0, 1))
        >>> split = protocol.split([f"c{i}" for i in range(10)])
        >>> [(f, s, len(cases)) for f, s, cases in protocol.runs(split["train"])]
        [(0.1, 0, 1), (0.1, 1, 1), (1.0, 0, 8), (1.0, 1, 8)]
    """

    label_fractions: tuple[float, ...] = DEFAULT_LABEL_FRACTIONS
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    split_seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.0

    def __post_init__(self) -> None:
        fractions = tuple(
            _check_fraction(f, "each label fraction", low_open=True, allow_one=True) for f in self.label_fractions
        )
        if not fractions or list(fractions) != sorted(set(fractions)):
            raise ValueError(f"label_fractions must be non-empty, increasing and unique, got {self.label_fractions!r}")
        seeds = tuple(self.seeds)
        if not seeds or len(set(seeds)) != len(seeds) or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds
        ):
            raise ValueError(f"seeds must be a non-empty tuple of distinct integers, got {self.seeds!r}")
        _check_fraction(self.test_fraction, "test_fraction", low_open=False, allow_one=False)
        _check_fraction(self.val_fraction, "val_fraction", low_open=False, allow_one=False)
        object.__setattr__(self, "label_fractions", fractions)
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))

    def split(self, case_ids: Iterable[str], groups: Groups = None) -> dict[str, list[str]]:
        """The fixed held-out split (:func:`patient_split` with this protocol's settings)."""
        return patient_split(case_ids, groups, self.test_fraction, self.val_fraction, self.split_seed)

    def runs(self, train_ids: Iterable[str], groups: Groups = None) -> Iterator[tuple[float, int, list[str]]]:
        """Yield ``(label_fraction, seed, labelled case ids)`` for every run, fractions outer."""
        ids = list(train_ids)
        for fraction in self.label_fractions:
            for seed in self.seeds:
                yield fraction, seed, select_labelled_subset(ids, label_fraction=fraction, seed=seed, groups=groups)

    def describe(
        self, label_fraction: float | None = None, seed: int | None = None, n_labelled: int | None = None
    ) -> dict[str, Any]:
        """The protocol as a JSON-able dict, to write next to every number it produced.

        Args:
            label_fraction, seed, n_labelled: the run a number comes from, when it is one run.
        """
        out: dict[str, Any] = {"protocol": "label_scarce", **asdict(self)}
        out["label_fractions"] = list(self.label_fractions)
        out["seeds"] = list(self.seeds)
        run = {"label_fraction": label_fraction, "seed": seed, "n_labelled": n_labelled}
        out.update({k: v for k, v in run.items() if v is not None})
        return out
