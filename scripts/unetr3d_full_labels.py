"""UNETR 3D fine-tuning at full labels on phantoms, sized to a wall-clock budget.

A GPU check for the 3D segmenter: generate 20 phantoms at 2.4 x 2.4 x 2.5 mm (160x160x128 voxels),
time a short probe run, then fine-tune UNETR (ViT-B, 96^3 crops, random initialisation) for as many
steps as the budget allows (or ``--max-steps``), and write the per-organ test Dice.

Usage (from the repository root):
    python scripts/unetr3d_full_labels.py --out runs/unetr3d --budget-s 300 --lr 4e-4   # a GPU
    python scripts/unetr3d_full_labels.py --out runs/unetr3d_tiny --tiny                # CPU, seconds

Writes ``OUT/unetr3d_full_labels.json`` (steps, seconds, Dice per organ, device, peak GPU memory,
the config) and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/unetr3d_full_labels.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/unetr3d", help="output folder (default runs/unetr3d)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="wall-clock budget of the whole script")
    parser.add_argument("--max-steps", type=int, default=0, help="fixed number of steps (0: from the budget)")
    parser.add_argument("--lr", type=float, default=4e-4, help="peak learning rate (default 4e-4)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes for a CPU smoke run")
    args = parser.parse_args(argv)

    import torch

    from mosmoskit.finetuning.config import FinetuneConfig
    from mosmoskit.finetuning.data import ensure_phantom_cohort
    from mosmoskit.finetuning.run import run_finetuning
    from mosmoskit.io import atomic_write_text

    out = Path(args.out)
    start = time.time()
    base = dict(spatial_dims=3, phantom_cases=20, phantom_shape=(160, 160, 128), phantom_spacing=(2.4, 2.4, 2.5),
                roi_size=(96, 96, 96), batch_size=2, crops_per_case=2, lr=args.lr, weight_decay=1e-5,
                warmup_steps=50, num_workers=8, val_every=0, sw_batch_size=4, save_predictions=False,
                device="auto", overwrite=True)
    if args.tiny:
        base.update(phantom_cases=5, phantom_shape=(64, 64, 48), phantom_spacing=(6.0, 6.0, 6.7), roi_size=(32, 32, 32),
                    encoder_width=32, num_workers=0, batch_size=1, warmup_steps=1)
    data = ensure_phantom_cohort(out / "data", FinetuneConfig(**base, output_dir=str(out)), progress=False)
    base["dataset"] = str(data)
    print(f"cohort ready in {time.time() - start:.0f} s", flush=True)

    steps = args.max_steps
    probe_s_per_step = None
    if not steps:
        n_probe = 5 if args.tiny else 20
        probe = run_finetuning(FinetuneConfig(**base, max_steps=n_probe, checkpoint_every=10**6,
                                              output_dir=str(out / "probe")), progress=False)
        probe_s_per_step = probe.seconds / n_probe
        # 45 s are kept for the test-set inference and writing the results.
        steps = int(max(10, min(4000, (args.budget_s - (time.time() - start) - 45.0) / probe_s_per_step)))
        print(f"probe: {probe_s_per_step:.3f} s/step ({n_probe} steps, start-up included); running {steps} steps",
              flush=True)
    result = run_finetuning(FinetuneConfig(**base, max_steps=steps, checkpoint_every=10**6,
                                           output_dir=str(out / "unetr3d")), progress=False)
    cuda = torch.cuda.is_available()
    summary = {
        "steps": steps, "train_seconds": result.seconds, "probe_s_per_step": probe_s_per_step,
        "mean_dice": result.metrics["mean_dice"], "mean_hd95": result.metrics["mean_hd95"],
        "n_test_cases": result.metrics["n_cases"],
        "organs": {o: {"dice": v["dice_mean"], "dice_std": v["dice_std"], "hd95": v["hd95_mean"]}
                   for o, v in result.metrics["organs"].items()},
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "total_seconds": time.time() - start,
        "config": {k: v for k, v in base.items() if k != "dataset"},
    }
    text = json.dumps(summary, indent=1, default=str)
    atomic_write_text(out / "unetr3d_full_labels.json", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
