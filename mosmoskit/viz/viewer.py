"""Scroll through a scan with its masks, predictions and attention maps: one drawing function, two faces.

:func:`render_view` turns a :class:`ViewState` (axis, slice, visible organs, what to show, opacity,
window preset, attention organ) into an RGB array. Everything else calls it:

* :func:`plot_view` puts that array on a matplotlib axis with a legend (static figures: papermill,
  reports, the tests);
* :class:`MaskViewer` is the ipywidgets viewer of notebook 04: every control changes the state and
  re-renders through the same function, so what the tests and CI check is what students click.

What is shown, by ``mode``:

* ``"ground_truth"`` / ``"prediction"``: that mask in the label map's colours, visible organs only;
* ``"difference"``: for the visible organs, voxels both masks agree on in green (true positive),
  predicted but not true in red (false positive), true but missed in blue (false negative);
  a voxel of organ A predicted as organ B is a false negative of A and a false positive of B, and
  is drawn red when B is visible, else blue.

The attention map of one organ (the pixel-tag map the fine-tuned model fuses) is drawn on top as a
heat overlay whose opacity follows the map's value.

Images are in RAS voxel order (the kit's readers); views are in radiological convention (patient's
right on the viewer's left) and stretched so that millimetres are square.

Example:
    >>> import numpy as np
    >>> from mosmoskit.viz.viewer import ViewState, render_view
    >>> ct = np.zeros((32, 32, 8), dtype=np.float32); truth = np.zeros((32, 32, 8), dtype=np.uint8)
    >>> truth[8:20, 8:20, 2:6] = 6                                           # liver
    >>> rgb = render_view(ct, "btcv", ViewState(index=4), truth=truth)
    >>> rgb.shape, rgb.dtype
    ((32, 32, 3), dtype('uint8'))
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from mosmoskit.labels import LabelMap, load_label_map
from mosmoskit.viz.slices import AXES, display_slice

__all__ = ["MODES", "MaskViewer", "ViewState", "WINDOW_PRESETS", "plot_view", "render_view"]

#: CT window presets as (low, high) HU: (level - width / 2, level + width / 2).
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (-150.0, 250.0),   # W400 L50
    "liver": (-45.0, 105.0),      # W150 L30
    "bone": (-500.0, 1300.0),     # W1800 L400
    "lung": (-1350.0, 150.0),     # W1500 L-600
    "brain": (0.0, 80.0),         # W80 L40
}
MODES: tuple[str, ...] = ("ground_truth", "prediction", "difference")
_TP, _FP, _FN = (0.2, 0.8, 0.2), (0.9, 0.1, 0.1), (0.15, 0.35, 1.0)


@dataclass(frozen=True)
class ViewState:
    """Everything that decides one rendered view.

    Attributes:
        axis: ``"axial"``, ``"coronal"`` or ``"sagittal"`` (2D images: axial only).
        index: slice number along ``axis`` (None: the middle).
        organs: names of the organs to draw (None: all of the label map).
        mode: one of :data:`MODES`.
        opacity: mask opacity in [0, 1].
        window: a key of :data:`WINDOW_PRESETS`, or ``(low, high)`` HU.
        attention_organ: organ whose attention map is drawn as a heat overlay ("" for none).
    """

    axis: str = "axial"
    index: int | None = None
    organs: tuple[str, ...] | None = None
    mode: str = "ground_truth"
    opacity: float = 0.5
    window: str | tuple[float, float] = "abdomen"
    attention_organ: str = ""

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise ValueError(f"axis must be one of {list(AXES)}, got {self.axis!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if not 0.0 <= float(self.opacity) <= 1.0:
            raise ValueError(f"opacity must be in [0, 1], got {self.opacity!r}")
        if isinstance(self.window, str) and self.window not in WINDOW_PRESETS:
            raise ValueError(f"window must be one of {sorted(WINDOW_PRESETS)} or (low, high) HU, got {self.window!r}")
        if self.organs is not None:
            object.__setattr__(self, "organs", tuple(self.organs))


def _window(state: ViewState) -> tuple[float, float]:
    low, high = WINDOW_PRESETS[state.window] if isinstance(state.window, str) else state.window
    if not float(low) < float(high):
        raise ValueError(f"window must be (low, high) with low < high, got {state.window!r}")
    return float(low), float(high)


def _stretch(rows: int, cols: int, axis: str, spacing: Sequence[float] | None) -> tuple[int, int]:
    """Output size in pixels that makes millimetres square (the short side keeps its pixels)."""
    if spacing is None or len(spacing) < 2:
        return rows, cols
    sx, sy = float(spacing[0]), float(spacing[1])
    sz = float(spacing[2]) if len(spacing) > 2 else sx
    row_mm, col_mm = {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[axis]
    scale = max(row_mm, col_mm) / min(row_mm, col_mm)
    return (round(rows * scale), cols) if row_mm > col_mm else (rows, round(cols * scale))


def _resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows = (np.arange(size[0]) * array.shape[0] / size[0]).astype(int)
    cols = (np.arange(size[1]) * array.shape[1] / size[1]).astype(int)
    return array[rows][:, cols]


def _colors(label_map: LabelMap) -> np.ndarray:
    table = np.zeros((label_map.num_classes, 3), dtype=np.float32)
    colors = label_map.colors()
    for name in label_map.foreground_names:
        table[label_map.labels[name]] = colors[name][:3]
    return table


def _blend(rgb: np.ndarray, where: np.ndarray, color: Any, alpha: float | np.ndarray) -> None:
    a = alpha if np.isscalar(alpha) else alpha[where][:, None]
    rgb[where] = (1.0 - a) * rgb[where] + a * np.asarray(color, dtype=np.float32)


def render_view(
    image: Any,
    label_map: LabelMap | str,
    state: ViewState = ViewState(),
    truth: Any | None = None,
    prediction: Any | None = None,
    attention: Any | None = None,
    attention_names: Sequence[str] | None = None,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """The RGB picture of one view: windowed image, mask overlay, attention heat.

    Args:
        image: (X, Y, Z) or (X, Y) intensities (HU for CT) in RAS voxel order.
        label_map: the masks' label map.
        state: what to show.
        truth: ground-truth mask of the image's shape, or None.
        prediction: predicted mask of the image's shape, or None.
        attention: (K, *image shape) attention maps, or None.
        attention_names: organ name of each map (default: the label map's foreground names).
        spacing: voxel size in mm (to make millimetres square), or None.

    Returns:
        (rows, cols, 3) uint8.

    Raises:
        ValueError: shapes that differ, a mode whose mask is missing (``difference`` needs both),
            an unknown organ, or an attention organ without maps.
    """
    lmap = load_label_map(label_map)
    img = np.asarray(image, dtype=np.float32)
    for name, mask in (("truth", truth), ("prediction", prediction)):
        if mask is not None and np.shape(mask) != img.shape:
            raise ValueError(f"{name} shape {np.shape(mask)} differs from the image shape {img.shape}")
    organs = lmap.foreground_names if state.organs is None else state.organs
    unknown = [o for o in organs if o not in lmap.labels]
    if unknown:
        raise ValueError(f"organ(s) {unknown} are not in the label map {lmap.name!r}")
    needed = {"ground_truth": (truth,), "prediction": (prediction,), "difference": (truth, prediction)}[state.mode]
    if any(m is None for m in needed):
        raise ValueError(f"mode {state.mode!r} needs {'both masks' if state.mode == 'difference' else state.mode}")

    view = display_slice(img, state.axis, state.index)
    low, high = _window(state)
    gray = np.clip((view - low) / (high - low), 0.0, 1.0)
    rgb = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
    visible = np.zeros(lmap.num_classes, dtype=bool)
    visible[[lmap.labels[o] for o in organs]] = True
    alpha = float(state.opacity)

    if state.mode == "difference":
        gt = display_slice(np.asarray(truth), state.axis, state.index).astype(np.int64)
        pr = display_slice(np.asarray(prediction), state.axis, state.index).astype(np.int64)
        gt_on, pr_on = visible[gt] & (gt > 0), visible[pr] & (pr > 0)
        _blend(rgb, gt_on & pr_on & (gt == pr), _TP, alpha)
        _blend(rgb, pr_on & (gt != pr), _FP, alpha)
        _blend(rgb, gt_on & (gt != pr) & ~pr_on, _FN, alpha)
    else:
        mask = np.asarray(truth if state.mode == "ground_truth" else prediction)
        lab = display_slice(mask, state.axis, state.index).astype(np.int64)
        shown = visible[lab] & (lab > 0)
        table = _colors(lmap)
        rgb[shown] = (1.0 - alpha) * rgb[shown] + alpha * table[lab[shown]]

    if state.attention_organ:
        if attention is None:
            raise ValueError("attention_organ is set but no attention maps were given (a model with fusion='none')")
        names = list(attention_names or lmap.foreground_names)
        if state.attention_organ not in names:
            raise ValueError(f"no attention map for {state.attention_organ!r}; maps exist for {names}")
        heat = display_slice(np.asarray(attention[names.index(state.attention_organ)], dtype=np.float32),
                             state.axis, state.index)
        peak = float(heat.max())
        if peak > 0:
            from matplotlib import colormaps

            norm = np.clip(heat / peak, 0.0, 1.0)
            colors = colormaps["inferno"](norm)[..., :3].astype(np.float32)
            strength = 0.75 * norm
            where = strength > 0.02
            rgb[where] = (1.0 - strength[where][:, None]) * rgb[where] + strength[where][:, None] * colors[where]

    out = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    size = _stretch(out.shape[0], out.shape[1], state.axis, spacing)
    return out if size == out.shape[:2] else _resize_nearest(out, size)


def legend_entries(label_map: LabelMap | str, state: ViewState) -> list[tuple[str, tuple[float, float, float]]]:
    """(label, colour) pairs that explain a rendered view."""
    lmap = load_label_map(label_map)
    if state.mode == "difference":
        return [("agree (TP)", _TP), ("predicted only (FP)", _FP), ("missed (FN)", _FN)]
    colors = lmap.colors()
    organs = lmap.foreground_names if state.organs is None else state.organs
    return [(o, tuple(colors[o][:3])) for o in organs]


def plot_view(ax: Any, image: Any, label_map: LabelMap | str, state: ViewState = ViewState(), *,
              title: str | None = None, legend: bool = True, **masks: Any) -> np.ndarray:
    """Draw :func:`render_view` on a matplotlib axis, with a legend; returns the array drawn.

    Keyword arguments ``truth``, ``prediction``, ``attention``, ``attention_names``, ``spacing``
    go to :func:`render_view`.
    """
    from matplotlib.patches import Patch

    rgb = render_view(image, label_map, state, **masks)
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    index = "middle" if state.index is None else state.index
    ax.set_title(title or f"{state.axis} {index}, {state.mode.replace('_', ' ')}"
                 + (f", attention: {state.attention_organ}" if state.attention_organ else ""), fontsize=9)
    if legend:
        handles = [Patch(color=c, label=n) for n, c in legend_entries(label_map, state)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    return rgb


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="png")
    return buffer.getvalue()


@dataclass
class MaskViewer:
    """The interactive viewer of notebook 04 (ipywidgets), drawing through :func:`render_view`.

    Controls: slice slider, axis (axial/coronal/sagittal), per-organ checkboxes with the label map's
    colours, opacity, what to show (ground truth / prediction / difference), window preset, and the
    organ whose attention map is overlaid (disabled without maps).

    Args:
        image, truth, prediction, attention, attention_names, spacing: as :func:`render_view`
            (``truth`` may be None for a scan without labels: the ground-truth and difference modes
            are then not offered).
        label_map: the masks' label map.
        state: the first view (default: axial, the slice with most ground truth, all organs).

    Example (in a notebook cell)::

        viewer = MaskViewer(volume.array, "btcv", truth=truth, prediction=pred, spacing=volume.spacing)
        display(viewer.widget)
    """

    image: Any
    label_map: LabelMap | str
    truth: Any | None = None
    prediction: Any | None = None
    attention: Any | None = None
    attention_names: Sequence[str] | None = None
    spacing: Sequence[float] | None = None
    state: ViewState | None = None
    _last: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        import ipywidgets as w

        self.lmap = load_label_map(self.label_map)
        self.image = np.asarray(self.image, dtype=np.float32)
        modes = [m for m in MODES if (m != "prediction" or self.prediction is not None)
                 and (m == "prediction" or self.truth is not None)]
        if not modes:
            raise ValueError("MaskViewer needs a ground truth or a prediction to show")
        reference = np.asarray(self.truth if self.truth is not None else self.prediction)
        if self.state is None:
            self.state = ViewState(mode=modes[0])
        if self.state.index is None:  # start on the slice with the most labelled voxels
            self.state = replace(self.state, index=_best_index(reference, self.state.axis))
        axes = ["axial"] if self.image.ndim == 2 else list(AXES)
        self.axis = w.Dropdown(options=axes, value=self.state.axis, description="view")
        self.slice = w.IntSlider(min=0, max=max(0, self._depth(self.state.axis) - 1),
                                 value=self._index(self.state), description="slice", continuous_update=True)
        self.slice.disabled = self.image.ndim == 2
        self.mode = w.ToggleButtons(options=[(m.replace("_", " "), m) for m in modes], value=self.state.mode,
                                    description="show")
        self.opacity = w.FloatSlider(min=0.0, max=1.0, step=0.05, value=self.state.opacity, description="opacity")
        self.window = w.Dropdown(options=list(WINDOW_PRESETS), value=self.state.window if isinstance(
            self.state.window, str) else "abdomen", description="window")
        names = list(self.attention_names or self.lmap.foreground_names)
        self.attention_choice = w.Dropdown(options=[("none", "")] + [(n, n) for n in names],
                                           value=self.state.attention_organ, description="attention")
        self.attention_choice.disabled = self.attention is None
        colors = self.lmap.colors()
        visible = set(self.lmap.foreground_names if self.state.organs is None else self.state.organs)
        self.organ_boxes = {}
        rows = []
        for name in self.lmap.foreground_names:
            r, g, b = (int(255 * c) for c in colors[name][:3])
            swatch = w.HTML(f'<span style="display:inline-block;width:12px;height:12px;background:rgb({r},{g},{b})">'
                            f"</span>")
            box = w.Checkbox(value=name in visible, description=name, indent=False,
                             layout=w.Layout(width="210px"))
            self.organ_boxes[name] = box
            rows.append(w.HBox([swatch, box]))
        self.picture = w.Image(format="png")
        self.note = w.HTML()
        for control in (self.axis, self.slice, self.mode, self.opacity, self.window, self.attention_choice,
                        *self.organ_boxes.values()):
            control.observe(self._changed, names="value")
        organ_grid = w.GridBox(rows, layout=w.Layout(grid_template_columns="repeat(2, 240px)"))
        controls = w.VBox([self.axis, self.slice, self.mode, self.opacity, self.window, self.attention_choice,
                           w.HTML("<b>organs</b>"), organ_grid])
        self.widget = w.HBox([w.VBox([self.picture, self.note]), controls])
        self._render()

    # -- state <-> widgets
    def _depth(self, axis: str) -> int:
        return 1 if self.image.ndim == 2 else self.image.shape[AXES[axis]]

    def _index(self, state: ViewState) -> int:
        return self._depth(state.axis) // 2 if state.index is None else int(state.index)

    def current_state(self) -> ViewState:
        """The :class:`ViewState` the controls describe now."""
        organs = tuple(n for n, box in self.organ_boxes.items() if box.value)
        return ViewState(axis=self.axis.value, index=None if self.image.ndim == 2 else self.slice.value,
                         organs=organs, mode=self.mode.value, opacity=self.opacity.value, window=self.window.value,
                         attention_organ=self.attention_choice.value)

    def _changed(self, change: dict[str, Any]) -> None:
        if change.get("owner") is self.axis:
            depth = self._depth(self.axis.value)
            self.slice.unobserve(self._changed, names="value")
            self.slice.max = depth - 1
            self.slice.value = min(self.slice.value, depth - 1) if self.image.ndim == 2 else depth // 2
            self.slice.observe(self._changed, names="value")
        self._render()

    def _render(self) -> None:
        self.state = self.current_state()
        self._last = render_view(self.image, self.lmap, self.state, truth=self.truth, prediction=self.prediction,
                                 attention=self.attention, attention_names=self.attention_names, spacing=self.spacing)
        self.picture.value = _png(self._last)
        self.note.value = (f"<small>{self.state.axis} slice {self.state.index}, {len(self.state.organs)} organ(s) "
                           f"shown</small>")

    def image_array(self) -> np.ndarray:
        """The RGB array shown now (what the tests compare)."""
        assert self._last is not None
        return self._last

    def show(self, **changes: Any) -> np.ndarray:
        """Set controls by name (``slice=12, axis="coronal", organs=("liver",)``) and re-render."""
        if "organs" in changes:
            chosen = set(changes.pop("organs"))
            for name, box in self.organ_boxes.items():
                box.value = name in chosen
        controls = {"axis": self.axis, "slice": self.slice, "mode": self.mode, "opacity": self.opacity,
                    "window": self.window, "attention_organ": self.attention_choice}
        for key, value in changes.items():
            if key not in controls:
                raise ValueError(f"unknown control {key!r}; choose from {sorted(controls) + ['organs']}")
            controls[key].value = value
        return self.image_array()


def _best_index(label: np.ndarray, axis: str) -> int | None:
    if label.ndim == 2:
        return None
    dim = AXES[axis]
    counts = (label > 0).sum(axis=tuple(d for d in range(3) if d != dim))
    return int(np.argmax(counts)) if counts.any() else None


def with_state(state: ViewState, **changes: Any) -> ViewState:
    """A copy of ``state`` with some fields changed (validated)."""
    return replace(state, **changes)
