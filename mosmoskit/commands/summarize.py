"""Summarise a data folder (MSD layout: imagesTr/, labelsTr/, dataset.json, optional reports.jsonl):
cases, image shapes/spacings/orientations, a label audit of every mask, organ sizes and intensities,
and - with reports - the organ tags the report parser reads and how well they agree with the
ground-truth tags (phantoms) and with the masks.

The label audit checks every case and lists all failing ones at once; by default any failure
stops the command (exit code 2); --lenient summarises the cases that pass and exits with 1 when
any case failed (0 when all passed), so scripts still notice.

Examples:
  python -m mosmoskit summarize runs/phantoms
  python -m mosmoskit summarize /data/btcv --label-map btcv --out runs/btcv_summary
"""

from __future__ import annotations

import argparse

HELP = "summarise a data folder: images, label audit, organs, report tags"

#: Rows of the per-case table printed to the terminal (summary.md always has all of them).
DEFAULT_PRINTED_CASES = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="data folder holding dataset.json")
    parser.add_argument("--out", default=None,
                        help="also write summary.json, summary.md and cohort_overview.png into this folder")
    parser.add_argument("--label-map", default=None,
                        help="label map the masks must use: a shipped name (btcv, amos, ...) or a JSON file "
                             "(default: the one dataset.json names or implies)")
    parser.add_argument("--lenient", action="store_true",
                        help="do not stop on label-audit failures; report them and summarise the rest")
    parser.add_argument("--channel", type=int, default=None,
                        help="for images holding several volumes (e.g. 4 MR sequences), which one to read")
    parser.add_argument("--figure-cases", type=int, default=3, help="cases shown in cohort_overview.png (default 3)")
    parser.add_argument("--max-rows", type=int, default=DEFAULT_PRINTED_CASES,
                        help=f"rows of the per-case table to print (default {DEFAULT_PRINTED_CASES}; summary.md has all)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    import time

    from mosmoskit.data.summary import format_summary, summarize_cohort, write_summary

    start = time.perf_counter()
    summary = summarize_cohort(args.folder, label_map=args.label_map, progress=not args.no_progress,
                               strict=not args.lenient, channel=args.channel)
    elapsed = time.perf_counter() - start
    print(format_summary(summary, max_case_rows=args.max_rows))
    print(f"summarised {summary.n_cases} case(s) in {elapsed:.1f} s")
    if args.out:
        written = write_summary(summary, args.out, figure_cases=args.figure_cases, channel=args.channel)
        for kind, path in written.items():
            print(f"  {kind:9s}{path}")
    return 0 if summary.audit.ok else 1
