"""Devices, mixed precision and seeding: the parts of a run that depend on the machine.

Loops run unchanged on a laptop CPU and on a CUDA GPU. They ask this module three things:

* which device to use: :func:`resolve_device` turns ``"auto"`` into CUDA when there is one and the
  CPU otherwise (never ``cuda:0`` written into code, so a process started by ``torchrun`` uses the
  GPU it was given);
* whether to use mixed precision: :func:`resolve_amp` and :func:`autocast` switch bf16/fp16 on for
  CUDA only and give a do-nothing context on the CPU (as nanoGPT does with ``nullcontext``);
* how to make randomness repeatable: :func:`seed_everything` seeds Python, NumPy and torch;
  :func:`derive_seed` turns a tuple such as ``(seed, epoch, index)`` into an independent seed;
  :func:`get_rng_state` / :func:`set_rng_state` capture and restore every generator for exact resume;
  :func:`fork_rng` runs a block with its own seed and leaves the global generators untouched.

Example:
    >>> from mosmoskit.device import autocast, resolve_amp, resolve_device, seed_everything
    >>> seed_everything(0)
    >>> device = resolve_device("cpu")
    >>> dtype = resolve_amp("auto", device)      # mixed precision is for CUDA only
    >>> dtype is None
    True
    >>> with autocast(device, dtype):
    ...     pass
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from typing import Any, Iterator

import numpy as np
import torch

__all__ = [
    "AMP_CHOICES",
    "autocast",
    "derive_seed",
    "fork_rng",
    "get_rng_state",
    "move_to_device",
    "resolve_amp",
    "resolve_device",
    "seed_everything",
    "set_rng_state",
]

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# Seeds handed to NumPy's legacy global generator must fit in 32 bits.
_SEED_BITS = 32


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a device name into a ``torch.device``, checking that the machine has it.

    ``"auto"`` picks CUDA when available and the CPU otherwise. Apple's ``"mps"`` is used only when
    asked for by name: several 3D operations the segmenters need are missing or slow there.
    Under ``torch.distributed`` (a process started by ``torchrun``, after
    :func:`mosmoskit.distributed.init_from_env` pinned it to its GPU), ``"auto"`` and ``"cuda"`` pick the
    GPU named by the ``LOCAL_RANK`` environment variable, so each process gets its own GPU.

    Args:
        spec: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    Returns:
        The device.

    Raises:
        ValueError: an unknown name, or a device this machine does not have (the message says
            which devices it has).
    """
    if not isinstance(spec, str) or not _DEVICE_PATTERN.match(spec):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {spec!r}")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise ValueError("device 'mps' was asked for but this machine has no usable MPS backend; use 'auto' or 'cpu'")
        return torch.device("mps")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(f"device {spec!r} was asked for but CUDA is not available here; use 'auto' or 'cpu'")
    if spec == "cuda":
        index = int(os.environ.get("LOCAL_RANK", "0")) if _distributed_initialised() else torch.cuda.current_device()
    else:
        index = int(spec.split(":")[1])
    if index >= count:
        raise ValueError(f"device {spec!r} (index {index}) was asked for but this machine has {count} CUDA device(s)")
    return torch.device("cuda", index)


def resolve_amp(amp: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (``None`` means full precision).

    ``"auto"`` is bf16 on CUDA GPUs that support it (no loss scaling needed), fp16 on older CUDA
    GPUs, and off on every other device: CPU autocast is slow for convolutions and changes results.

    Args:
        amp: ``"auto"``, ``"bf16"``, ``"fp16"`` or ``"off"``.
        device: where the model runs.

    Returns:
        ``torch.bfloat16``, ``torch.float16`` or ``None``.

    Raises:
        ValueError: an unknown ``amp``, or ``"bf16"``/``"fp16"`` asked for on a non-CUDA device.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {list(AMP_CHOICES)}, got {amp!r}")
    device = torch.device(device)
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp == "auto":
            return None
        raise ValueError(f"amp={amp!r} needs a CUDA device but the run uses {device}; use amp='auto' or 'off'")
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """A mixed-precision context for CUDA, a do-nothing context everywhere else.

    Args:
        device: where the model runs.
        dtype: from :func:`resolve_amp`; ``None`` turns autocast off.

    Returns:
        ``torch.autocast("cuda", dtype)`` or ``contextlib.nullcontext()``.
    """
    device = torch.device(device)
    if dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def move_to_device(batch: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """Move every tensor inside ``batch`` to ``device``; everything else is returned unchanged.

    Dicts, lists, tuples and named tuples are walked recursively (their type is kept), so a batch
    such as ``{"image": (B, C, H, W) tensor, "report": list[str], "case_id": list[str]}`` keeps its
    texts and ids while its tensors move.

    Args:
        batch: a tensor or a nested container of tensors and other values.
        device: the target device.
        non_blocking: passed to ``Tensor.to`` (useful with pinned memory on CUDA).

    Returns:
        The same structure with tensors on ``device``.
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return type(batch)((k, move_to_device(v, device, non_blocking)) for k, v in batch.items())
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a named tuple
        return type(batch)(*(move_to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    return batch


# ---------------------------------------------------------------------------------------- seeding
def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device).

    Args:
        seed: a non-negative integer.

    Raises:
        ValueError: ``seed`` is negative or not an integer.
    """
    _check_seed(seed, "seed")
    random.seed(seed)
    np.random.seed(seed % 2**_SEED_BITS)
    torch.manual_seed(seed)  # also seeds every CUDA device


def derive_seed(*parts: int) -> int:
    """A seed that is a deterministic, well-mixed function of several integers.

    ``derive_seed(seed, epoch, index)`` gives each sample of each epoch its own seed: neighbouring
    indices or epochs do not get correlated streams (NumPy's ``SeedSequence`` hashes the parts),
    and the result does not depend on the process, the worker or the platform.

    Args:
        parts: non-negative integers (for example the run seed, the epoch and the sample index).

    Returns:
        An integer in ``[0, 2**32)``, usable by ``random.seed``, ``np.random.seed`` and
        ``torch.manual_seed``.

    Raises:
        ValueError: no parts, or a part that is negative or not an integer.
    """
    if not parts:
        raise ValueError("derive_seed needs at least one integer")
    for i, part in enumerate(parts):
        _check_seed(part, f"derive_seed part {i}")
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint32)[0])


@contextlib.contextmanager
def fork_rng(seed: int | None = None) -> Iterator[None]:
    """Run a block with the global generators seeded to ``seed``, then put them back as they were.

    Used around per-sample data augmentation: the sample's randomness becomes a function of its
    seed, and the training process's own random stream (dropout, shuffling) is not consumed, so an
    interrupted and resumed run sees the same numbers as an uninterrupted one. CUDA generators are
    not touched (data pipelines run on the CPU).

    Args:
        seed: seeds Python, NumPy and torch inside the block; ``None`` only saves and restores.
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    try:
        if seed is not None:
            _check_seed(seed, "seed")
            random.seed(seed)
            np.random.seed(seed % 2**_SEED_BITS)
            torch.random.default_generator.manual_seed(seed)
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def get_rng_state() -> dict[str, Any]:
    """Capture Python, NumPy, torch CPU and (when present) CUDA generator states.

    Returns:
        A dict of tensors and plain Python values only, so that it can be stored in a checkpoint
        read with ``torch.load(weights_only=True)``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generator states captured by :func:`get_rng_state`.

    CUDA states are restored when this machine has as many CUDA devices as the saving one; a
    checkpoint written on a GPU machine can thus be resumed on the CPU (exactness then cannot hold).

    Raises:
        ValueError: ``state`` lacks one of the ``python``, ``numpy`` or ``torch`` entries.
    """
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:
        raise ValueError(f"RNG state lacks {missing}; it was not written by get_rng_state()")
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    keys = np_state["keys"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state(
        (np_state["bit_generator"], keys.astype(np.uint32), np_state["pos"], np_state["has_gauss"],
         np_state["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def _check_seed(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _distributed_initialised() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()
