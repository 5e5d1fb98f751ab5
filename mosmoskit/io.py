"""Atomic, non-clobbering file output.

Every file the kit writes (NIfTI volumes, JSON, checkpoints, tables) goes through here: it is
written to a temporary file in the same folder, flushed to disk, then renamed over the target. A
process killed mid-write leaves the previous file intact and at most a stray ``.tmp`` file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_with", "ensure_new_dir"]


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``.

    Args:
        path: the final file.
        overwrite: if false and ``path`` exists, raise ``FileExistsError`` before writing.

    Example:
        >>> with atomic_path("out/image.nii.gz") as tmp:   # doctest: +SKIP
        ...     nib.save(img, tmp)
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffixes so that writers that infer the format from the name (nibabel) still work.
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_write_with(path: str | Path, writer: Callable[[Path], None], overwrite: bool = True) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        writer(tmp)
    return Path(path)


def ensure_new_dir(path: str | Path, overwrite: bool = False, marker: str | None = None) -> Path:
    """Create an output folder, refusing to reuse one that already holds files.

    Args:
        path: the folder.
        overwrite: allow a non-empty folder (its files will be replaced one by one).
        marker: if given, only a folder containing this file name counts as "holding results".

    Raises:
        FileExistsError: the folder holds results and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a folder")
        holds = (path / marker).exists() if marker else any(path.iterdir())
        if holds and not overwrite:
            raise FileExistsError(
                f"{path} already holds results; choose another folder or pass overwrite=True (--overwrite)"
            )
    path.mkdir(parents=True, exist_ok=True)
    return path
