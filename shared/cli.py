"""The ``psr`` command. Each package contributes its subcommands through a ``register`` function.

Subcommand modules import their heavy dependencies inside the command functions, so
``psr --help`` is fast and ``psr score`` works with only the client installed.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Iterator

from shared.config import ConfigError
from shared.logs import LEVELS, configure_logging

# Modules that define ``register(subparsers)``. Missing optional packages only hide their commands.
COMMAND_MODULES = [
    "reward_server.cli",
    "reward_server.queue.cli",
    "trainer.cli",
    "trainer.evaluation.cli",
    "trainer.datagen.cli",
]
DEFAULT_LOG_LEVEL = "INFO"


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help, unless the help already speaks of it or the
    default says nothing (None, False, empty)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default is argparse.SUPPRESS
            or default is None
            or default is False
            or default == []
            or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every subcommand parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from all_parsers(sub)


def _one_line_error(parser: argparse.ArgumentParser, message: str) -> None:
    """argparse's ``error`` without the usage block above it: the option, what is wrong, where help is."""
    parser.exit(2, f"{parser.prog}: {message} (see {parser.prog} --help)\n")


def _log_level(value: str) -> str:
    if value.upper() not in LEVELS:
        raise argparse.ArgumentTypeError(f"use one of {', '.join(LEVELS)}")
    return value.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="psr",
        description="PSR: reward service and Flow-GRPO trainer for multi-subject image generation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # the module itself is absent (not one of its imports): skip quietly
                continue
            raise
        module.register(subparsers)
    for sub in all_parsers(parser):
        sub.formatter_class = HelpFormatter
        sub.error = functools.partial(_one_line_error, sub)  # type: ignore[method-assign]
        sub.set_defaults(command_name=sub.prog)  # the deepest subcommand's wins: "psr bench score"
        # before or after the subcommand; the top level sets the default, subcommands only override it
        sub.add_argument(
            "--log-level", type=_log_level, metavar="LEVEL",
            default=DEFAULT_LOG_LEVEL if sub is parser else argparse.SUPPRESS,
            help=f"our messages from this level up: {', '.join(LEVELS)}; DEBUG also shows the libraries' logs "
            f"(default: {DEFAULT_LOG_LEVEL})",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:  # a user's mistake: say what is wrong, no traceback
        print(f"{args.command_name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
