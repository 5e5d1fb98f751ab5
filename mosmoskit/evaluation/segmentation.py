"""Per-organ segmentation metrics: Dice and HD95 in millimetres, keyed by organ name.

Every number is reported per organ of a :class:`~mosmoskit.labels.LabelMap` (never as a bare list
whose order someone has to remember), together with the voxel counts and a *status* that says
which of four situations the organ is in. The status decides what the metrics mean:

==================  ======  =====  ==============  ============================================
status              in GT   pred   dice            hd95
==================  ======  =====  ==============  ============================================
``"present"``       yes     yes    real value      real value (mm)
``"missed"``        yes     no     0.0             NaN (default) or the image diagonal (mm)
``"false_positive"`` no     yes    0.0             NaN: there is no GT surface to measure from
``"absent_both"``   no      no     NaN             NaN: nothing to score, "not applicable"
==================  ======  =====  ==============  ============================================

Means ignore NaN. So an organ absent from both the GT and the prediction (a surgically absent
spleen that the model correctly left out) neither helps nor hurts the mean Dice; a hallucinated
organ and a missed organ both count as Dice 0. A missed organ has no predicted surface, so its
HD95 is undefined: by default it is NaN and *left out* of the HD95 mean (count the ``missed``
statuses next to it, as :func:`summarize_metrics` does), or, with ``missed_distance="diagonal"``,
it is the length of the image diagonal in mm, the largest distance two voxels of that image can
have, so that missing an organ is never better than finding it badly.

HD95 is the symmetric 95th-percentile Hausdorff distance, as MONAI's
``compute_hausdorff_distance(percentile=95)`` defines it: the surface of a mask is its voxels that
a one-voxel binary erosion removes (voxels on the image border count as surface), the distance of
each surface voxel of one mask to the nearest surface voxel of the other is measured in mm with
the voxel spacing, and HD95 is the larger of the two directed 95th percentiles.

Example:
    >>> import numpy as np
    >>> from mosmoskit.evaluation.segmentation import organ_metrics
    >>> from mosmoskit.labels import load_label_map
    >>> gt = np.zeros((8, 8, 8), dtype=np.int64); gt[2:6, 2:6, 2:6] = 1     # spleen
    >>> m = organ_metrics(gt, gt, load_label_map("btcv"), spacing=(1.0, 1.0, 2.0))
    >>> m["spleen"]["dice"], m["spleen"]["hd95"], m["spleen"]["status"], m["liver"]["status"]
    (1.0, 0.0, 'present', 'absent_both')
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from mosmoskit.io import atomic_write_text
from mosmoskit.labels import LabelMap, load_label_map

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "METRIC_COLUMNS",
    "NEVER_LEARNED_DICE",
    "STATUSES",
    "bootstrap_mean_ci",
    "hausdorff_distance",
    "metrics_table",
    "organ_metrics",
    "pool_by_group",
    "summarize_metrics",
    "write_metrics_csv",
]

#: The four situations an organ can be in (see the module docstring).
STATUSES: tuple[str, ...] = ("present", "missed", "false_positive", "absent_both")
#: Columns of :func:`metrics_table` and :func:`write_metrics_csv`, in order.
METRIC_COLUMNS: tuple[str, ...] = ("case_id", "organ", "dice", "hd95", "status", "gt_voxels", "pred_voxels")
#: Dice below which an organ present in the GT counts as "never learned" (DESIGN.md section 5).
NEVER_LEARNED_DICE = 0.05
_MISSED_CHOICES = ("nan", "diagonal")
_REQUIRED_KEYS = ("dice", "hd95", "status", "gt_voxels", "pred_voxels")


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------
def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor, MONAI MetaTensor included
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    try:
        values = tuple(float(s) for s in spacing)
    except TypeError:
        raise ValueError(f"spacing must be a sequence of {ndim} numbers (mm per axis), got {spacing!r}") from None
    if len(values) != ndim:
        raise ValueError(f"spacing {spacing!r} has {len(values)} values but the masks have {ndim} spatial axes")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must hold positive finite numbers (mm), got {spacing!r}")
    return values


def _check_percentile(percentile: float) -> float:
    p = float(percentile)
    if not (math.isfinite(p) and 0.0 < p <= 100.0):
        raise ValueError(
            f"hd_percentile must be in (0, 100] (95 for HD95, 100 for the Hausdorff distance), got {percentile!r}"
        )
    return p


def _drop_channel(array: np.ndarray, n_spatial: int, what: str) -> np.ndarray:
    """Accept (*spatial) or (1, *spatial): MONAI label tensors carry a channel axis of size 1."""
    if array.ndim == n_spatial + 1 and array.shape[0] == 1:
        return array[0]
    if array.ndim != n_spatial:
        raise ValueError(
            f"{what} has shape {array.shape}; expected {n_spatial} spatial axes (one per spacing value), "
            f"optionally after a channel axis of size 1"
        )
    return array


# ---------------------------------------------------------------------------------------------
# distances
# ---------------------------------------------------------------------------------------------
def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` that a one-voxel erosion removes (face connectivity, like MONAI)."""
    # border_value=0: an organ cut by the image border has a surface there (MONAI does the same).
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed_distances(from_surface: np.ndarray, to_surface: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance (mm) of every voxel of ``from_surface`` to the nearest voxel of ``to_surface``."""
    # The EDT gives each voxel its distance to the nearest zero, so the target surface is the zeros.
    field = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return field[from_surface]


def hausdorff_distance(
    prediction: Any, ground_truth: Any, spacing: Sequence[float], percentile: float = 95.0
) -> float:
    """Symmetric percentile Hausdorff distance between two binary masks, in mm.

    Args:
        prediction: (*spatial) boolean (or 0/1) mask, 2D or 3D, numpy or torch.
        ground_truth: (*spatial) boolean mask of the same shape.
        spacing: voxel size in mm, one value per spatial axis.
        percentile: 95 gives HD95, 100 the classic (maximum) Hausdorff distance.

    Returns:
        ``max(P(d(pred -> gt)), P(d(gt -> pred)))`` with P the ``percentile``-th percentile
        (``numpy.percentile``, linear interpolation) over surface voxels; NaN when either mask
        is empty (there is no surface to measure from or to).

    Raises:
        ValueError: shapes differ, spacing does not match the number of axes or is not
            positive, or ``percentile`` is outside (0, 100].
    """
    pred = _to_numpy(prediction).astype(bool)
    gt = _to_numpy(ground_truth).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    sp = _check_spacing(spacing, gt.ndim)
    p = _check_percentile(percentile)
    if not pred.any() or not gt.any():
        return float("nan")
    # Work on the bounding box of the union, padded by one voxel: every surface voxel of both
    # masks lies inside it, so nearest-surface distances are exact, and big volumes stay cheap.
    union = pred | gt
    box = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(union))
    pred = np.pad(pred[box], 1)
    gt = np.pad(gt[box], 1)
    # After padding, voxels on the original image border sit next to padding zeros, so they stay
    # surface voxels exactly as they are in the uncropped image.
    surf_pred, surf_gt = _surface(pred), _surface(gt)
    d_pred_gt = _directed_distances(surf_pred, surf_gt, sp)
    d_gt_pred = _directed_distances(surf_gt, surf_pred, sp)
    return float(max(np.percentile(d_pred_gt, p), np.percentile(d_gt_pred, p)))


# ---------------------------------------------------------------------------------------------
# per-organ metrics
# ---------------------------------------------------------------------------------------------
def organ_metrics(
    prediction: Any,
    ground_truth: Any,
    label_map: LabelMap | str,
    spacing: Sequence[float],
    hd_percentile: float = 95,
    missed_distance: str = "nan",
    source: str = "case",
) -> dict[str, dict[str, Any]]:
    """Dice, HD95 (mm), voxel counts and status for every foreground organ of ``label_map``.

    Missing organs are handled as in the table of the module docstring: ``absent_both`` ->
    Dice NaN and HD95 NaN (excluded from means); ``false_positive`` -> Dice 0, HD95 NaN;
    ``missed`` -> Dice 0, HD95 NaN or, with ``missed_distance="diagonal"``, the image diagonal in
    mm; ``present`` -> real values.

    Args:
        prediction: (*spatial) or (1, *spatial) integer mask of organ ids (numpy or torch; take
            the argmax of network outputs first), 2D (H, W) or 3D (H, W, D).
        ground_truth: integer mask of the same shape, same ids.
        label_map: the map both masks use (a :class:`LabelMap` or a shipped name such as
            ``"btcv"``); its foreground names are the keys of the result.
        spacing: voxel size in mm, one value per spatial axis, e.g. ``(0.8, 0.8, 2.5)``.
        hd_percentile: percentile of the surface distances; the result key stays ``"hd95"``
            whatever it is (95 by default; 100 gives the maximum Hausdorff distance).
        missed_distance: HD95 of a missed organ: ``"nan"`` (undefined, left out of means) or
            ``"diagonal"`` (the image diagonal, ``sqrt(sum((n_i * s_i)^2))`` mm).
        source: a case id or file name that starts every error message.

    Returns:
        Organ name -> ``{"dice": float, "hd95": float (mm), "gt_voxels": int,
        "pred_voxels": int, "status": str}``, for every foreground organ, in id order.

    Raises:
        ValueError: shapes differ; values that are not ids of ``label_map`` (via
            :meth:`LabelMap.check_mask`, naming ``source``); non-integer or non-finite values;
            spacing of the wrong length or not positive; ``hd_percentile`` outside (0, 100];
            unknown ``missed_distance``.
    """
    lmap = load_label_map(label_map)
    if missed_distance not in _MISSED_CHOICES:
        raise ValueError(f"missed_distance must be one of {_MISSED_CHOICES}, got {missed_distance!r}")
    p = _check_percentile(hd_percentile)
    pred = _to_numpy(prediction)
    gt = _to_numpy(ground_truth)
    if pred.shape != gt.shape:
        raise ValueError(f"{source}: prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    n_spatial = len(spacing) if hasattr(spacing, "__len__") else -1
    if n_spatial not in (2, 3):
        raise ValueError(f"{source}: spacing must give 2 or 3 values (mm per spatial axis), got {spacing!r}")
    pred = _drop_channel(pred, n_spatial, f"{source}: prediction")
    gt = _drop_channel(gt, n_spatial, f"{source}: ground truth")
    sp = _check_spacing(spacing, n_spatial)
    lmap.check_mask(pred, source=f"{source} (prediction)")
    lmap.check_mask(gt, source=f"{source} (ground truth)")
    pred = pred.astype(np.int64, copy=False)
    gt = gt.astype(np.int64, copy=False)

    k = lmap.num_classes
    gt_counts = np.bincount(gt.ravel(), minlength=k)
    pred_counts = np.bincount(pred.ravel(), minlength=k)
    overlap = np.bincount(gt[gt == pred].ravel(), minlength=k)
    # find_objects gives each id's bounding box in one pass, so HD95 only looks at that box.
    gt_boxes = ndimage.find_objects(gt, max_label=k - 1)
    pred_boxes = ndimage.find_objects(pred, max_label=k - 1)
    diagonal = float(math.sqrt(sum((n * s) ** 2 for n, s in zip(gt.shape, sp))))

    out: dict[str, dict[str, Any]] = {}
    for name in lmap.foreground_names:
        i = lmap.labels[name]
        n_gt, n_pred = int(gt_counts[i]), int(pred_counts[i])
        if n_gt and n_pred:
            status = "present"
            dice = 2.0 * float(overlap[i]) / float(n_gt + n_pred)
            box = tuple(
                slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(gt_boxes[i - 1], pred_boxes[i - 1])
            )
            # The box is the union's bounding box; surfaces on the image border stay surfaces
            # because hausdorff_distance pads with background, as the full image would have.
            hd = hausdorff_distance(pred[box] == i, gt[box] == i, sp, p)
        elif n_gt:
            status, dice = "missed", 0.0
            hd = diagonal if missed_distance == "diagonal" else float("nan")
        elif n_pred:
            status, dice, hd = "false_positive", 0.0, float("nan")
        else:
            status, dice, hd = "absent_both", float("nan"), float("nan")
        out[name] = {"dice": dice, "hd95": hd, "gt_voxels": n_gt, "pred_voxels": n_pred, "status": status}
    return out


# ---------------------------------------------------------------------------------------------
# aggregation and tables
# ---------------------------------------------------------------------------------------------
def _check_per_case(per_case: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
    if not isinstance(per_case, Mapping) or not per_case:
        raise ValueError("per_case must be a non-empty mapping case_id -> {organ: metrics} (from organ_metrics)")
    for case_id, organs in per_case.items():
        if not isinstance(organs, Mapping):
            raise ValueError(f"per_case[{case_id!r}] must map organ names to metric dicts, got {type(organs).__name__}")
        for organ, metrics in organs.items():
            if not isinstance(metrics, Mapping):
                raise ValueError(
                    f"per_case[{case_id!r}][{organ!r}] must be a metric dict, got {type(metrics).__name__}"
                )
            lacking = [key for key in _REQUIRED_KEYS if key not in metrics]
            if lacking:
                raise ValueError(
                    f"per_case[{case_id!r}][{organ!r}] lacks {lacking}; expected the keys {list(_REQUIRED_KEYS)} "
                    f"that organ_metrics returns"
                )
            if metrics["status"] not in STATUSES:
                raise ValueError(
                    f"per_case[{case_id!r}][{organ!r}] has status {metrics['status']!r}; "
                    f"expected one of {list(STATUSES)}"
                )


def _mean_std(values: list[float], ddof: int) -> tuple[float, float, int]:
    finite = [v for v in values if not math.isnan(v)]
    n = len(finite)
    if n == 0:
        return float("nan"), float("nan"), 0
    arr = np.asarray(finite, dtype=np.float64)
    std = float(arr.std(ddof=ddof)) if n > ddof else float("nan")
    return float(arr.mean()), std, n


#: Resamples of the bootstrap confidence intervals, and their fixed seed (the same numbers every run).
BOOTSTRAP_RESAMPLES = 2000
_BOOTSTRAP_SEED = 0


def bootstrap_mean_ci(values: np.ndarray, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES) -> list[float]:
    """Percentile bootstrap interval of a mean over cases (cases resampled with replacement).

    Args:
        values: (N,) per-case values, or (N, M) per case and column: the statistic is then the
            mean over columns of each column's mean over cases (NaN entries left out of each
            column's mean), as :func:`summarize_metrics`' ``mean_dice`` is made.
        level: coverage of the interval.
        resamples: bootstrap resamples (seeded: the interval is the same on every run).

    Returns:
        ``[low, high]``; ``[nan, nan]`` with fewer than two cases.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[~np.isnan(arr)][:, None]
    n = arr.shape[0]
    if n < 2:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(_BOOTSTRAP_SEED)
    samples = arr[rng.integers(0, n, size=(resamples, n))]  # (R, N, M)
    finite = ~np.isnan(samples)
    counts = finite.sum(axis=1)
    column_means = np.where(counts > 0, np.where(finite, samples, 0.0).sum(axis=1) / np.maximum(counts, 1), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample in which no column has a value
        statistic = np.nanmean(column_means, axis=1) if arr.shape[1] > 1 else column_means[:, 0]
    statistic = statistic[~np.isnan(statistic)]
    tail = (1.0 - level) / 2.0
    return [float(np.quantile(statistic, tail)), float(np.quantile(statistic, 1.0 - tail))]


def summarize_metrics(
    per_case: Mapping[str, Mapping[str, Mapping[str, Any]]],
    never_learned_dice: float = NEVER_LEARNED_DICE,
    ddof: int = 1,
) -> dict[str, Any]:
    """Mean and spread of each organ's metrics over cases, and the "organ never learned" count.

    NaN values (``absent_both`` Dice, undefined HD95) are left out of every mean and standard
    deviation; the ``n_*`` fields say how many values each statistic rests on.

    Args:
        per_case: case id -> the output of :func:`organ_metrics` for that case.
        never_learned_dice: an organ present in a case's GT (status ``present`` or ``missed``)
            whose Dice is below this counts as one "never learned" failure (DESIGN.md section 5:
            the clearest effect of the attention maps was removing these).
        ddof: delta degrees of freedom of the standard deviation (1: sample std; NaN when a
            statistic rests on ``ddof`` values or fewer).

    Returns:
        ``{"n_cases": int, "organs": {organ: stats}, "mean_dice": float, "mean_dice_ci95": [low,
        high], "mean_hd95": float, "never_learned": int, "never_learned_dice": float}`` where
        ``stats`` holds ``dice_mean, dice_ci95, dice_std, n_dice, hd95_mean, hd95_std, n_hd95,
        n_present, n_missed, n_false_positive, n_absent_both, n_never_learned`` and
        ``never_learned_cases`` (sorted case ids). ``mean_dice``/``mean_hd95`` are the means over
        organs of the per-organ means (organs without any value are skipped). The ``*_ci95`` are
        95% percentile-bootstrap intervals over cases (:func:`bootstrap_mean_ci`, seeded).
        Organs are listed in the order first seen.

    Raises:
        ValueError: an empty or malformed ``per_case`` (the message names the case and organ),
            or a negative ``ddof`` / threshold outside [0, 1].
    """
    _check_per_case(per_case)
    if not (0.0 <= float(never_learned_dice) <= 1.0):
        raise ValueError(f"never_learned_dice must be a Dice value in [0, 1], got {never_learned_dice!r}")
    if int(ddof) != ddof or ddof < 0:
        raise ValueError(f"ddof must be a non-negative integer, got {ddof!r}")
    organs: list[str] = []
    for case in per_case.values():
        organs.extend(o for o in case if o not in organs)

    stats: dict[str, dict[str, Any]] = {}
    for organ in organs:
        rows = {cid: case[organ] for cid, case in per_case.items() if organ in case}
        dice_values = [float(r["dice"]) for r in rows.values()]
        dice_mean, dice_std, n_dice = _mean_std(dice_values, ddof)
        hd_mean, hd_std, n_hd = _mean_std([float(r["hd95"]) for r in rows.values()], ddof)
        status_counts = {s: sum(r["status"] == s for r in rows.values()) for s in STATUSES}
        failed = sorted(
            cid
            for cid, r in rows.items()
            if r["status"] in ("present", "missed") and float(r["dice"]) < never_learned_dice
        )
        stats[organ] = {
            "dice_mean": dice_mean,
            "dice_ci95": bootstrap_mean_ci(np.asarray(dice_values)),
            "dice_std": dice_std,
            "n_dice": n_dice,
            "hd95_mean": hd_mean,
            "hd95_std": hd_std,
            "n_hd95": n_hd,
            **{f"n_{s}": status_counts[s] for s in STATUSES},
            "n_never_learned": len(failed),
            "never_learned_cases": failed,
        }
    dice_means = [s["dice_mean"] for s in stats.values() if not math.isnan(s["dice_mean"])]
    hd_means = [s["hd95_mean"] for s in stats.values() if not math.isnan(s["hd95_mean"])]
    table = np.asarray([[float(case[o]["dice"]) if o in case else np.nan for o in organs]
                        for case in per_case.values()], dtype=np.float64)
    return {
        "n_cases": len(per_case),
        "organs": stats,
        "mean_dice": float(np.mean(dice_means)) if dice_means else float("nan"),
        "mean_dice_ci95": bootstrap_mean_ci(table) if dice_means else [float("nan"), float("nan")],
        "mean_hd95": float(np.mean(hd_means)) if hd_means else float("nan"),
        "never_learned": sum(s["n_never_learned"] for s in stats.values()),
        "never_learned_dice": float(never_learned_dice),
    }


def pool_by_group(
    per_case: Mapping[str, Mapping[str, Mapping[str, Any]]],
    groups: Mapping[str, str],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Pool per-slice metrics into per-patient metrics (2D networks evaluated on whole patients).

    A 2D network segments a scan slice by slice, but the scan is what a clinician (and BTCV's
    leaderboard) scores: the Dice of an organ over all of a patient's slices together. Averaging
    per-slice Dice instead weights a slice that grazes an organ's tip (a few pixels, easily Dice
    0) as much as its largest section, and reads lower than the volumetric Dice of the same
    predictions. This function sums each organ's voxel counts and overlaps over the slices of a
    patient and recomputes Dice and status exactly as :func:`organ_metrics` would on the stacked
    slices. HD95 cannot be pooled from slices that need not be adjacent: the pooled ``hd95`` is the
    mean of the finite per-slice HD95 values of that organ (NaN if none), and is labelled as such
    wherever it is reported.

    Args:
        per_case: case (slice) id -> :func:`organ_metrics` of that slice.
        groups: case id -> patient id, for every case of ``per_case``.

    Returns:
        Patient id -> organ -> ``{"dice", "hd95", "status", "gt_voxels", "pred_voxels",
        "n_slices"}``, patients in order of first appearance.

    Raises:
        ValueError: a malformed ``per_case``, or a case without a patient in ``groups`` (named).

    Example:
        >>> a = {"spleen": {"dice": 1.0, "hd95": 0.0, "status": "present", "gt_voxels": 90, "pred_voxels": 90}}
        >>> b = {"spleen": {"dice": 0.0, "hd95": float("nan"), "status": "missed", "gt_voxels": 10, "pred_voxels": 0}}
        >>> pooled = pool_by_group({"p0_s0": a, "p0_s1": b}, {"p0_s0": "p0", "p0_s1": "p0"})
        >>> round(pooled["p0"]["spleen"]["dice"], 3), pooled["p0"]["spleen"]["status"]   # 2*90/(100+90)
        (0.947, 'present')
    """
    _check_per_case(per_case)
    missing = [c for c in per_case if c not in groups]
    if missing:
        raise ValueError(f"pool_by_group: no patient for case(s) {missing[:5]} in groups")
    members: dict[str, list[str]] = {}
    for case_id in per_case:
        members.setdefault(str(groups[case_id]), []).append(case_id)
    pooled: dict[str, dict[str, dict[str, Any]]] = {}
    for patient, case_ids in members.items():
        organs: list[str] = []
        for c in case_ids:
            organs.extend(o for o in per_case[c] if o not in organs)
        out: dict[str, dict[str, Any]] = {}
        for organ in organs:
            rows = [per_case[c][organ] for c in case_ids if organ in per_case[c]]
            n_gt = sum(int(r["gt_voxels"]) for r in rows)
            n_pred = sum(int(r["pred_voxels"]) for r in rows)
            # organ_metrics' Dice is 2 * overlap / (n_gt + n_pred): the overlap comes back exactly.
            overlap = sum(
                round(float(r["dice"]) * (int(r["gt_voxels"]) + int(r["pred_voxels"])) / 2.0)
                for r in rows if r["status"] == "present"
            )
            hds = [float(r["hd95"]) for r in rows if not math.isnan(float(r["hd95"]))]
            if n_gt and n_pred:
                status, dice = "present", 2.0 * overlap / float(n_gt + n_pred)
            elif n_gt:
                status, dice = "missed", 0.0
            elif n_pred:
                status, dice = "false_positive", 0.0
            else:
                status, dice = "absent_both", float("nan")
            out[organ] = {
                "dice": dice, "hd95": float(np.mean(hds)) if hds and status == "present" else float("nan"),
                "status": status, "gt_voxels": n_gt, "pred_voxels": n_pred, "n_slices": len(rows),
            }
        pooled[patient] = out
    return pooled


def metrics_table(per_case: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (case, organ), with the columns of :data:`METRIC_COLUMNS`.

    Rows follow the order of ``per_case`` and, within a case, the organ order of
    :func:`organ_metrics` (label-map id order).

    Raises:
        ValueError: an empty or malformed ``per_case``.
    """
    _check_per_case(per_case)
    rows = []
    for case_id, organs in per_case.items():
        for organ, m in organs.items():
            rows.append(
                {
                    "case_id": str(case_id),
                    "organ": str(organ),
                    "dice": float(m["dice"]),
                    "hd95": float(m["hd95"]),
                    "status": str(m["status"]),
                    "gt_voxels": int(m["gt_voxels"]),
                    "pred_voxels": int(m["pred_voxels"]),
                }
            )
    return rows


def write_metrics_csv(
    path: str | Path, per_case: Mapping[str, Mapping[str, Mapping[str, Any]]], overwrite: bool = True
) -> Path:
    """Write :func:`metrics_table` as CSV, atomically (a crash never leaves half a table).

    Floats are written with full precision (``repr``); undefined values as ``nan``, which
    ``float()``, pandas and spreadsheet tools all read back as NaN.

    Args:
        path: the CSV file; parent folders are created.
        per_case: case id -> the output of :func:`organ_metrics`.
        overwrite: if false and ``path`` exists, raise ``FileExistsError``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: an empty or malformed ``per_case``.
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    rows = metrics_table(per_case)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(METRIC_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return atomic_write_text(path, buffer.getvalue(), overwrite=overwrite)
