"""Run the evidence study (or resume it), then write its results page.

A study is a sweep file with a `study` section (see studies/): every combination of network,
init/fusion setting, label fraction and seed is one run of notebooks 02 -> 03; one pre-training per
setting is shared, finished runs are never run again, and the results page (headline, tables,
plot, protocol card) is written from the run folders on disk.

Examples:
  python -m mosmoskit study --spec studies/phantom_label_fraction.yaml --out runs/study \
      --results docs/results.md
  # two processes sharing the 2 cores, then the page from both:
  OMP_NUM_THREADS=1 python -m mosmoskit study --spec S --out runs/study --where network=unet2d &
  OMP_NUM_THREADS=1 python -m mosmoskit study --spec S --out runs/study --where network=unetr3d
  python -m mosmoskit study --spec S --out runs/study --results docs/results.md --report-only
"""

from __future__ import annotations

import argparse
import shlex
import sys

HELP = "run the label-fraction study (resumable) and write its results page"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True, metavar="YAML", help="the study's sweep file (with a 'study' section)")
    parser.add_argument("--out", required=True, metavar="STUDY_DIR", help="the study folder (runs, shared stages)")
    parser.add_argument("--results", default=None, metavar="MD",
                        help="the results page to write (default STUDY_DIR/results.md); its figure goes to "
                             "images/ beside it")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="[NN.]NAME=VALUE",
                        help="a notebook parameter for every run (repeatable)")
    parser.add_argument("--where", action="append", default=[], metavar="AXIS=VALUE",
                        help="run only the grid points with this label (repeatable)")
    parser.add_argument("--report-only", action="store_true", help="write the page from finished runs; run nothing")
    parser.add_argument("--html", action="store_true", help="also render each executed notebook as HTML")


def run(args: argparse.Namespace) -> int:
    from mosmoskit.notebook_runs import parse_assignments
    from mosmoskit.study import run_study

    try:
        overrides = parse_assignments(args.assignments)
        where = parse_assignments(args.where)
        command = "python -m mosmoskit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) \
            if sys.argv[1:2] == ["study"] else "python -m mosmoskit study"
        outcome = run_study(args.spec, args.out, results_doc=args.results, overrides=overrides, where=where,
                            report_only=args.report_only, html=args.html, command=command)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}")
        return 2
    print(f"\nstudy: {outcome['finished']} of {outcome['planned']} runs finished, {len(outcome['failed'])} failed "
          f"this time ({outcome['seconds']} s); results page: {outcome['results_doc']}")
    return 1 if outcome["failed"] else 0
