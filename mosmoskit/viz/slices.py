"""Slices of a CT volume with a label overlay, in radiological convention.

Arrays are expected in RAS voxel order, as the kit's readers and the phantom produce them: axis 0
runs to the patient's Right, axis 1 Anterior, axis 2 Superior. Views are shown the way radiologists
read them:

* axial: patient's right on the viewer's left, anterior up;
* coronal: patient's right on the viewer's left, superior up;
* sagittal: anterior on the viewer's left, superior up.

Only matplotlib's object API is used (``ax.imshow`` ...); pyplot is touched only to create a figure
when the caller does not pass axes, so the functions work the same in scripts and notebooks.

Example:
    >>> from mosmoskit.data.phantom import make_case
    >>> from mosmoskit.labels import load_label_map
    >>> from mosmoskit.viz.slices import plot_overlay
    >>> case = make_case(0, 0, shape=(48, 48, 32), spacing=(8.0, 8.0, 10.0))
    >>> ax = plot_overlay(case.image, case.label, load_label_map("btcv"), spacing=(8, 8, 10))
"""

from __future__ import annotations

import textwrap
from typing import Any, Sequence

import numpy as np

from mosmoskit.labels import LabelMap, load_label_map

__all__ = ["AXES", "display_slice", "draw_report", "overlay_rgba", "plot_case_overview", "plot_overlay", "plot_slice_grid"]

#: View name -> the array axis it slices.
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def _to_numpy(array: Any, name: str) -> np.ndarray:
    if hasattr(array, "detach"):  # torch / MONAI tensors
        array = array.detach().cpu().numpy()
    arr = np.asarray(array)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2D (X, Y) or 3D (X, Y, Z), got shape {arr.shape}")
    return arr


def display_slice(array: np.ndarray, axis: str = "axial", index: int | None = None) -> np.ndarray:
    """The 2D array to show for one view, already flipped into radiological convention.

    Args:
        array: (X, Y, Z) in RAS voxel order, or (X, Y) for a single axial slice.
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        index: slice number along that axis (middle when ``None``); ignored for 2D input.

    Returns:
        (rows, cols) array: row 0 is the top of the displayed image.

    Raises:
        ValueError: unknown ``axis``, 2D input with a non-axial view, ``index`` out of range.
    """
    if axis not in AXES:
        raise ValueError(f"axis must be one of {list(AXES)}, got {axis!r}")
    arr = np.asarray(array)
    if arr.ndim == 2:
        if axis != "axial":
            raise ValueError(f"a 2D image is a single axial slice; axis={axis!r} is not available")
        return arr[::-1, ::-1].T
    dim = AXES[axis]
    n = arr.shape[dim]
    if index is None:
        index = n // 2
    if not 0 <= index < n:
        raise ValueError(f"{axis} index {index} is outside 0..{n - 1}")
    if axis == "axial":  # rows: anterior -> posterior, cols: right -> left
        return arr[::-1, ::-1, index].T
    if axis == "coronal":  # rows: superior -> inferior, cols: right -> left
        return arr[::-1, index, ::-1].T
    return arr[index, ::-1, ::-1].T  # sagittal: rows superior -> inferior, cols anterior -> posterior


def _aspect(axis: str, spacing: Sequence[float] | None) -> float:
    """Height / width of one displayed pixel, so that millimetres look square."""
    if spacing is None:
        return 1.0
    sx, sy = float(spacing[0]), float(spacing[1])
    sz = float(spacing[2]) if len(spacing) > 2 else sx
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[axis]


def overlay_rgba(label2d: np.ndarray, label_map: LabelMap, alpha: float = 0.45) -> tuple[np.ndarray, list[str]]:
    """RGBA image of a 2D label slice in the label map's colours.

    Returns:
        ``(rgba, names)``: float (H, W, 4) array, transparent on background, and the names of the
        structures present in the slice (id order).
    """
    colors = label_map.colors()
    rgba = np.zeros((*label2d.shape, 4), dtype=np.float32)
    names = []
    values = np.unique(label2d)
    for value in values[values > 0]:
        name = label_map.name_of(int(value))
        rgba[label2d == value] = (*colors[name], alpha)
        names.append(name)
    return rgba, names


def _best_index(label: np.ndarray | None, axis: str) -> int | None:
    """The slice with the most labelled voxels (``None`` lets display_slice take the middle)."""
    if label is None or label.ndim == 2:
        return None
    dim = AXES[axis]
    other = tuple(d for d in range(3) if d != dim)
    counts = (label > 0).sum(axis=other)
    return int(np.argmax(counts)) if counts.any() else None


def plot_overlay(
    image: Any,
    label: Any | None,
    label_map: LabelMap | str = "btcv",
    axis: str = "axial",
    index: int | None = None,
    ax: Any | None = None,
    window: tuple[float, float] = (-160.0, 240.0),
    alpha: float = 0.45,
    legend: bool = True,
    spacing: Sequence[float] | None = None,
    title: str | None = None,
    crop_hu: float | None = None,
) -> Any:
    """Show one slice of ``image`` with ``label`` overlaid in the label map's colours.

    Args:
        image: (X, Y, Z) or (X, Y) intensities in RAS voxel order (numpy array or tensor).
        label: integer ids of ``label_map``, same shape as ``image``, or ``None`` for no overlay.
        label_map: a :class:`~mosmoskit.labels.LabelMap` or a name for ``load_label_map``.
        axis: ``"axial"`` (default), ``"coronal"`` or ``"sagittal"``.
        index: slice number; ``None`` picks the slice with the most labelled voxels (the middle
            one without labels).
        ax: matplotlib Axes to draw into; a new figure is made when ``None``.
        window: (low, high) display window in HU; the default is a soft-tissue window.
        alpha: opacity of the overlay.
        legend: add a legend of the structures visible in this slice.
        spacing: voxel size in mm, so that the aspect ratio is physical.
        title: axes title; by default the view and slice number.
        crop_hu: zoom to the pixels above this value (``-500`` crops the air around a body);
            ``None`` shows the whole slice.

    Returns:
        The Axes drawn into.

    Raises:
        ValueError: shapes of ``image`` and ``label`` differ, bad ``axis``/``index``/``window``, or
            label values outside the label map.
    """
    img = _to_numpy(image, "image")
    lab = None if label is None else _to_numpy(label, "label")
    if lab is not None and lab.shape != img.shape:
        raise ValueError(f"image shape {img.shape} and label shape {lab.shape} differ")
    if window[0] >= window[1]:
        raise ValueError(f"window must be (low, high) with low < high, got {window!r}")
    lm = load_label_map(label_map)
    if lab is not None:
        lm.check_mask(lab, source="label")
    if index is None:
        index = _best_index(lab, axis)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 5))
    shown = display_slice(img, axis, index)
    aspect = _aspect(axis, spacing)
    ax.imshow(shown, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest", aspect=aspect)
    names: list[str] = []
    if lab is not None:
        rgba, names = overlay_rgba(display_slice(lab, axis, index), lm, alpha)
        ax.imshow(rgba, interpolation="nearest", aspect=aspect)
    if legend and names:
        from matplotlib.patches import Patch

        colors = lm.colors()
        ax.legend(handles=[Patch(color=colors[n], label=n) for n in names], loc="upper left",
                  bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    if crop_hu is not None:
        rows, cols = np.nonzero(shown > crop_hu)
        if rows.size:
            margin = 2
            ax.set_xlim(max(cols.min() - margin, 0) - 0.5, min(cols.max() + margin, shown.shape[1] - 1) + 0.5)
            ax.set_ylim(min(rows.max() + margin, shown.shape[0] - 1) + 0.5, max(rows.min() - margin, 0) - 0.5)
    where = "" if img.ndim == 2 else f" {index if index is not None else img.shape[AXES[axis]] // 2}"
    ax.set_title(title if title is not None else f"{axis}{where}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def plot_case_overview(
    image: Any,
    label: Any | None,
    label_map: LabelMap | str = "btcv",
    views: Sequence[str] = ("axial", "coronal", "sagittal"),
    indices: Sequence[int | None] | None = None,
    report: str | None = None,
    spacing: Sequence[float] | None = None,
    axes: Sequence[Any] | None = None,
    window: tuple[float, float] = (-160.0, 240.0),
    alpha: float = 0.45,
    report_width: int = 48,
    title: str | None = None,
    crop_hu: float | None = None,
) -> Any:
    """Several views of one case side by side, optionally with its report as a text panel.

    Args:
        image, label, label_map, spacing, window, alpha: as in :func:`plot_overlay`.
        views: the views, left to right (a 2D image allows only ``"axial"``).
        indices: slice number per view (``None`` entries pick the most labelled slice).
        report: text shown in an extra panel on the right.
        axes: ``len(views)`` Axes (plus one for the report) to draw into; a figure is made if
            ``None``.
        report_width: characters per line of the wrapped report.
        title: figure title (only when the figure is created here).
        crop_hu: as in :func:`plot_overlay`.

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: wrong number of ``axes`` or ``indices``, or an error of :func:`plot_overlay`.
    """
    n_panels = len(views) + (1 if report is not None else 0)
    if indices is not None and len(indices) != len(views):
        raise ValueError(f"indices must give one entry per view ({len(views)}), got {len(indices)}")
    if axes is None:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, n_panels, figsize=(3.6 * n_panels, 3.8), squeeze=False)
        axes = list(axes[0])
        if title:
            fig.suptitle(title)
    elif len(axes) != n_panels:
        raise ValueError(f"need {n_panels} axes ({len(views)} views{' + report' if report is not None else ''}), got {len(axes)}")
    for i, view in enumerate(views):
        plot_overlay(image, label, label_map, axis=view, index=None if indices is None else indices[i], ax=axes[i],
                     window=window, alpha=alpha, legend=False, spacing=spacing, crop_hu=crop_hu)
    if report is not None:
        draw_report(axes[-1], report, width=report_width)
    return axes[0].figure


def draw_report(ax: Any, report: str, width: int = 48, fontsize: float = 7.5) -> Any:
    """Write a report, wrapped to ``width`` characters, into an empty Axes."""
    wrapped = "\n".join(
        textwrap.fill(line, width=width) if line.strip() else "" for line in report.splitlines()
    )
    ax.text(0.0, 1.0, wrapped, va="top", ha="left", fontsize=fontsize, family="monospace", transform=ax.transAxes)
    ax.set_axis_off()
    return ax


def plot_slice_grid(
    image: Any,
    label: Any | None,
    label_map: LabelMap | str = "btcv",
    axis: str = "axial",
    n: int = 6,
    spacing: Sequence[float] | None = None,
    window: tuple[float, float] = (-160.0, 240.0),
    alpha: float = 0.45,
    columns: int = 3,
) -> Any:
    """``n`` evenly spaced slices along ``axis`` through the labelled range, in a grid.

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: ``n < 1`` or a 2D image.
    """
    import matplotlib.pyplot as plt

    img = _to_numpy(image, "image")
    if img.ndim != 3:
        raise ValueError(f"plot_slice_grid needs a 3D image, got shape {img.shape}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    dim = AXES[axis]
    lab = None if label is None else _to_numpy(label, "label")
    if lab is not None and (lab > 0).any():
        other = tuple(d for d in range(3) if d != dim)
        filled = np.flatnonzero((lab > 0).any(axis=other))
        lo, hi = int(filled[0]), int(filled[-1])
    else:
        lo, hi = 0, img.shape[dim] - 1
    picks = np.unique(np.linspace(lo, hi, n + 2)[1:-1].round().astype(int))
    rows = int(np.ceil(len(picks) / columns))
    fig, axs = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    for ax in axs.ravel():
        ax.set_axis_off()
    for ax, k in zip(axs.ravel(), picks):
        plot_overlay(img, lab, label_map, axis=axis, index=int(k), ax=ax, window=window, alpha=alpha,
                     legend=False, spacing=spacing)
    return fig
