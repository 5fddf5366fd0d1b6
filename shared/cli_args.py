"""Command-line options the ``psr`` commands take the same way, and the argparse types that check
them at parse time (a wrong value is one line naming the option, before any work starts)."""

from __future__ import annotations

import argparse
import os


def add_server_argument(parser: argparse.ArgumentParser) -> None:
    """``--server URL`` as every client command takes it (checked: a URL without a scheme is refused)."""
    parser.add_argument("--server", type=server_url, default=os.environ.get("PSR_SERVER", "http://127.0.0.1:8000"),
                        metavar="URL", help="reward service: http(s)://host:port, or redis://host:port/db for the "
                        "queue (default: $PSR_SERVER, else http://127.0.0.1:8000)")


def server_url(value: str) -> str:
    """argparse type of ``--server``."""
    from shared.client import ServiceURLError, check_service_url  # not at import: `psr --help` stays fast

    try:
        return check_service_url(value)
    except ServiceURLError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _RefuseApiKeyOption(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("--api-key would show the key in `ps` and shell history; put it in PSR_API_KEY, "
                     "or in a file named by PSR_API_KEY_FILE")


def add_api_key_refusal(parser: argparse.ArgumentParser) -> None:
    """Keys never travel on the command line (see ``shared.api_keys``); say where they go instead."""
    parser.add_argument("--api-key", action=_RefuseApiKeyOption, help=argparse.SUPPRESS)


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1 (steps, items, batch sizes)."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return number


def port_number(value: str) -> int:
    """argparse type: a TCP port, 0..65535."""
    number = int(value)
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port; use a number in 0..65535")
    return number


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def redis_url(value: str) -> str:
    """argparse type of ``--redis``: a URL with a Redis scheme."""
    if value.startswith(REDIS_SCHEMES) and value.split("://", 1)[1]:
        return value
    hint = f"redis://{value}" if value and "://" not in value else "redis://127.0.0.1:6379/0"
    raise argparse.ArgumentTypeError(f"{value!r} needs a scheme: e.g. {hint} (rediss:// for TLS)")

