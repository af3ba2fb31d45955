"""The ``dv365`` command line."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module registers its subcommands with ``register(subparsers)``.
_COMMAND_MODULES = (
    "dv365.data.commands",
    "dv365.spec_commands",
    "dv365.demo",
    "dv365.store.commands",
    "dv365.train.commands",
    "dv365.export.commands",
    "dv365.refresh.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dv365", description="DV365 user embeddings: data, slicing, export")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
