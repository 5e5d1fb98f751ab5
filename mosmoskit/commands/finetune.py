"""Fine-tune a segmenter (2D U-Net or 3D UNETR) with or without the pre-trained model, and
evaluate it per organ on a fixed held-out test set.

Every option is a field of FinetuneConfig (the same names as the parameters of notebook 03;
dashes or underscores both work). Tuples take several values, booleans come as --flag/--no-flag.
Without options it fine-tunes a randomly initialised 2D U-Net on a generated phantom cohort.

The variants are option choices:
  random init                    (no --pretrained-checkpoint)
  pre-trained encoder, no maps   --pretrained-checkpoint CKPT --fusion none
  maps, random encoder           --pretrained-checkpoint CKPT --fusion input --no-init-encoder
  full MOSMOS                    --pretrained-checkpoint CKPT --fusion input   (or decoder)

The run folder (--output-dir) receives checkpoints (resumable: run the same command again after
an interruption), history.jsonl, config.json, label_map.json, metrics.json (protocol, split,
per-organ test metrics), metrics.csv (per test case and organ) and predictions/.

Examples:
  python -m mosmoskit finetune --output-dir runs/ft_random --max-steps 300
  python -m mosmoskit finetune --pretrained-checkpoint runs/pretrain/last.pt --fusion input \\
      --label-fraction 0.1 --seed 1 --output-dir runs/ft_mosmos_10pct_s1
  python -m mosmoskit finetune --dataset path/to/msd_folder --spatial-dims 3 --roi-size 96 96 96 \\
      --spacing 1.5 1.5 2.0 --lr 1e-4 --overwrite
  torchrun --nproc_per_node=4 -m mosmoskit finetune --output-dir runs/ft_4gpu   (see docs/distributed.md)
"""

from __future__ import annotations

import argparse

from mosmoskit.commands.config_options import add_config_arguments, config_from_args
from mosmoskit.finetuning.config import FinetuneConfig

__all__ = ["HELP", "add_arguments", "format_summary", "run"]

HELP = "fine-tune a segmenter (optionally with pre-trained encoder and attention maps) and evaluate it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, FinetuneConfig, title="fine-tuning options (FinetuneConfig fields)")


def format_summary(metrics: dict, top: int | None = None) -> str:
    """Per-organ test Dice and HD95 as an aligned text table, worst Dice first."""
    import math

    organs = metrics["organs"]
    rows = sorted(organs.items(), key=lambda kv: (math.isnan(kv[1]["dice_mean"]), kv[1]["dice_mean"]))
    if top is not None:
        rows = rows[:top]
    width = max([len("organ")] + [len(name) for name, _ in rows])
    lines = [f"{'organ':<{width}}  {'Dice':>6}  {'HD95 mm':>8}  cases"]
    for name, s in rows:
        dice = "-" if math.isnan(s["dice_mean"]) else f"{s['dice_mean']:.3f}"
        hd = "-" if math.isnan(s["hd95_mean"]) else f"{s['hd95_mean']:.1f}"
        lines.append(f"{name:<{width}}  {dice:>6}  {hd:>8}  {s['n_dice']}")
    lines.append(f"{'mean':<{width}}  {metrics['mean_dice']:>6.3f}  {metrics['mean_hd95']:>8.1f}  "
                 f"{metrics['n_cases']} test case(s); organs never learned (Dice < {metrics['never_learned_dice']}): "
                 f"{metrics['never_learned']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Fine-tune and evaluate as the options say; under ``torchrun`` every process runs this, rank 0 reports.

    Args:
        args: the parsed command line (FinetuneConfig fields).

    Returns:
        The exit status (0).
    """
    from mosmoskit.distributed import process_group_from_env

    config = config_from_args(FinetuneConfig, args)
    # Under torchrun: join the process group and take this process's GPU before anything touches CUDA.
    with process_group_from_env(config.device):
        return _run(config)


def _run(config: FinetuneConfig) -> int:
    """The run itself; every process takes part, only rank 0 prints (the others return 0 silently)."""
    from mosmoskit.config import config_to_dict
    from mosmoskit.distributed import is_main_process, world_size
    from mosmoskit.finetuning.run import run_finetuning

    main = is_main_process()
    defaults = config_to_dict(FinetuneConfig())
    changed = {k: v for k, v in config_to_dict(config).items() if v != defaults[k]}
    if main:
        processes = f" on {world_size()} processes (batch_size per process)" if world_size() > 1 else ""
        print("fine-tuning with " + (", ".join(f"{k}={v}" for k, v in changed.items()) or "the default config")
              + processes)
    result = run_finetuning(config, progress=main)
    if not main:
        return 0
    p = result.protocol
    amount = f"{p['label_fraction']:.0%} of" if p["label_fraction"] is not None else f"{p['n_labelled']} of"
    print()
    print(f"{p['variant']}: {amount} {p['train_pool_patients']} training patients labelled "
          f"({p['labelled_patients']} patient(s), {p['labelled_cases']} case(s)), seed {p['seed']}; "
          f"test: {p['test_patients']} patient(s), split seed {p['split_seed']}")
    print(format_summary(result.metrics))
    out = result.output_dir
    print()
    print(f"wrote {out}/ in {result.seconds:.1f} s of training:")
    print(f"  {'checkpoint':<15} {result.checkpoint}")
    for name, what in (("metrics.json", "protocol, split and per-organ test metrics"),
                       ("metrics.csv", "Dice and HD95 per test case and organ"),
                       ("history.jsonl", "loss per step"), ("config.json", "the resolved config"),
                       ("predictions", "test-case predictions on the input grids")):
        if (out / name).exists():
            print(f"  {name:<15} {what}")
    return 0
