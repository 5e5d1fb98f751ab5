"""Report-supervised pre-training (MOSMOS objectives A and B), evaluated on held-out pairs.

Every option is a field of PretrainConfig (the same names as the parameters of notebook 02;
dashes or underscores both work). Tuples take several values, booleans come as --flag/--no-flag.
Without options it pre-trains on a generated phantom cohort with the packaged MiniLM text encoder.

The run folder (--output-dir) receives checkpoints/ (resumable: run the same command again after an
interruption), history.jsonl, config.json, label_map.json and metrics.json.

Examples:
  python -m mosmoskit pretrain --output-dir runs/pretrain --max-steps 400
  python -m mosmoskit pretrain --text-encoder tiny --image-size 64 64 --max-steps 20 --output-dir runs/smoke
  python -m mosmoskit pretrain --dataset path/to/msd_folder --label-map btcv --overwrite
  torchrun --nproc_per_node=4 -m mosmoskit pretrain --output-dir runs/pretrain_4gpu   (see docs/distributed.md)
"""

from __future__ import annotations

import argparse

from mosmoskit.commands.config_options import add_config_arguments, config_from_args, field_help
from mosmoskit.pretraining.config import PretrainConfig

__all__ = ["HELP", "add_arguments", "add_config_arguments", "config_from_args", "field_help", "run"]

HELP = "pre-train the image encoder and tag head on image-report pairs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, PretrainConfig, title="pre-training options (PretrainConfig fields)")


def run(args: argparse.Namespace) -> int:
    """Pre-train as the options say; under ``torchrun`` every process runs this, rank 0 reports.

    Args:
        args: the parsed command line (PretrainConfig fields).

    Returns:
        The exit status (0).
    """
    from mosmoskit.distributed import process_group_from_env

    config = config_from_args(PretrainConfig, args)
    # Under torchrun: join the process group and take this process's GPU before anything touches CUDA.
    with process_group_from_env(config.device):
        return _run(config)


def _run(config: PretrainConfig) -> int:
    """The run itself; every process takes part, only rank 0 prints (the others return 0 silently)."""
    from mosmoskit.config import config_to_dict
    from mosmoskit.distributed import is_main_process, world_size
    from mosmoskit.pretraining.report import format_metrics, format_pointing
    from mosmoskit.pretraining.run import run_pretraining

    main = is_main_process()
    defaults = config_to_dict(PretrainConfig())
    changed = {k: v for k, v in config_to_dict(config).items() if v != defaults[k]}
    if main:
        processes = f" on {world_size()} processes (batch_size per process)" if world_size() > 1 else ""
        print("pre-training with " + (", ".join(f"{k}={v}" for k, v in changed.items()) or "the default config")
              + processes)
    result = run_pretraining(config, progress=main)
    if not main:
        return 0
    print()
    print(format_metrics(result.metrics))
    if any(k.startswith("pointing/") for k in result.metrics):
        print()
        print(format_pointing(result.metrics))
    out = result.output_dir
    print()
    print(f"wrote {out}/ in {result.seconds:.1f} s of training:")
    print(f"  {'checkpoint':<15} {result.checkpoint}")
    for name, what in (("metrics.json", "held-out metrics"), ("history.jsonl", "loss per step"),
                       ("config.json", "the resolved config"), ("label_map.json", "the organ tags")):
        if (out / name).exists():
            print(f"  {name:<15} {what}")
    return 0
