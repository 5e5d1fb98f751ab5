"""The generic, resumable training loop shared by pre-training and fine-tuning, and its checkpoints.

* :class:`Trainer` / :class:`TrainerConfig` / :class:`TrainResult`: run a :class:`Task` (a model
  plus a ``step(batch) -> dict of loss terms``) with AdamW, warm-up + cosine, gradient
  accumulation and clipping, mixed precision on CUDA, validation, progress bar and history.
* :class:`SeededDataset`, :class:`SeededBatchSampler`, :func:`make_train_loader`: a data order and
  per-sample augmentation that are functions of ``(seed, epoch, index)``, which is what makes an
  interrupted and resumed run end with exactly the weights of an uninterrupted one.
* :func:`save_checkpoint`, :func:`load_checkpoint` (``weights_only=True``, checksum verified),
  :func:`latest_checkpoint`, :func:`describe_checkpoint`: self-describing checkpoint files carrying
  config and label map, written atomically.
* :class:`RunFolderLock`: one trainer per run folder at a time.
* :class:`Callback`, :class:`LiveLossPlot`: hooks for notebooks (live loss curves).
"""

from mosmoskit.training.callbacks import Callback, LiveLossPlot, plot_history
from mosmoskit.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    checkpoint_name,
    checkpoint_step,
    describe_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    payload_digest,
    prune_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
)
from mosmoskit.training.lock import RunFolderBusyError, RunFolderLock
from mosmoskit.training.loop import (
    HISTORY_NAME,
    NonFiniteLossError,
    SeededBatchSampler,
    SeededDataset,
    Task,
    Trainer,
    TrainerConfig,
    TrainResult,
    lr_factor,
    make_train_loader,
    seed_worker,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "HISTORY_NAME",
    "Callback",
    "CheckpointError",
    "LiveLossPlot",
    "NonFiniteLossError",
    "RunFolderBusyError",
    "RunFolderLock",
    "SeededBatchSampler",
    "SeededDataset",
    "Task",
    "TrainResult",
    "Trainer",
    "TrainerConfig",
    "checkpoint_name",
    "checkpoint_step",
    "describe_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "lr_factor",
    "make_train_loader",
    "payload_digest",
    "plot_history",
    "prune_checkpoints",
    "remove_stale_temporaries",
    "save_checkpoint",
    "seed_worker",
]
