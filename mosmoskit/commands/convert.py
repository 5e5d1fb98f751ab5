"""Convert a public benchmark download into the MSD layout the kit reads, or cut axial slices.

  btcv    Synapse RawData (Training/img/img0001.nii.gz, Training/label/label0001.nii.gz)
          -> imagesTr/ labelsTr/ dataset.json with the `btcv` label map
  amos    the amos22 release (dataset.json, imagesTr/ labelsTr/ imagesVa/ labelsVa/)
          -> one modality (CT = cases up to 500) of the chosen sections, `amos` label map
  slices  a converted 3D folder -> axial 2D slices for the 2D U-Net (patients kept together)

Examples:
  python -m mosmoskit convert btcv --src downloads/RawData --out data/btcv
  python -m mosmoskit convert amos --src downloads/amos22 --out data/amos_ct
  python -m mosmoskit convert slices --src data/btcv --out data/btcv_slices --spacing 1.5 1.5
"""

from __future__ import annotations

import argparse

HELP = "convert BTCV / AMOS downloads to the MSD layout, or a 3D folder to axial slices"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=("btcv", "amos", "slices"), help="what to convert")
    parser.add_argument("--src", required=True, help="btcv: the RawData folder; amos: the amos22 folder; "
                                                     "slices: a converted 3D MSD folder")
    parser.add_argument("--out", required=True, help="the MSD folder to write (must be empty unless --overwrite)")
    parser.add_argument("--modality", choices=("ct", "mr"), default="ct",
                        help="amos: CT (cases <= 500, default) or MR (cases > 500)")
    parser.add_argument("--sections", nargs="+", choices=("training", "validation"), default=["training", "validation"],
                        help="amos: the release's labelled sections to keep (default both)")
    parser.add_argument("--slices-per-case", type=int, default=16, help="slices: axial planes per volume (default 16)")
    parser.add_argument("--spacing", type=float, nargs=2, default=[1.5, 1.5], metavar=("X", "Y"),
                        help="slices: in-plane voxel size in mm (default 1.5 1.5)")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from mosmoskit.data.public import convert_amos, convert_btcv, slice_volumes

    start = time.perf_counter()
    if args.kind == "btcv":
        out = convert_btcv(args.src, args.out, overwrite=args.overwrite)
    elif args.kind == "amos":
        out = convert_amos(args.src, args.out, modality=args.modality, sections=tuple(args.sections),
                           overwrite=args.overwrite)
    else:
        out = slice_volumes(args.src, args.out, slices_per_case=args.slices_per_case, spacing=args.spacing,
                            overwrite=args.overwrite)
    dataset = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    print(f"wrote {dataset['numTraining']} training entries to {out} ({dataset['name']}) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
