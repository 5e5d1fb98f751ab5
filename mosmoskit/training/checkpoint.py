"""Checkpoints: one self-describing file per saved state, written atomically, read without pickle.

A mosmoskit checkpoint is a single ``torch.save`` file holding a dict::

    {
        "format": "mosmoskit-checkpoint", "format_version": 1,
        "kind": "pretrain" | "finetune" | ...,
        "kit_version": "0.1.0", "torch_version": "2.x", "created": "2025-01-01T12:00:00+00:00",
        "config": {...},        # the resolved run config: enough to rebuild the model
        "label_map": {...},     # LabelMap.to_dict() or None: the organ names behind every output channel
        "state": {...},         # state dicts: "model", "optimizer", "scheduler", "scaler", "trainer", "rng"
        "extra": {...},         # anything else the writer wants to keep (plain types)
    }

Everything in it is a tensor or a plain Python value (dict, list, tuple, str, int, float, bool,
None), which :func:`save_checkpoint` checks before writing. That is what lets
:func:`load_checkpoint` use ``torch.load(weights_only=True)``: a file that would need arbitrary
Python objects to be rebuilt (and could run code while doing so) is refused, never unpickled.

Files are written through :func:`mosmoskit.io.atomic_path` (temporary file, fsync, rename), so a
run killed while saving leaves the previous checkpoint intact. Training loops name them
``checkpoint_step000100.pt`` (the optimiser step in the name) and keep ``last.pt`` pointing at the
newest; :func:`latest_checkpoint` finds it and :func:`prune_checkpoints` keeps the newest few.

Example (``model`` is any ``nn.Module``)::

    path = save_checkpoint("runs/demo/last.pt", state={"model": model.state_dict()},
                           config={"lr": 1e-3}, label_map=None, kind="pretrain")
    ckpt = load_checkpoint(path)
    model.load_state_dict(ckpt["state"]["model"])
    describe_checkpoint(path)["kind"]    # 'pretrain'
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import zipfile
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import torch

import mosmoskit
from mosmoskit.io import atomic_path

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointError",
    "check_kind",
    "checkpoint_name",
    "checkpoint_step",
    "describe_checkpoint",
    "latest_checkpoint",
    "link_last",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "mosmoskit-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
LAST_NAME = "last.pt"
_STEP_NAME = re.compile(r"^checkpoint_step(\d+)\.pt$")
_STEP_DIGITS = 6
_KIND = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# Types torch.load(weights_only=True) rebuilds without running code; containers are walked.
_PLAIN = (str, int, float, bool, bytes, type(None), torch.dtype, torch.device, torch.Size)


class CheckpointError(ValueError):
    """A file that cannot be used as a mosmoskit checkpoint; the message names the file and why."""


# ------------------------------------------------------------------------------------ writing
def save_checkpoint(
    path: str | Path,
    *,
    state: Mapping[str, Any],
    config: Mapping[str, Any],
    label_map: Any = None,
    kind: str,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: the file to write (its folder is created).
        state: state dicts by name (``"model"``, ``"optimizer"``, ...): tensors and plain values.
        config: the resolved run config as a plain dict (``mosmoskit.config.config_to_dict``).
        label_map: a ``LabelMap``, its ``to_dict()``, or ``None`` when the run has no label map.
        kind: what produced it, e.g. ``"pretrain"`` or ``"finetune"``.
        extra: other plain values to keep (metrics, notes).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: an empty or malformed ``kind``.
        TypeError: a value that is not a tensor or plain Python type; the message gives its
            location (e.g. ``state['extra']['fn']``) so it can be converted before saving.
    """
    check_kind(kind)
    if label_map is not None and hasattr(label_map, "to_dict"):
        label_map = label_map.to_dict()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "kind": kind,
        "kit_version": mosmoskit.__version__,
        "torch_version": str(torch.__version__),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": dict(config),
        "label_map": None if label_map is None else dict(label_map),
        "state": dict(state),
        "extra": dict(extra or {}),
    }
    for key in ("config", "label_map", "state", "extra"):
        _check_plain(payload[key], key)
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def check_kind(kind: Any) -> None:
    """Raise ``ValueError`` unless ``kind`` is a short name such as ``"pretrain"`` (letters, digits, ``_``, ``-``)."""
    if not isinstance(kind, str) or not _KIND.match(kind):
        raise ValueError(f"checkpoint kind must be a short name such as 'pretrain' or 'finetune', got {kind!r}")


def _check_plain(value: Any, where: str) -> None:
    """Raise ``TypeError`` at the first value ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(value, torch.Tensor):
        if type(value) is not torch.Tensor and not isinstance(value, torch.nn.Parameter):
            raise TypeError(f"{where} is a {type(value).__name__} (a tensor subclass); store a plain tensor "
                            f"(value.detach().clone().as_subclass(torch.Tensor))")
        return
    if type(value) in (dict, OrderedDict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where} has a key {k!r} of type {type(k).__name__}; keys must be str or int")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if type(value) in _PLAIN or isinstance(value, (torch.dtype, torch.device, torch.Size)):
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}; checkpoints hold only tensors and "
        f"plain Python values (dict, list, tuple, str, int, float, bool, None) so that they load with "
        f"torch.load(weights_only=True): convert it first (float(x), str(path), x.tolist(), torch.as_tensor(a))"
    )


# ------------------------------------------------------------------------------------ reading
def load_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, refusing anything else.

    Args:
        path: the checkpoint file.
        map_location: where tensors go (``"cpu"``, a ``torch.device``...), as for ``torch.load``.
        mmap: map tensor storage from the file instead of reading it (cheap inspection of large
            files; the tensors are read-only views of the file).

    Returns:
        The checkpoint dict (see the module docstring for its keys).

    Raises:
        FileNotFoundError: ``path`` does not exist or is a folder.
        CheckpointError: a truncated or corrupt file, a file that needs arbitrary Python objects to
            load (refused: ``weights_only=True``), a PyTorch file that is not a mosmoskit checkpoint,
            or a checkpoint written by a newer mosmoskit (newer format version).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is a folder; give a file (latest_checkpoint(folder) finds one)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path} was refused: it is not a valid PyTorch file, or it holds Python objects other "
            f"than tensors and plain values, which are never unpickled because loading them could run code "
            f"({_unpickling_reason(err)})"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        size = path.stat().st_size
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is truncated or corrupt and cannot be read: {reason}"
        ) from err
    if not isinstance(payload, Mapping) or payload.get("format") != CHECKPOINT_FORMAT:
        if isinstance(payload, Mapping):
            what = f"a dict with keys {sorted(map(str, payload))[:8]}"
        else:
            what = type(payload).__name__
        raise CheckpointError(
            f"{path} is a PyTorch file but not a mosmoskit checkpoint (it holds {what}, without "
            f"'format': {CHECKPOINT_FORMAT!r})"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"checkpoint {path} has an invalid format_version {version!r}")
    if version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, written by mosmoskit "
            f"{payload.get('kit_version', '?')}; this mosmoskit {mosmoskit.__version__} reads up to version "
            f"{CHECKPOINT_FORMAT_VERSION}: upgrade mosmoskit to read it"
        )
    missing = [k for k in ("kind", "config", "state") if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the entries {missing}; the file is damaged")
    return dict(payload)


def _unpickling_reason(err: Exception) -> str:
    """The specific line of torch's weights-only message (its advice to disable the check is dropped)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for line in lines:
        if line.startswith(("Unsupported", "Trying to load", "Unsupported global", "unsupported")):
            return line
    return lines[-1] if lines else type(err).__name__


def checkpoint_step(path: str | Path) -> int | None:
    """The optimiser step a checkpoint was saved at, or ``None`` when it does not record one.

    Reads the step from the name (``checkpoint_step000100.pt``) when it has one, otherwise from the
    file's ``state['trainer']['step']`` (memory-mapped: cheap even for large files).
    """
    path = Path(path)
    match = _STEP_NAME.match(path.name)
    if match:
        return int(match.group(1))
    payload = load_checkpoint(path, mmap=True)
    trainer = payload["state"].get("trainer") if isinstance(payload["state"], Mapping) else None
    step = trainer.get("step") if isinstance(trainer, Mapping) else None
    return int(step) if isinstance(step, int) else None


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """What a checkpoint holds, from its path alone (for notebooks, the CLI and reports).

    Returns:
        A dict with ``path``, ``size_bytes``, ``kind``, ``format_version``, ``kit_version``,
        ``torch_version``, ``created``, ``step`` (or ``None``), ``config``, ``label_map``,
        ``state_keys`` (the names in ``state``), ``num_parameters`` (elements in
        ``state['model']``, 0 if absent) and ``extra``.

    Raises:
        FileNotFoundError, CheckpointError: as :func:`load_checkpoint`.
    """
    path = Path(path)
    payload = load_checkpoint(path, mmap=True)
    state = payload["state"]
    model_state = state.get("model", {}) if isinstance(state, Mapping) else {}
    trainer = state.get("trainer", {}) if isinstance(state, Mapping) else {}
    num_parameters = sum(v.numel() for v in model_state.values() if isinstance(v, torch.Tensor))
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "kind": payload["kind"],
        "format_version": payload["format_version"],
        "kit_version": payload.get("kit_version"),
        "torch_version": payload.get("torch_version"),
        "created": payload.get("created"),
        "step": trainer.get("step") if isinstance(trainer, Mapping) else None,
        "config": payload["config"],
        "label_map": payload.get("label_map"),
        "state_keys": sorted(state) if isinstance(state, Mapping) else [],
        "num_parameters": int(num_parameters),
        "extra": payload.get("extra", {}),
    }


# ------------------------------------------------------------------------------- run folders
def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint saved after optimiser step ``step``."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative integer, got {step!r}")
    return f"checkpoint_step{step:0{_STEP_DIGITS}d}.pt"


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the step-named checkpoints in ``folder``, oldest first.

    Only complete files are listed: a write in progress (or killed) has a temporary name.

    Raises:
        FileNotFoundError: ``folder`` does not exist or is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist or is not a folder")
    found = []
    for entry in folder.iterdir():
        match = _STEP_NAME.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint in ``folder``, or ``None`` when it holds none.

    The newest is the step-named file with the highest step; ``last.pt`` is returned instead when
    there is no step-named file, or when it records a later step than all of them (a folder written
    by a loop that keeps only ``last.pt`` at the end).

    Raises:
        FileNotFoundError: ``folder`` does not exist.
    """
    folder = Path(folder)
    stepped = list_checkpoints(folder)
    last = folder / LAST_NAME
    newest = stepped[-1] if stepped else None
    if not last.is_file():
        return newest[1] if newest else None
    if newest is None:
        return last
    if _same_file(last, newest[1]):
        return newest[1]
    last_step = checkpoint_step(last)
    return last if last_step is not None and last_step > newest[0] else newest[1]


def link_last(path: str | Path) -> Path:
    """Make ``last.pt`` next to ``path`` refer to the same content, atomically.

    A hard link costs no disk space and survives pruning of ``path``; on file systems without hard
    links the file is copied. Returns the ``last.pt`` path.
    """
    path = Path(path)
    last = path.parent / LAST_NAME
    with atomic_path(last) as tmp:
        tmp.unlink()
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)
    return last


def prune_checkpoints(folder: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest step-named checkpoints; returns the deleted paths.

    ``last.pt`` is never deleted. Raises ``ValueError`` when ``keep_last`` < 1.
    """
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"keep_last must be an integer >= 1, got {keep_last!r}")
    stepped = list_checkpoints(folder)
    removed = []
    for _, path in stepped[:-keep_last]:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
