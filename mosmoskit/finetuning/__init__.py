"""Fine-tuning (the MOSMOS transfer step): config, data and protocol, task, run, checkpoint loading.

* :class:`FinetuneConfig`: every choice of a run; the variants (random init, pre-trained encoder,
  maps only, full MOSMOS) are parameter choices.
* :func:`prepare_finetuning_data`: the cohort, its fixed held-out test split and the nested
  labelled subset of the label-scarce protocol.
* :class:`SegmentationTask`: a segmenter and its Dice + cross-entropy terms for the generic loop.
* :func:`run_finetuning`: train, evaluate per organ on the test set, write the run folder.
* :func:`load_finetuned`: rebuild the model from a checkpoint alone (see also
  :mod:`mosmoskit.inference` for whole-scan prediction).
"""

from mosmoskit.finetuning.config import FinetuneConfig, variant_name
from mosmoskit.finetuning.data import FinetuneData, FinetuneSplit, prepare_finetuning_data
from mosmoskit.finetuning.run import (
    FinetuneCheckpoint,
    FinetuneResult,
    load_finetuned,
    read_finetune_checkpoint,
    run_finetuning,
)
from mosmoskit.finetuning.task import SegmentationTask, per_class_dice

__all__ = [
    "FinetuneCheckpoint",
    "FinetuneConfig",
    "FinetuneData",
    "FinetuneResult",
    "FinetuneSplit",
    "SegmentationTask",
    "load_finetuned",
    "per_class_dice",
    "prepare_finetuning_data",
    "read_finetune_checkpoint",
    "run_finetuning",
    "variant_name",
]
