"""Small helpers around ``torch.distributed`` that also work when it is not in use.

Training scales to several GPUs and nodes through an existing engine (``torchrun`` or ``accelerate``
start the processes and initialise the process group); the kit never starts processes itself. Code
that has to know about the other processes (the contrastive loss gathers embeddings, loops log and
save on one process only) asks these helpers, which answer as a single process (world size 1,
rank 0) when ``torch.distributed`` is unavailable or not initialised.

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

import warnings

import torch
import torch.distributed as dist

__all__ = ["gather_with_grad", "is_distributed", "is_main_process", "rank", "world_size"]


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
