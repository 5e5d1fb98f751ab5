"""Segment a scan with a fine-tuned checkpoint; the result lies exactly on the input.

SCAN is a NIfTI file or a DICOM series folder. OUT (.nii.gz or .nii) gets the input's shape and
affine and holds integer ids of the checkpoint's label map; OUT.json next to it names every label
and records the checkpoint, the input and the kit version. With --attention-maps, the K
pixel-tag attention maps the model fused are written as a 4D NIfTI OUT_attention.nii.gz (needs a
model fine-tuned with --fusion input or decoder).

Scans are windowed as in training. If the run resampled its training scans (its `spacing`
field), the scan is resampled to that spacing and the labels back onto the scan's own grid;
otherwise a scan whose voxel size differs from the training scans' by more than 10% is reported
(a warning, or an error with --strict-spacing).

Examples:
  python -m mosmoskit predict --checkpoint runs/finetune/last.pt --input ct.nii.gz --output ct_seg.nii.gz
  python -m mosmoskit predict --checkpoint runs/ft_mosmos/last.pt --input dicom_folder/ \\
      --output seg.nii.gz --attention-maps --device cuda --accumulate-on-cpu
"""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = "segment a NIfTI file or DICOM series with a fine-tuned checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a fine-tuning checkpoint (e.g. runs/finetune/last.pt)")
    parser.add_argument("--input", required=True, help="the scan: a .nii/.nii.gz file or a DICOM series folder")
    parser.add_argument("--output", required=True,
                        help="output labels, .nii.gz or .nii (OUT.json is written next to it)")
    parser.add_argument("--attention-maps", action="store_true",
                        help="also write the K attention maps as OUT_attention.nii.gz (models with fusion)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N (default auto)")
    parser.add_argument("--overlap", type=float, default=None,
                        help="sliding-window overlap in [0, 1) (default: the checkpoint's sw_overlap)")
    parser.add_argument("--sw-batch-size", type=int, default=None,
                        help="windows per forward pass (default: the checkpoint's sw_batch_size)")
    parser.add_argument("--accumulate-on-cpu", action="store_true",
                        help="sum window outputs in CPU memory (large volumes on a small GPU)")
    parser.add_argument("--strict-spacing", action="store_true",
                        help="refuse a scan whose voxel size differs from the training scans' (default: warn)")
    parser.add_argument("--no-overwrite", action="store_true", help="refuse to replace existing output files")


def run(args: argparse.Namespace) -> int:
    import json

    from mosmoskit.inference import predict_file

    files = predict_file(
        args.checkpoint, args.input, args.output, attention_maps=args.attention_maps, device=args.device,
        overlap=args.overlap, sw_batch_size=args.sw_batch_size, accumulate_on_cpu=args.accumulate_on_cpu,
        on_spacing_mismatch="raise" if args.strict_spacing else "warn", overwrite=not args.no_overwrite,
    )
    sidecar = json.loads(files.sidecar.read_text(encoding="utf-8"))
    found = {name: n for name, n in sidecar["voxels_per_label"].items() if n}
    print(f"wrote {files.labels} ({sidecar['label_map']} ids, shape {tuple(sidecar['input_shape'])})")
    print(f"  {files.sidecar}  label names and ids, checkpoint, input")
    if files.attention is not None:
        print(f"  {files.attention}  {len(sidecar['attention_map_channels'])} attention maps (4D, channel last)")
    print("  organs found: " + (", ".join(f"{k} ({v} voxels)" for k, v in found.items()) or "none"))
    return 0
