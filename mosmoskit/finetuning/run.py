"""One call from a :class:`FinetuneConfig` to a fine-tuned, evaluated, checkpointed segmenter.

``run_finetuning`` is what ``python -m mosmoskit finetune`` and notebook 03 call. It

1. finds (or generates) the labelled cohort and splits it by the label-scarce protocol
   (:mod:`mosmoskit.finetuning.data`): fixed held-out test patients, a nested labelled subset;
2. builds the segmenter with :func:`~mosmoskit.models.build_segmenter`, loading from the
   pre-training checkpoint what the variant asks for (encoder, tag head);
3. trains it with the generic :class:`~mosmoskit.training.Trainer` (resumable checkpoints of kind
   ``"finetune"``), validating on training-pool cases only;
4. segments every test case with the final model (sliding window over the whole scan, at the
   scan's own resolution) and computes per-organ Dice and HD95 (mm) against its label file.

The fused attention maps (variants with a frozen map branch) are made once per whole case, at the
pre-training geometry, by the same function everywhere
(:func:`mosmoskit.pretraining.maps.whole_image_maps`): in the cached part of the training and
validation pipelines (:func:`~mosmoskit.finetuning.data.fusion_map_transform`), and for each test
case by :func:`~mosmoskit.inference.predict_volume`; crops, augmentations and sliding windows carry
them as channels. The checkpoint holds the frozen map branch and its pre-training config, so
``predict`` remakes them for a new scan.

The run folder holds the checkpoints (``last.pt`` is the newest), ``history.jsonl``,
``config.json``, ``label_map.json``, ``metrics.json`` (protocol, split, per-organ summary,
what was loaded), ``metrics.csv`` (one row per test case and organ; in 2D per test *patient*, its
slices pooled, with ``metrics_slices.csv`` holding the per-slice rows) and, with
``save_predictions``, ``predictions/<case>.nii.gz`` in each input file's own orientation and
affine. With ``skip_bad_cases`` it also holds ``skipped_cases.json``: every labelled case the
screening left out, with the file and the reason (written before training starts), and
``metrics.json``'s ``data`` entry counts them. A folder with ``metrics.json`` is never reused
silently (``overwrite=True`` starts over); a folder with checkpoints but no metrics (an
interrupted run) is resumed.

Metrics are computed "in the original image space": the prediction is on the scan's full-resolution
grid (resampled back when ``spacing`` resamples), compared with the label file as stored. The
readers put both in RAS orientation first, which only permutes and flips axes (spacing permuted
with them), so Dice and HD95 in mm equal those computed on the arrays as stored.

A fine-tuning checkpoint's ``config`` entry holds everything needed to rebuild the model::

    {"finetune": FinetuneConfig fields, "pretrain": PretrainConfig fields or None,
     "pretrain_label_map": the pre-training label map or None,
     "segmenter": {"text_dim": ..., "segmenter_options": {...}},
     "training_spacing": [mm per axis], "load_report": {...}}

and its ``label_map`` entry is the fine-tuning label map. :func:`load_finetuned` reads it back.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from mosmoskit import distributed
from mosmoskit.config import config_from_dict, config_to_dict
from mosmoskit.finetuning.config import FinetuneConfig, variant_name
from mosmoskit.io import atomic_write_text
from mosmoskit.labels import LabelMap, load_label_map

__all__ = [
    "CHECKPOINT_KIND",
    "FinetuneCheckpoint",
    "FinetuneResult",
    "PretrainedParts",
    "evaluate_test_set",
    "load_finetuned",
    "read_finetune_checkpoint",
    "read_pretrained",
    "run_finetuning",
    "segmenter_options",
]

CHECKPOINT_KIND = "finetune"
PRETRAIN_KIND = "pretrain"
METRICS_NAME = "metrics.json"
PREDICTIONS_DIR = "predictions"
#: Written with ``skip_bad_cases``: the screening's report (every skipped case, file and reason).
SKIPPED_NAME = "skipped_cases.json"

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- results
@dataclass
class FinetuneResult:
    """What a finished fine-tuning run produced.

    Attributes:
        output_dir: the run folder.
        checkpoint: the final checkpoint (``last.pt`` refers to the same file).
        metrics: test-set summary from :func:`~mosmoskit.evaluation.segmentation.summarize_metrics`:
            ``organs`` (per-organ Dice/HD95 mean and std, status counts), ``mean_dice``,
            ``mean_hd95`` (mm), ``never_learned``, ``n_cases``. Empty on ranks other than 0 of a
            ``torchrun`` run (rank 0 scores the test set).
        per_case: case id -> organ -> ``{"dice", "hd95", "status", "gt_voxels", "pred_voxels"}``;
            in 2D, patient id -> organ -> the metrics of that patient's slices pooled
            (:func:`~mosmoskit.evaluation.segmentation.pool_by_group`), what ``metrics`` summarises.
        per_slice: in 2D, slice id -> organ -> the metrics of each slice alone (empty in 3D).
        history: per-step training logs and validation rows.
        split: case and patient counts (and ids) of the training pool, labelled subset,
            validation and test sets.
        protocol: the label-scarce protocol and variant of this run, as written next to its numbers.
        load_report: what was loaded from the pre-training checkpoint (a ``LoadReport`` dict).
        seconds: wall time of the training part.
        data: the data screening: ``{"screened": False}``, or with ``skip_bad_cases`` the counts
            of cases screened, kept and skipped, the skipped ids and the report's file name.
    """

    output_dir: Path
    checkpoint: Path
    metrics: dict[str, Any]
    per_case: dict[str, dict[str, dict[str, Any]]]
    history: list[dict[str, Any]]
    split: dict[str, Any]
    protocol: dict[str, Any]
    load_report: dict[str, Any]
    seconds: float
    per_slice: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PretrainedParts:
    """A pre-training checkpoint as fine-tuning needs it.

    Attributes:
        path: the file.
        config: its ``PretrainConfig``.
        label_map: its tag vocabulary (None if the checkpoint has none).
        state: the pre-training model's state dict.
        text_dim: width of the tag head's text query embedding, if it has one.
    """

    path: Path
    config: Any
    label_map: LabelMap | None
    state: dict[str, torch.Tensor]
    text_dim: int | None


@dataclass(frozen=True)
class FinetuneCheckpoint:
    """A fine-tuning checkpoint, read back.

    Attributes:
        path: the file.
        model: the segmenter with the fine-tuned weights, in eval mode, on the CPU (or
            ``map_location``).
        config: the run's ``FinetuneConfig``.
        label_map: the output channels' label map.
        pretrain_config: the pre-training config the architecture came from, or None.
        training_spacing: median voxel size (mm) of the training scans, or None.
        step: the optimiser step it was saved at.
        extra: the checkpoint's ``extra`` entry (last validation metrics).
    """

    path: Path
    model: Any
    config: FinetuneConfig
    label_map: LabelMap
    pretrain_config: Any
    training_spacing: tuple[float, ...] | None
    step: int | None
    extra: dict[str, Any]


# ----------------------------------------------------------------------------- pre-training
def read_pretrained(path: str | Path, config: FinetuneConfig, label_map: LabelMap) -> PretrainedParts:
    """Read a pre-training checkpoint and check that it fits the fine-tuning run.

    The spatial dimensions must match (the encoder is 2D or 3D). The tag vocabulary must be the
    fine-tuning label map's foreground names, in order, when the maps are fused (map channel k
    is organ k); an encoder-only transfer (``fusion="none"``) accepts any pre-training label map.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: not a readable mosmoskit checkpoint.
        ValueError: another kind of checkpoint; other spatial dimensions, another encoder width
            or another label map (the message names both).
    """
    from mosmoskit.pretraining.config import PretrainConfig
    from mosmoskit.training.checkpoint import load_checkpoint

    path = Path(path).expanduser()
    ckpt = load_checkpoint(path, map_location="cpu")
    if ckpt.get("kind") != PRETRAIN_KIND:
        raise ValueError(
            f"pretrained_checkpoint {path} is a {ckpt.get('kind')!r} checkpoint; fine-tuning starts from a "
            f"pre-training checkpoint (kind 'pretrain', written by run_pretraining)"
        )
    pconf = config_from_dict(PretrainConfig, ckpt["config"], source=str(path))
    if pconf.spatial_dims != config.spatial_dims:
        raise ValueError(
            f"pretrained_checkpoint {path} holds a {pconf.spatial_dims}D encoder ({pconf.image_encoder!r}) but the "
            f"fine-tuning run has spatial_dims={config.spatial_dims}; pre-train and fine-tune in the same dimension"
        )
    from mosmoskit.pretraining.model import DEFAULT_WIDTH

    their_width = pconf.encoder_width or DEFAULT_WIDTH.get(pconf.image_encoder, 0)
    if config.encoder_width and config.encoder_width != their_width:
        raise ValueError(
            f"encoder_width={config.encoder_width} but pretrained_checkpoint {path} holds a {pconf.image_encoder!r} "
            f"encoder of width {their_width}: give {their_width} or 0 (the width comes from the checkpoint)"
        )
    plm = None
    if ckpt.get("label_map"):
        plm = LabelMap.from_dict(ckpt["label_map"], name=str(pconf.label_map), source=str(path))
    if config.fusion != "none":
        theirs = plm.foreground_names if plm is not None else load_label_map(pconf.label_map).foreground_names
        their_name = plm.name if plm is not None else pconf.label_map
        if tuple(theirs) != tuple(label_map.foreground_names):
            raise ValueError(
                f"pretrained_checkpoint {path} was pre-trained with label map {their_name!r} ({len(theirs)} tags) but "
                f"the fine-tuning label map is {label_map.name!r} ({len(label_map.foreground_names)} organs): fused "
                f"attention map k must be organ k, so fuse maps only with the pre-training label map (or use "
                f"fusion='none' to transfer the encoder alone)"
            )
    state = ckpt["state"].get("model") if isinstance(ckpt["state"], Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"pretrained_checkpoint {path} has no model state (state['model'])")
    query = state.get("tag_head.query_text")
    return PretrainedParts(path=path, config=pconf, label_map=plm, state=dict(state),
                           text_dim=None if query is None else int(query.shape[1]))


def segmenter_options(config: FinetuneConfig) -> dict[str, Any]:
    """Network arguments the config sets (``encoder_width``/``decoder_width``) for ``build_segmenter``.

    Without a pre-trained checkpoint the width follows the pre-training encoders' convention:
    BasicUNet features (w, w, 2w, 4w, 8w, w); UNETR ViT hidden size w, MLP 2w, 4 heads (1 if w is
    not divisible by 4).
    """
    options: dict[str, Any] = {}
    # With a checkpoint the encoder's width is the checkpoint's (read_pretrained checked that an
    # explicit encoder_width equals it), so only the decoder width is an option.
    w = 0 if config.pretrained_checkpoint else config.encoder_width
    unetr = config.network == "unetr3d"
    if w and not unetr:
        options["features"] = (w, w, 2 * w, 4 * w, 8 * w, w)
    elif w:
        options.update(hidden_size=w, mlp_dim=2 * w, num_heads=4 if w % 4 == 0 else 1)
    if config.decoder_width and unetr:
        options["feature_size"] = config.decoder_width
    return options


def _build_model(
    config: FinetuneConfig, label_map: LabelMap, pretrained: PretrainedParts | None,
    architecture_only: bool = False, text_dim: int | None = None,
    pretrain_config: Any = None, pretrain_label_map: LabelMap | None = None,
) -> tuple[Any, Any]:
    from mosmoskit.models import build_segmenter

    if pretrained is not None:
        pretrain_config, pretrain_label_map, text_dim = pretrained.config, pretrained.label_map, pretrained.text_dim
    has_pretraining = pretrain_config is not None
    state = None
    if not architecture_only and pretrained is not None and config.uses_pretrained:
        state = pretrained.state
    return build_segmenter(
        config.spatial_dims, label_map, config.roi_size, fusion=config.fusion,
        pretrained_checkpoint_state=state, pretrain_config=pretrain_config,
        init_encoder=has_pretraining and config.init_encoder, tune_tag_head=config.tune_tag_head,
        share_encoder=config.share_encoder, gradient_checkpointing=config.gradient_checkpointing,
        pretrain_label_map=pretrain_label_map, segmenter_options=segmenter_options(config) or None,
        architecture_only=architecture_only and has_pretraining and config.uses_pretrained,
        text_dim=text_dim if architecture_only else None, segmenter=config.segmenter,
    )


# ---------------------------------------------------------------------------------- folder
def _prepare_folder(config: FinetuneConfig) -> Path:
    from mosmoskit.training.checkpoint import LAST_NAME, list_checkpoints
    from mosmoskit.training.loop import HISTORY_NAME

    out = Path(config.output_dir)
    finished = (out / METRICS_NAME).exists()
    if finished and not config.overwrite:
        raise FileExistsError(
            f"{out} already holds a finished fine-tuning run ({METRICS_NAME}); choose another output_dir or set "
            f"overwrite=True to start over there"
        )
    if config.overwrite and out.is_dir():
        for _, path in list_checkpoints(out):
            path.unlink()
        for name in (LAST_NAME, HISTORY_NAME, METRICS_NAME, "metrics.csv", SKIPPED_NAME):
            (out / name).unlink(missing_ok=True)
        for path in sorted((out / PREDICTIONS_DIR).glob("*.nii.gz")) if (out / PREDICTIONS_DIR).is_dir() else []:
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _json_safe(value: Any) -> Any:
    """NaN (an organ absent from both masks, an undefined HD95) becomes null: strict JSON has no NaN."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _protocol(config: FinetuneConfig, split: dict[str, Any]) -> dict[str, Any]:
    out = {
        "protocol": "label_scarce",
        "variant": variant_name(config),
        "label_fraction": None if config.n_labelled else config.label_fraction,
        "n_labelled": config.n_labelled or None,
        "labelled_patients": split["labelled"]["patients"],
        "labelled_cases": split["labelled"]["cases"],
        "train_pool_patients": split["train_pool"]["patients"],
        "test_patients": split["test"]["patients"],
        "test_cases": split["test"]["cases"],
        "seed": config.seed,
        "split_seed": config.split_seed,
        "test_fraction": config.test_fraction,
        "val_fraction": config.val_fraction,
        "dataset": config.dataset,
        "spatial_dims": config.spatial_dims,
        "fusion": config.fusion,
        "init_encoder": bool(config.pretrained_checkpoint) and config.init_encoder,
        "tune_tag_head": config.tune_tag_head,
        "pretrained_checkpoint": config.pretrained_checkpoint or None,
        "max_steps": config.max_steps,
        "evaluated_on": "held-out test patients, whole scans at their own resolution",
    }
    if config.dataset == "phantom":
        out["phantom_seed"] = config.phantom_seed
        out["phantom_cases"] = config.phantom_cases
    return out


# -------------------------------------------------------------------------------------- run
def evaluate_test_set(
    model: Any, data: Any, config: FinetuneConfig, predictions_dir: Path | None = None, progress: bool = False,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Segment every test case and compute per-organ Dice and HD95 (mm) on its own grid.

    Args:
        model: the fine-tuned segmenter (on the device to run on).
        data: the run's :class:`~mosmoskit.finetuning.data.FinetuneData`.
        config: the run's config (window, roi, spacing, sliding-window settings).
        predictions_dir: if given, each prediction is written there as ``<case>.nii.gz`` with
            the input file's shape, orientation and affine.
        progress: show a progress bar.

    Returns:
        case id -> :func:`~mosmoskit.evaluation.segmentation.organ_metrics` of that case.
    """
    from tqdm.auto import tqdm

    from mosmoskit.data.readers import load_image, load_label, save_like
    from mosmoskit.evaluation.segmentation import organ_metrics
    from mosmoskit.inference import predict_volume

    per_case = {}
    for case_id in tqdm(data.split.test, desc="test cases", unit="case", disable=not progress):
        case = data.cases[case_id]
        volume = load_image(case["image"])
        truth = load_label(case["label"], data.label_map, reference=volume)
        predicted, _ = predict_volume(model, volume, config, on_spacing_mismatch="ignore")
        per_case[case_id] = organ_metrics(predicted, truth.array, data.label_map, spacing=volume.spacing,
                                          source=str(case_id))
        if predictions_dir is not None:
            save_like(predicted, volume, predictions_dir / f"{case_id}.nii.gz", dtype=predicted.dtype)
    return per_case


def run_finetuning(config: FinetuneConfig, callbacks: Sequence[Any] = (), progress: bool = True) -> FinetuneResult:
    """Fine-tune, evaluate on the held-out test set, and save everything into ``config.output_dir``.

    Args:
        config: the run (variant, protocol, optimisation).
        callbacks: training-loop callbacks (e.g. a live loss plot).
        progress: show progress bars.

    Returns:
        :class:`FinetuneResult`.

    Raises:
        FileExistsError: the folder holds a finished run and ``config.overwrite`` is false.
        FileNotFoundError: the data set or the pre-training checkpoint does not exist.
        ValueError: a pre-training checkpoint of another kind, dimension or label map (both
            named); bad data (the message names the file; with ``skip_bad_cases`` only when no
            labelled case is left); a non-finite loss (the last good checkpoint is kept).
        ResourceError: (a ``MemoryError``) the training cache would not fit the host memory.
    """
    from monai.data import list_data_collate

    from mosmoskit.data.screening import screen_summary
    from mosmoskit.device import seed_everything
    from mosmoskit.evaluation.segmentation import pool_by_group, summarize_metrics, write_metrics_csv
    from mosmoskit.finetuning.data import (
        class_voxel_counts,
        fusion_map_transform,
        make_train_dataset,
        make_val_loader,
        median_spacing,
        prepare_finetuning_data,
    )
    from mosmoskit.finetuning.task import SegmentationTask
    from mosmoskit.losses.segmentation import frequency_class_weights
    from mosmoskit.training import Trainer, TrainerConfig

    label_map = load_label_map(config.label_map)
    pretrained = None
    if config.pretrained_checkpoint:
        pretrained = read_pretrained(config.pretrained_checkpoint, config, label_map)
    main = distributed.is_main_process()
    # Under torchrun: rank 0 prepares the folder and generates the phantoms, the others then read them.
    with distributed.main_process_first():
        out = _prepare_folder(config) if main else Path(config.output_dir)
        seed_everything(config.seed)
        data = prepare_finetuning_data(config, progress=progress and main)
    label_map = data.label_map
    data_record = screen_summary(data.screening)
    if data.screening is not None and main:
        # Written before training, so that the list is there to read while the run goes on.
        data.screening.write_report(out / SKIPPED_NAME)
        data_record["report"] = SKIPPED_NAME
        if data.screening.skipped:
            logger.warning("skipped %d of %d labelled cases that could not be used (listed with the reasons in "
                           "%s):\n%s", len(data.screening.skipped), data.screening.n_cases, out / SKIPPED_NAME,
                           data.screening.report(data.source.parent))
    training_spacing = tuple(config.spacing) or median_spacing(
        [data.cases[c]["image"] for c in data.split.labelled], config.spatial_dims)
    if main:
        atomic_write_text(out / "config.json", json.dumps(config_to_dict(config), indent=1) + "\n")
        label_map.save(out / "label_map.json")

    model, report = _build_model(config, label_map, pretrained)
    class_weights = None
    if config.ce_class_weights == "sqrt_inverse_frequency":
        class_weights = frequency_class_weights(class_voxel_counts(data, config, progress=progress and main))
    run_record = {
        "finetune": config_to_dict(config),
        "pretrain": None if pretrained is None else config_to_dict(pretrained.config),
        "pretrain_label_map": None if pretrained is None or pretrained.label_map is None
        else pretrained.label_map.to_dict(),
        "segmenter": {"text_dim": None if pretrained is None else pretrained.text_dim,
                      "segmenter_options": {k: list(v) if isinstance(v, tuple) else v
                                            for k, v in segmenter_options(config).items()}},
        "training_spacing": list(training_spacing),
        "load_report": report.to_dict(),
        "ce_class_weights": class_weights,
    }
    # Models that fuse maps of a frozen map branch get them made once per whole case, in the cached
    # prefix of the pipeline (before windowing and augmentation), and carried through crops and windows.
    map_transform = fusion_map_transform(model)
    train_ds = make_train_dataset(data, config, progress=progress, map_transform=map_transform)
    val_loader = make_val_loader(data, config, map_transform=map_transform)
    # Only an encoder that pre-training filled has something to keep; a random one learns at lr.
    encoder_pretrained = bool(config.pretrained_checkpoint) and config.init_encoder
    task = SegmentationTask(model, label_map, config.roi_size, config.sw_batch_size, config.sw_overlap,
                            batch_dice=config.batch_dice, ce_class_weights=class_weights,
                            encoder_lr_scale=config.encoder_lr_scale if encoder_pretrained else 1.0)
    trainer_config = TrainerConfig(
        max_steps=config.max_steps, lr=config.learning_rate, weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps, grad_clip_norm=config.grad_clip_norm or None, device=config.device,
        seed=config.seed, output_dir=str(out), val_every=config.val_every,
        checkpoint_every=config.checkpoint_every, progress=progress, resume=True,
    )
    trainer = Trainer(
        task, trainer_config, train_dataset=train_ds, batch_size=config.batch_size, collate_fn=list_data_collate,
        num_workers=config.num_workers, drop_last=False, val_loader=val_loader, callbacks=list(callbacks),
        kind=CHECKPOINT_KIND, run_config=run_record, label_map=label_map,
    )
    start = time.perf_counter()
    fit = trainer.fit()
    seconds = time.perf_counter() - start
    split = data.split.summary()
    if not main:
        # The test set is scored once, by rank 0; the other processes return the training outcome only.
        return FinetuneResult(
            output_dir=out, checkpoint=Path(fit.last_checkpoint), metrics={}, per_case={}, per_slice={},
            history=list(fit.history), split=split, protocol=_protocol(config, split), load_report=report.to_dict(),
            seconds=seconds, data=data_record,
        )

    predictions_dir = out / PREDICTIONS_DIR if config.save_predictions else None
    per_image = evaluate_test_set(task.model, data, config, predictions_dir, progress=progress)
    per_slice: dict[str, Any] = {}
    per_case, unit = per_image, "image"
    if config.spatial_dims == 2 and len(set(data.split.groups[c] for c in per_image)) < len(per_image):
        # Slices of one patient: score the patient, as a 3D network would be scored (pool_by_group).
        per_slice, unit = per_image, "patient (its 2D slices pooled)"
        per_case = pool_by_group(per_image, data.split.groups)
        write_metrics_csv(out / "metrics_slices.csv", per_slice)
    summary = summarize_metrics(per_case)
    protocol = _protocol(config, split)
    write_metrics_csv(out / "metrics.csv", per_case)
    record = {
        "protocol": protocol,
        "test_unit": unit,
        "test": summary,
        **({"test_per_slice": summarize_metrics(per_slice)} if per_slice else {}),
        "split": split,
        "data": data_record,
        "load_report": report.to_dict(),
        "train": {"steps": int(fit.step), "seconds": round(seconds, 1), "last_validation": dict(fit.metrics),
                  "training_spacing_mm": list(training_spacing),
                  "ce_class_weights": None if class_weights is None else
                  {name: round(w, 3) for name, w in zip(label_map.names, class_weights)}},
    }
    atomic_write_text(out / METRICS_NAME, json.dumps(_json_safe(record), indent=1) + "\n")
    return FinetuneResult(
        output_dir=out, checkpoint=Path(fit.last_checkpoint), metrics=summary, per_case=per_case, per_slice=per_slice,
        history=list(fit.history), split=split, protocol=protocol, load_report=report.to_dict(), seconds=seconds,
        data=data_record,
    )


# ---------------------------------------------------------------------------------- loading
def read_finetune_checkpoint(checkpoint: str | Path, map_location: str = "cpu") -> FinetuneCheckpoint:
    """Rebuild a fine-tuned segmenter from its checkpoint alone.

    Args:
        checkpoint: a file written by :func:`run_finetuning` (``last.pt`` or ``checkpoint_step*.pt``).
        map_location: where the weights are loaded.

    Returns:
        :class:`FinetuneCheckpoint` (model in eval mode).

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: not a readable mosmoskit checkpoint.
        ValueError: a checkpoint of another kind (e.g. a pre-training one), or one whose weights
            do not fit the model its config describes (the message names the file).
    """
    from mosmoskit.pretraining.config import PretrainConfig
    from mosmoskit.training.checkpoint import load_checkpoint

    path = Path(checkpoint)
    ckpt = load_checkpoint(path, map_location=map_location)
    if ckpt.get("kind") != CHECKPOINT_KIND:
        raise ValueError(
            f"{path} is a {ckpt.get('kind')!r} checkpoint, not a fine-tuning one: predict and load_finetuned need a "
            f"checkpoint written by run_finetuning (kind 'finetune')"
        )
    record = ckpt["config"]
    if not isinstance(record, Mapping) or not isinstance(record.get("finetune"), Mapping):
        raise ValueError(f"{path}: a 'finetune' checkpoint without its FinetuneConfig (config['finetune']); damaged?")
    config = config_from_dict(FinetuneConfig, record["finetune"], source=str(path))
    if not ckpt.get("label_map"):
        raise ValueError(f"{path}: the checkpoint carries no label map")
    label_map = LabelMap.from_dict(ckpt["label_map"], name=config.label_map, source=str(path))
    pconf = None
    if record.get("pretrain"):
        pconf = config_from_dict(PretrainConfig, record["pretrain"], source=f"{path} (pre-training config)")
    plm = None
    if record.get("pretrain_label_map"):
        plm = LabelMap.from_dict(record["pretrain_label_map"], source=f"{path} (pre-training label map)")
    segmenter = record.get("segmenter") or {}
    model, _ = _build_model(config, label_map, None, architecture_only=True, text_dim=segmenter.get("text_dim"),
                            pretrain_config=pconf, pretrain_label_map=plm)
    state = ckpt["state"].get("model") if isinstance(ckpt["state"], Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: no model weights (state['model'])")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: the weights do not fit the model its config describes: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    spacing = record.get("training_spacing")
    trainer = ckpt["state"].get("trainer") or {}
    return FinetuneCheckpoint(
        path=path, model=model.to(map_location).eval(), config=config, label_map=label_map, pretrain_config=pconf,
        training_spacing=None if not spacing else tuple(float(s) for s in spacing),
        step=trainer.get("step") if isinstance(trainer, Mapping) else None, extra=dict(ckpt.get("extra") or {}),
    )


def load_finetuned(checkpoint: str | Path, map_location: str = "cpu") -> tuple[Any, FinetuneConfig, LabelMap]:
    """The fine-tuned segmenter, its config and label map, from a checkpoint alone.

    Example:
        >>> model, config, label_map = load_finetuned("runs/finetune/last.pt")   # doctest: +SKIP
        >>> from mosmoskit.inference import predict_volume                      # doctest: +SKIP
        >>> labels, _ = predict_volume(model, load_image("ct.nii.gz"), config)   # doctest: +SKIP

    Raises:
        As :func:`read_finetune_checkpoint`.
    """
    loaded = read_finetune_checkpoint(checkpoint, map_location=map_location)
    return loaded.model, loaded.config, loaded.label_map
