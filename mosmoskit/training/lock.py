"""One writer per run folder: an advisory lock held for the duration of a training run.

Two processes training into the same folder (a run started twice, a resume launched while the
first process still runs) would interleave their checkpoints and history and overwrite each other's
results without an error. :class:`RunFolderLock` takes an exclusive ``flock`` on the folder itself
(no lock file is created, so nothing is left behind), refuses a second holder at once with a clear
message, and is released by the operating system when its process dies, even by ``SIGKILL``: a
killed run never leaves a stale lock that blocks its own resume.

Where the platform or file system has no ``flock`` (Windows, some network file systems), the lock
is skipped silently: it is a safeguard, not a requirement for training.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as run:
    ...     with RunFolderLock(run):
    ...         try:
    ...             RunFolderLock(run).acquire()
    ...         except RunFolderBusyError:
    ...             print("busy")
    busy
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunFolderBusyError", "RunFolderLock"]


class RunFolderBusyError(RuntimeError):
    """Another process (or another trainer in this process) is writing into the run folder."""


class RunFolderLock:
    """An exclusive, non-blocking lock on a folder (created if needed); a context manager.

    Args:
        folder: the run folder.

    Attributes:
        held: whether this object holds the lock now (``False`` also where locking is unsupported).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None
        self.held = False

    def acquire(self) -> "RunFolderLock":
        """Take the lock.

        Raises:
            RunFolderBusyError: another holder has it; the message names the folder.
            FileExistsError: ``folder`` exists and is not a folder.
        """
        if self._fd is not None:
            return self
        if self.folder.exists() and not self.folder.is_dir():
            raise FileExistsError(f"run folder {self.folder} exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return self
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderBusyError(
                    f"another training run is writing into {self.folder} (it holds the folder's lock); wait for it "
                    f"to finish or stop it, or choose another output_dir"
                ) from err
            return self  # the file system does not support flock: go on without the safeguard
        self._fd = fd
        self.held = True
        return self

    def release(self) -> None:
        """Release the lock (a no-op when it is not held)."""
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
                self.held = False

    def __enter__(self) -> "RunFolderLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:
        # A trainer dropped without fit() finishing must not keep the folder locked in this process.
        if getattr(self, "_fd", None) is not None:
            self.release()
