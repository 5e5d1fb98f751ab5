"""Command line: ``python -m mosmoskit <command> ...``.

Each command is a module in :mod:`mosmoskit.commands` with a one-line ``HELP``, an
``add_arguments(parser)`` and a ``run(args) -> int``. Command modules import heavy libraries
(torch, MONAI) inside ``run`` so that ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mosmoskit import __version__

# Order is the order shown by --help.
COMMANDS = ["phantoms", "convert", "summarize", "pretrain", "finetune", "predict", "run-notebooks", "demo", "study"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mosmoskit",
        description="MOSMOS kit: report-supervised pre-training and multi-organ segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"mosmoskit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"mosmoskit.commands.{name.replace('-', '_')}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        # Bad input: one clear line, no traceback from deep inside a library.
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
