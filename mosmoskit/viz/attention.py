"""Pixel-tag attention maps drawn over CT slices: where does each organ tag look?

The tag head of the pre-trained model gives one map per organ tag: for each pixel, how much that
organ's query attends to it. These plots put a map (as a heat overlay) over the slice it belongs to
and, when a ground-truth label is at hand, the organ's outline, so that one sees at a glance
whether the map's peak sits inside the organ (a hit in the pointing game) or beside it.

Arrays follow the kit's convention (RAS voxel order: axis 0 to the patient's Right, 1 Anterior,
2 Superior) and are shown in radiological convention exactly as :mod:`mosmoskit.viz.slices` shows
them (axial: patient's right on the viewer's left, anterior up), because image, maps and label all
pass through the same :func:`~mosmoskit.viz.slices.display_slice`.

Example:
    >>> import numpy as np
    >>> from mosmoskit.viz.attention import plot_attention_maps
    >>> image = np.zeros((32, 32)); maps = np.random.rand(2, 32, 32)
    >>> ax = plot_attention_maps(image, maps, ["liver", "spleen"], organs=["liver"])
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from mosmoskit.labels import LabelMap, load_label_map
from mosmoskit.viz.slices import AXES, _aspect, display_slice, overlay_rgba

__all__ = ["attention_rgba", "plot_attention_grid", "plot_attention_maps"]

#: contour colour of the organ outline when a single map is drawn with a heat colour map (the
#: organ's own colour could vanish in the heat colours; turbo has no magenta)
SINGLE_MAP_CONTOUR = "#ff00ff"


def _as_array(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensors
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _check_inputs(image: Any, maps: Any, names: Sequence[str], label: Any | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    img = _as_array(image, "image")
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be 2D (X, Y) or 3D (X, Y, Z), got shape {img.shape}")
    m = _as_array(maps, "maps").astype(np.float32, copy=False)
    if m.shape[1:] != img.shape:
        raise ValueError(
            f"maps must be (K, *image.shape) = (K, {', '.join(map(str, img.shape))}), got shape {m.shape}; "
            "upsample the maps to the image grid first"
        )
    if len(names) != m.shape[0]:
        raise ValueError(f"{len(names)} names for {m.shape[0]} maps; give one name per map, in map order")
    lab = None
    if label is not None:
        lab = _as_array(label, "label")
        if lab.shape != img.shape:
            raise ValueError(f"image shape {img.shape} and label shape {lab.shape} differ")
    return img, m, lab


def _organ_indices(names: Sequence[str], organs: Sequence[str] | None) -> list[int]:
    names = list(names)
    chosen = names if organs is None else list(organs)
    if not chosen:
        raise ValueError("organs is empty: name at least one organ to show")
    missing = [o for o in chosen if o not in names]
    if missing:
        raise ValueError(f"organs {missing} have no map; maps exist for {names}")
    return [names.index(o) for o in chosen]


def _organ_colors(organs: Sequence[str], label_map: LabelMap | None) -> dict[str, tuple[float, float, float]]:
    """The label map's colour per organ (so maps, contours and label overlays agree), else tab10."""
    import matplotlib

    known = label_map.colors() if label_map is not None else {}
    palette = matplotlib.colormaps["tab10"]
    return {o: known.get(o, tuple(float(c) for c in palette(i % 10)[:3])) for i, o in enumerate(organs)}


def _display_window(shown: np.ndarray, window: tuple[float, float] | None) -> tuple[float, float]:
    """The grey-level window: the given one, or the slice's own range."""
    if window is not None:
        return float(window[0]), float(window[1])
    low, high = float(shown.min()), float(shown.max())
    return (low, high) if high > low else (low, low + 1.0)  # a constant slice shows as one grey


def _default_index(mp: np.ndarray, lab: np.ndarray | None, label_ids: Sequence[int], axis: str) -> int | None:
    """3D only: the slice with most voxels of the chosen organs, else the slice of the first map's peak."""
    if mp.ndim != 4:
        return None
    dim = AXES[axis]
    if lab is not None and label_ids:
        other = tuple(d for d in range(3) if d != dim)
        counts = np.isin(lab, list(label_ids)).sum(axis=other)
        if counts.any():
            return int(np.argmax(counts))
    peak = np.unravel_index(int(np.argmax(mp[0])), mp.shape[1:])
    return int(peak[dim])


def attention_rgba(heat: np.ndarray, color: tuple[float, float, float] | None = None, cmap: str = "turbo",
                   alpha: float = 0.6) -> np.ndarray:
    """An RGBA layer of a 2D heat map in [0, 1] whose opacity grows with the heat.

    Low attention is transparent, so the CT stays readable where the tag does not look.

    Args:
        heat: (rows, cols) values in [0, 1] (clipped).
        color: one RGB colour for the whole layer (several organs on one slice), or ``None`` to
            colour by ``cmap`` (a single organ).
        cmap: matplotlib colour map name, used when ``color`` is ``None``.
        alpha: opacity at heat 1.

    Returns:
        float32 (rows, cols, 4).

    Raises:
        ValueError: ``alpha`` outside [0, 1] or ``heat`` not 2D.
    """
    import matplotlib

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    if heat.ndim != 2:
        raise ValueError(f"heat must be a 2D slice, got shape {heat.shape}")
    if color is None:
        rgba = matplotlib.colormaps[cmap](heat).astype(np.float32)
    else:
        rgba = np.empty((*heat.shape, 4), dtype=np.float32)
        rgba[..., :3] = np.asarray(color, dtype=np.float32)
    rgba[..., 3] = alpha * heat
    return rgba


def plot_attention_maps(
    image: Any,
    maps: Any,
    names: Sequence[str],
    label: Any | None = None,
    label_map: LabelMap | str | None = None,
    axis: str = "axial",
    index: int | None = None,
    organs: Sequence[str] | None = None,
    ax: Any | None = None,
    probabilities: Mapping[str, float] | None = None,
    window: tuple[float, float] | None = (-160.0, 240.0),
    alpha: float = 0.7,
    cmap: str = "turbo",
    normalize: bool = True,
    gamma: float = 0.5,
    mark_peak: bool = True,
    contour_color: str | None = None,
    spacing: Sequence[float] | None = None,
    legend: bool = True,
    title: str | None = None,
) -> Any:
    """Heat overlay of chosen organs' attention maps over one CT slice, with the organs' outlines.

    One organ is drawn with a heat colour map (``cmap``); several organs each in their label-map
    colour, opacity following the map, so they can share one slice. A ``+`` marks each map's peak
    in the shown slice (for a 2D image that is the peak the pointing game checks; for a volume the
    game uses the peak over all slices). The outline is the organ's ground-truth contour.

    Args:
        image: (X, Y) or (X, Y, Z) intensities in RAS voxel order (numpy array or tensor), HU by
            default (see ``window``).
        maps: (K, *image.shape) attention maps, one per tag, upsampled to the image grid.
        names: K tag names, in map order (``label_map.foreground_names``).
        label: optional integer mask of ``label_map`` ids, same shape as ``image``, for contours.
        label_map: a :class:`~mosmoskit.labels.LabelMap` or a name; needed for ``label`` and for
            the organ colours.
        axis: ``"axial"`` (default), ``"coronal"`` or ``"sagittal"``; 2D images are axial.
        index: slice number along ``axis``; ``None`` picks the slice where the chosen organs have
            the most voxels in ``label`` (else the slice of the first map's peak). Ignored in 2D.
        organs: which maps to draw (names from ``names``); ``None`` draws all of them.
        ax: matplotlib Axes; a new figure is made when ``None``.
        probabilities: tag name -> predicted probability, written in the title.
        window: (low, high) display window of ``image``; ``None`` uses the image's min and max
            (for an image already scaled to [0, 1]).
        alpha: opacity of the heat where a map is at its maximum.
        cmap: colour map for a single organ.
        normalize: divide each map by its maximum over the whole array, so that a slice's
            brightness says how close it comes to the map's peak (off: maps are drawn as given,
            clipped to [0, 1]).
        gamma: display contrast, heat = value ** gamma: below 1 it lifts weak attention, so that
            the surroundings of a sharply peaked map stay visible; 1 is linear. It changes the
            picture only, never the peak.
        mark_peak: draw a ``+`` at each map's maximum within the slice.
        contour_color: outline colour; ``None`` uses the organ's colour (or magenta for one organ).
        spacing: voxel size in mm, so that the aspect ratio is physical.
        legend: add a legend of the organs (several organs only).
        title: axes title; by default the organs (with probabilities) and the slice.

    Returns:
        The Axes drawn into.

    Raises:
        ValueError: shapes that do not match, a name count that differs from K, organs without a
            map, ``label`` without ``label_map``, an organ missing from the label map, a bad
            ``axis``/``index``/``window``.
    """
    img, mp, lab = _check_inputs(image, maps, names, label)
    picks = _organ_indices(names, organs)
    chosen = [names[k] for k in picks]
    if window is not None and window[0] >= window[1]:
        raise ValueError(f"window must be (low, high) with low < high, got {window!r}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    lm = None if label_map is None else load_label_map(label_map)
    if lab is not None and lm is None:
        raise ValueError("a label needs its label_map (to know which id is which organ)")
    label_ids: list[int] = []
    if lab is not None:
        lm.check_mask(lab, source="label")
        label_ids = [lm.id_of(o) for o in chosen]
    if index is None:
        index = _default_index(mp[picks], lab, label_ids, axis)

    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(5, 5))
    aspect = _aspect(axis, spacing)
    shown = display_slice(img, axis, index)
    low, high = _display_window(shown, window)
    ax.imshow(shown, cmap="gray", vmin=low, vmax=high, interpolation="nearest", aspect=aspect)

    single = len(picks) == 1
    colors = _organ_colors(chosen, lm)
    for k, organ in zip(picks, chosen):
        peak = float(mp[k].max())
        scale = peak if normalize and peak > 0 else 1.0
        heat = np.clip(display_slice(mp[k], axis, index) / scale, 0.0, 1.0) ** gamma
        ax.imshow(attention_rgba(heat, None if single else colors[organ], cmap=cmap, alpha=alpha),
                  interpolation="bilinear", aspect=aspect)
        edge = contour_color or (SINGLE_MAP_CONTOUR if single else colors[organ])
        if lab is not None:
            outline = display_slice((lab == lm.id_of(organ)).astype(np.float32), axis, index)
            if outline.any():
                ax.contour(outline, levels=[0.5], colors=[edge], linewidths=1.2)
        if mark_peak:
            row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
            ax.plot([col], [row], marker="+", markersize=10, markeredgewidth=2, color=edge, linestyle="none")

    if legend and not single:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=colors[o], label=o) for o in chosen], loc="upper left",
                  bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    if title is None:
        parts = [o if not probabilities or o not in probabilities else f"{o} p={probabilities[o]:.2f}" for o in chosen]
        where = "" if img.ndim == 2 else f" ({axis} {index})"
        title = ", ".join(parts) + where
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def plot_attention_grid(
    images: Sequence[Any],
    maps: Sequence[Any],
    names: Sequence[str],
    labels: Sequence[Any] | None = None,
    label_map: LabelMap | str | None = None,
    organs: Sequence[str] | None = None,
    case_ids: Sequence[str] | None = None,
    probabilities: Sequence[Mapping[str, float]] | None = None,
    axis: str = "axial",
    window: tuple[float, float] | None = (-160.0, 240.0),
    alpha: float = 0.7,
    cmap: str = "turbo",
    gamma: float = 0.5,
    show_labels: bool = True,
    spacing: Sequence[float] | None = None,
    panel_size: float = 2.6,
) -> Any:
    """A grid of attention maps: one row per case, one column per organ.

    Each organ panel is :func:`plot_attention_maps` for that organ alone, on the slice where the
    organ is largest in the case's label (3D), with its outline; a first column shows the label
    itself when ``labels`` are given and ``show_labels`` is on, so one can compare where the
    organ is with where the tag looks.

    Args:
        images: N images, each (X, Y) or (X, Y, Z), HU by default.
        maps: N arrays (K, *image.shape), the attention maps of each image.
        names: K tag names, in map order.
        labels: N label masks (same shapes as the images) or ``None``.
        label_map: LabelMap or name (needed with ``labels``; gives colours).
        organs: the organs to show as columns; ``None`` shows every tag (K columns).
        case_ids: N row titles.
        probabilities: N dicts tag name -> probability, written in each panel's title.
        axis, window, alpha, cmap, gamma, spacing: as in :func:`plot_attention_maps`.
        show_labels: add the label-overlay column when labels are given.
        panel_size: inches per panel.

    Returns:
        The matplotlib Figure.

    Raises:
        ValueError: lists of different lengths, no images, or an error of :func:`plot_attention_maps`.
    """
    import matplotlib.pyplot as plt

    n = len(images)
    if n == 0:
        raise ValueError("no images to plot")
    for what, seq in (("maps", maps), ("labels", labels), ("case_ids", case_ids), ("probabilities", probabilities)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{len(seq)} {what} for {n} images; give one per image")
    columns = list(names) if organs is None else list(organs)
    _organ_indices(names, columns)  # fail before drawing anything
    with_label_column = bool(show_labels and labels is not None)
    if labels is not None and label_map is None:
        raise ValueError("labels need their label_map (to know which id is which organ)")
    lm = None if label_map is None else load_label_map(label_map)
    ncols = len(columns) + int(with_label_column)
    fig, axes = plt.subplots(n, ncols, figsize=(panel_size * ncols, panel_size * n), squeeze=False)
    for r in range(n):
        label = None if labels is None else labels[r]
        offset = 0
        if with_label_column:
            ax = axes[r][0]
            img = _as_array(images[r], "image")
            lab = _as_array(label, "label")
            index = None
            if img.ndim == 3:
                index = _default_index(_as_array(maps[r], "maps")[_organ_indices(names, columns)], lab,
                                       [lm.id_of(o) for o in columns], axis)
            shown = display_slice(img, axis, index)
            low, high = _display_window(shown, window)
            ax.imshow(shown, cmap="gray", vmin=low, vmax=high, interpolation="nearest", aspect=_aspect(axis, spacing))
            rgba, _ = overlay_rgba(display_slice(lab, axis, index), lm)
            ax.imshow(rgba, interpolation="nearest", aspect=_aspect(axis, spacing))
            ax.set_title("label", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            offset = 1
        for c, organ in enumerate(columns):
            probs = None if probabilities is None else probabilities[r]
            title = organ if probs is None or organ not in probs else f"{organ} p={probs[organ]:.2f}"
            plot_attention_maps(images[r], maps[r], names, label=label, label_map=lm, axis=axis, organs=[organ],
                                ax=axes[r][c + offset], probabilities=probs, window=window, alpha=alpha, cmap=cmap,
                                gamma=gamma, spacing=spacing, title=title)
        if case_ids is not None:
            axes[r][0].set_ylabel(str(case_ids[r]), fontsize=9)
    fig.tight_layout()
    return fig
