"""Command-line options every client command takes the same way (``psr score``, ``psr bench score``)."""

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
