"""Segment whole scans with a fine-tuned model, and write the result on top of the input file.

:func:`predict_volume` takes a :class:`~mosmoskit.data.readers.Volume` (any size, RAS canonical
orientation, as every reader of the kit returns) and gives integer labels of the checkpoint's label
map on the same grid:

1. **the training data's own transforms** (:func:`work_grid`): if the run resampled its training
   scans (``config.spacing`` set), the scan goes through the same MONAI ``Spacingd``
   (:func:`~mosmoskit.data.transforms.resample_transform`; a 2D model on a volume: in-plane
   only), then the same intensity window (``config.window`` -> [0, 1]) as training and
   validation; the class probabilities come back to the scan's own grid through MONAI's
   inverse of that resampling, before the argmax;
2. **spacing.** If the run kept each file's spacing (``config.spacing`` empty), nothing is
   resampled: the network only ever saw voxels of the training spacing, so a scan whose spacing
   differs from it by more than ``spacing_tolerance`` (relative, any axis; 2D models: in-plane
   axes only) is reported as ``on_spacing_mismatch`` says: ``"warn"`` (default: segment anyway, with a warning that says
   which field to set), ``"raise"`` (a ``ValueError``) or ``"ignore"``. Orientation never needs
   such care: every reader reorients to RAS, and :func:`~mosmoskit.data.readers.save_like` writes
   the labels back in the file's own orientation;
3. a 3D network slides a window of ``config.roi_size`` over the volume (MONAI's
   ``sliding_window_inference``, Gaussian-weighted overlap, through
   :func:`~mosmoskit.finetuning.task.sliding_window`, the call validation makes); a 2D network
   segments the axial slices (axis 2 in RAS) one batch of slices at a time, each with a sliding
   window in-plane.
   A segmenter that fuses precomputed maps (``MosmosSegmenter.precomputed_maps``) gets the maps
   of the whole scan first, made once on the HU scan at the work grid and at the pre-training
   geometry (:meth:`MosmosSegmenter.whole_image_maps`, exactly as fine-tuning's training and
   validation data made them); they are concatenated to the scan before the sliding window, so
   each window fuses its part of the whole-scan maps;
4. ``accumulate_on_cpu``: windows run on the model's device, but the (C, *shape) output is summed
   in CPU memory (MONAI's ``sw_device``/``device``), for volumes whose class probabilities do not
   fit on the GPU. It is switched on automatically, with one logged line, when the estimated
   output (:func:`mosmoskit.resources.inference_memory`) would take more than 80 % of the GPU's
   free memory; when it would not fit the host's available memory either, a
   :class:`~mosmoskit.resources.ResourceError` is raised before any window runs. (The estimate
   needs the model's ``out_channels``; a model without it is run as asked.)

:func:`predict_file` does the whole ``python -m mosmoskit predict`` job: read a NIfTI file or a
DICOM folder, predict, write ``OUT.nii.gz`` with the input's shape and affine, a JSON sidecar
(``OUT.json``) naming every label, and optionally the K pixel-tag attention maps as a 4D NIfTI
(``OUT_attention.nii.gz``): the maps the model fused (:func:`attention_maps_volume`).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from mosmoskit.data.readers import Volume

__all__ = [
    "DEFAULT_SPACING_TOLERANCE",
    "SPACING_POLICIES",
    "PredictionFiles",
    "WorkGrid",
    "attention_maps_volume",
    "check_spacing",
    "network_maps",
    "output_paths",
    "plan_accumulation",
    "predict_file",
    "predict_volume",
    "work_grid",
]

#: What to do with a scan whose spacing differs from the training scans' when nothing is resampled.
SPACING_POLICIES: tuple[str, ...] = ("warn", "raise", "ignore")
#: Relative spacing difference (any axis) above which a scan counts as "another spacing".
DEFAULT_SPACING_TOLERANCE = 0.1
_NIFTI_SUFFIXES = (".nii.gz", ".nii")

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- spacing
def check_spacing(
    spacing: Sequence[float],
    training_spacing: Sequence[float] | None,
    on_mismatch: str = "warn",
    tolerance: float = DEFAULT_SPACING_TOLERANCE,
    source: str = "the scan",
) -> bool:
    """Compare a scan's voxel size with the training scans' (when the model does not resample).

    Args:
        spacing: the scan's voxel size (mm) on the axes the network sees.
        training_spacing: the training scans' (median) voxel size on the same axes, or None
            (unknown: nothing is checked).
        on_mismatch: ``"warn"``, ``"raise"`` or ``"ignore"``.
        tolerance: relative difference allowed on every axis.
        source: the scan's name, for the message.

    Returns:
        True when the spacings agree (or nothing could be compared), False on a mismatch that was
        warned about or ignored.

    Raises:
        ValueError: an unknown ``on_mismatch`` or a bad ``tolerance``; a mismatch with
            ``on_mismatch="raise"`` (the message gives both spacings and what to do).
    """
    if on_mismatch not in SPACING_POLICIES:
        raise ValueError(f"on_spacing_mismatch must be one of {list(SPACING_POLICIES)}, got {on_mismatch!r}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"spacing_tolerance must be a number >= 0, got {tolerance!r}")
    if training_spacing is None:
        return True
    have = tuple(float(s) for s in spacing)
    want = tuple(float(s) for s in training_spacing)
    if len(have) != len(want):
        raise ValueError(f"cannot compare spacing {have} with training spacing {want}: different numbers of axes")
    worst = max(abs(h - w) / w for h, w in zip(have, want))
    if worst <= tolerance:
        return True
    message = (
        f"{source} has voxel size {tuple(round(h, 3) for h in have)} mm but the model was trained on scans of "
        f"{tuple(round(w, 3) for w in want)} mm (a {worst:.0%} difference) and does not resample: organs will "
        f"look {'larger' if have[0] < want[0] else 'smaller'} to it than in training. Retrain with the config field "
        f"`spacing` set so that inference resamples, or resample the scan first"
    )
    if on_mismatch == "raise":
        raise ValueError(message)
    if on_mismatch == "warn":
        warnings.warn(message, stacklevel=3)
    return False


# ----------------------------------------------------------------------------------- the core
def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@dataclass
class WorkGrid:
    """A scan on the grid the network works on, and the way back to the scan's own grid.

    Made by :func:`work_grid` with the training data's own MONAI transforms: the resampling of
    :func:`~mosmoskit.data.transforms.resample_transform` (when the run set ``spacing``) and the
    intensity window of :func:`~mosmoskit.data.transforms.ct_intensity_transform`, so a scan
    reaches the network exactly as a validation case does; :meth:`back` undoes the resampling
    with MONAI's inverse of that same transform.

    Attributes:
        hu: (1, *work_shape) MetaTensor of HU on the work grid (carrying its resampling).
        resample: the ``Spacingd`` applied, or None (the run kept each file's spacing).
        as_slices: a 2D model on a volume (segmented slice by slice along axis 2).
        volume_shape: the scan's own shape.
    """

    hu: Any
    resample: Any
    as_slices: bool
    volume_shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """The work grid's shape."""
        return tuple(int(s) for s in self.hu.shape[1:])

    def network_input(self, window: Sequence[float]) -> torch.Tensor:
        """The windowed scan: (1, 1, *shape), or (Z, 1, X, Y) axial slices for a 2D model on a volume."""
        from mosmoskit.data.transforms import ct_intensity_transform

        x = ct_intensity_transform(window)({"image": self.hu})["image"]
        x = torch.as_tensor(x.as_tensor() if hasattr(x, "as_tensor") else x, dtype=torch.float32)[None]
        return self.slices(x)

    def slices(self, x: torch.Tensor) -> torch.Tensor:
        """(1, C, *shape) -> what the network takes: unchanged, or (Z, C, X, Y) for slices."""
        return x[0].permute(3, 0, 1, 2).contiguous() if self.as_slices else x

    def back(self, out: torch.Tensor) -> torch.Tensor:
        """(N, C, *network grid) output -> (C, *volume_shape) on the scan's own grid.

        Resampled output (probabilities, maps) goes back through the inverse of the resampling
        that made the work grid (linear); class ids must not be resampled (argmax first on the
        scan's grid instead).
        """
        if self.as_slices:
            out = out.permute(1, 2, 3, 0)[None]  # (Z, C, X, Y) -> (1, C, X, Y, Z)
        out = out[0]
        if self.resample is None:
            return out
        import copy

        from monai.data import MetaTensor

        carried = MetaTensor(out.float(), meta=copy.deepcopy(self.hu.meta),
                             applied_operations=copy.deepcopy(self.hu.applied_operations))
        restored = self.resample.inverse({"image": carried})["image"]
        restored = restored.as_tensor() if hasattr(restored, "as_tensor") else restored
        if tuple(restored.shape[1:]) != tuple(self.volume_shape):
            raise RuntimeError(f"resampling back gave the grid {tuple(restored.shape[1:])}, expected "
                               f"{tuple(self.volume_shape)}")
        return restored


def work_grid(volume: Volume, config: Any) -> WorkGrid:
    """The scan on the network's grid (see :class:`WorkGrid`).

    Raises:
        ValueError: a 3D model given a 2D image.
    """
    from monai.data import MetaTensor

    from mosmoskit.data.transforms import resample_transform

    dims = int(config.spatial_dims)
    if volume.ndim == dims:
        as_slices = False
    elif dims == 2 and volume.ndim == 3:
        as_slices = True
    else:
        raise ValueError(
            f"{volume.source}: a {dims}D model cannot segment a {volume.ndim}D image of shape {volume.shape} "
            f"(3D models need volumes; 2D models take slices or volumes, segmented slice by slice)"
        )
    array = torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32))[None]
    hu = MetaTensor(array, affine=torch.as_tensor(volume.affine, dtype=torch.float64))
    resample = None
    if config.spacing:
        # Slices are resampled in-plane only, as the 2D training slices were.
        resample = resample_transform(("image",), config.spacing, keep_last_axis=as_slices)
        hu = resample({"image": hu})["image"]
    return WorkGrid(hu=hu, resample=resample, as_slices=as_slices, volume_shape=tuple(volume.shape))


def network_maps(model: nn.Module, volume: Volume, config: Any, grid: WorkGrid | None = None) -> torch.Tensor | None:
    """The maps a segmenter with precomputed maps fuses, on the grid the network works on.

    The scan in HU on the work grid (:func:`work_grid`, the resampling of training) goes to
    :meth:`MosmosSegmenter.whole_image_maps`, which makes its maps once (a 2D model: each axial
    slice whole).

    Returns:
        (1, K, *work_shape) for a 3D model or a 2D model on a 2D image; (Z, K, X, Y) for a 2D
        model on a volume (like :meth:`WorkGrid.network_input`); None for a model that makes its
        maps in the network (or fuses none).
    """
    if not getattr(model, "precomputed_maps", False):
        return None
    grid = work_grid(volume, config) if grid is None else grid
    hu = grid.hu.as_tensor() if hasattr(grid.hu, "as_tensor") else grid.hu
    spacing = tuple(float(v) for v in grid.hu.pixdim)
    maps, _ = model.whole_image_maps(hu[0].numpy(), device=_model_device(model), spacing=spacing)
    return grid.slices(maps[None])


def _sliding(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    roi_size: Sequence[int],
    overlap: float,
    sw_batch_size: int,
    model_device: torch.device,
    accumulate_on_cpu: bool,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sliding-window output (N, C, *spatial) of ``predictor`` over ``x`` (N, C_in, *spatial), on the CPU.

    ``reduce`` (e.g. an argmax over classes) is applied to each chunk of slices before the chunks
    are joined, so a 2D model on a large volume never holds all class probabilities at once.
    """
    from mosmoskit.device import autocast, resolve_amp
    from mosmoskit.finetuning.task import sliding_window

    out_device = torch.device("cpu") if accumulate_on_cpu else model_device
    # The input stays on the CPU when the output does: MONAI moves each window to sw_device.
    x = x.to(out_device)
    chunks = []
    with torch.inference_mode(), autocast(model_device, resolve_amp("auto", model_device)):
        # A 2D model on a volume: sw_batch_size slices at a time bounds the memory of the output.
        step = max(1, sw_batch_size) if x.shape[0] > 1 else 1
        for start in range(0, x.shape[0], step):
            # validation's sliding window, on a chunk of slices (or the one volume)
            out = sliding_window(lambda w: predictor(w).float(), x[start:start + step], roi_size, sw_batch_size,
                                 overlap, sw_device=model_device, device=out_device).float()
            chunks.append((out if reduce is None else reduce(out)).cpu())
    return torch.cat(chunks)


def _num_classes(model: nn.Module) -> int | None:
    """Output channels of a segmenter (``MosmosSegmenter.out_channels``), if it says."""
    value = getattr(model, "out_channels", None)
    return int(value) if isinstance(value, int) else None


def _label_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.int16)


def plan_accumulation(
    device: torch.device,
    work_shape: Sequence[int],
    volume_shape: Sequence[int],
    channels: int | None,
    roi_size: Sequence[int],
    sw_batch_size: int,
    as_slices: bool,
    accumulate_on_cpu: bool,
    keep_scores: bool,
    source: str = "the scan",
) -> bool:
    """Decide where a whole-scan sliding window sums its outputs, before any window runs.

    The summed scores (``channels`` x the work grid, plus MONAI's count map and the input) go on
    the model's device unless ``accumulate_on_cpu``. When they would take more than
    :data:`~mosmoskit.resources.DEFAULT_FRACTION` of the device's free memory, they are summed
    in host memory instead and one line is logged. Host memory must then hold them (and the
    result) or :class:`~mosmoskit.resources.ResourceError` is raised.

    Args:
        device: the model's device.
        work_shape: the grid the network runs on (after any resampling).
        volume_shape: the scan's own grid (the result's).
        channels: output channels of the model (classes, or attention maps); None: unknown,
            nothing is checked.
        roi_size, sw_batch_size: the sliding window.
        as_slices: a 2D model over the axial slices of a volume.
        accumulate_on_cpu: what the caller asked for.
        keep_scores: the scores themselves are kept (probabilities asked for, resampled back, or
            attention maps), rather than reduced to labels chunk by chunk.
        source: the scan's name, for messages.

    Returns:
        Whether to accumulate on the CPU.

    Raises:
        ResourceError: the scores would not fit the host's available memory either.
    """
    from mosmoskit import resources

    if channels is None:
        return accumulate_on_cpu
    need = resources.inference_memory(work_shape, channels, roi_size, sw_batch_size, slices=as_slices)
    memory = resources.available_memory(device)  # gpu_bytes is None on a CPU device: no device budget
    if not accumulate_on_cpu and not resources.fits(need.accumulation_bytes + need.window_bytes, memory["gpu_bytes"]):
        logger.warning(
            "%s: the summed scores of the whole scan (about %s) would not fit in %s of %s's free memory (%s); "
            "summing them in host memory instead (accumulate_on_cpu=True), which is slower",
            source, resources.format_gb(need.accumulation_bytes + need.window_bytes),
            f"{resources.DEFAULT_FRACTION:.0%}", device, resources.format_gb(memory["gpu_bytes"]),
        )
        accumulate_on_cpu = True
    on_cpu = accumulate_on_cpu or device.type == "cpu"
    work, full = math.prod(int(s) for s in work_shape), math.prod(int(s) for s in volume_shape)
    # What else lands in host memory: kept scores (every chunk, unless the one summed output on
    # the host is all there is), their resampling to the scan's grid and the int64 argmax; or,
    # reduced chunk by chunk, one int32 label per voxel and the final labels.
    if keep_scores:
        kept = 0 if on_cpu and not as_slices else 4 * channels * work
        kept += (4 * channels * full if tuple(work_shape) != tuple(volume_shape) else 0) + 8 * full
    else:
        kept = 4 * work + full
    host_need = (need.accumulation_bytes if on_cpu else 0) + kept
    hint = "lower sw_batch_size (slices summed at a time), " if as_slices else ""
    resources.check_fits(
        host_need, memory["host_bytes"],
        what=f"segmenting {source} (grid {tuple(int(s) for s in work_shape)}, {channels} output channels) in "
             f"host memory",
        hint=hint + "crop the scan to the region of interest, resample it to a coarser voxel size (the config field "
                    "spacing), or use a machine with more memory",
    )
    return accumulate_on_cpu


def predict_volume(
    model: nn.Module,
    volume: Volume,
    config: Any,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    accumulate_on_cpu: bool = False,
    *,
    return_probabilities: bool = False,
    training_spacing: Sequence[float] | None = None,
    on_spacing_mismatch: str = "warn",
    spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Segment a whole scan with a sliding window; labels on the scan's canonical grid.

    Args:
        model: a fine-tuned segmenter (``load_finetuned``), on the device to run on. It is put in
            eval mode.
        volume: the scan in RAS canonical orientation (``load_image``), HU for CT.
        config: the run's :class:`~mosmoskit.finetuning.FinetuneConfig` (``spatial_dims``,
            ``roi_size``, ``window``, ``spacing``, ``sw_overlap``, ``sw_batch_size``).
        overlap: sliding-window overlap in [0, 1) (default ``config.sw_overlap``).
        sw_batch_size: windows per forward pass (default ``config.sw_batch_size``).
        accumulate_on_cpu: sum the windows' outputs in CPU memory (large volumes on a GPU).
        return_probabilities: also return the class probabilities.
        training_spacing: the training scans' voxel size, to check a scan against when the model
            does not resample (``config.spacing`` empty); None skips the check.
        on_spacing_mismatch: ``"warn"``, ``"raise"`` or ``"ignore"`` (see the module docstring).
        spacing_tolerance: relative spacing difference tolerated.

    Returns:
        ``(labels, probabilities)``: labels (*volume.shape) integer ids of the model's label map
        (uint8 up to 256 classes), probabilities (C, *volume.shape) float32 or None.

    Raises:
        ValueError: a 3D model given a 2D image, an overlap outside [0, 1), or a spacing mismatch
            with ``on_spacing_mismatch="raise"``.
        ResourceError: (a ``MemoryError``) the scan's class scores would fit neither the GPU nor
            the host memory (see :func:`plan_accumulation`); raised before any window runs.
    """
    overlap = float(config.sw_overlap if overlap is None else overlap)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    sw_batch_size = int(config.sw_batch_size if sw_batch_size is None else sw_batch_size)
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size!r}")
    if not config.spacing:
        axes = int(config.spatial_dims)
        if training_spacing is not None and len(training_spacing) != axes:
            raise ValueError(f"training_spacing must have {axes} values, got {tuple(training_spacing)}")
        check_spacing(volume.spacing[:axes], training_spacing, on_spacing_mismatch, spacing_tolerance, volume.source)
    from mosmoskit.finetuning.task import map_predictor, with_maps

    model.eval()
    grid = work_grid(volume, config)
    # The whole scan's maps travel with it through the sliding window (precomputed-map models only).
    x, channels = with_maps(grid.network_input(config.window), network_maps(model, volume, config, grid))
    logits = map_predictor(model, channels)

    def predictor(window: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits(window).float(), dim=1)

    device = _model_device(model)
    # Resampled probabilities go back to the scan's grid before the argmax.
    keep_scores = return_probabilities or grid.resample is not None
    accumulate_on_cpu = plan_accumulation(device, grid.shape, volume.shape, _num_classes(model), config.roi_size,
                                          sw_batch_size, grid.as_slices, accumulate_on_cpu, keep_scores,
                                          volume.source)
    if keep_scores:
        probs = grid.back(_sliding(predictor, x, config.roi_size, overlap, sw_batch_size, device, accumulate_on_cpu))
        labels = probs.argmax(dim=0).numpy().astype(_label_dtype(probs.shape[0]))
        return labels, (probs.numpy() if return_probabilities else None)
    ids = _sliding(predictor, x, config.roi_size, overlap, sw_batch_size, device, accumulate_on_cpu,
                   reduce=lambda p: p.argmax(dim=1, keepdim=True).to(torch.int32))
    labels = grid.back(ids)[0].numpy()
    num_classes = _num_classes(model)
    return labels.astype(_label_dtype(num_classes if num_classes else int(labels.max()) + 1)), None


def attention_maps_volume(
    model: nn.Module,
    volume: Volume,
    config: Any,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    accumulate_on_cpu: bool = False,
) -> np.ndarray:
    """The pixel-tag attention maps the model fuses, over a whole scan.

    For a model with precomputed maps (``MosmosSegmenter.precomputed_maps``: every variant with a
    frozen map branch of its own) these are exactly the maps :func:`predict_volume` fuses: made
    once on the whole scan (:func:`network_maps`, peak 1 per map, times the tag probability) and
    resampled back to the scan's grid. A model that makes its maps in the network (shared encoder,
    ``tune_tag_head``) makes them per window, as its forward does, and they are blended like the
    segmentation windows.

    Args:
        model: a fine-tuned segmenter with a tag head (``fusion`` ``"input"`` or ``"decoder"``).
        volume, config, overlap, sw_batch_size, accumulate_on_cpu: as :func:`predict_volume`.

    Returns:
        (K, *volume.shape) float32, map k for the label map's k-th foreground organ.

    Raises:
        ValueError: the model has no tag head (``fusion="none"``), or dimensions that do not fit.
        ResourceError: the maps of the whole scan would fit neither the GPU nor the host memory.
    """
    if getattr(model, "fusion", "none") == "none" or getattr(model, "tag_head", None) is None:
        raise ValueError("this model was fine-tuned with fusion='none': it has no tag head, so no attention maps")
    overlap = float(config.sw_overlap if overlap is None else overlap)
    sw_batch_size = int(config.sw_batch_size if sw_batch_size is None else sw_batch_size)
    model.eval()
    if getattr(model, "precomputed_maps", False):
        from mosmoskit import resources

        grid = work_grid(volume, config)
        k = int(model.num_tags)
        need = 4 * k * (math.prod(grid.shape) + math.prod(volume.shape)) + 8 * math.prod(volume.shape)
        resources.check_fits(need, resources.available_memory()["host_bytes"],
                             what=f"the {k} attention maps of {volume.source} (grid {grid.shape}) in host "
                                  f"memory",
                             hint="crop the scan to the region of interest or resample it to a coarser voxel size")
        return grid.back(network_maps(model, volume, config, grid)).numpy()
    grid = work_grid(volume, config)
    x = grid.network_input(config.window)
    device = _model_device(model)
    classes = _num_classes(model)
    accumulate_on_cpu = plan_accumulation(device, grid.shape, volume.shape, None if classes is None else classes - 1,
                                          config.roi_size, sw_batch_size, grid.as_slices, accumulate_on_cpu, True,
                                          volume.source)
    maps = _sliding(lambda w: model.attention_maps(w).maps, x, config.roi_size, overlap, sw_batch_size,
                    device, accumulate_on_cpu)
    return grid.back(maps).numpy()


# ---------------------------------------------------------------------------------------- files
@dataclass(frozen=True)
class PredictionFiles:
    """What :func:`predict_file` wrote.

    Attributes:
        labels: the NIfTI of integer labels (input's shape and affine).
        sidecar: the JSON describing it (label names and ids, checkpoint, input, kit version).
        attention: the 4D NIfTI of the K attention maps, or None.
    """

    labels: Path
    sidecar: Path
    attention: Path | None = None


def output_paths(output: str | Path) -> tuple[Path, Path, Path]:
    """``(OUT.nii.gz, OUT.json, OUT_attention.nii.gz)`` for an output file name.

    Raises:
        ValueError: a name that does not end with ``.nii.gz`` or ``.nii``.
    """
    output = Path(output)
    name = output.name
    for suffix in _NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            stem = name[: -len(suffix)]
            return output, output.with_name(stem + ".json"), output.with_name(stem + "_attention" + suffix)
    raise ValueError(f"{output}: the output is written as NIfTI; its name must end with .nii.gz or .nii")


def predict_file(
    checkpoint: str | Path,
    input_path: str | Path,
    output: str | Path,
    attention_maps: bool = False,
    device: str = "auto",
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    accumulate_on_cpu: bool = False,
    on_spacing_mismatch: str = "warn",
    overwrite: bool = True,
) -> PredictionFiles:
    """Segment a scan file with a fine-tuning checkpoint and write the result next to it.

    Args:
        checkpoint: a fine-tuning checkpoint (``kind == "finetune"``).
        input_path: a NIfTI file, a DICOM series folder or a DICOM file.
        output: ``OUT.nii.gz`` (or ``.nii``): integer labels with the input's shape and affine.
        attention_maps: also write the K attention maps as ``OUT_attention.nii.gz`` (4D,
            channel last); needs a model with a tag head.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` ...
        overlap, sw_batch_size, accumulate_on_cpu, on_spacing_mismatch: see :func:`predict_volume`.
        overwrite: replace existing output files.

    Returns:
        :class:`PredictionFiles`.

    Raises:
        FileNotFoundError: the checkpoint or the input does not exist.
        CheckpointError, ValueError: a file that is not a fine-tuning checkpoint (another kind, or
            not a mosmoskit checkpoint), an input that is not an image, an output name that is not
            NIfTI, attention maps asked of a model without a tag head, a model of other
            dimensions than the scan.
    """
    import mosmoskit
    from mosmoskit.data.readers import load_image, save_like
    from mosmoskit.device import resolve_device
    from mosmoskit.finetuning.config import variant_name
    from mosmoskit.finetuning.run import read_finetune_checkpoint
    from mosmoskit.io import atomic_write_text

    labels_path, sidecar_path, attention_path = output_paths(output)
    if not overwrite:
        for path in (labels_path, sidecar_path, *((attention_path,) if attention_maps else ())):
            if path.exists():
                raise FileExistsError(f"{path} exists; pass overwrite=True or choose another output name")
    loaded = read_finetune_checkpoint(checkpoint)
    model, config, label_map = loaded.model, loaded.config, loaded.label_map
    if attention_maps and config.fusion == "none":
        raise ValueError(
            f"{checkpoint}: attention maps were asked for, but this model was fine-tuned with fusion='none' "
            f"({variant_name(config)}): it has no tag head"
        )
    volume = load_image(input_path)
    model.to(resolve_device(device))
    labels, _ = predict_volume(
        model, volume, config, overlap, sw_batch_size, accumulate_on_cpu,
        training_spacing=loaded.training_spacing, on_spacing_mismatch=on_spacing_mismatch,
    )
    save_like(labels, volume, labels_path, dtype=labels.dtype)
    written_maps = None
    if attention_maps:
        maps = attention_maps_volume(model, volume, config, overlap, sw_batch_size, accumulate_on_cpu)
        written_maps = save_like(maps.astype(np.float32), volume, attention_path)
    present = {name: int(np.count_nonzero(labels == i)) for name, i in label_map.labels.items() if i}
    sidecar = {
        "output": str(labels_path),
        "input": str(input_path),
        "checkpoint": str(checkpoint),
        "kit_version": mosmoskit.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "label_map": label_map.name,
        "labels": dict(label_map.labels),
        "voxels_per_label": present,
        "input_shape": list(volume.original_shape),
        "input_axcodes": "".join(volume.axcodes_original),
        "spacing_mm": list(volume.spacing),
        "resampled_to_mm": list(config.spacing) or None,
        "training_spacing_mm": None if loaded.training_spacing is None else list(loaded.training_spacing),
        "variant": variant_name(config),
        "fusion": config.fusion,
        "attention_maps": None if written_maps is None else str(written_maps),
        "attention_map_channels": list(label_map.foreground_names) if written_maps is not None else None,
    }
    atomic_write_text(sidecar_path, json.dumps(sidecar, indent=1) + "\n")
    return PredictionFiles(labels=labels_path, sidecar=sidecar_path, attention=written_maps)
