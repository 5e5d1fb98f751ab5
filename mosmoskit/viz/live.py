"""Loss curves of a training run: drawn from a history, or redrawn live while a notebook trains.

A run's history is a list of records, one per optimiser update (``step``, ``loss``, every named loss
term such as ``contrastive`` and ``tags``, plus bookkeeping like ``lr``), and one per validation
(``split == "val"``). :func:`plot_history` draws every loss term against the step into one Axes;
:class:`LiveLossPlot` is a training-loop callback that calls it as training goes.

Where the figure goes depends on where the code runs:

* a notebook a person is looking at (Jupyter, VS Code): one output, updated in place every
  ``every`` updates, so the curves grow while the cell runs;
* a headless notebook run (papermill, nbconvert) or a terminal: nothing is redrawn during training
  (it would cost time and nobody watches); the figure is drawn once at the end, shown as the cell's
  output inside a notebook kernel, and written to ``path`` if one is given.

Example:
    >>> from mosmoskit.viz.live import LiveLossPlot, plot_history
    >>> history = [{"step": 1, "loss": 2.0, "tags": 0.7}, {"step": 2, "loss": 1.5, "tags": 0.6}]
    >>> ax = plot_history(history)
    >>> plot = LiveLossPlot(every=10, live=False)   # pass as callbacks=[plot]
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "NOT_LOSS_KEYS",
    "LiveLossPlot",
    "ema",
    "in_notebook_kernel",
    "live_display_available",
    "loss_keys",
    "plot_history",
]

#: Keys of a training record that are bookkeeping or schedules, not loss terms; they are left out
#: of the default curves (pass ``keys`` to draw them anyway).
NOT_LOSS_KEYS = ("step", "epoch", "split", "lr", "grad_norm", "temperature")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_validation(record: Mapping[str, Any]) -> bool:
    return record.get("split") == "val" or any(str(k).startswith("val/") for k in record)


def _training_records(history: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in history if not _is_validation(r) and _is_number(r.get("step"))]


def loss_keys(history: Sequence[Mapping[str, Any]], exclude: Sequence[str] = NOT_LOSS_KEYS) -> list[str]:
    """The loss terms a history holds: ``loss`` first, then the other numeric training keys.

    Args:
        history: records with at least ``step``; validation records are ignored.
        exclude: keys that are not loss terms.

    Returns:
        Key names in first-seen order (``loss`` first when present).
    """
    seen: dict[str, None] = {}
    for record in _training_records(history):
        for key, value in record.items():
            if key not in exclude and _is_number(value):
                seen.setdefault(key, None)
    keys = list(seen)
    if "loss" in seen:
        keys.remove("loss")
        keys.insert(0, "loss")
    return keys


def ema(values: Sequence[float], smoothing: float) -> np.ndarray:
    """Exponential moving average: ``s[0] = x[0]``, ``s[t] = a * s[t-1] + (1 - a) * x[t]``.

    Args:
        values: the raw series.
        smoothing: ``a`` in [0, 1); 0 returns the series unchanged.

    Raises:
        ValueError: ``smoothing`` outside [0, 1).
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    x = np.asarray(values, dtype=np.float64)
    out = np.empty_like(x)
    for t, value in enumerate(x):
        out[t] = value if t == 0 else smoothing * out[t - 1] + (1.0 - smoothing) * value
    return out


def plot_history(
    history: Sequence[Mapping[str, Any]],
    ax: Any | None = None,
    keys: Sequence[str] | None = None,
    smoothing: float = 0.0,
    log_scale: bool = False,
    exclude: Sequence[str] = NOT_LOSS_KEYS,
    title: str | None = "training loss",
) -> Any:
    """Every loss term of a run against the optimiser step, in one Axes.

    Args:
        history: records as in ``PretrainResult.history`` or ``history.jsonl`` (training records
            need ``step``; validation records, ``split == "val"``, are skipped).
        ax: matplotlib Axes to draw into; a new figure (not registered with pyplot, so notebooks
            show it only when it is displayed) is made when ``None``.
        keys: which keys to draw; default :func:`loss_keys` (``loss`` and every term).
        smoothing: exponential-moving-average factor in [0, 1) (see :func:`ema`); when > 0 the raw
            values stay as faint lines under the smoothed ones.
        log_scale: logarithmic y axis (only applied when every value drawn is positive).
        exclude: keys left out of the default ``keys``.
        title: Axes title (``None`` for none).

    Returns:
        The Axes drawn into.

    Raises:
        ValueError: a requested key appears in no training record, or a bad ``smoothing``.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    records = _training_records(history)
    if keys is None:
        keys = loss_keys(history, exclude)
    else:
        available = loss_keys(history, exclude=("step", "split"))
        unknown = [k for k in keys if k not in available]
        if unknown:
            raise ValueError(f"keys {unknown} appear in no training record; available: {available}")
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(6.0, 3.5), layout="constrained").subplots()
    drawn: list[float] = []
    for key in keys:
        points = [(float(r["step"]), float(r[key])) for r in records if _is_number(r.get(key))]
        if not points:
            continue
        steps, values = (np.asarray(v) for v in zip(*points))
        drawn += values.tolist()
        if smoothing > 0:
            (raw,) = ax.plot(steps, values, linewidth=0.8, alpha=0.3)
            ax.plot(steps, ema(values, smoothing), linewidth=1.5, color=raw.get_color(), label=key)
        else:
            ax.plot(steps, values, linewidth=1.3, label=key)
    if log_scale and drawn and min(drawn) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss" + (f" (EMA {smoothing:g})" if smoothing > 0 else ""))
    if title:
        ax.set_title(title, fontsize=10)
    if drawn:
        ax.legend(fontsize="small", frameon=False)
    return ax


def in_notebook_kernel() -> bool:
    """True inside a Jupyter kernel (where a displayed figure becomes a cell output)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


def live_display_available() -> bool:
    """True when a person's notebook frontend is attached, so redrawing in place is worth it.

    A frontend a person uses (JupyterLab, Notebook, VS Code) sends code with ``allow_stdin`` on,
    because it can answer ``input()``; headless executors (papermill, nbconvert, nbclient) turn it
    off. ipykernel keeps that flag of the running request as ``kernel._allow_stdin``.
    """
    if not in_notebook_kernel():
        return False
    from IPython import get_ipython

    return bool(getattr(get_ipython().kernel, "_allow_stdin", False))


class LiveLossPlot:
    """Training-loop callback: the loss curves, redrawn live in a watched notebook.

    It records each update's logs (``on_step_end``) and draws them with :func:`plot_history`:
    every ``every`` updates into one output that is updated in place when ``live`` (see the module
    docstring), and always once more at the end of training, when the figure is also shown in a
    headless notebook run and written to ``path``.

    Args:
        every: updates between live redraws (each costs a PNG rendering: keep it in the tens).
        keys, smoothing, log_scale: as in :func:`plot_history`.
        live: ``True``/``False`` to force redrawing during training on/off; ``None`` decides with
            :func:`live_display_available`.
        path: a PNG file written (atomically) at the end of training.
        figsize: figure size in inches.
        dpi: resolution of the rendered PNG.

    Attributes:
        history: the records seen so far.
        figure: the matplotlib Figure (after the first draw).
        draws: how many times the figure was rendered.

    Raises:
        ValueError: ``every`` < 1 or a bad ``smoothing``.

    Example:
        >>> from mosmoskit.pretraining.run import run_pretraining          # doctest: +SKIP
        >>> result = run_pretraining(config, callbacks=[LiveLossPlot(every=10)])
    """

    def __init__(
        self,
        every: int = 10,
        keys: Sequence[str] | None = None,
        smoothing: float = 0.0,
        log_scale: bool = False,
        live: bool | None = None,
        path: str | Path | None = None,
        figsize: tuple[float, float] = (6.0, 3.5),
        dpi: int = 90,
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.every = every
        self.keys = None if keys is None else list(keys)
        self.smoothing = smoothing
        self.log_scale = log_scale
        self.live = live
        self.path = None if path is None else Path(path)
        self.figsize = figsize
        self.dpi = dpi
        self.history: list[dict[str, Any]] = []
        self.figure: Any = None
        self.draws = 0
        self._handle: Any = None
        self._live = False

    # ------------------------------------------------------------------ callback hooks
    def on_train_start(self, trainer: Any = None) -> None:
        """Start a new curve; a resumed run's earlier records (``trainer.history``) are kept."""
        earlier = getattr(trainer, "history", None) or []
        self.history = [dict(r) for r in earlier if not _is_validation(r)]
        self._handle = None
        self._live = live_display_available() if self.live is None else bool(self.live)

    def on_step_end(self, trainer: Any, step: int, logs: Mapping[str, Any]) -> None:
        """Record update ``step``; redraw when live and ``step`` is a multiple of ``every``."""
        self.history.append({**dict(logs), "step": int(step)})
        if self._live and step % self.every == 0:
            self._show(self._render())

    def on_train_end(self, trainer: Any = None, result: Any = None) -> None:
        """Draw the final curves: update the live output, or show them once, and write ``path``."""
        png = self._render()
        if png is None:
            return
        if self.path is not None:
            from mosmoskit.io import atomic_write_bytes

            atomic_write_bytes(self.path, png)
        if self._live or in_notebook_kernel():
            self._show(png)

    # ------------------------------------------------------------------ drawing
    def _render(self) -> bytes | None:
        """Redraw the figure from the records; its PNG bytes (``None`` when there is nothing to draw)."""
        from mosmoskit.distributed import is_main_process

        if not self.history or not is_main_process():
            return None
        if self.figure is None:
            from matplotlib.figure import Figure

            # A bare Figure, not pyplot's: the inline backend would otherwise show it a second time
            # when the cell ends.
            self.figure = Figure(figsize=self.figsize, layout="constrained")
        self.figure.clear()
        ax = self.figure.subplots()
        plot_history(self.history, ax=ax, keys=self.keys, smoothing=self.smoothing, log_scale=self.log_scale)
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=self.dpi)
        self.draws += 1
        return buffer.getvalue()

    def _show(self, png: bytes | None) -> None:
        if png is None:
            return
        # Displayed as a PNG, not as the Figure, so it does not depend on which matplotlib backend
        # the kernel has loaded.
        from IPython.display import Image, display

        image = Image(data=png, format="png")
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)
