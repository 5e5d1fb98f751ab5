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
    from mosmoskit.config import config_to_dict
    from mosmoskit.pretraining.report import format_metrics, format_pointing
    from mosmoskit.pretraining.run import run_pretraining

    config = config_from_args(PretrainConfig, args)
    defaults = config_to_dict(PretrainConfig())
    changed = {k: v for k, v in config_to_dict(config).items() if v != defaults[k]}
    print("pre-training with " + (", ".join(f"{k}={v}" for k, v in changed.items()) or "the default config"))
    result = run_pretraining(config, progress=True)
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
