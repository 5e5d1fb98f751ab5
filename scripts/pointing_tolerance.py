"""Do a pre-training's attention maps localise better than a fixed guess, at any tolerance?

The pointing game counts a hit when a map's peak lies within ``tolerance`` voxels of the organ. A
coarse map (UNETR's ViT at 48 x 48 x 32 has 3 x 3 x 2 tokens) can miss at tolerance 0 by its
interpolation plateau alone, and at one feature cell a fixed guess is near most large organs too.
This re-scores finished pre-training runs at several tolerances, the maps and the fixed-position
baseline side by side, on the run's own held-out pairs (same shifts as its validation):

    python scripts/pointing_tolerance.py runs/study/stages/02_pretrain_*

Prints one Markdown table (run, network, tolerance in voxels, maps, baseline, maps - baseline, pairs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="pre-training run folders (with last.pt)")
    parser.add_argument("--tolerance", type=int, action="append", default=None,
                        help="voxels (repeatable); default 0, half a feature cell and one cell")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from mosmoskit.pretraining.run import pointing_at_tolerances

    print("| run | encoder | tolerance (voxels) | maps | baseline | maps - baseline | held-out pairs |")
    print("|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    for run in args.runs:
        if not (run / "last.pt").is_file():
            print(f"{run}: no last.pt, not a finished pre-training run", file=sys.stderr)
            return 2
        config = json.loads((run / "config.json").read_text(encoding="utf-8"))
        for row in pointing_at_tolerances(run, args.tolerance, device=args.device):
            print(f"| {run.name} | {config.get('image_encoder')} | {row['tolerance']} | {row['maps']:.2f} | "
                  f"{row['baseline']:.2f} | {row['maps'] - row['baseline']:+.2f} | {row['n_pairs']} |")
    print(f"\n{len(args.runs)} run(s) in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
