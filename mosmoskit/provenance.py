"""Run records: what a run folder needs to say so that its numbers can be traced and repeated.

Every run folder gets a ``run_record.json`` (written atomically by :func:`write_run_record`; the
:class:`~mosmoskit.training.Trainer` writes it at the start of every session) holding:

* the environment: mosmoskit's version (and the git commit of a source checkout), Python, the
  platform, the versions of the main dependencies (torch, MONAI, transformers, NumPy, nibabel, ...),
  torch's CUDA/cuDNN builds and CPU thread count, and the device the run used;
* the run's config, as a plain dict, and its SHA-256;
* the data list: every file with its size, modification time and SHA-256, and one digest of the
  whole list (files given as folders are expanded, e.g. a DICOM series);
* ``sessions``: one short entry per start or resume (time, versions, device, config and data
  digests), so that a run resumed on another machine or with other data says so.

Hashing is streamed (constant memory) and cached by ``(path, device, inode, size, mtime)``, in the
process and through the previous record in the same folder, so re-writing a record after a resume
does not read the data again. A cache entry is trusted only if the file's modification time is
older than the moment it was hashed by more than the file system's timestamp resolution (the
"racy timestamp" rule git uses): a file rewritten within the same clock tick, with the same size,
is hashed again rather than taken from the cache.

Example:
    >>> import hashlib, pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as run:
    ...     data = pathlib.Path(run, "case1.txt"); _ = data.write_bytes(b"hello")
    ...     path = write_run_record(run, {"lr": 0.1}, [data])
    ...     record = read_run_record(run)
    >>> record["data"]["files"][0]["sha256"] == hashlib.sha256(b"hello").hexdigest()
    True
    >>> record["config"], record["versions"]["torch"] is not None
    ({'lr': 0.1}, True)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import mosmoskit
from mosmoskit.io import atomic_write_text

__all__ = [
    "MAIN_DEPENDENCIES",
    "RUN_RECORD_NAME",
    "compare_run_records",
    "environment_info",
    "file_sha256",
    "hash_files",
    "read_run_record",
    "write_run_record",
]

RUN_RECORD_NAME = "run_record.json"
RUN_RECORD_FORMAT = "mosmoskit-run-record"
RUN_RECORD_VERSION = 1
# Distribution names whose versions change results; their versions go into every record.
MAIN_DEPENDENCIES = ("torch", "monai", "transformers", "numpy", "nibabel", "scipy", "pydicom", "safetensors")
# Read size for streamed hashing: large enough for full disk throughput, small enough for any memory.
HASH_CHUNK_BYTES = 1 << 20
# Coarsest file modification-time resolution in common use (FAT: 2 s); see the module docstring.
RACY_WINDOW_NS = 2_000_000_000

# (absolute path, st_dev, st_ino, st_size, st_mtime_ns) -> (sha256 hex, time the hashing started in ns)
_HASH_CACHE: dict[tuple[str, int, int, int, int], tuple[str, int]] = {}


# ---------------------------------------------------------------------------------------- hashing
def file_sha256(path: str | Path, chunk_size: int = HASH_CHUNK_BYTES) -> str:
    """The SHA-256 of a file's bytes, read in chunks (hex digest, as ``sha256sum`` prints it).

    Args:
        path: a regular file.
        chunk_size: bytes read at a time.

    Returns:
        64 lowercase hex digits.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a folder, or ``chunk_size`` < 1.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; hash_files expands folders into their files")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(paths: Iterable[str | Path], *, known: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Describe data files with their SHA-256, hashing only what is not known already.

    Args:
        paths: files, or folders (expanded into the regular files below them, in sorted order).
            The order is kept and a file listed twice appears twice (it is hashed once).
        known: entries of an earlier call (e.g. the ``data.files`` of a previous run record) that
            may be reused when path, device, inode, size and modification time all still match and
            the entry is not racy (see the module docstring).

    Returns:
        One dict per file: ``path`` (absolute, symlinks not resolved), ``size``, ``mtime_ns``,
        ``sha256`` and ``hashed_ns`` (when its hashing started).

    Raises:
        FileNotFoundError: a path that does not exist (the message names it).
        ValueError: ``paths`` is a single string or path instead of a list of them.
    """
    if isinstance(paths, (str, Path)):
        raise ValueError(f"paths must be a list of files, got the single path {str(paths)!r}; wrap it in a list")
    reusable = {}
    for entry in known:
        key = entry.get("cache_key")
        if isinstance(key, list) and len(key) == 5 and isinstance(entry.get("sha256"), str):
            reusable[tuple(key)] = (entry["sha256"], int(entry.get("hashed_ns", 0)))
    out = []
    for file in _expand(paths):
        stat = file.stat()
        key = (str(file), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        cached = _HASH_CACHE.get(key) or reusable.get(key)
        if cached is not None and cached[1] - stat.st_mtime_ns > RACY_WINDOW_NS:
            sha, hashed_ns = cached
        else:
            hashed_ns = time.time_ns()  # taken before reading: a write during hashing makes it racy
            sha = file_sha256(file)
        _HASH_CACHE[key] = (sha, hashed_ns)
        out.append({"path": str(file), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha,
                    "hashed_ns": hashed_ns, "cache_key": list(key)})
    return out


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    files = []
    for given in paths:
        path = Path(os.path.abspath(os.fspath(given)))
        if not path.exists():
            raise FileNotFoundError(f"data file {given} does not exist")
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file())
            if not inside:
                raise FileNotFoundError(f"data folder {given} holds no files")
            files.extend(inside)
        else:
            files.append(path)
    return files


def _digest_of(value: Any) -> str:
    """SHA-256 of a JSON value in canonical form (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------ environment
def environment_info(device: Any = None) -> dict[str, Any]:
    """The software and hardware a run uses.

    Args:
        device: the run's device (``torch.device`` or a name such as ``"cpu"``/``"cuda:0"``);
            ``None`` describes what ``"auto"`` would pick.

    Returns:
        ``kit_version``, ``kit_git_head`` (commit of a source checkout, else ``None``), ``python``,
        ``platform``, ``versions`` (distribution -> version or ``None`` when not installed),
        ``torch_build`` (``cuda``, ``cudnn``, ``threads``) and ``device`` (``type``, ``name``).
    """
    import torch

    versions = {}
    for name in MAIN_DEPENDENCIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["torch"] = str(torch.__version__)  # the imported one, whatever the metadata says
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "kit_version": mosmoskit.__version__,
        "kit_git_head": _git_head(Path(mosmoskit.__file__).resolve().parents[1]),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "byteorder": sys.byteorder,
        "versions": versions,
        "torch_build": {"cuda": torch.version.cuda, "cudnn": cudnn, "threads": torch.get_num_threads()},
        "device": {"type": device.type, "name": name},
    }


def _git_head(root: Path) -> str | None:
    """The commit checked out in ``root`` (read from ``.git`` without running git), or ``None``."""
    git = root / ".git"
    try:
        if git.is_file():  # a worktree: ".git" names the real git folder
            git = (root / git.read_text(encoding="utf-8").split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref: "):
            return head or None
        ref = head[5:]
        loose = git / ref
        if loose.is_file():
            return loose.read_text(encoding="utf-8").strip() or None
        packed = git / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref:
                    return parts[0]
    except (OSError, IndexError, UnicodeDecodeError):
        pass
    return None


# ------------------------------------------------------------------------------------ run records
def write_run_record(run_dir: str | Path, config: Mapping[str, Any], data_files: Sequence[str | Path] | None = None,
                     *, device: Any = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write (or update) ``run_dir/run_record.json`` atomically.

    A record already in ``run_dir`` keeps its ``created`` time and its ``sessions``, to which this
    call appends one; everything else describes this call. Hashes of unchanged files are taken from
    it instead of being computed again.

    Args:
        run_dir: the run folder (created if needed).
        config: the run's resolved config as a JSON-able dict (``config_to_dict(cfg)``).
        data_files: the files the run reads (images, labels, report lists; folders are expanded),
            or ``None`` when the caller does not list them (recorded as ``null``, unlike ``[]``).
        device: the run's device (see :func:`environment_info`).
        extra: other JSON-able facts about this session (e.g. ``{"kind": "pretrain", "step": 0}``).

    Returns:
        The path of the record.

    Raises:
        ValueError: ``config`` or ``extra`` is not a dict of JSON values (the message names the
            problem), or an existing record that cannot be read (it is not overwritten).
        FileNotFoundError: a data file that does not exist.
    """
    run_dir = Path(run_dir)
    config = _json_dict(config, "config")
    extra = _json_dict(extra or {}, "extra")
    path = run_dir / RUN_RECORD_NAME
    previous = read_run_record(path) if path.exists() else None
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    data = None
    if data_files is not None:
        known = ((previous or {}).get("data") or {}).get("files", [])
        files = hash_files(data_files, known=known)
        data = {
            "count": len(files),
            "total_bytes": sum(f["size"] for f in files),
            "sha256": _digest_of([[f["path"], f["sha256"]] for f in files]),
            "files": files,
        }
    env = environment_info(device)
    session = {
        "time": now,
        "kit_version": env["kit_version"],
        "kit_git_head": env["kit_git_head"],
        "python": env["python"],
        "versions": env["versions"],
        "device": env["device"],
        "config_sha256": _digest_of(config),
        "data_sha256": None if data is None else data["sha256"],
        "extra": extra,
    }
    record = {
        "format": RUN_RECORD_FORMAT,
        "format_version": RUN_RECORD_VERSION,
        "created": (previous or {}).get("created", now),
        "updated": now,
        **env,
        "config": config,
        "config_sha256": session["config_sha256"],
        "data": data,
        "extra": extra,
        "sessions": [*((previous or {}).get("sessions") or []), session],
    }
    atomic_write_text(path, json.dumps(record, indent=1, allow_nan=False) + "\n")
    return path


def read_run_record(path: str | Path) -> dict[str, Any]:
    """Read a run record (give the file or its run folder).

    Raises:
        FileNotFoundError: no record there.
        ValueError: the file is not valid JSON or not a mosmoskit run record (the message names it).
    """
    path = Path(path)
    if path.is_dir():
        path = path / RUN_RECORD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"run record {path} does not exist")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"run record {path} is not valid JSON ({err}); move it away to start a new record") from err
    if not isinstance(record, dict) or record.get("format") != RUN_RECORD_FORMAT:
        raise ValueError(f"{path} is not a mosmoskit run record (no 'format': {RUN_RECORD_FORMAT!r})")
    if not isinstance(record.get("format_version"), int) or record["format_version"] > RUN_RECORD_VERSION:
        raise ValueError(f"run record {path} has format version {record.get('format_version')!r}; this mosmoskit "
                         f"reads up to {RUN_RECORD_VERSION}")
    return record


def compare_run_records(old: Mapping[str, Any], new: Mapping[str, Any], *, config: bool = True) -> list[str]:
    """What differs between two run records, as short human-readable lines (empty: nothing).

    Compared: the config (key by key, when ``config`` is true), the data (files added, removed or
    with other content, by path), the kit version and git commit, Python, the main dependencies'
    versions, the torch build and the device type. Times, hash-cache details and ``extra`` are not.

    Args:
        old, new: records as returned by :func:`read_run_record`.
        config: also compare the configs.

    Returns:
        Lines such as ``"config lr: 0.1 -> 0.2"``, ``"data: 1 changed (case1.nii.gz)"``,
        ``"torch: 2.12.0 -> 2.13.0"``.
    """
    lines = []
    if config:
        a, b = old.get("config") or {}, new.get("config") or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key, "<absent>") != b.get(key, "<absent>"):
                lines.append(f"config {key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}")
    old_data, new_data = old.get("data"), new.get("data")
    if (old_data is None) != (new_data is None):
        lines.append(f"data: {'not listed' if old_data is None else 'listed'} -> "
                     f"{'not listed' if new_data is None else 'listed'}")
    elif old_data is not None and old_data.get("sha256") != new_data.get("sha256"):
        before = {f["path"]: f["sha256"] for f in old_data.get("files", [])}
        after = {f["path"]: f["sha256"] for f in new_data.get("files", [])}
        parts = []
        for label, names in (("added", [p for p in after if p not in before]),
                             ("removed", [p for p in before if p not in after]),
                             ("changed", [p for p in after if p in before and before[p] != after[p]])):
            if names:
                shown = ", ".join(Path(p).name for p in names[:3]) + (", ..." if len(names) > 3 else "")
                parts.append(f"{len(names)} {label} ({shown})")
        lines.append("data: " + ("; ".join(parts) if parts else "same files in another order"))
    for key in ("kit_version", "kit_git_head", "python"):
        if old.get(key) != new.get(key):
            lines.append(f"{key}: {old.get(key)} -> {new.get(key)}")
    old_versions, new_versions = old.get("versions") or {}, new.get("versions") or {}
    for name in sorted(set(old_versions) | set(new_versions)):
        if old_versions.get(name) != new_versions.get(name):
            lines.append(f"{name}: {old_versions.get(name)} -> {new_versions.get(name)}")
    if old.get("torch_build") != new.get("torch_build"):
        lines.append(f"torch build: {old.get('torch_build')} -> {new.get('torch_build')}")
    old_device, new_device = (old.get("device") or {}).get("type"), (new.get("device") or {}).get("type")
    if old_device != new_device:
        lines.append(f"device: {old_device} -> {new_device}")
    return lines


def _json_dict(value: Any, name: str) -> dict[str, Any]:
    """``value`` as a plain JSON dict (a round trip through strict JSON), or ``ValueError``."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a dict, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must hold only JSON values (str, number, bool, None, lists, dicts with "
                         f"string keys; no NaN): {err}") from err
