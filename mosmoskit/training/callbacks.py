"""Callbacks: hooks the training loop calls, so that notebooks can watch a run without owning it.

The loop looks up four optional methods on each callback object (a plain object with any subset
works; :class:`Callback` is a convenient base with no-op defaults):

* ``on_train_start(trainer)``: after the run was set up (and resumed, if it was);
* ``on_step_end(trainer, step, logs)``: after each optimiser update; ``logs`` is that update's
  history record (``step``, ``epoch``, ``lr``, ``loss``, every loss term, ``grad_norm``...);
* ``on_validation_end(trainer, step, metrics)``: after each validation;
* ``on_train_end(trainer, result)``: with the :class:`~mosmoskit.training.loop.TrainResult`.

A callback may call ``trainer.request_stop()`` to end the run after the current update.

:class:`LiveLossPlot` redraws the loss curves in a Jupyter notebook as training goes (and/or saves
them as a PNG); :func:`plot_history` draws the same figure from any history list.

Example (in a notebook cell)::

    Trainer(task, config, train_dataset=data, batch_size=8, callbacks=[LiveLossPlot(every=20)]).fit()
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # only for annotations: importing the loop here would be circular
    from matplotlib.figure import Figure

__all__ = ["Callback", "LiveLossPlot", "plot_history"]

# Keys of a training record that are bookkeeping, not curves worth plotting by default.
_NOT_CURVES = ("step", "epoch", "split", "lr", "grad_norm")


class Callback:
    """Base class with do-nothing hooks; override the ones you need."""

    def on_train_start(self, trainer: Any) -> None:
        """Called once before the first update (after a resume)."""

    def on_step_end(self, trainer: Any, step: int, logs: Mapping[str, Any]) -> None:
        """Called after update ``step`` (1-based) with its history record."""

    def on_validation_end(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
        """Called after a validation at update ``step`` with the task's metrics."""

    def on_train_end(self, trainer: Any, result: Any) -> None:
        """Called once at the end of a run that finished without an error."""


def plot_history(history: Sequence[Mapping[str, Any]], terms: Sequence[str] | None = None, *,
                 log_scale: bool = True, figsize: tuple[float, float] = (7.0, 3.5)) -> Figure:
    """Draw training-loss curves (left) and validation metrics (right) from a run history.

    Args:
        history: records as in ``TrainResult.history`` or ``history.jsonl``.
        terms: training keys to draw (default: ``loss`` and every loss term / extra log).
        log_scale: logarithmic y axis for the training curves (when all values are positive).
        figsize: figure size in inches.

    Returns:
        A matplotlib ``Figure`` (not attached to pyplot, so a notebook shows it only when displayed).

    Raises:
        ValueError: a requested term appears in no training record.
    """
    from matplotlib.figure import Figure

    train = [r for r in history if r.get("split", "train") == "train"]
    val = [r for r in history if r.get("split") == "val"]
    if terms is None:
        terms = [k for k in _keys(train) if k not in _NOT_CURVES and _numeric(train, k)]
    else:
        unknown = [t for t in terms if not any(t in r for r in train)]
        if unknown:
            raise ValueError(f"terms {unknown} appear in no training record; available: {_keys(train)}")
    val_keys = [k for k in _keys(val) if k not in ("step", "split") and _numeric(val, k)]

    fig = Figure(figsize=figsize, layout="constrained")
    ax_train, ax_val = fig.subplots(1, 2) if val_keys else (fig.subplots(1, 1), None)
    for term in terms:
        points = [(r["step"], r[term]) for r in train if isinstance(r.get(term), (int, float))]
        if points:
            ax_train.plot(*zip(*points), label=term, linewidth=1.2)
    values = [r[t] for r in train for t in terms if isinstance(r.get(t), (int, float))]
    if log_scale and values and min(values) > 0:
        ax_train.set_yscale("log")
    ax_train.set_xlabel("step")
    ax_train.set_title("training")
    if terms and train:
        ax_train.legend(fontsize="small")
    if ax_val is not None:
        for key in val_keys:
            points = [(r["step"], r[key]) for r in val if isinstance(r.get(key), (int, float))]
            ax_val.plot(*zip(*points), marker="o", label=key, linewidth=1.2)
        ax_val.set_xlabel("step")
        ax_val.set_title("validation")
        ax_val.legend(fontsize="small")
    return fig


class LiveLossPlot(Callback):
    """Redraw the loss curves every ``every`` updates: in the notebook, and/or into a PNG file.

    In Jupyter the figure is shown once and then updated in place (one output, not one per
    redraw). Outside a notebook, nothing is displayed; give ``path`` to get the picture as a file.

    Args:
        every: updates between redraws (drawing costs time: keep it in the tens).
        terms: training keys to plot (default: ``loss`` and every loss term).
        path: a PNG file rewritten (atomically) at every redraw and at the end.
        log_scale: logarithmic y axis for the training curves.

    Raises:
        ValueError: ``every`` < 1.
    """

    def __init__(self, every: int = 10, terms: Sequence[str] | None = None, path: str | Path | None = None,
                 log_scale: bool = True) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.every, self.terms, self.log_scale = every, terms, log_scale
        self.path = Path(path) if path is not None else None
        self._handle: Any = None
        self.redraws = 0

    def on_step_end(self, trainer: Any, step: int, logs: Mapping[str, Any]) -> None:
        if step % self.every == 0:
            self._draw(trainer.history)

    def on_validation_end(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> None:
        self._draw(trainer.history)

    def on_train_end(self, trainer: Any, result: Any) -> None:
        self._draw(result.history)

    def _draw(self, history: Sequence[Mapping[str, Any]]) -> None:
        from mosmoskit.distributed import is_main_process

        if not is_main_process() or not history:
            return
        fig = plot_history(history, self.terms, log_scale=self.log_scale)
        self.redraws += 1
        if self.path is not None:
            from mosmoskit.io import atomic_path

            with atomic_path(self.path) as tmp:
                fig.savefig(tmp, format="png", dpi=100)
        if _in_notebook():
            from IPython.display import display

            if self._handle is None:
                self._handle = display(fig, display_id=True)
            else:
                self._handle.update(fig)


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (where ``display`` renders), false in a terminal or script."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record))
    return list(seen)


def _numeric(records: Sequence[Mapping[str, Any]], key: str) -> bool:
    return any(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) for r in records)
