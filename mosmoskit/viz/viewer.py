"""Look at one segmented case slice by slice: ground truth, prediction, their difference, attention.

One function draws every picture: :func:`render_view` turns a case (:class:`CaseView`: the scan,
its ground truth, the prediction, optionally the pixel-tag attention maps) and a view
(:class:`ViewState`: axis, slice, mode, visible organs, opacity, attention organ, grey-level
window) into an RGB ``uint8`` array. Everything else only chooses states and shows the arrays:

* :class:`MaskViewer` is the interactive viewer of notebook 04 (ipywidgets): a slice slider, a
  view dropdown (axial / coronal / sagittal), one checkbox per organ with its colour as legend, an
  opacity slider, the mode (ground truth / prediction / difference), the attention map of one
  organ as a heat overlay, and window presets. Each control's callback builds a new
  :class:`ViewState` and calls :func:`render_view`;
* :func:`plot_views` draws the same arrays into a static matplotlib figure: what a headless
  notebook run (papermill, CI) shows in place of the widgets. So the pictures CI checks are the
  pictures a student clicks through.

Arrays are in RAS voxel order (axis 0 to the patient's Right, 1 Anterior, 2 Superior), as every
reader of the kit returns them, and are shown in radiological convention through
:func:`~mosmoskit.viz.slices.display_slice` (axial: the patient's right on the viewer's left,
anterior up). Displayed pixels are resampled (nearest neighbour) so that millimetres look square.

The difference mode colours each voxel of the visible organs by what went wrong there:

==================  ================================================================  ============
category            voxel                                                             colour
==================  ================================================================  ============
``agree``           prediction equals the ground truth, a visible organ               green, faint
``false positive``  a visible organ predicted where the ground truth is background
                    (or an organ that is hidden)                                      red
``false negative``  a visible organ of the ground truth predicted as background
                    (or as an organ that is hidden)                                   blue
``wrong organ``     ground truth and prediction are two different visible organs      yellow
==================  ================================================================  ============

With every organ visible, red and blue are the plain false positives and negatives against
background; hiding organs splits a confusion into the part that concerns the organs shown.

:class:`DiceTable` shows the per-case, per-organ Dice of an inspection sorted worst first (a
dropdown picks the organ to sort by; a static HTML table in a headless run).

Example:
    >>> import numpy as np
    >>> from mosmoskit.labels import load_label_map
    >>> from mosmoskit.viz.viewer import CaseView, ViewState, render_view
    >>> truth = np.zeros((16, 16, 4), dtype=np.uint8); truth[4:10, 4:10, :] = 1
    >>> case = CaseView(image=np.zeros((16, 16, 4)), label_map=load_label_map("btcv"),
    ...                 truth=truth, prediction=np.roll(truth, 2, axis=0))
    >>> rgb = render_view(case, ViewState(axis="axial", index=2, mode="difference"))
    >>> rgb.shape, rgb.dtype
    ((16, 16, 3), dtype('uint8'))
"""

from __future__ import annotations

import dataclasses
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mosmoskit.labels import LabelMap, load_label_map
from mosmoskit.viz.slices import AXES, _aspect, display_slice

__all__ = [
    "AUTO_WINDOW",
    "DIFFERENCE_COLORS",
    "MODES",
    "VIEW_AXES",
    "WINDOW_PRESETS",
    "CaseView",
    "DiceTable",
    "MaskViewer",
    "ViewState",
    "best_index",
    "case_mean_dice",
    "default_views",
    "dice_table_html",
    "figure_png",
    "legend_entries",
    "plot_views",
    "render_view",
    "sort_cases",
    "window_limits",
]

#: What the label overlay shows.
MODES: tuple[str, ...] = ("ground_truth", "prediction", "difference")
_MODE_LABELS = {"ground_truth": "ground truth", "prediction": "prediction", "difference": "difference"}
#: Views in the order the viewer offers them.
VIEW_AXES: tuple[str, ...] = ("axial", "coronal", "sagittal")
#: CT window presets as (low, high) HU, i.e. level -/+ width/2: abdomen W400 L40, liver W150 L30,
#: bone W1800 L400, lung W1500 L-600, brain W80 L40.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (-160.0, 240.0),
    "liver": (-45.0, 105.0),
    "bone": (-500.0, 1300.0),
    "lung": (-1350.0, 150.0),
    "brain": (0.0, 80.0),
}
#: The preset that takes the window from the image itself (MR, or CT not in HU).
AUTO_WINDOW = "auto"
#: Percentiles of the image that bound the ``auto`` window (robust to a few extreme voxels).
_AUTO_PERCENTILES = (1.0, 99.0)
#: Colours of the difference mode (see the module docstring).
DIFFERENCE_COLORS: dict[str, tuple[float, float, float]] = {
    "agree": (0.20, 0.75, 0.25),
    "false positive": (1.00, 0.10, 0.10),
    "false negative": (0.10, 0.45, 1.00),
    "wrong organ": (1.00, 0.80, 0.00),
}
#: Agreement is context, the errors are the news: it is drawn at this share of the opacity.
_AGREE_OPACITY = 0.4
#: Display contrast of the attention heat (value ** gamma), as plot_attention_maps draws it: lifts
#: weak attention so that the surroundings of a sharp peak stay visible; never moves the peak.
_ATTENTION_GAMMA = 0.5
#: Longest side, in screen pixels, of the views the viewer and the static figures show.
DEFAULT_DISPLAY_SIZE = 384
_STATIC_DISPLAY_SIZE = 256


# ------------------------------------------------------------------------------------ the data
def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch / MONAI tensors
        value = value.detach().cpu().numpy()
    return np.asarray(value)


@dataclass(frozen=True, eq=False)
class CaseView:
    """One case's arrays on one grid, as the viewer shows them.

    A case is a volume, a single 2D image, or a *stack* of a patient's separate 2D slices (a 2D
    data set): then axis 2 counts the slices (``slice_ids``), which need not be adjacent, so only
    the axial view exists and the slice slider steps from one slice file to the next.

    Args:
        image: (X, Y, Z) or (X, Y) intensities in RAS voxel order (HU for CT); (X, Y, N) for a
            stack of N slices.
        label_map: the label map of ``truth`` and ``prediction`` (its colours are the legend).
        prediction: integer ids of ``label_map``, same shape as ``image``, or None.
        truth: the ground truth, same shape and ids, or None (a scan without labels).
        maps: (K, *image.shape) pixel-tag attention maps, map k for the label map's k-th
            foreground organ, or None (a model fine-tuned without maps).
        spacing: voxel size in mm, so that the displayed aspect ratio is physical (a stack: the
            two in-plane values).
        case_id: the case's name, for titles.
        maps_note: why ``maps`` is None, shown next to the disabled attention control.
        slice_ids: for a stack, the name of each slice (one per index of axis 2).

    Raises:
        ValueError: neither ``prediction`` nor ``truth``; shapes that differ from ``image``'s;
            values outside the label map (the message names the array); ``maps`` of the wrong
            shape; ``spacing`` of the wrong length; ``slice_ids`` that do not name every slice.

    Example:
        >>> import numpy as np
        >>> from mosmoskit.labels import load_label_map
        >>> case = CaseView(image=np.zeros((8, 8)), label_map=load_label_map("btcv"),
        ...                 prediction=np.zeros((8, 8), dtype=np.uint8))
        >>> case.axes, case.modes
        (('axial',), ('prediction',))
    """

    image: np.ndarray
    label_map: LabelMap
    prediction: np.ndarray | None = None
    truth: np.ndarray | None = None
    maps: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    case_id: str = "case"
    maps_note: str = ""
    slice_ids: tuple[str, ...] = ()
    _map_peaks: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        image = _as_array(self.image)
        if image.ndim not in (2, 3):
            raise ValueError(
                f"CaseView {self.case_id}: image must be 2D (X, Y) or 3D (X, Y, Z), got shape {image.shape}")
        object.__setattr__(self, "image", image)
        object.__setattr__(self, "label_map", load_label_map(self.label_map))
        if self.prediction is None and self.truth is None:
            raise ValueError(f"CaseView {self.case_id}: give a prediction, a ground truth or both")
        for name in ("prediction", "truth"):
            value = getattr(self, name)
            if value is None:
                continue
            arr = _as_array(value)
            if arr.shape != image.shape:
                raise ValueError(f"CaseView {self.case_id}: {name} has shape {arr.shape} but the image {image.shape}")
            self.label_map.check_mask(arr, source=f"{self.case_id} ({name})")
            object.__setattr__(self, name, arr)
        if self.maps is not None:
            maps = _as_array(self.maps).astype(np.float32, copy=False)
            k = len(self.label_map.foreground_names)
            if maps.shape != (k, *image.shape):
                raise ValueError(
                    f"CaseView {self.case_id}: maps must be (K, *image.shape) = ({k}, "
                    f"{', '.join(map(str, image.shape))}) for the {k} organs of {self.label_map.name!r}, "
                    f"got {maps.shape}"
                )
            object.__setattr__(self, "maps", maps)
            # Each map is normalised by its peak over the whole scan (computed once, not per slice),
            # so a slice's brightness says how close it comes to the map's maximum.
            object.__setattr__(self, "_map_peaks", maps.reshape(k, -1).max(axis=1))
        object.__setattr__(self, "slice_ids", tuple(str(s) for s in self.slice_ids))
        if self.slice_ids and (image.ndim != 3 or len(self.slice_ids) != image.shape[2]):
            raise ValueError(f"CaseView {self.case_id}: slice_ids must name each of the slices of a stack "
                             f"(X, Y, N), got {len(self.slice_ids)} names for an image of shape {image.shape}")
        if self.spacing is not None:
            spacing = tuple(float(s) for s in self.spacing)
            allowed = (2, 3) if self.slice_ids else (image.ndim,)
            if len(spacing) not in allowed or not all(math.isfinite(s) and s > 0 for s in spacing):
                raise ValueError(f"CaseView {self.case_id}: spacing must be {' or '.join(map(str, allowed))} "
                                 f"positive numbers (mm), got {self.spacing}")
            object.__setattr__(self, "spacing", spacing)

    @property
    def ndim(self) -> int:
        """2 for a single slice, 3 for a volume."""
        return self.image.ndim

    @property
    def axes(self) -> tuple[str, ...]:
        """The views this case has: all three for a volume, ``("axial",)`` for a slice or a stack."""
        return VIEW_AXES if self.ndim == 3 and not self.slice_ids else ("axial",)

    @property
    def modes(self) -> tuple[str, ...]:
        """The overlay modes this case has (no ground truth: only ``"prediction"``)."""
        if self.truth is None:
            return ("ground_truth",) if self.prediction is None else ("prediction",)
        return MODES if self.prediction is not None else ("ground_truth",)

    @property
    def organs_present(self) -> tuple[str, ...]:
        """Organs in the ground truth or the prediction, in label-map order."""
        ids: set[int] = set()
        for arr in (self.truth, self.prediction):
            if arr is not None:
                ids |= {int(v) for v in np.unique(arr) if v > 0}
        return tuple(n for n in self.label_map.foreground_names if self.label_map.id_of(n) in ids)

    def n_slices(self, axis: str) -> int:
        """Number of slices along a view's axis (1 for a 2D image)."""
        _check_axis(self, axis)
        return 1 if self.ndim == 2 else int(self.image.shape[AXES[axis]])

    def slice_name(self, axis: str, index: int | None) -> str:
        """How titles name a slice: ``"axial 12"``, a stack's slice id, or ``""`` for a 2D image."""
        if self.ndim == 2:
            return ""
        index = self.n_slices(axis) // 2 if index is None else int(index)
        return self.slice_ids[index] if self.slice_ids else f"{axis} {index}"


@dataclass(frozen=True)
class ViewState:
    """What one picture of a case shows.

    Args:
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"`` (2D images: axial only).
        index: slice number along ``axis``; None: the middle slice (ignored for 2D images).
        mode: ``"ground_truth"``, ``"prediction"`` or ``"difference"`` (see the module docstring).
        organs: the organs drawn (label-map names); None draws them all.
        opacity: opacity of the label overlay and of the attention heat, in [0, 1].
        attention: the organ whose attention map is drawn as a heat overlay (``""``: none).
        window: (low, high) grey-level window of the image, e.g. ``WINDOW_PRESETS["liver"]``.

    Raises:
        ValueError: an unknown axis or mode, a negative index, an opacity outside [0, 1], or a
            window with low >= high.
    """

    axis: str = "axial"
    index: int | None = None
    mode: str = "prediction"
    organs: tuple[str, ...] | None = None
    opacity: float = 0.5
    attention: str = ""
    window: tuple[float, float] = WINDOW_PRESETS["abdomen"]

    def __post_init__(self) -> None:
        if self.axis not in VIEW_AXES:
            raise ValueError(f"ViewState.axis must be one of {list(VIEW_AXES)}, got {self.axis!r}")
        if self.mode not in MODES:
            raise ValueError(f"ViewState.mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.index is not None:
            if isinstance(self.index, bool) or not isinstance(self.index, (int, np.integer)) or self.index < 0:
                raise ValueError(f"ViewState.index must be None or an integer >= 0, got {self.index!r}")
            object.__setattr__(self, "index", int(self.index))
        if self.organs is not None:
            object.__setattr__(self, "organs", tuple(self.organs))
        if not 0.0 <= float(self.opacity) <= 1.0:
            raise ValueError(f"ViewState.opacity must be in [0, 1], got {self.opacity!r}")
        window = tuple(float(v) for v in self.window)
        if len(window) != 2 or not window[0] < window[1]:
            raise ValueError(f"ViewState.window must be (low, high) with low < high, got {self.window!r}")
        object.__setattr__(self, "window", window)


def window_limits(preset: str, image: Any = None) -> tuple[float, float]:
    """The (low, high) grey-level window of a preset.

    Args:
        preset: a name of :data:`WINDOW_PRESETS` or ``"auto"`` (the image's 1st to 99th
            percentile, for MR or CT not in HU).
        image: the image, needed for ``"auto"``.

    Raises:
        ValueError: an unknown preset, or ``"auto"`` without an image.
    """
    if preset in WINDOW_PRESETS:
        return WINDOW_PRESETS[preset]
    if preset != AUTO_WINDOW:
        raise ValueError(f"window preset must be one of {[*WINDOW_PRESETS, AUTO_WINDOW]}, got {preset!r}")
    if image is None:
        raise ValueError("the 'auto' window preset is computed from the image: pass the image")
    low, high = (float(v) for v in np.percentile(_as_array(image), _AUTO_PERCENTILES))
    return (low, high) if high > low else (low, low + 1.0)  # a constant image shows as one grey


# --------------------------------------------------------------------------------- the drawing
def _check_axis(case: CaseView, axis: str) -> None:
    if axis not in case.axes:
        what = "a stack of 2D slices" if case.slice_ids else f"a {case.ndim}D image"
        raise ValueError(f"case {case.case_id} is {what}: axis must be one of {list(case.axes)}, got {axis!r}")


def _visible_ids(case: CaseView, organs: Sequence[str] | None) -> np.ndarray:
    names = case.label_map.foreground_names
    if organs is None:
        return np.arange(1, len(names) + 1)
    unknown = [o for o in organs if o not in names]
    if unknown:
        raise ValueError(f"organs {unknown} are not in label map {case.label_map.name!r}; known: {list(names)}")
    return np.asarray([case.label_map.id_of(o) for o in organs], dtype=np.int64)


def _check_state(case: CaseView, state: ViewState) -> None:
    _check_axis(case, state.axis)
    if state.mode not in case.modes:
        missing = "ground truth" if case.truth is None else "prediction"
        raise ValueError(f"mode {state.mode!r} needs a {missing}, which case {case.case_id} does not have; "
                         f"available: {list(case.modes)}")
    if case.ndim == 3 and state.index is not None and state.index >= case.n_slices(state.axis):
        raise ValueError(f"{state.axis} index {state.index} is outside 0..{case.n_slices(state.axis) - 1} "
                         f"for case {case.case_id}")
    if state.attention:
        names = case.label_map.foreground_names
        if state.attention not in names:
            raise ValueError(f"attention organ {state.attention!r} is not in label map {case.label_map.name!r}; "
                             f"known: {list(names)}")
        if case.maps is None:
            why = f": {case.maps_note}" if case.maps_note else ""
            raise ValueError(f"case {case.case_id} has no attention maps{why}")


def _difference_categories(case: CaseView, state: ViewState) -> dict[str, np.ndarray]:
    """Category name -> (rows, cols) bool mask of the shown slice (see the module docstring)."""
    ids = _visible_ids(case, state.organs)
    gt = display_slice(case.truth, state.axis, state.index).astype(np.int64, copy=False)
    pred = display_slice(case.prediction, state.axis, state.index).astype(np.int64, copy=False)
    gt_in, pred_in, differ = np.isin(gt, ids), np.isin(pred, ids), gt != pred
    # A voxel of organ A predicted as organ B is a miss of A and a false positive of B at once: it
    # counts as what is visible of it, so hiding A leaves B's false positive and vice versa.
    return {
        "agree": gt_in & ~differ,
        "false positive": pred_in & differ & ~gt_in,
        "false negative": gt_in & differ & ~pred_in,
        "wrong organ": gt_in & pred_in & differ,
    }


def _overlay_layer(case: CaseView, state: ViewState) -> np.ndarray:
    """(rows, cols, 4) float RGBA of the label overlay of ``state`` (transparent where nothing is drawn)."""
    alpha = float(state.opacity)
    if state.mode == "difference":
        categories = _difference_categories(case, state)
        rgba = np.zeros((*next(iter(categories.values())).shape, 4), dtype=np.float32)
        for name, where in categories.items():
            rgba[where, :3] = DIFFERENCE_COLORS[name]
            rgba[where, 3] = alpha * (_AGREE_OPACITY if name == "agree" else 1.0)
        return rgba
    source = case.truth if state.mode == "ground_truth" else case.prediction
    lab = display_slice(source, state.axis, state.index).astype(np.int64, copy=False)
    palette = np.zeros((case.label_map.num_classes, 3), dtype=np.float32)
    for name, color in case.label_map.colors().items():
        palette[case.label_map.id_of(name)] = color
    rgba = np.zeros((*lab.shape, 4), dtype=np.float32)
    shown = np.isin(lab, _visible_ids(case, state.organs)) & (lab > 0)
    rgba[shown, :3] = palette[lab[shown]]
    rgba[shown, 3] = alpha
    return rgba


def _attention_layer(case: CaseView, state: ViewState) -> np.ndarray:
    from mosmoskit.viz.attention import attention_rgba

    k = case.label_map.foreground_names.index(state.attention)
    peak = float(case._map_peaks[k])
    heat = display_slice(case.maps[k], state.axis, state.index) / (peak if peak > 0 else 1.0)
    return attention_rgba(np.clip(heat, 0.0, 1.0) ** _ATTENTION_GAMMA, None, cmap="turbo", alpha=float(state.opacity))


def _display_grid(shape: tuple[int, int], aspect: float, display_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices (nearest neighbour) of the displayed picture: physical aspect, and the
    longer side scaled up to ``display_size`` pixels (0: no enlargement)."""
    rows, cols = shape
    height, width = rows * max(aspect, 1.0), cols * max(1.0 / aspect, 1.0)
    scale = max(1.0, display_size / max(height, width)) if display_size else 1.0
    out_rows, out_cols = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
    r = np.minimum((np.arange(out_rows) + 0.5) * rows / out_rows, rows - 1).astype(np.int64)
    c = np.minimum((np.arange(out_cols) + 0.5) * cols / out_cols, cols - 1).astype(np.int64)
    return r, c


def render_view(case: CaseView, state: ViewState, display_size: int = 0) -> np.ndarray:
    """Draw one view of a case: the windowed slice, the label overlay and the attention heat.

    This is the one drawing function of the viewer: the widgets of :class:`MaskViewer` and the
    static figures of :func:`plot_views` both show its output.

    Args:
        case: the arrays.
        state: what to show.
        display_size: the longer side of the result in pixels (nearest-neighbour enlargement);
            0 keeps one pixel per voxel, except that the shorter voxel side is repeated so that
            millimetres look square.

    Returns:
        (rows, cols, 3) uint8 RGB; row 0 is the top of the displayed slice (radiological
        convention, :func:`~mosmoskit.viz.slices.display_slice`). The same case and state always
        give the same array.

    Raises:
        ValueError: an axis the case lacks, a slice index out of range, a mode that needs a
            ground truth the case lacks, organs not in the label map, an attention organ without
            maps, or a negative ``display_size``.
    """
    if display_size < 0:
        raise ValueError(f"display_size must be >= 0, got {display_size}")
    _check_state(case, state)
    shown = display_slice(case.image, state.axis, state.index).astype(np.float32, copy=False)
    low, high = state.window
    grey = np.clip((shown - low) / (high - low), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    layers = [_overlay_layer(case, state)]
    if state.attention:
        layers.append(_attention_layer(case, state))
    for layer in layers:
        alpha = layer[..., 3:4]
        rgb = rgb * (1.0 - alpha) + layer[..., :3] * alpha
    rows, cols = _display_grid(rgb.shape[:2], _aspect(state.axis, case.spacing), display_size)
    rgb = rgb[rows][:, cols]
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def legend_entries(case: CaseView, state: ViewState) -> list[tuple[str, tuple[float, float, float]]]:
    """What the colours of :func:`render_view` mean in this view: ``[(name, rgb), ...]``.

    Label modes: the visible organs present in the shown slice, in label-map order. Difference
    mode: the categories present (``agree``, ``false positive``, ...).
    """
    _check_state(case, state)
    if state.mode == "difference":
        categories = _difference_categories(case, state)
        return [(name, DIFFERENCE_COLORS[name]) for name, where in categories.items() if where.any()]
    ids = set(_visible_ids(case, state.organs).tolist())
    source = case.truth if state.mode == "ground_truth" else case.prediction
    present = {int(v) for v in np.unique(display_slice(source, state.axis, state.index))} & ids
    colors = case.label_map.colors()
    return [(n, colors[n]) for n in case.label_map.foreground_names if case.label_map.id_of(n) in present]


def best_index(case: CaseView, axis: str, organ: str = "") -> int | None:
    """The slice worth looking at first along ``axis``.

    The slice with the most voxels of ``organ`` (ground truth, else prediction), or, without an
    organ or where it is absent, with the most labelled voxels; None for a 2D image or an empty
    case (the middle slice is shown).

    Raises:
        ValueError: an axis the case lacks, or an organ not in the label map.
    """
    _check_axis(case, axis)
    if case.ndim == 2:
        return None
    other = tuple(d for d in range(3) if d != AXES[axis])
    masks = [m for m in (case.truth, case.prediction) if m is not None]
    if organ:
        oid = case.label_map.id_of(organ) if organ in case.label_map else None
        if oid is None or oid == 0:
            raise ValueError(f"organ {organ!r} is not in label map {case.label_map.name!r}; "
                             f"known: {list(case.label_map.foreground_names)}")
        for mask in masks:
            counts = (mask == oid).sum(axis=other)
            if counts.any():
                return int(np.argmax(counts))
    for mask in masks:
        counts = (mask > 0).sum(axis=other)
        if counts.any():
            return int(np.argmax(counts))
    return None


def default_views(case: CaseView, state: ViewState) -> list[list[tuple[str, ViewState]]]:
    """The static views of a case: one row per view axis, one column per mode (plus the attention).

    Each row shows ``state``'s slice on its own axis and the organ-richest slice on the others;
    the columns are every mode the case has, without attention, and, when ``state.attention``
    names an organ, that organ's prediction under its attention heat.

    Returns:
        Rows of ``(title, ViewState)``.
    """
    _check_state(case, state)
    rows = []
    for axis in case.axes:
        index = state.index if axis == state.axis else best_index(case, axis, state.attention)
        base = dataclasses.replace(state, axis=axis, index=index, attention="")
        where = f" {case.slice_name(axis, index)}".rstrip()
        row = [(f"{_MODE_LABELS[mode]}{where}", dataclasses.replace(base, mode=mode)) for mode in case.modes]
        if state.attention:
            heat = dataclasses.replace(base, mode="prediction" if case.prediction is not None else "ground_truth",
                                       organs=(state.attention,), attention=state.attention)
            row.append((f"attention: {state.attention}{where}", heat))
        rows.append(row)
    return rows


def plot_views(
    case: CaseView,
    views: Sequence[Sequence[tuple[str, ViewState]]],
    display_size: int = _STATIC_DISPLAY_SIZE,
    panel_size: float = 3.0,
    title: str | None = None,
) -> Any:
    """A static figure of views of a case, each panel drawn by :func:`render_view`.

    Args:
        case: the arrays.
        views: rows of ``(title, ViewState)`` (:func:`default_views` gives the usual ones).
        display_size: passed to :func:`render_view`.
        panel_size: inches per panel.
        title: figure title (default: the case id).

    Returns:
        A matplotlib Figure (not registered with pyplot, so a notebook shows it only when it is
        displayed); its legend lists the organs and difference categories drawn.

    Raises:
        ValueError: no views, or an error of :func:`render_view`.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not views or not any(views):
        raise ValueError("plot_views needs at least one view")
    pictures = [[(name, render_view(case, state, display_size)) for name, state in row] for row in views]
    legend: dict[str, tuple[float, float, float]] = {}
    for row in views:
        for _, state in row:
            legend.update(legend_entries(case, state))
    # Organs in label-map order, then the difference categories.
    order = [*case.label_map.foreground_names, *DIFFERENCE_COLORS]
    legend = {name: legend[name] for name in order if name in legend}
    n_cols = max(len(r) for r in pictures)
    # Each row as tall as its tallest picture, so views of other proportions leave no gaps.
    ratios = [max((p.shape[0] / p.shape[1] for _, p in row), default=1.0) for row in pictures]
    width = panel_size * n_cols + (1.8 if legend else 0.2)
    fig = Figure(figsize=(width, panel_size * sum(ratios) + 0.3 * len(ratios) + 0.4), layout="constrained")
    axes = fig.subplots(len(pictures), n_cols, squeeze=False, gridspec_kw={"height_ratios": ratios})
    for r, row in enumerate(pictures):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c < len(row):
                ax.imshow(row[c][1], interpolation="nearest")
                ax.set_title(row[c][0], fontsize=9)
    if legend:
        fig.legend(handles=[Patch(color=color, label=label) for label, color in legend.items()],
                   loc="outside right upper", fontsize=7, frameon=False)
    fig.suptitle(title if title is not None else str(case.case_id), fontsize=10)
    return fig


def figure_png(fig: Any, dpi: int = 80) -> bytes:
    """The PNG bytes of a matplotlib Figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _hex(color: Sequence[float]) -> str:
    return "#" + "".join(f"{int(round(float(v) * 255)):02x}" for v in color[:3])


def _swatch(color: Sequence[float]) -> str:
    return (f'<span style="display:inline-block;width:12px;height:12px;background:{_hex(color)};'
            f'border:1px solid #555;vertical-align:middle"></span>')


# ------------------------------------------------------------------------------------ the viewer
class MaskViewer:
    """The interactive viewer of one case (notebook 04): every control redraws with :func:`render_view`.

    Controls: slice slider, view dropdown (axial / coronal / sagittal), overlay mode (ground truth
    / prediction / difference), opacity slider, window preset, attention organ (disabled, with a
    note, when the case has no maps), and one checkbox per organ present in the case, its colour
    swatch as legend (plus "all"/"none" buttons). Setting a control's value, by hand or from code,
    updates :attr:`state` and the picture.

    Without a watching frontend (papermill, nbconvert, a terminal), :meth:`show` displays a static
    figure of the same views (:func:`default_views` drawn by :func:`plot_views`).

    Args:
        case: the arrays.
        state: the first view; None: the prediction (or ground truth) on the axial slice with the
            most labelled voxels. An ``index`` of None is replaced by :func:`best_index`.
        window_preset: the preset the window control starts at (``state.window`` wins if given).
        display_size: longer side of the shown picture in pixels.

    Attributes:
        case: the arrays.
        state: the current :class:`ViewState`.
        controls: name -> ipywidgets control (after :attr:`widget` was first built).
        organ_boxes: organ name -> its Checkbox.
        note: the HTML widget saying which controls are disabled and why.
        picture: the ipywidgets Image showing :meth:`image_array` as PNG.

    Raises:
        ValueError: a ``state`` the case cannot show (see :func:`render_view`), an unknown preset.

    Example:
        >>> viewer = MaskViewer(case)                  # doctest: +SKIP
        >>> viewer.show()   # widgets in Jupyter, a static figure headless  # doctest: +SKIP
        >>> viewer.controls["index"].value = 12        # doctest: +SKIP
        >>> viewer.image_array().shape                 # doctest: +SKIP
    """

    def __init__(
        self,
        case: CaseView,
        state: ViewState | None = None,
        window_preset: str = "abdomen",
        display_size: int = DEFAULT_DISPLAY_SIZE,
    ) -> None:
        self.case = case
        self.display_size = int(display_size)
        window = window_limits(window_preset, case.image)
        self.window_preset = window_preset
        if state is None:
            state = ViewState(mode=case.modes[0] if "prediction" not in case.modes else "prediction", window=window)
        if state.index is None and case.ndim == 3:
            state = dataclasses.replace(state, index=best_index(case, state.axis, state.attention))
        self.state = state
        self.controls: dict[str, Any] = {}
        self.organ_boxes: dict[str, Any] = {}
        self.renders = 0
        self._image: np.ndarray | None = None
        self._widget: Any = None
        self.picture: Any = None
        self._key: Any = None
        self._title: Any = None
        self.note: Any = None
        self._syncing = False
        self.render()

    # ------------------------------------------------------------------ drawing
    def render(self) -> np.ndarray:
        """Redraw the current state; pushes the picture into the widget when it exists."""
        self._image = render_view(self.case, self.state, self.display_size)
        self.renders += 1
        if self.picture is not None:
            self.picture.value = _png(self._image)
            self._key.value = self._key_html()
            self._title.value = self._title_html()
        return self._image

    def image_array(self) -> np.ndarray:
        """The last rendered picture, (rows, cols, 3) uint8 (what the widget shows)."""
        assert self._image is not None  # render() runs in __init__
        return self._image

    def update(self, **changes: Any) -> np.ndarray:
        """Change fields of :attr:`state` (as ``ViewState`` arguments), redraw and sync the controls.

        Raises:
            ValueError: a state the case cannot show; the previous state is kept.
        """
        new = dataclasses.replace(self.state, **changes)
        if new.axis != self.state.axis and "index" not in changes and self.case.ndim == 3:
            new = dataclasses.replace(new, index=best_index(self.case, new.axis, new.attention))
        _check_state(self.case, new)  # fail before anything changes
        self.state = new
        self._sync_controls()
        return self.render()

    def static_figure(self, display_size: int = _STATIC_DISPLAY_SIZE) -> Any:
        """The headless counterpart of the widgets: :func:`default_views` of the current state."""
        return plot_views(self.case, default_views(self.case, self.state), display_size=display_size,
                          title=f"{self.case.case_id}: {self._describe_organs()}")

    def _describe_organs(self) -> str:
        organs = self.state.organs
        return "all organs" if organs is None else (", ".join(organs) if organs else "no organ")

    # ------------------------------------------------------------------ display
    def show(self, live: bool | None = None, path: str | Path | None = None) -> None:
        """Display the widgets (a person's notebook) or the static figure (headless runs).

        Args:
            live: True/False forces widgets/figure; None asks
                :func:`~mosmoskit.viz.live.live_display_available`.
            path: also write the static figure there as PNG (atomically).
        """
        from IPython.display import Image, display

        from mosmoskit.viz.live import live_display_available

        live = live_display_available() if live is None else bool(live)
        png = None
        if path is not None or not live:
            png = figure_png(self.static_figure())
        if path is not None:
            from mosmoskit.io import atomic_write_bytes

            atomic_write_bytes(path, png)
        # A PNG rather than the Figure, so the output does not depend on the kernel's matplotlib backend.
        display(self.widget if live else Image(data=png, format="png"))

    def _ipython_display_(self) -> None:
        self.show()

    # ------------------------------------------------------------------ widgets
    @property
    def widget(self) -> Any:
        """The ipywidgets box (built on first use; needs ``ipywidgets``)."""
        if self._widget is None:
            self._widget = self._build()
        return self._widget

    def _title_html(self) -> str:
        where = self.case.slice_name(self.state.axis, self.state.index)
        return f"<b>{html.escape(str(self.case.case_id))}</b>" + (f" &middot; {html.escape(where)}" if where else "")

    def _key_html(self) -> str:
        if self.state.mode != "difference":
            return ""
        return "&nbsp;&nbsp;".join(f"{_swatch(c)} {html.escape(n)}" for n, c in DIFFERENCE_COLORS.items())

    def _build(self) -> Any:
        try:
            import ipywidgets as w
        except ImportError as err:  # pragma: no cover - ipywidgets is in the notebooks extra
            raise ImportError("the interactive viewer needs ipywidgets: pip install 'mosmoskit[notebooks]'") from err

        case, state = self.case, self.state
        n = case.n_slices(state.axis)
        c: dict[str, Any] = {}
        c["axis"] = w.Dropdown(options=list(case.axes), value=state.axis, description="view",
                               disabled=len(case.axes) == 1)
        c["index"] = w.IntSlider(min=0, max=n - 1, value=state.index or 0, description="slice",
                                 disabled=case.ndim == 2, continuous_update=True)
        c["mode"] = w.ToggleButtons(options=[(_MODE_LABELS[m], m) for m in case.modes], value=state.mode,
                                    description="overlay", disabled=len(case.modes) == 1)
        c["opacity"] = w.FloatSlider(min=0.0, max=1.0, step=0.05, value=float(state.opacity), description="opacity")
        presets = [*WINDOW_PRESETS, AUTO_WINDOW]
        c["window"] = w.Dropdown(options=presets, description="window",
                                 value=self.window_preset if self.window_preset in presets else "abdomen")
        c["attention"] = w.Dropdown(options=[("none", ""), *[(o, o) for o in case.label_map.foreground_names]],
                                    value=state.attention, description="attention", disabled=case.maps is None)
        notes = []
        if case.maps is None:
            notes.append("No attention maps" + (f": {html.escape(case.maps_note)}" if case.maps_note else "."))
        if case.truth is None:
            notes.append("No ground truth: only the prediction can be shown.")
        self.note = note = w.HTML("<br>".join(f"<i>{t}</i>" for t in notes))
        organs = case.organs_present or case.label_map.foreground_names
        colors = case.label_map.colors()
        visible = set(case.label_map.foreground_names if state.organs is None else state.organs)
        self.organ_boxes = {o: w.Checkbox(value=o in visible, description=o, indent=False,
                                          layout=w.Layout(width="auto")) for o in organs}
        rows = [w.HBox([w.HTML(_swatch(colors[o])), box]) for o, box in self.organ_boxes.items()]
        all_button, none_button = w.Button(description="all"), w.Button(description="none")
        all_button.on_click(lambda _: self._set_all_organs(True))
        none_button.on_click(lambda _: self._set_all_organs(False))
        self.controls = c
        for control in c.values():
            control.observe(self._on_change, names="value")
        for box in self.organ_boxes.values():
            box.observe(self._on_change, names="value")
        self.picture = w.Image(value=_png(self.image_array()), format="png")
        self._key = w.HTML(self._key_html())
        panel = w.VBox([c["axis"], c["index"], c["mode"], c["opacity"], c["window"], c["attention"], note,
                        w.HTML("<b>organs</b>"), w.HBox([all_button, none_button]),
                        w.GridBox(rows, layout=w.Layout(grid_template_columns="repeat(2, auto)"))])
        self._title = w.HTML(self._title_html())
        return w.HBox([w.VBox([self._title, self.picture, self._key]), panel])

    def _set_all_organs(self, value: bool) -> None:
        self._syncing = True
        try:
            for box in self.organ_boxes.values():
                box.value = value
        finally:
            self._syncing = False
        self._on_change(None)

    def _on_change(self, change: Any) -> None:
        """A control changed: build the new state from all controls and redraw."""
        if self._syncing:
            return
        c = self.controls
        changes: dict[str, Any] = {
            "mode": c["mode"].value, "opacity": float(c["opacity"].value), "attention": c["attention"].value,
            "organs": tuple(o for o, box in self.organ_boxes.items() if box.value),
        }
        if all(box.value for box in self.organ_boxes.values()):
            changes["organs"] = None  # every organ of the case: the same picture as "all organs"
        if change is not None and change["owner"] is c["window"]:
            self.window_preset = c["window"].value
            changes["window"] = window_limits(self.window_preset, self.case.image)
        if self.case.ndim == 3:
            if change is not None and change["owner"] is c["axis"]:
                changes["axis"] = c["axis"].value  # update() picks the new axis' best slice
            else:
                changes["index"] = int(c["index"].value)
        self.update(**changes)

    def _sync_controls(self) -> None:
        """Put the state into the controls without triggering their callbacks."""
        if not self.controls:
            return
        c, state = self.controls, self.state
        self._syncing = True
        try:
            c["axis"].value = state.axis
            if self.case.ndim == 3:
                n = self.case.n_slices(state.axis)
                index = state.index if state.index is not None else n // 2
                # Widen before moving the value: ipywidgets clamps a value outside [min, max].
                c["index"].max = max(n - 1, index, c["index"].value)
                c["index"].value = index
                c["index"].max = n - 1
            c["mode"].value = state.mode
            c["opacity"].value = float(state.opacity)
            c["attention"].value = state.attention
            visible = set(self.case.label_map.foreground_names if state.organs is None else state.organs)
            for organ, box in self.organ_boxes.items():
                box.value = organ in visible
        finally:
            self._syncing = False


# ----------------------------------------------------------------------------- the Dice table
def case_mean_dice(organs: Mapping[str, Mapping[str, Any]]) -> float:
    """Mean Dice of one case over its scored organs (NaN, e.g. organs absent from both masks, left out).

    Returns:
        The mean, or NaN when no organ has a Dice value.
    """
    values = [float(m["dice"]) for m in organs.values() if m.get("dice") is not None]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _dice_of(organs: Mapping[str, Mapping[str, Any]], key: str) -> float:
    if key == "mean":
        return case_mean_dice(organs)
    value = (organs.get(key) or {}).get("dice")
    return float("nan") if value is None else float(value)


def _table_organs(per_case: Mapping[str, Mapping[str, Mapping[str, Any]]], label_map: LabelMap | None) -> list[str]:
    """Organs with a Dice value in at least one case (all-NaN columns would only widen the table)."""
    order = list(label_map.foreground_names) if label_map is not None else list(next(iter(per_case.values()), {}))
    return [o for o in order if any(not math.isnan(_dice_of(m, o)) for m in per_case.values())]


def sort_cases(per_case: Mapping[str, Mapping[str, Mapping[str, Any]]], by: str = "mean") -> list[str]:
    """Case ids from the worst to the best Dice of ``by``; cases without a value for it go last.

    Args:
        per_case: case id -> organ -> metrics (``organ_metrics``), as an inspection returns.
        by: ``"mean"`` (the case's mean Dice over its scored organs) or an organ name.

    Raises:
        ValueError: ``by`` is neither ``"mean"`` nor an organ of the metrics.
    """
    organs = {o for m in per_case.values() for o in m}
    if by != "mean" and by not in organs:
        raise ValueError(f"sort by 'mean' or an organ of the metrics {sorted(organs)}, got {by!r}")
    scores = {c: _dice_of(m, by) for c, m in per_case.items()}
    return sorted(scores, key=lambda c: (math.isnan(scores[c]), scores[c] if not math.isnan(scores[c]) else 0.0, c))


def dice_table_html(
    per_case: Mapping[str, Mapping[str, Mapping[str, Any]]],
    label_map: LabelMap | str | None = None,
    sort_by: str = "mean",
    highlight: str = "",
) -> str:
    """An HTML table of per-case, per-organ Dice, sorted worst first by ``sort_by``.

    Cells are shaded from red (0) to green (1); ``n/a`` marks an organ absent from both masks; a
    cell's tooltip gives the organ's status and HD95. The ``highlight`` case is in bold.

    Args:
        per_case: case id -> organ -> ``{"dice", "hd95", "status", ...}``.
        label_map: orders the organ columns (default: the metrics' order).
        sort_by: ``"mean"`` or an organ name (see :func:`sort_cases`).
        highlight: a case id to mark (the one being viewed).

    Raises:
        ValueError: no cases, or an unknown ``sort_by``.
    """
    import matplotlib

    if not per_case:
        raise ValueError("dice_table_html needs at least one case with metrics")
    lm = None if label_map is None else load_label_map(label_map)
    order = sort_cases(per_case, sort_by)
    organs = _table_organs(per_case, lm)
    cmap = matplotlib.colormaps["RdYlGn"]

    def cell(value: float, tip: str = "") -> str:
        title = f' title="{html.escape(tip)}"' if tip else ""
        if math.isnan(value):
            return f'<td style="text-align:center;color:#888"{title}>n/a</td>'
        shade = _hex(cmap(float(np.clip(value, 0.0, 1.0))))
        return f'<td style="text-align:right;background:{shade}66"{title}>{value:.3f}</td>'

    head = "".join(f"<th>{html.escape(o)}{' &#9650;' if o == sort_by else ''}</th>" for o in ["mean", *organs])
    body = []
    for case_id in order:
        metrics = per_case[case_id]
        cells = [cell(case_mean_dice(metrics))]
        for organ in organs:
            m = metrics.get(organ) or {}
            hd = m.get("hd95")
            hd_text = "n/a" if hd is None or math.isnan(float(hd)) else f"{float(hd):.1f} mm"
            tip = f"{m.get('status', '?')}, HD95 {hd_text}"
            cells.append(cell(_dice_of(metrics, organ), tip))
        name = html.escape(str(case_id))
        name = f"<b>{name} &#9664;</b>" if case_id == highlight else name
        body.append(f"<tr><td>{name}</td>{''.join(cells)}</tr>")
    caption = (f"Dice per case and organ, sorted by {html.escape(sort_by)} (worst first); "
               f"{len(order)} case(s); n/a = organ absent from both masks")
    return (f'<table style="font-size:11px;border-collapse:collapse"><caption style="text-align:left">{caption}'
            f"</caption><tr><th>case</th>{head}</tr>{''.join(body)}</table>")


class DiceTable:
    """The per-case, per-organ Dice of an inspection, worst first, sortable by organ.

    In a watched notebook a dropdown picks the column to sort by (``mean`` or an organ); a
    headless run shows the table sorted by ``sort_by`` as static HTML.

    Args:
        per_case: case id -> organ -> metrics.
        label_map: orders the organ columns.
        sort_by: the first sort column.
        highlight: the case being viewed (marked in the table).

    Raises:
        ValueError: as :func:`dice_table_html`.
    """

    def __init__(
        self,
        per_case: Mapping[str, Mapping[str, Mapping[str, Any]]],
        label_map: LabelMap | str | None = None,
        sort_by: str = "mean",
        highlight: str = "",
    ) -> None:
        self.per_case = per_case
        self.label_map = None if label_map is None else load_label_map(label_map)
        self.highlight = highlight
        self.sort_by = sort_by
        self.html = dice_table_html(per_case, self.label_map, sort_by, highlight)
        self.controls: dict[str, Any] = {}
        self._widget: Any = None
        self._html_widget: Any = None

    def sort(self, by: str) -> str:
        """Re-sort by ``by`` (``"mean"`` or an organ); returns the new HTML."""
        self.html = dice_table_html(self.per_case, self.label_map, by, self.highlight)
        self.sort_by = by
        if self._html_widget is not None:
            self._html_widget.value = self.html
        if self.controls and self.controls["sort_by"].value != by:
            self.controls["sort_by"].value = by
        return self.html

    @property
    def widget(self) -> Any:
        """A dropdown (sort column) above the table; built on first use (needs ``ipywidgets``)."""
        if self._widget is None:
            import ipywidgets as w

            options = ["mean", *_table_organs(self.per_case, self.label_map)]
            self.controls["sort_by"] = w.Dropdown(options=options, value=self.sort_by, description="sort by")
            self.controls["sort_by"].observe(lambda change: self.sort(change["new"]), names="value")
            self._html_widget = w.HTML(self.html)
            self._widget = w.VBox([self.controls["sort_by"], self._html_widget])
        return self._widget

    def show(self, live: bool | None = None) -> None:
        """Display the sortable widget (a person's notebook) or the static HTML table (headless)."""
        from IPython.display import HTML, display

        from mosmoskit.viz.live import live_display_available

        live = live_display_available() if live is None else bool(live)
        display(self.widget if live else HTML(self.html))

    def _ipython_display_(self) -> None:
        self.show()
