"""Write a seeded phantom cohort: CT-like abdominal volumes (or axial slices) with the 13 BTCV
organs, label maps and free-text reports, in the layout of a real data set.

Output: imagesTr/, labelsTr/ (NIfTI), dataset.json (MSD-style), label_map.json, reports.jsonl.
The same --seed gives byte-identical files.

Examples:
  python -m mosmoskit phantoms --out runs/phantoms --n 20 --seed 0
  python -m mosmoskit phantoms --out runs/phantoms2d --n 20 --dims 2 --slices-per-case 8
"""

from __future__ import annotations

import argparse

HELP = "write a seeded phantom cohort (images, labels, reports)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    parser.add_argument("--n", type=int, default=20, help="number of cases (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=3, help="3: volumes, 2: axial slices (default 3)")
    parser.add_argument("--shape", type=int, nargs="+", default=None,
                        help="voxels per axis (default 96 96 64 in 3D, 128 128 in 2D)")
    parser.add_argument("--spacing", type=float, nargs="+", default=None,
                        help="mm per axis (default 4 4 5 in 3D, 3 3 in 2D)")
    parser.add_argument("--slices-per-case", type=int, default=8, help="2D only: axial slices per case (default 8)")
    parser.add_argument("--dtype", choices=("int16", "float32"), default="int16", help="image data type (default int16 HU)")
    parser.add_argument("--config", default=None, help="JSON file with PhantomConfig fields to override")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    from mosmoskit.data.phantom import PhantomConfig, generate_cohort

    config = None
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config file {path} does not exist")
        try:
            config = PhantomConfig.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"--config file {path} is not valid JSON: {err}") from None
    start = time.perf_counter()
    root = generate_cohort(
        args.out, n=args.n, seed=args.seed, shape=args.shape, spacing=args.spacing, spatial_dims=args.dims,
        config=config, overwrite=args.overwrite, progress=not args.no_progress,
        slices_per_case=args.slices_per_case, image_dtype=args.dtype,
    )
    elapsed = time.perf_counter() - start
    dataset = json.loads((root / "dataset.json").read_text())
    gen = dataset["generator"]
    kind = "volumes" if args.dims == 3 else f"axial slices ({args.slices_per_case} per case)"
    print(f"wrote {args.n} phantom cases = {dataset['numTraining']} {kind} to {root}")
    print(f"  shape {tuple(gen['shape'])} at {tuple(gen['spacing'])} mm, seed {args.seed}, {gen['image_dtype']} HU")
    print("  imagesTr/  labelsTr/  dataset.json  label_map.json  reports.jsonl")
    print(f"  took {elapsed:.1f} s")
    return 0
