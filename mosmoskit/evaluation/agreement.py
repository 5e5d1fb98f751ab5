"""Agreement of a fine-tuned network with another model's label map on a real scan.

The sample scans beside the project carry label maps written by TotalSegmentator, not by people.
Dice against them measures *agreement with TotalSegmentator*, never accuracy; for a network trained
on phantoms it mostly shows whether the real-data path works end to end (reading, orientation,
resampling, windowing, sliding windows, label names) and where it breaks.

:func:`reference_agreement` segments the scan with a fine-tuning checkpoint
(:func:`mosmoskit.inference.predict_volume`), reads the reference on the same grid (a reference on
another grid is refused, naming both files), moves the reference's ids onto the checkpoint's label
map by organ name (:meth:`mosmoskit.labels.LabelMap.remap_to`) and scores the organs that both maps
know with :func:`mosmoskit.evaluation.segmentation.organ_metrics`.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mosmoskit.evaluation.segmentation import organ_metrics
from mosmoskit.labels import LabelMap, load_label_map

__all__ = ["agreement_metrics", "reference_agreement"]


def agreement_metrics(prediction: np.ndarray, reference: np.ndarray, label_map: LabelMap,
                      reference_label_map: LabelMap, spacing: tuple[float, ...],
                      source: str = "scan") -> dict[str, Any]:
    """Score a prediction against a reference of another label map, on the organs both know.

    Args:
        prediction: integer ids of ``label_map`` on the scan's grid.
        reference: integer ids of ``reference_label_map`` on the same grid.
        label_map: the network's label map.
        reference_label_map: the reference's label map (e.g. ``totalseg_ct``).
        spacing: voxel size in mm (for HD95).
        source: named in errors.

    Returns:
        ``{"organs": {organ: metrics}, "shared_organs": [...], "model_only": [...], "mean_dice":
        mean over shared organs present in the reference or the prediction}``; organs the
        reference map lacks are listed in ``model_only`` and not scored.

    Raises:
        ValueError: different shapes (naming ``source``) or values outside the maps.
    """
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"{source}: prediction shape {prediction.shape} differs from the reference's {reference.shape}")
    remap = reference_label_map.remap_to(label_map, drop_unmatched=True)
    reference_ids = remap(reference)
    model_only = [name for name in remap.unfilled if name != "background"]
    metrics = organ_metrics(prediction, reference_ids, label_map, spacing, source=source)
    shared = {o: m for o, m in metrics.items() if o not in model_only}
    dice = [m["dice"] for m in shared.values() if not np.isnan(m["dice"])]
    return {"organs": shared, "shared_organs": sorted(shared), "model_only": model_only,
            "mean_dice": float(np.mean(dice)) if dice else float("nan")}


def reference_agreement(checkpoint: str | Path, scan: str | Path, reference: str | Path,
                        reference_label_map: str | LabelMap = "totalseg_ct", device: str = "auto") -> dict[str, Any]:
    """Segment ``scan`` with ``checkpoint`` and score it against ``reference`` (another model's labels).

    Args:
        checkpoint: a fine-tuning checkpoint.
        scan: a NIfTI file or a DICOM series folder.
        reference: the reference label file, on the scan's grid.
        reference_label_map: the reference's label map (name or file).
        device: where the network runs.

    Returns:
        :func:`agreement_metrics` plus ``scan``, ``reference``, ``checkpoint``, ``variant``,
        ``shape``, ``spacing`` (mm), ``training_spacing`` (mm, or None), ``warnings`` (messages
        raised while predicting, e.g. a voxel size unlike the training scans') and ``seconds``.

    Raises:
        FileNotFoundError: a file is missing. ValueError: the reference is not on the scan's grid,
            or holds values outside its label map (both name the files).
    """
    from mosmoskit.data.readers import load_image, load_label
    from mosmoskit.device import resolve_device
    from mosmoskit.finetuning.config import variant_name
    from mosmoskit.finetuning.run import read_finetune_checkpoint
    from mosmoskit.inference import predict_volume

    for path in (checkpoint, scan, reference):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path} does not exist")
    reference_map = load_label_map(reference_label_map)
    loaded = read_finetune_checkpoint(checkpoint)
    volume = load_image(scan)
    ref = load_label(reference, reference_map, reference=volume)
    start = time.perf_counter()
    loaded.model.to(resolve_device(device))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        labels, _ = predict_volume(loaded.model, volume, loaded.config, training_spacing=loaded.training_spacing,
                                   on_spacing_mismatch="warn")
    seconds = time.perf_counter() - start
    out = agreement_metrics(labels, ref.array, loaded.label_map, reference_map, volume.spacing,
                            source=f"{scan} vs {reference}")
    out.update(
        scan=str(scan), reference=str(reference), checkpoint=str(checkpoint), variant=variant_name(loaded.config),
        spatial_dims=loaded.config.spatial_dims, shape=tuple(int(s) for s in volume.array.shape),
        spacing=tuple(round(float(s), 3) for s in volume.spacing),
        training_spacing=None if loaded.training_spacing is None else
        tuple(round(float(s), 3) for s in loaded.training_spacing),
        warnings=sorted({str(w.message) for w in caught}), seconds=round(seconds, 2),
    )
    return out
