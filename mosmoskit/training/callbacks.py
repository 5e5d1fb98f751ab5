"""Callbacks: hooks the training loop calls, so that notebooks can watch a run without owning it.

The loop looks up four optional methods on each callback object (a plain object with any subset
works; :class:`Callback` is a convenient base with no-op defaults):

* ``on_train_start(trainer)``: after the run was set up (and resumed, if it was);
* ``on_step_end(trainer, step, logs)``: after each optimiser update; ``logs`` is that update's
  history record (``step``, ``epoch``, ``lr``, ``loss``, every loss term, ``grad_norm``...);
* ``on_validation_end(trainer, step, metrics)``: after each validation;
* ``on_train_end(trainer, result)``: with the :class:`~mosmoskit.training.loop.TrainResult`.

A callback may call ``trainer.request_stop()`` to end the run after the current update.

:class:`mosmoskit.viz.live.LiveLossPlot` (re-exported here) redraws the loss curves in a Jupyter
notebook as training goes and draws them once under papermill; :func:`plot_history` draws the same
figure from any history list. They live in ``viz`` because they are plotting, not training.

Example (in a notebook cell)::

    Trainer(task, config, train_dataset=data, batch_size=8, callbacks=[LiveLossPlot(every=20)]).fit()
"""

from __future__ import annotations

from typing import Any, Mapping

from mosmoskit.viz.live import LiveLossPlot, plot_history

__all__ = ["Callback", "LiveLossPlot", "plot_history"]

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
