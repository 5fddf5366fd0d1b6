"""The ``psr`` command. Each package contributes its subcommands through a ``register`` function.

Subcommand modules import their heavy dependencies inside the command functions, so
``psr --help`` is fast and ``psr score`` works with only the client installed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from shared.config import ConfigError

# Modules that define ``register(subparsers)``. Missing optional packages only hide their commands.
COMMAND_MODULES = [
    "reward_server.cli",
    "reward_server.queue.cli",
    "trainer.cli",
    "trainer.evaluation.cli",
    "trainer.datagen.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="psr",
        description="PSR: reward service and Flow-GRPO trainer for multi-subject image generation.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # the module itself is absent (not one of its imports): skip quietly
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:  # a user's mistake: say what is wrong, no traceback
        print(f"psr {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
