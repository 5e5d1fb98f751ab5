"""One call from a :class:`PretrainConfig` to a trained, evaluated, checkpointed model.

``run_pretraining`` is what ``python -m mosmoskit pretrain`` and notebook 02 call. The run folder
holds the checkpoints (resumable; ``last.pt`` is the newest), ``history.jsonl``, ``config.json``,
``label_map.json`` and, when the run has finished, ``metrics.json``. A folder that already holds
``metrics.json`` is never reused silently: pass ``overwrite=True`` or pick another folder. A folder
with checkpoints but no metrics (an interrupted run) is resumed.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from mosmoskit import distributed
from mosmoskit.config import config_from_dict, config_to_dict
from mosmoskit.data.readers import load_image
from mosmoskit.io import atomic_write_text
from mosmoskit.labels import LabelMap, load_label_map
from mosmoskit.pretraining.config import PretrainConfig
from mosmoskit.pretraining.data import (
    ImageReportDataset,
    prepare_pretraining_data,
    tags_without_negatives,
    training_masks,
)
from mosmoskit.pretraining.evaluate import fixed_position_baseline
from mosmoskit.pretraining.map_check import map_check
from mosmoskit.pretraining.maps import whole_image_maps
from mosmoskit.pretraining.model import MosmosPretrainModel, build_pretrain_model
from mosmoskit.pretraining.task import PretrainTask

__all__ = [
    "PretrainResult",
    "attention_maps_from_checkpoint",
    "held_out_pairs",
    "load_pretrained",
    "map_check_of_run",
    "pointing_at_tolerances",
    "run_pretraining",
]

CHECKPOINT_KIND = "pretrain"


@dataclass
class PretrainResult:
    """What a finished pre-training run produced.

    Attributes:
        output_dir: the run folder.
        checkpoint: the final checkpoint (``last.pt``).
        metrics: flat dict of held-out metrics (``retrieval/...``, ``tag_auroc/...``,
            ``pointing/...``, ``pointing_baseline/...``); empty on ranks other than 0 of a
            ``torchrun`` run (rank 0 evaluates).
        history: per-step logs (every loss term, lr, temperature) and validation rows.
        label_map: the tag vocabulary.
        train_cases, val_cases: the case dicts of the patient-level split.
        seconds: wall time of the training part.
    """

    output_dir: Path
    checkpoint: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    label_map: LabelMap
    train_cases: list[dict[str, Any]]
    val_cases: list[dict[str, Any]]
    seconds: float


def _json_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    """NaN (an organ never present, a tag with one class) becomes null: strict JSON has no NaN."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in metrics.items()}


def _collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else list(values)
    return out


def _prepare_folder(config: PretrainConfig) -> Path:
    out = Path(config.output_dir)
    if (out / "metrics.json").exists():
        if not config.overwrite:
            raise FileExistsError(
                f"{out} already holds a finished pre-training run (metrics.json); choose another "
                f"output_dir or set overwrite=True"
            )
        for target in [*out.glob("checkpoint_step*.pt"), out / "last.pt", out / "history.jsonl", out / "metrics.json",
                       out / "run_record.json"]:
            target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def held_out_pairs(
    config: PretrainConfig, split: dict[str, list[dict[str, Any]]], label_map: LabelMap, progress: bool = False
) -> tuple[ImageReportDataset, np.ndarray | None]:
    """The held-out pairs as validation sees them, and the fixed-position baseline maps.

    Validation images are shifted too (a different, fixed draw), so that a map that always points
    at the same place cannot score well; the baseline (the mean training mask of each organ, or
    ``None`` without masks) measures exactly that.
    """
    has_labels = all(c.get("label") for c in split["val"])
    val_ds = ImageReportDataset(split["val"], label_map, config.image_size, window=config.window,
                                max_shift=config.max_shift, seed=config.seed + 7919, with_labels=has_labels,
                                progress=progress, spacing=config.spacing or None, cache_rate=config.cache_rate,
                                num_workers=config.num_workers)
    baseline = None
    if has_labels:
        masks = training_masks(split["train"], label_map, config.image_size, config.spacing or None)
        baseline = fixed_position_baseline(masks, label_map) if masks else None
    return val_ds, baseline


@torch.no_grad()
def pointing_at_tolerances(
    run_dir: str | Path, tolerances: Sequence[int] | None = None, device: str = "cpu"
) -> list[dict[str, Any]]:
    """Score a finished pre-training's maps against the fixed-position baseline at several tolerances.

    The pointing game counts a hit when a map's peak lies within ``tolerance`` voxels of the organ.
    At 0 a coarse map (a 3x3x2 token grid upsampled to 48x48x32) can miss by the interpolation's
    edge plateau alone; at one feature cell, even a fixed guess lands near most large organs. Only
    the comparison at the same tolerance says whether the maps localise.

    Args:
        run_dir: a pre-training run folder (``last.pt``, its phantom cohort or data source as its
            config names it).
        tolerances: voxels; default 0, half a feature cell and one cell.
        device: where to run the model.

    Returns:
        One row per tolerance: ``tolerance``, ``maps`` and ``baseline`` (mean hit rate over the large
        organs), ``n_pairs``.

    Raises:
        ValueError: the held-out pairs have no masks (nothing to point at).
    """
    from mosmoskit.evaluation.localisation import PointingTally, pointing_hits
    from mosmoskit.evaluation.retrieval import mean_finite
    from mosmoskit.pretraining.evaluate import large_organs

    run_dir = Path(run_dir)
    model, config, label_map = load_pretrained(run_dir / "last.pt")
    model = model.to(device)
    _, split = prepare_pretraining_data(config.dataset, run_dir, label_map, config.spatial_dims, config.val_fraction,
                                        config.seed, progress=False, **config.phantom_settings())
    val_ds, baseline = held_out_pairs(config, split, label_map)
    if baseline is None:
        raise ValueError(f"{run_dir}: the held-out pairs have no masks; the pointing game needs them")
    cell = int(getattr(model.image_encoder, "feature_stride", 1))
    tolerances = [0, cell // 2, cell] if tolerances is None else [int(t) for t in tolerances]
    large = {label_map.id_of(n): n for n in large_organs(label_map)}
    tag_ids = [label_map.id_of(n) for n in label_map.foreground_names]
    # The same tallies and means as evaluate_pretraining's pointing/mean_large_organs.
    tallies = {(t, who): PointingTally(large) for t in tolerances for who in ("maps", "baseline")}
    for index in range(len(val_ds)):
        item = val_ds[index]
        image = item["image"][None].to(device)
        maps = model.attention_maps(image, normalize="none")[0][0].float().cpu().numpy()
        label = item["label"].numpy()
        for t in tolerances:
            for who, volume in (("maps", maps), ("baseline", baseline)):
                hits = pointing_hits(volume, label, tag_ids, tolerance=t)
                tallies[(t, who)].add({organ: hit for organ, hit in hits.items() if organ in large})
    return [{"tolerance": t, "maps": mean_finite(tallies[(t, "maps")].rates()),
             "baseline": mean_finite(tallies[(t, "baseline")].rates()), "n_pairs": len(val_ds)} for t in tolerances]


def run_pretraining(config: PretrainConfig, callbacks: Sequence[Any] = (), progress: bool = True) -> PretrainResult:
    """Pre-train, evaluate on held-out pairs, and save everything into ``config.output_dir``.

    Args:
        config: the run.
        callbacks: training-loop callbacks (e.g. a live loss plot).
        progress: show progress bars.

    Returns:
        :class:`PretrainResult`.

    Raises:
        FileExistsError: the folder holds a finished run and ``config.overwrite`` is false.
        ValueError: bad data (the message names the file), or a non-finite loss (the last good
            checkpoint is kept).
    """
    import time

    from mosmoskit.device import resolve_device, seed_everything
    from mosmoskit.training import Trainer, TrainerConfig

    main = distributed.is_main_process()
    # Under torchrun: rank 0 prepares the folder and generates the phantoms, the others then read them.
    with distributed.main_process_first():
        out = _prepare_folder(config) if main else Path(config.output_dir)
        seed_everything(config.seed)
        label_map = load_label_map(config.label_map)
        _, split = prepare_pretraining_data(
            config.dataset, out, label_map, config.spatial_dims, config.val_fraction, config.seed,
            progress=progress and main, **config.phantom_settings(),
        )
    if main:
        atomic_write_text(out / "config.json", json.dumps(config_to_dict(config), indent=1) + "\n")
    label_map.save(out / "label_map.json")
    common = dict(label_map=label_map, image_size=config.image_size, window=config.window, progress=progress,
                  spacing=config.spacing or None, cache_rate=config.cache_rate, num_workers=config.num_workers)
    train_ds = ImageReportDataset(split["train"], max_shift=config.max_shift, seed=config.seed,
                                  max_rotation_deg=config.max_rotation_deg, max_scale=config.max_scale, **common)
    val_ds, baseline = held_out_pairs(config, split, label_map, progress=progress)
    val_loader = DataLoader(val_ds, batch_size=config.batch_size, shuffle=False, collate_fn=_collate)

    device = resolve_device(config.device)
    model = build_pretrain_model(config, label_map).to(device)
    names = list(label_map.foreground_names)
    left_out = tags_without_negatives(train_ds.tags, names, config.unmentioned)
    if left_out:
        model.tag_head.leave_out([names.index(n) for n in left_out])
        if main:
            warnings.warn(f"no training report says these organs are absent, so their tags teach nothing and are left "
                          f"out of the tag loss and of fusion (their maps are zero): {', '.join(left_out)}",
                          stacklevel=2)
    task = PretrainTask(model, config, label_map, baseline_maps=baseline)
    trainer_config = TrainerConfig(
        max_steps=config.max_steps,
        lr=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        grad_accum_steps=config.grad_accum_steps,
        grad_clip_norm=config.grad_clip_norm or None,
        device=config.device,
        seed=config.seed,
        output_dir=str(out),
        val_every=config.val_every,
        checkpoint_every=config.checkpoint_every,
        progress=progress,
        resume=True,
    )
    trainer = Trainer(
        task,
        trainer_config,
        train_dataset=train_ds,
        batch_size=config.batch_size,
        collate_fn=_collate,
        num_workers=config.num_workers,
        val_loader=val_loader,
        callbacks=list(callbacks),
        kind=CHECKPOINT_KIND,
        run_config=config_to_dict(config),
        label_map=label_map,
        # recorded with their hashes in run_record.json (what exactly was trained on)
        data_files=[c["image"] for c in split["train"] + split["val"]],
    )
    start = time.perf_counter()
    fit = trainer.fit()
    seconds = time.perf_counter() - start
    metrics: dict[str, Any] = {}
    if main:  # rank 0 evaluates and writes; the other processes return the training outcome only
        metrics = dict(task.validate(val_loader))
        # The standing map check: maps against the fixed-position prior on moved held-out images.
        metrics.update(map_check(model, config, split, label_map, device=device))
        metrics.update({"tags/left_out": left_out, "tags/left_out_count": len(left_out),
                        "train/steps": int(fit.step), "train/seconds": round(seconds, 1),
                        "data/train_pairs": len(train_ds), "data/val_pairs": len(val_ds)})
        atomic_write_text(out / "metrics.json", json.dumps(_json_safe(metrics), indent=1) + "\n")
    return PretrainResult(
        output_dir=out, checkpoint=Path(fit.last_checkpoint), metrics=metrics, history=list(fit.history),
        label_map=label_map, train_cases=split["train"], val_cases=split["val"], seconds=seconds,
    )


def load_pretrained(checkpoint: str | Path, map_location: str = "cpu") -> tuple[MosmosPretrainModel, PretrainConfig, LabelMap]:
    """The image side of a pre-trained model (encoder, tag head, projection), without its text encoder.

    Raises:
        CheckpointError: not a readable mosmoskit checkpoint (the message names the file).
        ValueError: a checkpoint of another kind, or weights that do not fit the rebuilt model.
    """
    from mosmoskit.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint, map_location=map_location)
    if ckpt.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{checkpoint}: a {ckpt.get('kind')!r} checkpoint, expected a pre-training one")
    config = config_from_dict(PretrainConfig, ckpt["config"], source=str(checkpoint))
    label_map = LabelMap.from_dict(ckpt["label_map"], source=str(checkpoint))
    state = ckpt["state"]["model"]
    text_dim = state["text_proj.weight"].shape[1] if "text_proj.weight" in state else None
    model = build_pretrain_model(config, label_map, with_text_encoder=False, text_dim=text_dim)
    wanted = {k: v for k, v in state.items() if not k.startswith(("text_encoder.", "contrastive_loss."))}
    result = model.load_state_dict(wanted, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{checkpoint}: weights do not fit the model its config describes: missing "
            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model.eval(), config, label_map


@torch.no_grad()
def attention_maps_from_checkpoint(
    checkpoint: str | Path | tuple[MosmosPretrainModel, PretrainConfig, LabelMap],
    image: str | Path | np.ndarray,
    device: str = "cpu",
    scale_by_probability: bool = False,
) -> tuple[np.ndarray, dict[str, float]]:
    """Pixel-tag attention maps of an image at the image's own resolution.

    A thin wrapper of :func:`~mosmoskit.pretraining.maps.whole_image_maps` (the one maker of maps,
    which fine-tuning and ``predict`` use too) for a checkpoint and a file. A 2D model applied to a
    volume runs on each axial slice; each input (slice or volume) is resized to the model's
    ``image_size`` and its maps resized back, so any grid works.

    Args:
        checkpoint: a pre-training checkpoint path, or what :func:`load_pretrained` returned.
        image: a file (NIfTI, DICOM folder; read in RAS) or an array already in HU and RAS.
        device: where to run.
        scale_by_probability: multiply each map by its tag probability.

    Returns:
        maps (K, *image shape) with peak 1 per map (before probability scaling), and organ name ->
        tag probability (mean over slices for a 2D model on a volume).
    """
    model, config, label_map = load_pretrained(checkpoint) if not isinstance(checkpoint, tuple) else checkpoint
    array = load_image(image).array if not isinstance(image, np.ndarray) else np.asarray(image, dtype=np.float32)
    if array.ndim not in (config.spatial_dims, 3):
        raise ValueError(f"a {config.spatial_dims}D model cannot take a {array.ndim}D image of shape {array.shape}")
    maps, probs = whole_image_maps(model.to(device), array, config, normalize="max",
                                   scale_by_probability=scale_by_probability, fit="resize", device=device)
    if probs.ndim == 2:  # one row per slice of a 2D model on a volume
        probs = probs.mean(dim=1)
    return maps.numpy(), {n: float(p) for n, p in zip(label_map.foreground_names, probs)}


def map_check_of_run(run_dir: str | Path, device: str = "cpu", erasure: bool = True) -> dict[str, float]:
    """:func:`~mosmoskit.pretraining.map_check.map_check` of a finished run folder (``last.pt``, its cohort)."""
    run_dir = Path(run_dir)
    model, config, label_map = load_pretrained(run_dir / "last.pt")
    _, split = prepare_pretraining_data(config.dataset, run_dir, label_map, config.spatial_dims, config.val_fraction,
                                        config.seed, progress=False, **config.phantom_settings())
    return map_check(model.to(device), config, split, label_map, device=device, erasure=erasure)
