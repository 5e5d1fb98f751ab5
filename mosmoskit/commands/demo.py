"""The README's main job: notebooks 01 -> 04 end to end on freshly generated phantoms, no download.

It is ``run-notebooks`` with parameters sized for a 2-core CPU (see DEMO_PARAMETERS):

  01 data exploration       a 3D phantom cohort: label audit, spacing table, HU histograms, reports and tags
  02 report pre-training    the 2D U-Net encoder + MiniLM on phantom slices and their reports
  03 fine-tuning            2D U-Net with 02's encoder and attention maps fused at the decoder (MOSMOS)
  04 mask inspection        predictions, Dice table, attention heat maps, an exported NIfTI

Executed notebooks (with outputs) and HTML renderings go to RUN_DIR/notebooks/, each notebook's files
to RUN_DIR/NN_name/, the timings and the Dice table to RUN_DIR/results.md. Re-running resumes;
different parameters in the same folder are refused unless --overwrite.

Examples:
  python -m mosmoskit demo --out runs/demo
  python -m mosmoskit demo --out runs/demo_long --set 03.max_steps=1500
"""

from __future__ import annotations

import argparse
import time
from typing import Any

HELP = "the main job: notebooks 01-04 end to end on phantoms (CPU sized)"

#: Parameters of the main job, sized so that 01 -> 04 take about a quarter of an hour on a 2-core CPU
#: (the README gives the measured time). Every other parameter keeps the notebook's default.
DEMO_PARAMETERS: dict[str, Any] = {
    "02.max_steps": 400,
    "02.val_every": 200,
    "02.checkpoint_every": 200,
    "03.fusion": "decoder",
    "03.max_steps": 800,
    "04.organ": "spleen",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (resumed when it holds this run)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="[NN.]NAME=VALUE",
                        help="change a notebook parameter (repeatable), e.g. --set 03.max_steps=1500")
    parser.add_argument("--overwrite", action="store_true",
                        help="run again into a folder that holds results of other parameters")
    parser.add_argument("--no-html", action="store_true", help="do not write HTML renderings")


def run(args: argparse.Namespace) -> int:
    import papermill

    from mosmoskit.notebook_runs import parse_assignments, run_pipeline

    try:
        parameters = {**DEMO_PARAMETERS, **parse_assignments(args.assignments)}
    except ValueError as err:
        print(f"error: {err}")
        return 2
    start = time.perf_counter()
    try:
        state = run_pipeline(args.out, parameters, overwrite=args.overwrite, html=not args.no_html)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}")
        return 2
    except papermill.PapermillExecutionError as err:
        print(f"error: a notebook failed: {err.ename}: {err.evalue}")
        return 1
    total = time.perf_counter() - start
    print(f"\nmain job in {args.out} ({total:.0f} s this time; reused notebooks show the time they took)")
    for key, entry in state["notebooks"].items():
        print(f"  {key}  {entry['status']:<6} {entry.get('seconds') or 0.0:>7.1f} s  {entry.get('executed')}")
        if entry.get("html"):
            print(f"  {'':<2}  {'':<6} {'':>9}  {entry['html']}")
    ft = state.get("finetune_results")
    if ft and ft.get("mean_dice") is not None:
        print(f"\nfine-tuning ({ft['variant']}): test mean Dice {ft['mean_dice']:.3f} over {ft['n_cases']} "
              f"test cases (unit: {ft['unit']})")
        intervals = ft.get("organs_ci95") or {}
        for organ, dice in ft["organs"].items():
            shown = "-" if dice is None or dice != dice else f"{dice:.3f}"  # NaN / null: nothing to score
            bounds = intervals.get(organ)
            ci = "" if not bounds or any(b is None or b != b for b in bounds) else \
                f"  (95% CI {bounds[0]:.3f}-{bounds[1]:.3f})"
            print(f"  {organ:<30} {shown}{ci}")
        if ft.get("weak_points"):
            print(f"\n{ft['weak_points']}")
    print(f"\nresults table: {args.out}/results.md")
    print(f"figures and files: {args.out}/01_explore/, 02_pretrain/, 03_finetune/, 04_inspect/")
    return 0
