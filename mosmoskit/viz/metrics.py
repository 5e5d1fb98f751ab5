"""Plots of segmentation results: per-organ metric bars, and predictions next to the ground truth.

* :func:`plot_organ_metrics`: one bar per organ (mean over test cases, standard deviation as an
  error bar) of Dice or HD95, from the summary a fine-tuning run returns;
* :func:`plot_prediction_grid`: for a few cases, the ground truth and the prediction on the same
  slice, in radiological convention (through :func:`mosmoskit.viz.slices.plot_overlay`).

Only matplotlib's object API is used; pyplot is touched only to create a figure when the caller
passes no axes.

Example:
    >>> summary = {"organs": {"liver": {"dice_mean": 0.9, "dice_std": 0.02, "hd95_mean": 4.0,
    ...            "hd95_std": 1.0, "n_dice": 3, "n_never_learned": 0}}, "mean_dice": 0.9,
    ...            "never_learned_dice": 0.05}
    >>> ax = plot_organ_metrics(summary)   # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from mosmoskit.labels import LabelMap, load_label_map

__all__ = ["METRICS", "plot_organ_metrics", "plot_prediction_grid"]

#: metric name -> (summary key prefix, axis label)
METRICS: dict[str, tuple[str, str]] = {"dice": ("dice", "Dice"), "hd95": ("hd95", "HD95 (mm)")}
#: bar colour when no label map gives the organ colours
_DEFAULT_COLOR = "tab:blue"


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def plot_organ_metrics(
    metrics: Mapping[str, Any],
    ax: Any | None = None,
    metric: str = "dice",
    label_map: LabelMap | str | None = None,
    title: str | None = None,
) -> Any:
    """One bar per organ: the mean of ``metric`` over the test cases, its std as an error bar.

    Organs without a value (absent from every test case, or an HD95 that is undefined in every
    case) get no bar and an ``n/a`` mark, so a missing bar is never mistaken for a score of 0.
    For Dice a dashed line marks the mean over organs and a dotted one the "never learned"
    threshold; organs with never-learned cases get a ``!`` above their bar.

    Args:
        metrics: ``FinetuneResult.metrics`` (from
            :func:`~mosmoskit.evaluation.segmentation.summarize_metrics`) or a whole metrics.json
            record (its ``test`` entry is used); ``None`` values count as NaN.
        ax: matplotlib Axes to draw into; a new figure is made when ``None``.
        metric: ``"dice"`` or ``"hd95"``.
        label_map: colour each bar in its organ's label-map colour (as in the overlays).
        title: axes title (default: the metric and the number of test cases).

    Returns:
        The Axes drawn into.

    Raises:
        ValueError: an unknown ``metric``, or ``metrics`` without a per-organ summary.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
    if "organs" not in metrics and isinstance(metrics.get("test"), Mapping):
        metrics = metrics["test"]
    organs = metrics.get("organs")
    if not isinstance(organs, Mapping) or not organs:
        raise ValueError(
            f"expected a test summary with per-organ 'organs' (FinetuneResult.metrics or metrics.json), got keys "
            f"{sorted(metrics)}"
        )
    key, axis_label = METRICS[metric]
    names = list(organs)
    means = np.array([_number(organs[o].get(f"{key}_mean")) for o in names])
    stds = np.array([_number(organs[o].get(f"{key}_std")) for o in names])
    colors = [_DEFAULT_COLOR] * len(names)
    if label_map is not None:
        palette = load_label_map(label_map).colors()
        colors = [palette.get(o, _DEFAULT_COLOR) for o in names]
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(names) + 1.5), 3.6))
    x = np.arange(len(names))
    shown = ~np.isnan(means)
    # A std resting on one case is NaN: draw no error bar rather than a zero-width one that looks certain.
    ax.bar(x[shown], means[shown], yerr=np.nan_to_num(stds[shown]), color=[c for c, s in zip(colors, shown) if s],
           capsize=2, edgecolor="black", linewidth=0.5)
    for i in np.flatnonzero(~shown):
        ax.text(x[i], 0.0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    if metric == "dice":
        ax.set_ylim(0.0, 1.05)
        mean = _number(metrics.get("mean_dice"))
        if not math.isnan(mean):
            ax.axhline(mean, color="black", linestyle="--", linewidth=0.8, label=f"mean {mean:.3f}")
        threshold = _number(metrics.get("never_learned_dice"))
        if not math.isnan(threshold):
            ax.axhline(threshold, color="tab:red", linestyle=":", linewidth=0.8, label=f"never learned < {threshold:g}")
        for i, organ in enumerate(names):
            if int(organs[organ].get("n_never_learned", 0) or 0):
                ax.text(x[i], min(1.0, (0.0 if math.isnan(means[i]) else means[i]) + 0.03), "!", ha="center",
                        color="tab:red", fontsize=9, fontweight="bold")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False, loc="upper right")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(axis_label)
    n_cases = metrics.get("n_cases")
    default_title = f"{axis_label} per organ" + (f" ({n_cases} test cases)" if n_cases else "")
    ax.set_title(title if title is not None else default_title, fontsize=9)
    return ax


def _most_labelled_axial(label: np.ndarray) -> int | None:
    """The axial slice with most ground-truth voxels (``None`` for 2D: plot_overlay needs no index)."""
    if label.ndim == 2:
        return None
    counts = (label > 0).sum(axis=(0, 1))
    return int(np.argmax(counts)) if counts.any() else label.shape[2] // 2


def plot_prediction_grid(
    images: Sequence[Any],
    labels: Sequence[Any],
    predictions: Sequence[Any],
    label_map: LabelMap | str = "btcv",
    case_ids: Sequence[str] | None = None,
    spacings: Sequence[Sequence[float]] | None = None,
    mean_dice: Sequence[float] | None = None,
    window: tuple[float, float] = (-160.0, 240.0),
    alpha: float = 0.45,
) -> Any:
    """Ground truth (left) and prediction (right) of each case on the same axial slice.

    The slice is the one with the most ground-truth voxels (the same for both columns, so they
    can be compared pixel by pixel); images are shown in radiological convention.

    Args:
        images: N arrays (X, Y) or (X, Y, Z) in HU, RAS voxel order.
        labels: N ground-truth id arrays of ``label_map``, shaped like their image.
        predictions: N predicted id arrays, shaped like their image.
        label_map: the ids' label map (its colours are used).
        case_ids: row names.
        spacings: N voxel sizes (mm) for a physical aspect ratio.
        mean_dice: N per-case mean Dice values, written over the prediction (NaN: not written).
        window: display window in HU.
        alpha: overlay opacity.

    Returns:
        The matplotlib Figure (N rows, 2 columns).

    Raises:
        ValueError: the sequences have different lengths, no case, or an error of
            :func:`~mosmoskit.viz.slices.plot_overlay` (shape or label mismatch).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from mosmoskit.viz.slices import plot_overlay

    n = len(images)
    if n == 0:
        raise ValueError("plot_prediction_grid needs at least one case")
    for name, seq in (("labels", labels), ("predictions", predictions), ("case_ids", case_ids),
                      ("spacings", spacings), ("mean_dice", mean_dice)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{len(seq)} {name} for {n} images: give one per image")
    lm = load_label_map(label_map)
    fig, axes = plt.subplots(n, 2, figsize=(7.0, 3.3 * n), squeeze=False)
    seen: list[str] = []
    for i in range(n):
        label = np.asarray(labels[i])
        predicted = np.asarray(predictions[i])
        index = _most_labelled_axial(label)
        spacing = None if spacings is None else spacings[i]
        where = "" if index is None else f" (axial {index})"
        plot_overlay(images[i], label, lm, index=index, ax=axes[i, 0], window=window, alpha=alpha, legend=False,
                     spacing=spacing, title=f"ground truth{where}")
        dice = float("nan") if mean_dice is None else float(mean_dice[i])
        plot_overlay(images[i], predicted, lm, index=index, ax=axes[i, 1], window=window, alpha=alpha,
                     legend=False, spacing=spacing,
                     title="prediction" + ("" if math.isnan(dice) else f", mean Dice {dice:.2f}"))
        if case_ids is not None:
            axes[i, 0].set_ylabel(str(case_ids[i]), fontsize=8)
        present = set(np.unique(label).tolist()) | set(np.unique(predicted).tolist())
        seen += [lm.name_of(int(v)) for v in sorted(present) if v > 0 and lm.name_of(int(v)) not in seen]
    colors = lm.colors()
    ordered = [o for o in lm.foreground_names if o in seen]
    if ordered:
        fig.legend(handles=[Patch(color=colors[o], label=o) for o in ordered], loc="center right", fontsize=7,
                   frameon=False)
        fig.subplots_adjust(right=0.78)
    return fig
