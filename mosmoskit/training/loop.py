"""The generic training loop: it knows no model, only a *task* that turns a batch into loss terms.

Pre-training and fine-tuning share this loop (as minGPT's ``trainer.py`` serves any model). A task
pairs a model with its losses::

    class RegressionTask:
        def __init__(self, model):
            self.model = model
        def step(self, batch):                      # batch tensors are already on the device
            pred = self.model(batch["x"])
            return {"mse": F.mse_loss(pred, batch["y"])}

The loop sums the named terms, backpropagates the sum and logs every term; it owns the optimiser
(AdamW), the learning-rate schedule (linear warm-up then cosine or constant), gradient accumulation
and clipping, mixed precision (CUDA only; fp16 with a gradient scaler), periodic validation,
checkpoints, a progress bar and the run history (``history.jsonl`` in the output folder).

**Exact resume.** A run interrupted after a checkpoint and resumed from it ends with the same
weights, bit for bit on the CPU, as a run that was never interrupted. Three things make that hold:

* the checkpoint carries the model, optimiser, scheduler, gradient-scaler and loop states and every
  random generator (Python, NumPy, torch, CUDA);
* the order of the training samples is a function of ``(seed, epoch)`` only
  (:class:`SeededBatchSampler`), and resuming skips the batches of the epoch that were already
  consumed without loading them;
* each sample's random augmentation is a function of ``(seed, epoch, index)``
  (:class:`SeededDataset`, which the trainer wraps around every training dataset): before a sample
  is loaded, the global generators are seeded for it (and restored afterwards) and MONAI
  ``Randomizable`` transforms get ``set_random_state``. Datasets must therefore draw their
  randomness from ``random``, ``numpy.random``, ``torch`` or MONAI random transforms reachable as
  ``dataset.transform``; a dataset with a private generator must expose ``set_random_state(seed)``.
  This holds for ``num_workers=0`` and ``> 0`` alike, because no state lives in the workers.

**Run folders.** A folder is never reused silently: an earlier run in it is resumed
(``resume=True``, the default; changed settings, data or software are warned about) or, with
``resume=False``, replaced only when ``overwrite=True`` says so. While :meth:`Trainer.fit` runs, the
folder is locked against a second trainer (:class:`~mosmoskit.training.lock.RunFolderLock`; the
operating system releases it when the process dies, even by ``SIGKILL``). Checkpoints are written
atomically and carry a checksum, so a run killed at any instant, even inside a checkpoint write,
resumes from its newest complete checkpoint; temporary files of killed writes are cleared at the next
start. Every session writes ``run_record.json`` (:mod:`mosmoskit.provenance`): config, versions,
device and the data files with their SHA-256.

**Distributed.** When ``torch.distributed`` is initialised with several processes (by ``torchrun``
through :func:`mosmoskit.distributed.init_from_env`, or by ``accelerate``), the trainer wraps the
task's model in ``DistributedDataParallel`` and ``task.step`` runs its forward through the wrapper
(attributes of the model stay reachable through it), so the backward pass averages the gradients over
the processes. The sampler gives each rank its own share of every epoch (``batch_size`` is per
process); the logged loss terms are means over the processes; BatchNorm statistics are rank 0's at
every validation and checkpoint; a stop request on any rank stops every rank. Every rank validates
(the same model on the same data, so the same metrics, and no rank waits for another); only rank 0
shows progress and writes history and checkpoints, which hold the plain module's weights (no
``module.`` prefix): a checkpoint of a multi-process run resumes in a single process and vice versa.

Example:
    >>> import tempfile, torch, torch.nn.functional as F
    >>> from torch.utils.data import TensorDataset
    >>> class LinearTask:
    ...     def __init__(self):
    ...         self.model = torch.nn.Linear(3, 1)
    ...     def step(self, batch):
    ...         x, y = batch
    ...         return {"mse": F.mse_loss(self.model(x), y)}
    >>> data = TensorDataset(torch.randn(32, 3), torch.randn(32, 1))
    >>> with tempfile.TemporaryDirectory() as out:
    ...     config = TrainerConfig(max_steps=5, output_dir=out, progress=False, device="cpu")
    ...     result = Trainer(LinearTask(), config, train_dataset=data, batch_size=8).fit()
    >>> result.step, sorted(result.history[-1])
    (5, ['epoch', 'grad_norm', 'loss', 'lr', 'mse', 'split', 'step'])
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from mosmoskit.config import check_choice, check_positive, config_to_dict
from mosmoskit.device import (
    AMP_CHOICES,
    autocast,
    derive_seed,
    fork_rng,
    get_rng_state,
    move_to_device,
    resolve_amp,
    resolve_device,
    seed_everything,
    set_rng_state,
)
from mosmoskit import distributed
from mosmoskit.io import atomic_write_text
from mosmoskit.provenance import RUN_RECORD_NAME, compare_run_records, read_run_record, write_run_record
from mosmoskit.training.checkpoint import (
    LAST_NAME,
    check_kind,
    checkpoint_name,
    latest_checkpoint,
    link_last,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
)
from mosmoskit.training.lock import RunFolderLock

__all__ = [
    "HISTORY_NAME",
    "NonFiniteLossError",
    "SeededBatchSampler",
    "SeededDataset",
    "Task",
    "TrainResult",
    "Trainer",
    "TrainerConfig",
    "lr_factor",
    "make_train_loader",
    "seed_worker",
]

HISTORY_NAME = "history.jsonl"
# Keys the loop writes into every training record; task terms and extra logs may not reuse them.
RESERVED_LOG_KEYS = ("step", "epoch", "split", "lr", "loss", "grad_norm")
# Trainer-config fields that shape the trajectory: a resumed run that changes them cannot be exact.
_TRAJECTORY_FIELDS = ("max_steps", "lr", "weight_decay", "betas", "warmup_steps", "scheduler", "min_lr_ratio",
                      "grad_accum_steps", "grad_clip_norm", "amp", "seed")
# Config fields (of the trainer, or of a run config that mirrors them) that never change the trajectory.
_BOOKKEEPING_FIELDS = ("device", "log_every", "val_every", "checkpoint_every", "keep_last_checkpoints", "output_dir",
                       "resume", "overwrite", "progress", "num_workers")
# Separate random streams derived from the run seed (see derive_seed): sample order, loader workers.
_ORDER_STREAM = 1
_LOADER_STREAM = 2


class NonFiniteLossError(FloatingPointError):
    """The loss (or the gradient norm) became NaN or infinite; training stopped before saving anything.

    Attributes:
        step: the optimiser step (1-based) that produced it.
        terms: every logged value of that micro-batch (the loss terms and their sum ``loss``).
    """

    def __init__(self, step: int, terms: Mapping[str, float], detail: str = "", what: str = "loss") -> None:
        self.step = step
        self.terms = dict(terms)
        shown = ", ".join(f"{k}={v:.6g}" for k, v in self.terms.items())
        super().__init__(f"non-finite {what} at step {step}: {shown}{detail}")


@runtime_checkable
class Task(Protocol):
    """What the loop needs from a model-plus-losses pairing.

    Required:
        model: the ``nn.Module`` to train (moved to the run's device by the trainer; keep every
            trainable tensor inside it, e.g. a learnable temperature, so it is optimised and saved).
        step(batch) -> dict[str, Tensor]: named scalar loss terms for one batch, whose tensors the
            loop has moved to the device. The loop backpropagates their sum and logs each of them.

    Optional (looked up with ``getattr``):
        validate(loader) -> dict[str, float]: metrics over a validation iterable whose batches are
            already on the device; called under ``model.eval()`` and ``torch.no_grad()``.
        extra_logs() -> dict[str, float]: values logged after each step (e.g. the temperature).
        parameters_for_optimizer(): parameters or AdamW parameter groups (dicts); a group may set
            ``lr_scale`` (its lr is ``config.lr * lr_scale``) or its own ``weight_decay``. Default:
            ``model.parameters()``.
    """

    model: nn.Module

    def step(self, batch: Any) -> dict[str, torch.Tensor]: ...


# ---------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class TrainerConfig:
    """How to optimise, log and save; nothing here knows about the model or the data.

    Attributes:
        max_steps: optimiser updates to run (each consumes ``grad_accum_steps`` batches).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW's decoupled weight decay.
        betas: AdamW's moment coefficients.
        warmup_steps: updates over which the lr rises linearly from ``lr / warmup_steps`` to ``lr`` (a
            run shorter than its warm-up, e.g. a smoke test, never reaches the peak).
        scheduler: after warm-up, ``"cosine"`` (decay to ``lr * min_lr_ratio`` at ``max_steps``) or
            ``"constant"``.
        min_lr_ratio: final lr of the cosine schedule as a fraction of ``lr``.
        grad_accum_steps: batches whose gradients are averaged per update (effective batch =
            batch size x grad_accum_steps x processes).
        grad_clip_norm: clip the global gradient norm to this value; ``None`` turns clipping off.
        device: ``"auto"`` (CUDA if present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        amp: mixed precision: ``"auto"`` (bf16/fp16 on CUDA, off elsewhere), ``"bf16"``, ``"fp16"``
            (CUDA only, with a gradient scaler) or ``"off"``.
        log_every: updates between progress-bar refreshes and writes of ``history.jsonl`` (every
            update is recorded in memory either way).
        val_every: updates between validations (0: validate only at the end).
        checkpoint_every: updates between checkpoints (one is always written at the end).
        keep_last_checkpoints: step-named checkpoints kept in ``output_dir`` (``None``: keep all);
            ``last.pt`` always refers to the newest.
        seed: seeds the training stream, the sample order and per-sample augmentation.
        output_dir: the run folder (checkpoints, ``history.jsonl``).
        resume: continue from the newest checkpoint in ``output_dir`` when there is one.
        overwrite: with ``resume=False``, delete an earlier run's checkpoints and history in
            ``output_dir`` instead of refusing to start.
        progress: show a progress bar (``tqdm.auto``: terminal and Jupyter).

    Under several processes (``torchrun``) the trainer's ``batch_size`` is the batch of *each*
    process: one update sees ``batch_size x grad_accum_steps x world_size`` samples, and an epoch
    takes ``world_size`` times fewer updates. ``lr`` is used as given (no automatic scaling with the
    number of processes): a run moved from 1 to N GPUs with the same per-process batch has an N times
    larger global batch, so either lower ``batch_size`` to keep the global batch or retune ``lr``.

    Raises:
        ValueError: a field with an invalid value; the message names the field and the value.
    """

    max_steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    scheduler: str = "cosine"
    min_lr_ratio: float = 0.0
    grad_accum_steps: int = 1
    grad_clip_norm: float | None = 1.0
    device: str = "auto"
    amp: str = "auto"
    log_every: int = 10
    val_every: int = 0
    checkpoint_every: int = 100
    keep_last_checkpoints: int | None = 3
    seed: int = 0
    output_dir: str = "runs/train"
    resume: bool = True
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("max_steps", "grad_accum_steps", "log_every", "checkpoint_every"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "val_every", "seed"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.keep_last_checkpoints is not None:
            _check_int("keep_last_checkpoints", self.keep_last_checkpoints, minimum=1)
        for name in ("lr", "weight_decay", "min_lr_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if (not isinstance(self.betas, tuple) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in self.betas)):
            raise ValueError(f"betas must be a tuple of two numbers in [0, 1), got {self.betas!r}")
        check_choice("scheduler", self.scheduler, ("cosine", "constant"))
        if self.grad_clip_norm is not None:
            value = self.grad_clip_norm
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
                raise ValueError(f"grad_clip_norm must be a positive number or None (no clipping), got {value!r}")
        if not isinstance(self.device, str):
            raise ValueError(f"device must be a string such as 'auto' or 'cpu', got {self.device!r}")
        check_choice("amp", self.amp, AMP_CHOICES)
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError(f"output_dir must be a non-empty folder path, got {self.output_dir!r}")
        for name in ("resume", "overwrite", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.resume and self.overwrite:
            raise ValueError("resume=True and overwrite=True contradict each other: pick one (overwrite starts over)")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def lr_factor(step: int, *, max_steps: int, warmup_steps: int, scheduler: str, min_lr_ratio: float = 0.0) -> float:
    """The multiplier of the peak lr used for update ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` updates (so the first
    update already moves), then ``1`` (constant) or a half cosine from ``1`` towards ``min_lr_ratio``,
    which it would reach one update after the last (as in Hugging Face's cosine schedule, so that the
    last update is not wasted with a zero lr).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------ data order
class SeededBatchSampler(Sampler):
    """Batches of one epoch whose order is a function of ``(seed, epoch)`` only.

    Each batch is a list of ``(epoch, index)`` keys; :class:`SeededDataset` reads them, so every
    sample knows the epoch it is drawn in (for its augmentation seed) without any shared state,
    which keeps worker processes out of the question. The DataLoader's global random stream is
    never used.

    Under ``torch.distributed`` each rank takes every ``world_size``-th sample of the shuffled order
    (the order is the same on every rank; the tail that does not divide evenly is dropped so that all
    ranks run the same number of batches).

    Args:
        num_samples: length of the dataset.
        batch_size: samples per batch (per process).
        seed: the run seed.
        epoch: which epoch's order to produce.
        start_batch: skip this many batches (already consumed before a resume): they are never loaded.
        shuffle: permute the samples (otherwise dataset order).
        drop_last: drop the last, smaller batch.
        rank, world_size: this process's share; default from ``torch.distributed`` (0 and 1 without it).

    Raises:
        ValueError: non-positive sizes, a negative seed/epoch/start, or ``rank`` outside ``world_size``.
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int, epoch: int, start_batch: int = 0,
                 shuffle: bool = True, drop_last: bool = True, rank: int | None = None,
                 world_size: int | None = None) -> None:
        _check_int("num_samples", num_samples, 1)
        _check_int("batch_size", batch_size, 1)
        for name, value in (("seed", seed), ("epoch", epoch), ("start_batch", start_batch)):
            _check_int(name, value, 0)
        self.world_size = distributed.world_size() if world_size is None else world_size
        self.rank = distributed.rank() if rank is None else rank
        _check_int("world_size", self.world_size, 1)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank!r}")
        self.num_samples, self.batch_size, self.seed, self.epoch = num_samples, batch_size, seed, epoch
        self.start_batch, self.shuffle, self.drop_last = start_batch, shuffle, drop_last

    def indices(self) -> list[int]:
        """This rank's sample indices for the epoch, in order (before batching and skipping)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, _ORDER_STREAM, self.epoch))
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        usable = self.num_samples - self.num_samples % self.world_size
        return order[:usable][self.rank::self.world_size]

    def batches_per_epoch(self) -> int:
        """Batches in a whole epoch for this rank."""
        n = (self.num_samples - self.num_samples % self.world_size) // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.indices()
        for b in range(self.start_batch, self.batches_per_epoch()):
            yield [(self.epoch, i) for i in order[b * self.batch_size:(b + 1) * self.batch_size]]

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)


class SeededDataset(Dataset):
    """Make each sample's random augmentation a function of ``(seed, epoch, index)``.

    ``dataset[(epoch, index)]`` seeds Python's ``random``, NumPy's and torch's global generators with
    ``derive_seed(seed, epoch, index)``, calls ``set_random_state(seed=...)`` on the dataset and on
    its ``transform`` attribute when they have it (MONAI ``Randomizable`` transforms and
    ``Compose``), loads ``dataset[index]``, and restores the global generators, so the training
    process's own random stream is untouched. ``dataset[index]`` (a plain integer) is epoch 0.

    The trainer wraps every training dataset in it; wrap a dataset yourself only to use it outside
    the trainer (e.g. to look at the augmented samples of epoch 3).

    Args:
        dataset: a map-style dataset (``__getitem__`` and ``__len__``).
        seed: the run seed.

    Example:
        >>> import torch
        >>> class Noisy(torch.utils.data.Dataset):
        ...     def __len__(self): return 4
        ...     def __getitem__(self, i): return torch.rand(1)
        >>> data = SeededDataset(Noisy(), seed=0)
        >>> bool(data[(2, 1)] == data[(2, 1)]), bool(data[(2, 1)] == data[(3, 1)])
        (True, False)
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ValueError(f"SeededDataset needs a map-style dataset with __getitem__ and __len__, got "
                             f"{type(dataset).__name__}")
        _check_int("seed", seed, 0)
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if not 0 <= index < len(self.dataset):
            raise IndexError(f"sample index {index} out of range for a dataset of {len(self.dataset)} samples")
        sample_seed = derive_seed(self.seed, epoch, index)
        with fork_rng(sample_seed):
            for owner in (self.dataset, getattr(self.dataset, "transform", None)):
                set_state = getattr(owner, "set_random_state", None)
                if callable(set_state):
                    set_state(seed=sample_seed)
            return self.dataset[index]


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: seed a worker's Python and NumPy generators from torch's.

    torch seeds each worker differently (from the loader's generator); Python's ``random`` and NumPy
    would otherwise start identical in every forked worker. With :class:`SeededDataset` the samples
    do not depend on it; it protects datasets used without it.
    """
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)


def make_train_loader(dataset: Dataset, batch_size: int, *, seed: int, epoch: int, start_batch: int = 0,
                      collate_fn: Callable | None = None, num_workers: int = 0, shuffle: bool = True,
                      drop_last: bool = True, pin_memory: bool = False) -> DataLoader:
    """The DataLoader of one epoch (from ``start_batch`` on) with a resumable order and augmentation.

    Args:
        dataset: a map-style dataset (wrapped in :class:`SeededDataset` unless it is one).
        batch_size: samples per batch and process.
        seed, epoch, start_batch, shuffle, drop_last: see :class:`SeededBatchSampler`.
        collate_fn: turns a list of samples into a batch (default: torch's ``default_collate``).
        num_workers: loader processes (0: load in the main process).
        pin_memory: page-locked batches for faster copies to CUDA.

    Returns:
        A DataLoader; iterating it twice gives the same batches.
    """
    if not isinstance(dataset, SeededDataset):
        dataset = SeededDataset(dataset, seed)
    sampler = SeededBatchSampler(len(dataset), batch_size, seed=seed, epoch=epoch, start_batch=start_batch,
                                 shuffle=shuffle, drop_last=drop_last)
    # DataLoader draws its worker base seed from this generator; without one it would draw from the
    # global torch stream, which a resumed run (that builds the loader mid-epoch) would then shift.
    generator = torch.Generator().manual_seed(derive_seed(seed, _LOADER_STREAM, epoch))
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
                      pin_memory=pin_memory, worker_init_fn=seed_worker if num_workers else None,
                      generator=generator)


# ---------------------------------------------------------------------------------------- result
@dataclass(frozen=True)
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        step: optimiser updates done (``max_steps`` unless stopped early).
        history: every record, oldest first: ``split == "train"`` records (``step``, ``epoch``, ``lr``,
            ``loss``, each term, ``grad_norm`` when clipping, extra logs) and ``split == "val"`` records
            (``step`` and the task's metrics). Also in ``output_dir/history.jsonl``.
        last_checkpoint: the checkpoint written at the end (by rank 0; every rank gets its path).
        metrics: the last validation metrics (empty without a validation loader).
        stopped_early: a callback called :meth:`Trainer.request_stop`.
    """

    step: int
    history: list[dict[str, Any]] = field(repr=False)
    last_checkpoint: Path | None
    metrics: dict[str, float]
    stopped_early: bool = False


# --------------------------------------------------------------------------------------- trainer
class Trainer:
    """Train a :class:`Task` with AdamW; resumable, device-agnostic, model-agnostic.

    Give the training data either as a map-style ``train_dataset`` (with ``batch_size``: the trainer
    builds resumable per-epoch loaders with :func:`make_train_loader`) or as a
    ``train_loader_factory(epoch, start_batch) -> iterable of batches`` for pipelines of your own
    (exact resume then holds only if the factory returns the same batches for the same arguments).

    Args:
        task: the model and its losses (see :class:`Task`).
        config: optimisation, logging and output settings.
        train_dataset: map-style training data.
        batch_size: samples per batch and process (with ``train_dataset``); the global batch of a
            ``torchrun`` run is ``batch_size x world_size`` (see :class:`TrainerConfig`).
        collate_fn: batch builder (with ``train_dataset``; default ``default_collate``).
        num_workers: loader processes (with ``train_dataset``).
        shuffle, drop_last: sample order and last-batch handling (with ``train_dataset``).
        train_loader_factory: the alternative to ``train_dataset``.
        val_loader: an iterable of validation batches passed to ``task.validate``.
        callbacks: objects with any of ``on_train_start(trainer)``, ``on_step_end(trainer, step, logs)``,
            ``on_validation_end(trainer, step, metrics)``, ``on_train_end(trainer, result)``.
        kind: written into checkpoints (``"pretrain"``, ``"finetune"``...).
        run_config: the full run config (a dataclass or dict) stored as the checkpoints' ``config``;
            default: this trainer config.
        label_map: a ``LabelMap`` (or its dict) stored in the checkpoints.
        data_files: the files the run reads (images, labels, report lists; folders are expanded),
            recorded with their SHA-256 in ``output_dir/run_record.json``; ``None``: not listed.

    Attributes:
        device, amp_dtype, optimizer, scheduler, scaler, step, epoch, history: the live run state.
        ddp_model: the ``DistributedDataParallel`` wrapper of ``task.model`` under several processes
            (``None`` otherwise). ``task.model`` is the plain module except while ``task.step`` runs.

    Raises:
        ValueError: neither or both data sources, a missing ``batch_size``, an empty dataset, a
            ``val_loader`` for a task without ``validate``, no trainable parameters, ``data_files``
            given as one path instead of a list.
    """

    def __init__(self, task: Task, config: TrainerConfig, *, train_dataset: Dataset | None = None,
                 batch_size: int | None = None, collate_fn: Callable | None = None, num_workers: int = 0,
                 shuffle: bool = True, drop_last: bool = True,
                 train_loader_factory: Callable[[int, int], Iterable[Any]] | None = None,
                 val_loader: Iterable[Any] | None = None, callbacks: Sequence[Any] = (), kind: str = "train",
                 run_config: Any = None, label_map: Any = None,
                 data_files: Sequence[str | Path] | None = None) -> None:
        if not isinstance(config, TrainerConfig):
            raise ValueError(f"config must be a TrainerConfig, got {type(config).__name__}")
        if not isinstance(getattr(task, "model", None), nn.Module) or not callable(getattr(task, "step", None)):
            raise ValueError(f"task must have a `model` (nn.Module) and a `step(batch)` method; got {type(task).__name__}")
        if (train_dataset is None) == (train_loader_factory is None):
            raise ValueError("give exactly one of train_dataset (with batch_size) or train_loader_factory")
        if train_dataset is not None:
            if not hasattr(train_dataset, "__len__") or not hasattr(train_dataset, "__getitem__"):
                raise ValueError(
                    f"train_dataset must be map-style (__getitem__ and __len__), got {type(train_dataset).__name__}; "
                    f"give streaming data as train_loader_factory"
                )
            if batch_size is None:
                raise ValueError("train_dataset needs a batch_size")
            _check_int("batch_size", batch_size, 1)
            _check_int("num_workers", num_workers, 0)
            n_local = len(train_dataset) // distributed.world_size()
            if n_local == 0 or (drop_last and n_local < batch_size):
                raise ValueError(
                    f"train_dataset has {len(train_dataset)} samples: too few for one batch of {batch_size} per "
                    f"process ({distributed.world_size()} process(es), drop_last={drop_last})"
                )
        check_kind(kind)
        if isinstance(data_files, (str, Path)):
            raise ValueError(f"data_files must be a list of paths, got the single path {str(data_files)!r}")
        if val_loader is not None and not callable(getattr(task, "validate", None)):
            raise ValueError(f"a val_loader was given but the task {type(task).__name__} has no validate(loader) method")
        self.task, self.config = task, config
        if train_dataset is not None and not isinstance(train_dataset, SeededDataset):
            train_dataset = SeededDataset(train_dataset, config.seed)
        self.train_dataset = train_dataset
        self.batch_size, self.collate_fn, self.num_workers = batch_size, collate_fn, num_workers
        self.shuffle, self.drop_last = shuffle, drop_last
        self.train_loader_factory, self.val_loader = train_loader_factory, val_loader
        self.callbacks = list(callbacks)
        self.kind = kind
        self.run_config = _plain_config(run_config if run_config is not None else config)
        self._own_run_config = run_config is not None
        self.label_map = label_map.to_dict() if hasattr(label_map, "to_dict") else label_map
        self.data_files = None if data_files is None else list(data_files)
        self.output_dir = Path(config.output_dir)

        self.device = resolve_device(config.device)
        self.amp_dtype = resolve_amp(config.amp, self.device)
        task.model.to(self.device)
        param_groups = self._param_groups()
        # Wrapped before the optimiser is built (DDP broadcasts rank 0's initial weights); the
        # optimiser holds the same parameter tensors either way.
        self.ddp_model = _wrap_distributed(task.model, self.device)
        self.optimizer = torch.optim.AdamW(param_groups, lr=config.lr, betas=config.betas,
                                           weight_decay=config.weight_decay)
        schedule = dict(max_steps=config.max_steps, warmup_steps=config.warmup_steps, scheduler=config.scheduler,
                        min_lr_ratio=config.min_lr_ratio)

        def factor(step: int) -> float:
            return lr_factor(step, **schedule)

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.scaler = _grad_scaler(enabled=self.amp_dtype == torch.float16)

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: list[dict[str, Any]] = []
        self._written = 0  # history records already in history.jsonl
        self._stop = False
        self._last_checkpoint: Path | None = None
        self._checkpoint_step: int | None = None
        self._last_val_step: int | None = None
        self._metrics: dict[str, float] = {}
        self._is_main = distributed.is_main_process()

    # ------------------------------------------------------------------------------ public
    def request_stop(self) -> None:
        """Ask the loop to stop after the current update (a checkpoint is still written)."""
        self._stop = True

    def fit(self) -> TrainResult:
        """Train until ``max_steps`` (or a stop request), resuming first when the config says so.

        Returns:
            A :class:`TrainResult`.

        Raises:
            NonFiniteLossError: a NaN/inf loss or gradient norm; no checkpoint is written after it.
            FileExistsError: ``output_dir`` holds an earlier run and neither ``resume`` nor
                ``overwrite`` is set.
            RunFolderBusyError: another trainer is writing into ``output_dir`` right now.
            CheckpointError: the newest checkpoint in ``output_dir`` is damaged (named in the message).
            ValueError: resuming a checkpoint of another ``kind`` or label map.
        """
        lock = RunFolderLock(self.output_dir) if self._is_main else None
        if lock is not None:
            lock.acquire()
        try:
            return self._fit()
        finally:
            if lock is not None:
                lock.release()

    def _fit(self) -> TrainResult:
        self._start()
        self._call("on_train_start", self)
        bar = self._progress_bar()
        try:
            batches = self._micro_batches()
            while self.step < self.config.max_steps and not self._stop:
                logs = self._update(batches)
                self.history.append(logs)
                self._call("on_step_end", self, self.step, dict(logs))
                if bar is not None:
                    bar.update(1)
                    if self.step % self.config.log_every == 0 or self.step == self.config.max_steps:
                        bar.set_postfix({k: _short(v) for k, v in logs.items() if k not in ("step", "split", "epoch")},
                                        refresh=False)
                if self.step % self.config.log_every == 0:
                    self._flush_history()
                if self.config.val_every and self.step % self.config.val_every == 0:
                    self._validate()
                # A callback (a time limit, early stopping) may stop one rank only: all must stop together.
                self._stop = self._on_any_rank(self._stop)
                if self.step % self.config.checkpoint_every == 0 and self.step < self.config.max_steps \
                        and not self._stop:
                    self._save()
            if self.val_loader is not None and self._last_val_step != self.step:
                self._validate()
            if self._checkpoint_step != self.step:
                self._save()
        finally:
            # Whatever stopped the run (an error, Ctrl-C), the records so far reach the file; a resume
            # drops the ones after its checkpoint.
            self._flush_history()
            if bar is not None:
                bar.close()
        result = TrainResult(step=self.step, history=list(self.history), last_checkpoint=self._last_checkpoint,
                             metrics=dict(self._metrics), stopped_early=self._stop)
        self._call("on_train_end", self, result)
        return result

    # -------------------------------------------------------------------------- one update
    def _update(self, batches: Iterator[Any]) -> dict[str, Any]:
        """One optimiser update over ``grad_accum_steps`` batches; returns its log record."""
        cfg = self.config
        model = self.task.model
        model.train()
        sums: dict[str, float] = {}
        for micro in range(cfg.grad_accum_steps):
            batch = move_to_device(next(batches), self.device, non_blocking=self.device.type == "cuda")
            with autocast(self.device, self.amp_dtype), self._distributed_forward():
                terms = self.task.step(batch)
            loss = self._total_loss(terms)
            # One host sync for every value of this micro-batch. Under several processes the values
            # are averaged over them first, so the log shows the global batch and a NaN on one rank
            # stops every rank (a rank that went on to the backward's all-reduce alone would hang).
            stacked = torch.stack([t.detach().float().reshape(()) for t in terms.values()] + [loss.detach().float()])
            values = self._mean_over_ranks(stacked).tolist()
            named = dict(zip([*terms, "loss"], values))
            if not all(math.isfinite(v) for v in values):
                raise NonFiniteLossError(self.step + 1, named, self._error_detail(micro))
            # Under DDP every micro-batch's backward averages gradients over the processes (DDP's
            # no_sync would save that communication but does not work with static_graph=True, which
            # the wrapper needs; see _wrap_distributed). Averaged accumulations equal the sum of the
            # averages, so the update is the same.
            self.scaler.scale(loss / cfg.grad_accum_steps).backward()
            for k, v in named.items():
                sums[k] = sums.get(k, 0.0) + v
        lr = self.optimizer.param_groups[0]["lr"]
        grad_norm = None
        if cfg.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self._parameters(), cfg.grad_clip_norm))
            # With fp16 the scaler skips updates whose gradients overflowed; elsewhere it is an error.
            if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
                mean = {k: v / cfg.grad_accum_steps for k, v in sums.items()}
                raise NonFiniteLossError(self.step + 1, {**mean, "grad_norm": grad_norm}, self._error_detail(),
                                         what="gradient norm (the loss was finite)")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

        logs: dict[str, Any] = {"step": self.step, "epoch": self.epoch, "split": "train", "lr": lr}
        logs.update({k: v / cfg.grad_accum_steps for k, v in sums.items()})
        if grad_norm is not None:
            logs["grad_norm"] = grad_norm
        extra = getattr(self.task, "extra_logs", None)
        if callable(extra):
            with torch.no_grad():  # logged values need no graph (and float() of a graph warns)
                extra_values = extra()
            for k, v in extra_values.items():
                if k in logs:
                    raise ValueError(f"extra_logs() returned {k!r}, a name already used by the loop or a loss term")
                logs[k] = float(v)
        return logs

    @contextlib.contextmanager
    def _distributed_forward(self) -> Iterator[None]:
        """Under DDP, let ``task.step`` see the wrapper as ``task.model`` (and put the module back after).

        Only the wrapper's forward prepares the gradient averaging of the backward pass; everything
        else (validation, saving, ``extra_logs``) keeps seeing the plain module.
        """
        if self.ddp_model is None:
            yield
            return
        inner = self.task.model
        self.task.model = self.ddp_model
        self.ddp_model.forward_calls = 0
        try:
            yield
        finally:
            self.task.model = inner
        if self.ddp_model.forward_calls == 0:
            raise ValueError(f"task {type(self.task).__name__}.step did not call self.model(...): under "
                             f"DistributedDataParallel the forward must go through task.model (not through another "
                             f"reference to the module), or the gradients are not averaged over the processes")

    def _mean_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        if self.ddp_model is None:
            return values
        torch.distributed.all_reduce(values)
        return values / distributed.world_size()

    def _on_any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on at least one (a collective: every rank calls it)."""
        if self.ddp_model is None:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics), which each rank's forward updates from
        its own batch: validation then gives the same metrics on every rank, as the saved model would."""
        if self.ddp_model is None:
            return
        for buffer in self.ddp_model.module.buffers():
            torch.distributed.broadcast(buffer, src=0)

    def _total_loss(self, terms: Any) -> torch.Tensor:
        if not isinstance(terms, Mapping) or not terms:
            raise ValueError(f"task.step must return a non-empty dict of named loss terms, got {type(terms).__name__}")
        for name, value in terms.items():
            if name in RESERVED_LOG_KEYS:
                raise ValueError(f"loss term name {name!r} is reserved by the loop (it logs {list(RESERVED_LOG_KEYS)}); "
                                 f"rename the term")
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"loss term {name!r} must be a scalar tensor, got {shape}")
        loss = sum(t.reshape(()).float() for t in terms.values())
        if not loss.requires_grad:
            raise ValueError(f"none of the loss terms {list(terms)} requires grad: nothing to train")
        return loss

    def _error_detail(self, micro: int | None = None) -> str:
        where = f"epoch {self.epoch}"
        if micro is not None:
            where += f", micro-batch {micro + 1}/{self.config.grad_accum_steps}"
        if self._last_checkpoint is not None:
            last = f"the last good checkpoint is {self._last_checkpoint}"
        else:
            last = "no checkpoint was written yet"
        return f" ({where}); training stopped without saving: {last}"

    # ------------------------------------------------------------------------------- data
    def _epoch_batches(self, epoch: int, start_batch: int) -> Iterable[Any]:
        if self.train_loader_factory is not None:
            return self.train_loader_factory(epoch, start_batch)
        return make_train_loader(self.train_dataset, self.batch_size, seed=self.config.seed, epoch=epoch,
                                 start_batch=start_batch, collate_fn=self.collate_fn, num_workers=self.num_workers,
                                 shuffle=self.shuffle, drop_last=self.drop_last,
                                 pin_memory=self.device.type == "cuda")

    def _micro_batches(self) -> Iterator[Any]:
        """Batches forever, epoch after epoch; ``self.epoch``/``self.batch_in_epoch`` say where we are."""
        while True:
            produced = False
            for batch in self._epoch_batches(self.epoch, self.batch_in_epoch):
                produced = True
                self.batch_in_epoch += 1
                yield batch
            if not produced and self.batch_in_epoch == 0:
                raise ValueError(f"the training data produced no batch in epoch {self.epoch}")
            self.epoch += 1
            self.batch_in_epoch = 0

    # --------------------------------------------------------------------------- validation
    def _validate(self) -> None:
        self._sync_buffers()
        model = self.task.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), autocast(self.device, self.amp_dtype):
                metrics = self.task.validate(_OnDevice(self.val_loader, self.device))
        finally:
            model.train(was_training)
        if not isinstance(metrics, Mapping):
            raise ValueError(f"task.validate must return a dict of metric name -> number, got {type(metrics).__name__}")
        metrics = {str(k): float(v) for k, v in metrics.items()}
        clash = [k for k in metrics if k in ("step", "split")]
        if clash:
            raise ValueError(f"task.validate returned reserved names {clash}; rename them")
        self._metrics = metrics
        self._last_val_step = self.step
        self.history.append({"step": self.step, "split": "val", **metrics})
        self._flush_history()
        self._call("on_validation_end", self, self.step, metrics)

    # --------------------------------------------------------------------- checkpoints/files
    def _start(self) -> None:
        """Resume from ``output_dir`` or start a fresh run there."""
        cfg = self.config
        if self._is_main and self.output_dir.is_dir():
            # Temporaries of writes killed half-way (we hold the folder lock: nobody else writes).
            remove_stale_temporaries(self.output_dir, names=(HISTORY_NAME, RUN_RECORD_NAME))
        self._barrier()
        found = latest_checkpoint(self.output_dir) if self.output_dir.is_dir() else None
        self._check_same_on_all_ranks(found)
        history_file = self.output_dir / HISTORY_NAME
        if found is not None and cfg.resume:
            self._resume(found)
            self._record_run(resumed_from=found)
            return
        earlier = found is not None or history_file.exists()
        if earlier and not cfg.resume:
            if not cfg.overwrite:
                raise FileExistsError(
                    f"{self.output_dir} holds an earlier run ({found or history_file}); set resume=True to continue "
                    f"it, overwrite=True to start over there, or choose another output_dir"
                )
            if self._is_main:
                self._remove_earlier_run()
        seed_everything(cfg.seed)
        # A crash before the first checkpoint leaves a history that belongs to no checkpoint.
        if self._is_main and history_file.exists():
            warnings.warn(f"{history_file} belongs to a run that stopped before its first checkpoint; it is discarded "
                          f"and the run starts from step 0", stacklevel=4)
            history_file.unlink()
        self._record_run(resumed_from=None)
        self._barrier()

    def _record_run(self, resumed_from: Path | None) -> None:
        """Write ``run_record.json``; on a resume, warn when data or software differ from the last session."""
        if not self._is_main:
            return
        path = self.output_dir / RUN_RECORD_NAME
        before = read_run_record(path) if resumed_from is not None and path.exists() else None
        extra = {"kind": self.kind, "trainer": config_to_dict(self.config), "start_step": self.step,
                 "resumed_from": None if resumed_from is None else resumed_from.name,
                 "data_settings": self._data_settings()}
        write_run_record(self.output_dir, self.run_config, self.data_files, device=self.device, extra=extra)
        if before is not None:
            # Config changes were checked against the checkpoint already (see _warn_if_changed).
            changed = compare_run_records(before, read_run_record(path), config=False)
            if changed:
                warnings.warn(f"resuming {resumed_from} in another setting than its last session "
                              f"({'; '.join(changed)}): the run may not match an uninterrupted one", stacklevel=5)

    def _resume(self, path: Path) -> None:
        # Tensors stay on the CPU: load_state_dict copies them to where the parameters live, and the
        # RNG states must be CPU tensors.
        ckpt = load_checkpoint(path, map_location="cpu")
        state = ckpt["state"]
        missing = [k for k in ("model", "optimizer", "scheduler", "trainer", "rng") if k not in state]
        if missing:
            raise ValueError(f"checkpoint {path} cannot be resumed: its state lacks {missing} (it was not written by "
                             f"the Trainer)")
        if ckpt["kind"] != self.kind:
            raise ValueError(f"checkpoint {path} belongs to a {ckpt['kind']!r} run but this trainer's kind is "
                             f"{self.kind!r}; choose another output_dir (or resume=False, overwrite=True to replace it)")
        saved_labels = (ckpt.get("label_map") or {}).get("labels")
        labels = (self.label_map or {}).get("labels")
        if saved_labels != labels:
            raise ValueError(f"checkpoint {path} was trained with the labels {saved_labels} but this run has "
                             f"{labels}; output channels would change meaning: choose another output_dir")
        trainer_state = state["trainer"]
        self._warn_if_changed(trainer_state.get("config", {}), trainer_state.get("data", {}), path,
                              saved_run_config=ckpt["config"])
        _unwrap(self.task.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(trainer_state["step"])
        self.epoch = int(trainer_state["epoch"])
        self.batch_in_epoch = int(trainer_state["batch_in_epoch"])
        self._last_checkpoint = path
        self._checkpoint_step = self.step
        self.history = self._read_history(up_to_step=self.step)
        self._written = len(self.history)
        vals = [r for r in self.history if r.get("split") == "val"]
        if vals:
            self._last_val_step = vals[-1]["step"]
            self._metrics = {k: v for k, v in vals[-1].items() if k not in ("step", "split")}
        if self._is_main:
            # Records logged after the checkpoint (before the interruption) are redone by this run.
            atomic_write_text(self.output_dir / HISTORY_NAME, "".join(json.dumps(r) + "\n" for r in self.history))
        set_rng_state(state["rng"])
        self._barrier()

    def _warn_if_changed(self, saved: Mapping[str, Any], saved_data: Mapping[str, Any], path: Path,
                         saved_run_config: Mapping[str, Any]) -> None:
        now = config_to_dict(self.config)
        changed = [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in _TRAJECTORY_FIELDS
                   if k in saved and _as_list(saved[k]) != _as_list(now[k])]
        data = self._data_settings()
        changed += [f"{k}: {saved_data[k]!r} -> {data[k]!r}" for k in data if k in saved_data and saved_data[k] != data[k]]
        if self._own_run_config:
            # The caller's run config (model, data, ...): any change but bookkeeping is worth a word.
            before, after, absent = _flatten(saved_run_config), _flatten(self.run_config), "<absent>"
            changed += [f"config {k}: {_clip(before.get(k, absent))} -> {_clip(after.get(k, absent))}"
                        for k in sorted(set(before) | set(after))
                        if before.get(k, absent) != after.get(k, absent)
                        and k.rsplit(".", 1)[-1] not in _TRAJECTORY_FIELDS + _BOOKKEEPING_FIELDS]
        if changed:
            # stacklevel: _warn_if_changed < _resume < _start < _fit < fit < the caller.
            warnings.warn(f"resuming {path} with changed settings ({'; '.join(changed)}): the run will not match an "
                          f"uninterrupted one", stacklevel=6)

    def _check_same_on_all_ranks(self, found: Path | None) -> None:
        """Every rank must resume the same checkpoint (``output_dir`` on a file system all nodes share)."""
        if self.ddp_model is None:
            return
        seen: list[Any] = [None] * distributed.world_size()
        torch.distributed.all_gather_object(seen, None if found is None else found.name)
        if len(set(seen)) > 1:
            # Raised on every rank alike, so no rank is left waiting in a collective.
            raise ValueError(f"the processes see different newest checkpoints in {self.output_dir} (by rank: {seen}); "
                             f"output_dir must be on a file system that every node shares")

    def _save(self) -> None:
        self._sync_buffers()
        if self._is_main:
            cfg = self.config
            state = {
                "model": _unwrap(self.task.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "trainer": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                            "config": config_to_dict(cfg), "data": self._data_settings()},
                "rng": get_rng_state(),
            }
            path = save_checkpoint(self.output_dir / checkpoint_name(self.step), state=state, config=self.run_config,
                                   label_map=self.label_map, kind=self.kind,
                                   extra={"metrics": dict(self._metrics)})
            link_last(path)
            if cfg.keep_last_checkpoints is not None:
                prune_checkpoints(self.output_dir, cfg.keep_last_checkpoints)
            self._last_checkpoint = path
            self._flush_history()
        else:
            # The file rank 0 writes (the barrier below waits for it): every rank can report it.
            self._last_checkpoint = self.output_dir / checkpoint_name(self.step)
        self._checkpoint_step = self.step
        self._barrier()

    def _remove_earlier_run(self) -> None:
        for _, path in list_checkpoints(self.output_dir):
            path.unlink()
        for name in (LAST_NAME, HISTORY_NAME, RUN_RECORD_NAME):
            (self.output_dir / name).unlink(missing_ok=True)

    def _flush_history(self) -> None:
        if not self._is_main or self._written >= len(self.history):
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # history.jsonl is an append-only log: appending whole lines keeps earlier lines intact if the
        # process dies, and a resume rewrites it atomically up to its checkpoint.
        with open(self.output_dir / HISTORY_NAME, "a", encoding="utf-8") as fh:
            for record in self.history[self._written:]:
                fh.write(json.dumps(record) + "\n")
        self._written = len(self.history)

    def _read_history(self, up_to_step: int) -> list[dict[str, Any]]:
        path = self.output_dir / HISTORY_NAME
        if not path.exists():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the interruption
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= up_to_step:
                records.append(record)
        return records

    # ---------------------------------------------------------------------------- helpers
    def _param_groups(self) -> list[Any]:
        chooser = getattr(self.task, "parameters_for_optimizer", None)
        items = list(chooser() if callable(chooser) else self.task.model.parameters())
        if items and isinstance(items[0], Mapping):
            groups = []
            for group in items:
                group = dict(group)
                scale = group.pop("lr_scale", 1.0)
                group.setdefault("lr", self.config.lr * scale)
                group["params"] = [p for p in group["params"] if p.requires_grad]
                if group["params"]:
                    groups.append(group)
            items = groups
        else:
            items = [p for p in items if p.requires_grad]
        if not items:
            raise ValueError(f"task {type(self.task).__name__} has no trainable parameters (requires_grad=True)")
        return items

    def _parameters(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _data_settings(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "world_size": distributed.world_size(), "shuffle": self.shuffle,
                "drop_last": self.drop_last}

    def _progress_bar(self) -> Any:
        if not (self.config.progress and self._is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.config.max_steps, initial=self.step, desc=self.kind, unit="step", dynamic_ncols=True)

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if callable(method):
                method(*args)

    @staticmethod
    def _barrier() -> None:
        if distributed.is_distributed():
            torch.distributed.barrier()


class _OnDevice:
    """An iterable that moves each batch of ``loader`` to ``device`` (for ``task.validate``)."""

    def __init__(self, loader: Iterable[Any], device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield move_to_device(batch, self.device)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


class _DistributedModel(nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that lends the wrapped module's attributes and counts its forward calls.

    Tasks call submodules by name (``self.model.contrastive_loss(...)``, ``self.model.text_encoder``);
    with this wrapper such code runs unchanged while ``task.model`` is the wrapper.
    """

    forward_calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.forward_calls += 1
        return super().forward(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":  # not set yet (inside DDP's constructor): no module to ask
                raise
            return getattr(self.module, name)


def _wrap_distributed(model: nn.Module, device: torch.device) -> _DistributedModel | None:
    """``model`` in DistributedDataParallel when several processes train together, else ``None``.

    ``static_graph=True`` because tasks use parameters outside the model's forward (the contrastive
    loss's temperature is called after it) and leave some unused (the text encoder when the
    contrastive weight is 0): DDP's default refuses unused parameters, and ``find_unused_parameters``
    refuses parameters used after the forward. A static graph (the same parameters take part in every
    step, true for the kit's tasks) supports both.

    Raises:
        ValueError: the process group's backend is NCCL but the run's device is not CUDA.
    """
    if not distributed.is_distributed():
        return None
    backend = torch.distributed.get_backend()
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"the process group uses NCCL, which needs CUDA, but the run's device is {device}; use "
                         f"device 'auto' or 'cuda', or start the processes with the gloo backend for the CPU")
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return _DistributedModel(model, device_ids=device_ids, static_graph=True)


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (its keys have no ``module.``)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def _grad_scaler(enabled: bool) -> Any:
    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler"):
        return amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


def _plain_config(config: Any) -> dict[str, Any]:
    import dataclasses

    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return config_to_dict(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise ValueError(f"run_config must be a config dataclass or a dict, got {type(config).__name__}")


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); tuples as lists."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = _as_list(value)
    return flat


def _clip(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
