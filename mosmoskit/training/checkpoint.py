"""Checkpoints: one self-describing file per saved state, written atomically, read without pickle.

A mosmoskit checkpoint is a single ``torch.save`` file holding a dict::

    {
        "format": "mosmoskit-checkpoint", "format_version": 2,
        "kind": "pretrain" | "finetune" | ...,
        "kit_version": "0.1.0", "torch_version": "2.x", "created": "2025-01-01T12:00:00+00:00",
        "config": {...},        # the resolved run config: enough to rebuild the model
        "label_map": {...},     # LabelMap.to_dict() or None: the organ names behind every output channel
        "state": {...},         # state dicts: "model", "optimizer", "scheduler", "scaler", "trainer", "rng"
        "extra": {...},         # anything else the writer wants to keep (plain types)
        "checksum": "sha256:...",  # SHA-256 of everything above (see below)
    }

Everything in it is a tensor or a plain Python value (dict, list, tuple, str, int, float, bool,
None), which :func:`save_checkpoint` checks before writing. That is what lets
:func:`load_checkpoint` use ``torch.load(weights_only=True)``: a file that would need arbitrary
Python objects to be rebuilt (and could run code while doing so) is refused, never unpickled.

**Integrity.** The ``checksum`` is the SHA-256 of a canonical encoding of every other entry (its
type, every dict key, every plain value, and for each tensor its dtype, shape and raw bytes; see
:func:`payload_digest`). It is embedded rather than kept in a sidecar file so that a checkpoint is
always one file that is written, renamed, linked and copied in one piece. :func:`load_checkpoint`
reads the file on the CPU, recomputes the digest and compares it *before it returns anything*, so a
truncated file, a foreign file, a bit flip in a weight (which ``torch.load`` itself does not notice)
or a hand-edited file never reaches a model; the error names the path and what is wrong. Format
version 1 (development versions, without a checksum) is refused.

Files are written through :func:`mosmoskit.io.atomic_path` (temporary file, fsync, rename), so a
run killed while saving leaves the previous checkpoint intact; the dot-named temporary file it may
leave is never mistaken for a checkpoint and :func:`remove_stale_temporaries` clears it. Training loops name them
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

import hashlib
import os
import pickle
import re
import shutil
import struct
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
    "payload_digest",
    "prune_checkpoints",
    "remove_stale_temporaries",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "mosmoskit-checkpoint"
CHECKPOINT_FORMAT_VERSION = 2
# Version 2 introduced the embedded checksum; older files cannot be verified and are refused.
_FIRST_CHECKSUMMED_VERSION = 2
CHECKSUM_KEY = "checksum"
_CHECKSUM = re.compile(r"^sha256:[0-9a-f]{64}$")
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
    payload[CHECKSUM_KEY] = payload_digest(payload)
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
        if value.layout != torch.strided or value.is_quantized:
            raise TypeError(f"{where} is a {value.layout} tensor{' (quantized)' if value.is_quantized else ''}; "
                            f"checkpoints hold dense tensors (value.to_dense() / value.dequantize())")
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


# ------------------------------------------------------------------------------------ checksum
def payload_digest(payload: Mapping[str, Any]) -> str:
    """The checksum of a checkpoint payload: ``"sha256:<64 hex digits>"``.

    The SHA-256 runs over a canonical encoding of every entry except ``checksum`` itself: each value
    is written as a type tag, a length and its content (dict keys in sorted order, lists and tuples
    alike, floats as IEEE-754 doubles, strings as UTF-8, each tensor as its dtype, shape and raw
    bytes in the machine's byte order). The encoding, not the ``torch.save`` bytes, is hashed because
    the bytes of a zip archive are not a function of its content alone (``torch.save`` writes a
    random serialisation id), while the decoded content is what reaches a model.

    Args:
        payload: the checkpoint dict (tensors on any device; non-CPU tensors are copied to the CPU).

    Returns:
        ``"sha256:"`` followed by the hex digest.

    Raises:
        TypeError: a value that is not a tensor or plain Python value (see :func:`save_checkpoint`).
    """
    digest = hashlib.sha256()
    body = {k: v for k, v in payload.items() if k != CHECKSUM_KEY}
    _hash_value(digest, body, "payload")
    return f"sha256:{digest.hexdigest()}"


def _hash_value(digest: Any, value: Any, where: str) -> None:
    """Feed ``value``'s canonical encoding into ``digest`` (tag byte, 8-byte length, content)."""

    def put(tag: bytes, content: bytes = b"") -> None:
        digest.update(tag + len(content).to_bytes(8, "little") + content)

    # bool before int (bool is an int); tensor before the containers (torch.Size is a tuple).
    if value is None:
        put(b"N")
    elif isinstance(value, bool):
        put(b"B", b"\x01" if value else b"\x00")
    elif isinstance(value, int):
        put(b"I", str(int(value)).encode("ascii"))
    elif isinstance(value, float):
        put(b"F", struct.pack("<d", value))
    elif isinstance(value, str):
        put(b"S", value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, bytes):
        put(b"Y", value)
    elif isinstance(value, torch.dtype):
        put(b"D", str(value).encode("ascii"))
    elif isinstance(value, torch.device):
        put(b"V", str(value).encode("ascii"))
    elif isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.is_quantized:
            raise TypeError(f"{where} is a {value.layout} tensor; checkpoints hold dense tensors")
        tensor = value.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        # resolve_conj/neg: lazily conjugated or negated views must hash as the values they stand for.
        flat = tensor.resolve_conj().resolve_neg().contiguous().reshape(-1)
        put(b"T", f"{tensor.dtype}{tuple(tensor.shape)}".encode("ascii"))
        raw = flat if flat.dtype == torch.uint8 else flat.view(torch.uint8)
        put(b"R")  # the raw bytes follow, without a copy: hashlib reads the tensor's memory directly
        digest.update(raw.numel().to_bytes(8, "little"))
        if raw.numel():
            digest.update(memoryview(raw.numpy()))
    elif isinstance(value, torch.Size):
        put(b"Z", b"".join(int(n).to_bytes(8, "little") for n in value))
    elif isinstance(value, (list, tuple)):
        put(b"L", len(value).to_bytes(8, "little"))
        for i, item in enumerate(value):
            _hash_value(digest, item, f"{where}[{i}]")
    elif isinstance(value, Mapping):
        put(b"M", len(value).to_bytes(8, "little"))
        # Sorted by (key type, key text): the digest does not depend on insertion order.
        for key in sorted(value, key=lambda k: (type(k).__name__, str(k))):
            _hash_value(digest, key, f"{where} key")
            _hash_value(digest, value[key], f"{where}[{key!r}]")
    else:
        raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which a checkpoint "
                        f"cannot hold")


# ------------------------------------------------------------------------------------ reading
def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`, refusing anything else.

    The file is read on the CPU with ``torch.load(weights_only=True)`` and checked in this order:
    readable archive, mosmoskit format, supported format version, checksum, required entries. Only
    then are tensors moved to ``map_location`` and the dict returned: nothing from a damaged or
    foreign file can reach a model.

    Args:
        path: the checkpoint file.
        map_location: the device tensors go to (``"cpu"``, ``"cuda"``, a ``torch.device``; ``None``
            is the CPU). Verification always happens on the CPU copy.
        mmap: map tensor storage from the file instead of reading it into memory (the tensors are
            read-only views of the file; verification still reads every byte once).

    Returns:
        The checkpoint dict (see the module docstring for its keys), ``checksum`` included.

    Raises:
        FileNotFoundError: ``path`` does not exist or is a folder.
        ValueError: ``map_location`` is not a device.
        CheckpointError: a truncated or corrupt file, a file that needs arbitrary Python objects to
            load (refused: ``weights_only=True``), a PyTorch file that is not a mosmoskit checkpoint,
            a checkpoint of an unsupported format version (newer, or version 1 without a checksum),
            or a checksum mismatch (the file is corrupt or was modified).
    """
    path = Path(path)
    try:
        device = torch.device("cpu" if map_location is None else map_location)
    except (TypeError, RuntimeError) as err:
        raise ValueError(f"map_location must be a device such as 'cpu' or 'cuda', got {map_location!r}") from err
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is a folder; give a file (latest_checkpoint(folder) finds one)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
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
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"checkpoint {path} has an invalid format_version {version!r}")
    if version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, written by mosmoskit "
            f"{payload.get('kit_version', '?')}; this mosmoskit {mosmoskit.__version__} reads up to version "
            f"{CHECKPOINT_FORMAT_VERSION}: upgrade mosmoskit to read it"
        )
    if version < _FIRST_CHECKSUMMED_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, written by a development version of mosmoskit "
            f"before checkpoints carried a checksum, so its integrity cannot be verified; train it again (or "
            f"re-save it with save_checkpoint after checking it yourself)"
        )
    _verify_checksum(path, payload)
    missing = [k for k in ("kind", "config", "state") if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the entries {missing}; the file is damaged")
    if device.type != "cpu":
        payload = _to_device(payload, device)
    return dict(payload)


def _verify_checksum(path: Path, payload: Mapping[str, Any]) -> None:
    """Raise ``CheckpointError`` unless ``payload``'s embedded checksum matches its content."""
    stored = payload.get(CHECKSUM_KEY)
    if not isinstance(stored, str) or not _CHECKSUM.match(stored):
        raise CheckpointError(
            f"checkpoint {path} has no valid checksum entry ({CHECKSUM_KEY!r} = {str(stored)[:80]!r}); the file "
            f"is damaged or was not written by save_checkpoint"
        )
    try:
        actual = payload_digest(payload)
    except TypeError as err:
        raise CheckpointError(f"checkpoint {path} holds a value a checkpoint cannot hold: {err}") from err
    if actual != stored:
        raise CheckpointError(
            f"checkpoint {path}: checksum mismatch (the file is corrupt or was modified): it records "
            f"{stored[:19]}... but its content hashes to {actual[:19]}..."
        )


def _to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor moved to ``device`` (containers rebuilt with the same types)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return type(value)((k, _to_device(v, device)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        return type(value)(_to_device(v, device) for v in value)
    return value


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
        ``state['model']``, 0 if absent), ``extra`` and ``checksum`` (verified).

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
        "checksum": payload[CHECKSUM_KEY],
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


def remove_stale_temporaries(folder: str | Path, names: tuple[str, ...] = ()) -> list[Path]:
    """Delete temporary files left by writes that were killed half-way; returns the deleted paths.

    :func:`mosmoskit.io.atomic_path` writes ``name`` through a temporary ``.name.<random>.tmp<suffix>``
    in the same folder; a process killed before the rename leaves it behind. Only temporaries of
    checkpoints (step-named and ``last.pt``) and of the extra ``names`` (e.g. ``"history.jsonl"``) are
    touched, so nothing else in the folder is at risk. Call it only when no other process writes
    into ``folder`` (the Trainer holds the run-folder lock when it does).

    Raises:
        FileNotFoundError: ``folder`` does not exist or is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {folder} does not exist or is not a folder")
    targets = "|".join([r"checkpoint_step\d+\.pt", re.escape(LAST_NAME), *map(re.escape, names)])
    pattern = re.compile(rf"^\.({targets})\.[^./]+\.tmp")
    removed = []
    for entry in folder.iterdir():
        if pattern.match(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return sorted(removed)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
