"""Subcommands of ``python -m mosmoskit``; see :mod:`mosmoskit.cli`."""
