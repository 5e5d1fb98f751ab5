"""Execute the numbered notebooks (01 -> 04) with papermill, or a YAML sweep of them.

Each notebook's output feeds the next: 02's checkpoint becomes 03's pretrained_checkpoint, 03's
checkpoint 04's checkpoint. Executed notebooks (with their outputs) and HTML renderings go to
RUN_DIR/notebooks/, each notebook's results to RUN_DIR/NN_name/, and a summary to RUN_DIR/results.md.
Re-running the same command resumes (finished notebooks are reused).

Parameters: --set NN.NAME=VALUE for one notebook (03.max_steps=400), --set NAME=VALUE for every
notebook that declares NAME (device=cpu). Names no notebook declares are refused before anything
runs; values are read as YAML (400, 0.5, true, [96, 96], text).

Examples:
  python -m mosmoskit run-notebooks --out runs/pipeline
  python -m mosmoskit run-notebooks --out runs/quick --only 02 03 --set 02.max_steps=50 --set 03.max_steps=100
  python -m mosmoskit run-notebooks --out runs/sweep --sweep sweeps/label_fraction.yaml
"""

from __future__ import annotations

import argparse

HELP = "run notebooks 01-04 with papermill (parameters, resume, HTML), or a YAML sweep"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (a sweep folder with --sweep)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NN",
                        help="notebooks to run, in pipeline order (default: 01 02 03 04)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="[NN.]NAME=VALUE",
                        help="a notebook parameter (repeatable)")
    parser.add_argument("--sweep", default=None, metavar="YAML", help="run every grid point of this sweep file")
    parser.add_argument("--where", dest="where", action="append", default=[], metavar="AXIS=VALUE",
                        help="with --sweep: run only the grid points with this label (repeatable); the summary "
                             "lists every run found on disk, so processes can share a sweep folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="run again into a folder that holds results of other parameters")
    parser.add_argument("--no-html", action="store_true", help="do not write HTML renderings")


def run(args: argparse.Namespace) -> int:
    from mosmoskit.notebook_runs import parse_assignments, run_pipeline, run_sweep

    try:
        parameters = parse_assignments(args.assignments)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    if args.sweep:
        if args.only:
            print("error: --only does not apply to a sweep: set 'stages' in the sweep file")
            return 2
    elif args.where:
        print("error: --where selects grid points of a sweep: give --sweep too")
        return 2
    if args.sweep:
        try:
            where = parse_assignments(args.where)
            rows = run_sweep(args.sweep, args.out, overrides=parameters, overwrite=args.overwrite,
                             html=not args.no_html, where=where)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}")
            return 2
        failed = [r["run"] for r in rows if r["status"].startswith("failed")]
        done = sum(r["status"] == "ok" for r in rows)
        print(f"\nsweep summary: {args.out}/summary.md ({len(rows)} runs: {done} done, {len(failed)} failed)")
        return 1 if failed else 0

    import papermill

    try:
        state = run_pipeline(args.out, parameters, stages=args.only, overwrite=args.overwrite, html=not args.no_html)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}")
        return 2
    except papermill.PapermillExecutionError as err:
        print(f"error: a notebook failed: {err.ename}: {err.evalue}")
        return 1
    print()
    for key, entry in state["notebooks"].items():
        print(f"  {key}  {entry['status']:<6} {entry.get('seconds') or 0.0:>7.1f} s  {entry.get('executed')}")
    ft = state.get("finetune_results")
    if ft and ft.get("mean_dice") is not None:
        print(f"\nfine-tuning test mean Dice {ft['mean_dice']:.3f} over {ft['n_cases']} test cases (unit: {ft['unit']}) "
              f"(variant {ft['variant']})")
    print(f"results: {args.out}/results.md; executed notebooks and HTML: {args.out}/notebooks/")
    return 0
