"""The ``dv365`` command line.

Each module in ``_COMMAND_MODULES`` registers its subcommands with ``register(subparsers)``. ``dv365 --help`` and
``dv365 --version`` import every one of them, so a command module imports nothing heavy (torch, pyarrow, numpy)
at module level or in ``register``: it imports in the function that runs the command, and flags that need a
heavy import to be listed are added by a ``lazy_arguments`` callback, run only when that command is parsed.

User errors (``ValueError`` and its subclasses ``DataError`` / ``SpecError``, ``OSError``) print
``dv365 <command>: error: <message>`` on stderr and exit with status 2; the Python names in the message
(``overwrite=True``, ``max_bad_fraction``) are replaced by the command's flags (``--overwrite``,
``--max-bad-fraction``). ``--debug`` or ``DV365_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable

from . import __version__

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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; every flag's help ends with its default unless it names one already (none for
    switches and required flags)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.required
                or action.default in (None, False, argparse.SUPPRESS) or isinstance(action, argparse._HelpAction)):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Runs its ``lazy_arguments`` callbacks before it parses (or prints help), so that ``dv365 --help`` need
    not import what only one command's flags need."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._lazy: list[Callable[[argparse.ArgumentParser], None]] = []

    def _populate(self) -> None:
        while self._lazy:
            self._lazy.pop(0)(self)

    def parse_known_args(self, args=None, namespace=None):
        self._populate()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._populate()
        return super().format_help()


def lazy_arguments(parser: argparse.ArgumentParser, add: Callable[[argparse.ArgumentParser], None]) -> None:
    """Call ``add(parser)`` when ``parser`` is used, not when the command line is built."""
    if isinstance(getattr(parser, "_lazy", None), list):  # a _Parser (also under `python -m dv365.cli`)
        parser._lazy.append(add)
    else:
        add(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dv365", description="DV365 user embeddings: data, slicing, export. "
                     "`dv365 COMMAND --help` lists a command's flags.")
    parser.add_argument("--version", action="version", version=f"dv365 {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show Python tracebacks for errors (also DV365_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _finish(sub, [])
    return parser


def _finish(sub: argparse._SubParsersAction, path: list[str]) -> None:
    """Every command parser shows its defaults, gets ``--debug`` and records its name and parser for error
    messages."""
    for name, p in sub.choices.items():
        if p.formatter_class in (argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter):
            p.formatter_class = HelpFormatter  # ours is raw-description too, and adds the defaults
        nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            _finish(nested[0], path + [name])
            continue
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show Python tracebacks for errors (also DV365_DEBUG=1)")
        p.set_defaults(_command=" ".join(path + [name]), _parser=p)


# A quoted row of the user's data in a message (ingest's bad-row samples: ``    line 7: media_type='x' ...``):
# its ``column=value`` pairs name the user's columns, not our arguments, so they are left as they are.
_DATA_LINE = re.compile(r"^\s*(?:line|row) \d+: ")


def flag_names(message: str, parser: argparse.ArgumentParser | None) -> str:
    """Python argument names in an error message -> the command's flags: ``overwrite=True`` -> ``--overwrite``,
    ``max_bad_fraction=0.1`` -> ``--max-bad-fraction 0.1``, ``like_threshold`` -> ``--like-threshold``. Lines
    that quote data rows (``line 7: ...``, ``row 7: ...``) are kept verbatim."""
    if parser is None:
        return message
    if "\n" in message:
        return "\n".join(line if _DATA_LINE.match(line) else flag_names(line, parser)
                         for line in message.split("\n"))
    for action in parser._actions:
        long = [o for o in action.option_strings if o.startswith("--")]
        if not long or action.dest in ("help", "debug"):
            continue
        flag, dest = long[0], re.escape(action.dest)
        message = re.sub(rf"(?<![\w-]){dest}=True\b", flag, message)
        message = re.sub(rf"(?<![\w-]){dest}=(?=\S)", flag + " ", message)
        if "_" in action.dest:  # bare one-word names ('users', 'out') are ordinary words in messages
            message = re.sub(rf"(?<![\w-]){dest}\b", flag, message)
    return message


def _is_user_error(e: BaseException) -> bool:
    # DataError and SpecError are ValueErrors; OSError covers missing and unwritable files
    return isinstance(e, (ValueError, OSError))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("DV365_DEBUG", "") not in ("", "0")
    command = getattr(args, "_command", args.command)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"dv365 {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`dv365 spec show | head`): not an error of the command. Point stdout at /dev/null so
        # that the interpreter's final flush does not raise again, and exit as a tool killed by SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13
    except Exception as e:  # noqa: BLE001  (user errors become one line; anything else keeps its traceback)
        if debug or not _is_user_error(e):
            raise
        message = flag_names(str(e), getattr(args, "_parser", None))
        print(f"dv365 {command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from dv365.cli import main as _main  # the command modules import dv365.cli, not __main__

    sys.exit(_main())
