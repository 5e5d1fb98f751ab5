"""Memory budgets: what is free, what a step will need, and a clear refusal when it will not fit.

Running out of memory rarely fails cleanly: the kernel's OOM killer ends the process without a
traceback (often after a long data-loading phase), or CUDA raises in the middle of a run. The kit
estimates the two large allocations it makes on purpose, before making them:

* the training cache: ``CacheDataset`` keeps ``cache_rate`` of the labelled cases loaded and
  windowed in host memory (:func:`estimate_cache_bytes`, from the NIfTI headers only);
* whole-scan inference: the class probabilities of a whole volume, summed window by window
  (:func:`estimate_inference_bytes`), on the GPU or, with ``accumulate_on_cpu``, in host memory.

and compares them with :func:`available_memory`. :func:`check_fits` raises a
:class:`ResourceError` (a ``MemoryError``) whose message gives both numbers in GB and what to
change. Only a share (:data:`DEFAULT_FRACTION`, 80 %) of the free memory is counted as usable:
the estimates leave out the network's activations, the data loader's working copies and
everything else the process and its neighbours allocate meanwhile.

Estimates are of the arrays the kit allocates, not of the whole process; host memory is read from
``/proc/meminfo`` (``MemAvailable``), which in a container or a batch job may be more than the
job's own memory limit: the checks then err on the side of letting a run start.

Example:
    >>> from mosmoskit.resources import available_memory, check_fits, estimate_inference_bytes
    >>> need = estimate_inference_bytes((512, 512, 300), num_classes=14, roi=(96, 96, 96), sw_batch_size=4)
    >>> round(need / 1e9, 1)
    5.2
    >>> check_fits(need, 2e9, "inference", "crop the scan")   # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ResourceError: inference needs about 5.24 GB but only 1.60 GB (80% of 2.00 GB available) may be used; crop the scan
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "DEFAULT_FRACTION",
    "InferenceMemory",
    "ResourceError",
    "available_memory",
    "case_voxels",
    "check_fits",
    "estimate_cache_bytes",
    "estimate_inference_bytes",
    "fits",
    "format_gb",
    "host_available_bytes",
    "inference_memory",
]

#: Share of the available memory a planned allocation may take (the rest is headroom for what the
#: estimates leave out).
DEFAULT_FRACTION = 0.8
_GB = 1e9
_MEMINFO = Path("/proc/meminfo")


class ResourceError(MemoryError):
    """A planned allocation would not fit the memory available (the message says what to change)."""


# ------------------------------------------------------------------------------------ available
def host_available_bytes(meminfo: str | Path = _MEMINFO) -> int | None:
    """Host memory available to new allocations, in bytes, or None when it cannot be found.

    Reads ``MemAvailable`` (free memory plus reclaimable caches, what the kernel can hand out
    without swapping) from ``meminfo``; falls back to ``psutil.virtual_memory().available``
    when the file is absent or has no such line (macOS, Windows, old kernels), if psutil is
    installed.

    Args:
        meminfo: the ``/proc/meminfo`` file to read (a parameter so that tests can give another).
    """
    try:
        for line in Path(meminfo).read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("MemAvailable:"):
                parts = line.split()
                scale = {"kb": 1024, "mb": 1024**2, "gb": 1024**3}.get(parts[2].lower(), 1) if len(parts) > 2 else 1
                return int(parts[1]) * scale
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def available_memory(device: Any = None) -> dict[str, int | None]:
    """Free host memory and free memory of the GPU in use, in bytes.

    Args:
        device: the device the work runs on (``"cuda:1"``, a ``torch.device`` ...). A CUDA device
            is asked for its free memory (``torch.cuda.mem_get_info``, plus the memory PyTorch's
            caching allocator reserved but does not use); a CPU device has no GPU budget.
            ``None``: the current CUDA device if CUDA is already in use by this process
            (initialised), else none; CUDA is not initialised just to answer.

    Returns:
        ``{"host_bytes": int or None, "gpu_bytes": int or None}``; None where unknown or absent.
    """
    gpu = None
    try:
        import torch

        cuda_device = None
        if device is not None:
            dev = torch.device(device)
            if dev.type == "cuda":
                cuda_device = dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
        elif torch.cuda.is_available() and torch.cuda.is_initialized():
            cuda_device = torch.device("cuda", torch.cuda.current_device())
        if cuda_device is not None:
            # Free on the card, plus what PyTorch's caching allocator holds but does not use (after
            # training, most of the card can sit in that cache, free to this process, not to others).
            cached = torch.cuda.memory_reserved(cuda_device) - torch.cuda.memory_allocated(cuda_device)
            gpu = int(torch.cuda.mem_get_info(cuda_device)[0]) + max(0, int(cached))
    except (ImportError, RuntimeError, AssertionError):  # no torch, no driver, CUDA build missing
        gpu = None
    return {"host_bytes": host_available_bytes(), "gpu_bytes": gpu}


# ------------------------------------------------------------------------------------- checking
def format_gb(n_bytes: float | None) -> str:
    """``"1.23 GB"`` (decimal gigabytes), or ``"unknown"``."""
    return "unknown" if n_bytes is None else f"{n_bytes / _GB:.2f} GB"


def fits(needed: float, available: float | None, fraction: float = DEFAULT_FRACTION) -> bool:
    """Whether ``needed`` bytes fit in ``fraction`` of ``available`` (True when ``available`` is unknown)."""
    if available is None:
        return True
    return float(needed) <= fraction * float(available)


def check_fits(
    needed: float, available: float | None, what: str, hint: str, fraction: float = DEFAULT_FRACTION,
) -> None:
    """Raise unless ``needed`` bytes fit in ``fraction`` of ``available`` bytes.

    Args:
        needed: bytes the allocation will take (an estimate).
        available: bytes free now; None (unknown) passes.
        what: what needs the memory, starting the message (e.g. ``"caching 40 training cases"``).
        hint: what to change so that it fits (the message ends with it).
        fraction: share of ``available`` that may be used, in (0, 1].

    Raises:
        ValueError: ``fraction`` outside (0, 1] or a negative ``needed``.
        ResourceError: it does not fit; the message gives both numbers in GB and ``hint``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if not needed >= 0:
        raise ValueError(f"needed must be a number of bytes >= 0, got {needed!r}")
    if fits(needed, available, fraction):
        return
    raise ResourceError(
        f"{what} needs about {format_gb(needed)} but only {format_gb(fraction * float(available))} "
        f"({fraction:.0%} of {format_gb(available)} available) may be used; {hint}"
    )


# ------------------------------------------------------------------------------------ estimates
def _header_grid(path: str | Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(shape, voxel size in mm) of an image file or DICOM folder, from its header(s) only."""
    import nibabel as nib

    from mosmoskit.data.readers import image_format

    path = Path(path)
    if image_format(path) == "nifti":
        header = nib.load(str(path)).header
        return tuple(int(s) for s in header.get_data_shape()), tuple(float(z) for z in header.get_zooms())
    import pydicom

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and pydicom.misc.is_dicom(str(p)))
    else:
        files = [path]
    if not files:
        return (0,), (1.0,)
    ds = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
    rows, cols = int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))
    spacing = [float(v) for v in getattr(ds, "PixelSpacing", [1.0, 1.0])]
    thickness = float(getattr(ds, "SliceThickness", 1.0) or 1.0)
    return (cols, rows, len(files)), (spacing[1], spacing[0], thickness)


def case_voxels(
    path: str | Path | Sequence[str | Path], spatial_dims: int, spacing: Sequence[float] | None = None,
) -> int:
    """Voxels of an image once loaded (all channels), from its header(s) alone.

    Args:
        path: a NIfTI file, a DICOM folder or file, or a list of them (one per channel).
        spatial_dims: 2 or 3; axes beyond these count as channels (a 4D NIfTI's volumes).
        spacing: the voxel size (mm) the image will be resampled to, or None (kept as stored).
            Resampling changes the voxel count by the ratio of voxel volumes.

    Raises:
        FileNotFoundError: a path that does not exist.
        ImageReadError: a file that is not an image.
    """
    if isinstance(path, (list, tuple)):
        return sum(case_voxels(p, spatial_dims, spacing) for p in path)
    shape, zooms = _header_grid(path)
    spatial = shape[:spatial_dims]
    channels = int(np.prod(shape[spatial_dims:], dtype=np.int64)) if len(shape) > spatial_dims else 1
    if spacing is None or len(zooms) < spatial_dims:
        return int(np.prod(spatial, dtype=np.int64)) * channels
    # the same field of view on the new grid: n_i * stored_i / target_i voxels per axis
    resampled = [max(1, int(round(n * float(z) / float(t)))) for n, z, t in zip(spatial, zooms, spacing)]
    return int(np.prod(resampled, dtype=np.int64)) * channels


def estimate_cache_bytes(
    cases: Iterable[Mapping[str, Any]],
    spatial_dims: int,
    dtype_bytes: int = 4,
    *,
    spacing: Sequence[float] | None = None,
    keys: Sequence[str] = ("image", "label"),
) -> int:
    """Bytes that loading ``cases`` into memory takes: voxel counts from the file headers (the
    voxels are not read) times ``dtype_bytes``, summed over ``keys`` of every case.

    Args:
        cases: case dicts with file paths under ``keys`` (a missing key is skipped).
        spatial_dims: 2 or 3.
        dtype_bytes: bytes per voxel in memory (the kit's pipelines hold float32: 4).
        spacing: the voxel size the pipeline resamples to, if it does.
        keys: the entries holding files.

    Returns:
        The estimate in bytes.

    Raises:
        FileNotFoundError, ImageReadError: as :func:`case_voxels`.
    """
    total = 0
    for case in cases:
        for key in keys:
            if case.get(key):
                total += case_voxels(case[key], spatial_dims, spacing) * int(dtype_bytes)
    return total


@dataclass(frozen=True)
class InferenceMemory:
    """Bytes a sliding-window inference allocates, by where they live.

    Attributes:
        output_bytes: the accumulated class scores (C, *shape) and MONAI's count map (1, *shape),
            on the output device (the GPU, or the host with ``accumulate_on_cpu``).
        input_bytes: the windowed scan (1, *shape) float32, on the output device too (the kit
            keeps the input where the output is summed).
        window_bytes: one batch of windows in and out, ``sw_batch_size * (1 + C) * prod(roi)``
            float32, always on the model's device (activations of the network not included).
    """

    output_bytes: int
    input_bytes: int
    window_bytes: int

    @property
    def accumulation_bytes(self) -> int:
        """What lives on the output device: output and input."""
        return self.output_bytes + self.input_bytes

    @property
    def total_bytes(self) -> int:
        """Everything, as if on one device."""
        return self.output_bytes + self.input_bytes + self.window_bytes


def inference_memory(
    shape: Sequence[int],
    num_classes: int,
    roi: Sequence[int],
    sw_batch_size: int,
    *,
    slices: bool = False,
    dtype_bytes: int = 4,
) -> InferenceMemory:
    """:func:`estimate_inference_bytes`, split by device (see :class:`InferenceMemory`).

    Args:
        shape: the grid the network runs on, (X, Y, Z) or (X, Y) (after any resampling).
        num_classes: output channels C, background included.
        roi: the sliding window's size.
        sw_batch_size: windows per forward pass.
        slices: a 2D network over the axial slices of a volume ``shape`` = (X, Y, Z): only
            ``sw_batch_size`` slices are accumulated at a time (the input is still whole).
        dtype_bytes: bytes per value (float32: 4).

    Raises:
        ValueError: non-positive sizes or counts.
    """
    sizes = [int(s) for s in shape]
    if not sizes or min(sizes) < 1 or int(num_classes) < 1 or int(sw_batch_size) < 1 or min(int(r) for r in roi) < 1:
        raise ValueError(
            f"inference_memory needs positive sizes, got shape={tuple(shape)}, num_classes={num_classes}, "
            f"roi={tuple(roi)}, sw_batch_size={sw_batch_size}"
        )
    voxels = math.prod(sizes)
    accumulated = voxels
    if slices:
        accumulated = math.prod(sizes[:-1]) * min(int(sw_batch_size), sizes[-1])
    window = math.prod(int(r) for r in roi)
    return InferenceMemory(
        output_bytes=(int(num_classes) + 1) * accumulated * dtype_bytes,
        input_bytes=voxels * dtype_bytes,
        window_bytes=int(sw_batch_size) * (1 + int(num_classes)) * window * dtype_bytes,
    )


def estimate_inference_bytes(
    shape: Sequence[int],
    num_classes: int,
    roi: Sequence[int],
    sw_batch_size: int,
    *,
    slices: bool = False,
    dtype_bytes: int = 4,
) -> int:
    """Bytes a whole-scan sliding-window inference allocates: the summed class scores (C, *shape)
    float32 with MONAI's count map, the windowed input, and one batch of windows.

    The network's own activations are not included (they depend on the network; the headroom of
    :data:`DEFAULT_FRACTION` is for them and the rest).

    Args:
        shape, num_classes, roi, sw_batch_size, slices, dtype_bytes: see :func:`inference_memory`.

    Returns:
        The estimate in bytes (``inference_memory(...).total_bytes``).
    """
    return inference_memory(shape, num_classes, roi, sw_batch_size, slices=slices,
                            dtype_bytes=dtype_bytes).total_bytes
