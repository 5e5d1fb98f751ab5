"""Small helpers around ``torch.distributed`` that also work when it is not in use.

Training scales to several GPUs and nodes through an existing launcher (``torchrun`` or
``accelerate`` start the processes); the kit never starts processes itself. A process started by
``torchrun`` calls :func:`init_from_env` once (the ``pretrain`` and ``finetune`` commands do), which
joins the process group that the launcher's environment variables describe and pins the process to
its own GPU, and :func:`cleanup` at the end. Code that has to know about the other processes (the
contrastive loss gathers embeddings, the training loop averages gradients and saves on one process
only) asks the other helpers, which answer as a single process (world size 1, rank 0) when
``torch.distributed`` is unavailable or not initialised. ``docs/distributed.md`` explains the whole
multi-GPU and multi-node set-up.

Example:
    >>> import torch
    >>> from mosmoskit.distributed import gather_with_grad, is_main_process, world_size
    >>> world_size(), is_main_process()       # a plain Python process
    (1, True)
    >>> x = torch.ones(4, 8)
    >>> gather_with_grad(x) is x              # nothing to gather
    True
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import torch
import torch.distributed as dist

__all__ = ["cleanup", "gather_with_grad", "init_from_env", "is_distributed", "is_main_process", "main_process_first",
           "process_group_from_env", "rank", "world_size"]

# What torchrun (and torch.distributed.launch, accelerate, SLURM wrappers that mimic it) exports to
# every process besides WORLD_SIZE; init_process_group("env://") reads them.
_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """True when a process group is initialised with more than one process."""
    return _initialised() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if _initialised() else 1


def rank() -> int:
    """This process's rank in the default group (0 when not distributed)."""
    return dist.get_rank() if _initialised() else 0


def is_main_process() -> bool:
    """True on rank 0: the process that logs, writes checkpoints and shows progress bars."""
    return rank() == 0


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run a block on rank 0 first and on the other ranks once rank 0 has left it.

    For set-up that must happen once before the others read it: preparing the run folder,
    generating a phantom cohort, building a cache on disk. Without a process group it just runs the
    block. If rank 0 raises, the others are released too (``torchrun`` then stops them all).
    """
    waits = is_distributed() and not is_main_process()
    if waits:
        dist.barrier()
    try:
        yield
    finally:
        if is_distributed() and is_main_process():
            dist.barrier()


@contextlib.contextmanager
def process_group_from_env(device: str = "auto") -> Iterator[bool]:
    """``init_from_env`` on entry and ``cleanup`` on exit (only if this call joined a group).

    What a command that may run under ``torchrun`` wraps its work in; yields whether it joined one.
    """
    started = init_from_env(device)
    try:
        yield started
    finally:
        if started:
            cleanup()


def init_from_env(device: str = "auto") -> bool:
    """Join the process group described by ``torchrun``'s environment variables, if there is one.

    ``torchrun`` (single node or several, with ``--nnodes``, ``--node_rank`` or ``--rdzv_endpoint``)
    exports ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` to each
    process it starts. With ``WORLD_SIZE > 1`` and no process group yet, this initialises one: NCCL
    when the run uses CUDA, gloo on the CPU. On CUDA the process is first pinned to the GPU
    ``LOCAL_RANK`` (``torch.cuda.set_device``), so that ``device="auto"`` or ``"cuda"`` means
    ``cuda:LOCAL_RANK`` from then on (:func:`mosmoskit.device.resolve_device`) and NCCL's collectives
    run on that GPU.

    Args:
        device: the run's device setting (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``);
            it chooses the backend. ``"cuda:N"`` is refused when a node runs several processes: they
            would all share GPU N.

    Returns:
        True when this call initialised the process group (call :func:`cleanup` at the end); False
        in a plain process (no launcher variables, or ``WORLD_SIZE`` 1) or when a process group
        exists already (e.g. started by ``accelerate``), which is left to its owner.

    Raises:
        ValueError: ``WORLD_SIZE`` or ``LOCAL_RANK`` is not an integer, a launcher variable is missing
            (named), ``device`` is invalid or names a device this machine lacks, ``"cuda:N"`` with
            several processes per node, or ``LOCAL_RANK`` beyond this node's GPUs.
    """
    from mosmoskit.device import resolve_device

    if _initialised() or not dist.is_available():
        return False
    world = _int_variable("WORLD_SIZE", default="1")
    if world <= 1:
        return False
    missing = [name for name in _LAUNCHER_VARIABLES if not os.environ.get(name)]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} is set but the launcher variables {missing} are not: start the "
                         f"processes with torchrun (python -m torch.distributed.run), which sets all of them")
    local_rank = _int_variable("LOCAL_RANK")
    # Checked before the process group exists: resolve_device validates the name and the machine.
    use_cuda = resolve_device(device).type == "cuda"
    if use_cuda:
        if device.startswith("cuda:") and _int_variable("LOCAL_WORLD_SIZE", default="1") > 1:
            raise ValueError(f"device={device!r} names one GPU but torchrun started several processes on this "
                             f"node (LOCAL_WORLD_SIZE={os.environ['LOCAL_WORLD_SIZE']}); use device 'auto' or "
                             f"'cuda': each process then takes the GPU LOCAL_RANK")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(f"LOCAL_RANK={local_rank} but this node has {count} CUDA device(s): start at most "
                             f"{count} process(es) per node (torchrun --nproc_per_node)")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return True


def cleanup() -> None:
    """Destroy the default process group if one is initialised (no-op otherwise)."""
    if _initialised():
        dist.destroy_process_group()


def _int_variable(name: str, default: str | None = None) -> int:
    text = os.environ.get(name, default)
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all processes along dim 0, keeping the autograd graph.

    ``torch.distributed.all_gather`` returns tensors with no history, so a loss computed on them
    would send no gradient to the other processes' rows. The autograd-aware gather used here sends
    gradients back in the backward pass: every process receives, for its own rows, the *sum* of
    the gradients that all processes computed for those rows.

    Args:
        tensor: (b, ...) this process's rows. Every process must pass the same shape.

    Returns:
        (world_size * b, ...) rows ordered by rank (rank r's rows are ``[r * b, (r + 1) * b)``);
        ``tensor`` itself when not distributed.

    Raises:
        ValueError: the processes passed different shapes (for example an uneven last batch: use
            ``drop_last=True`` in the distributed sampler's loader). Every process raises, none hangs.
    """
    if not is_distributed():
        return tensor
    _check_same_shape(tensor)
    # torch >= 2.8 flags this function as deprecated in favour of a private functional-collectives
    # API whose backward needs reduce_scatter, which the gloo (CPU) backend lacks. This one works on
    # gloo and NCCL across the torch versions the kit supports, so the warning is silenced here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        from torch.distributed.nn.functional import all_gather

        parts = all_gather(tensor)
    return torch.cat(parts, dim=0)


def _check_same_shape(tensor: torch.Tensor) -> None:
    """All-gather the shapes (one small collective) so that every rank raises the same error."""
    shape = torch.tensor([tensor.dim(), *tensor.shape], dtype=torch.long, device=tensor.device)
    ndims = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world_size())]
    dist.all_gather(ndims, shape[:1].contiguous())
    if len({int(n) for n in ndims}) > 1:
        raise ValueError(
            f"gather_with_grad: processes passed tensors with different numbers of dimensions "
            f"{[int(n) for n in ndims]} (by rank)"
        )
    shapes = [torch.zeros_like(shape) for _ in range(world_size())]
    dist.all_gather(shapes, shape)
    as_tuples = [tuple(int(v) for v in s[1:]) for s in shapes]
    if len(set(as_tuples)) > 1:
        raise ValueError(
            f"gather_with_grad: processes passed tensors of different shapes {as_tuples} (by rank); every "
            "process needs the same local batch (use drop_last=True for the distributed training loader)"
        )
