"""Every ``psr`` command's ``--help`` documents each option and shows its default; ``--log-level``
works before and after the subcommand."""

from __future__ import annotations

import argparse

import pytest

from shared.cli import all_parsers, build_parser, main

PARSERS = list(all_parsers(build_parser()))


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.prog)
def test_every_option_has_help_and_shows_its_default(parser: argparse.ArgumentParser) -> None:
    text = " ".join(parser.format_help().split())  # argparse wraps lines
    for action in _options(parser):
        assert action.help, f"`{parser.prog} {action.option_strings[0]}` has no help text"
        default = action.default
        if default in (None, False, [], argparse.SUPPRESS) or "default" in action.help.lower():
            continue
        assert f"(default: {default})" in text, f"`{parser.prog} --help` does not show the default of {action.option_strings[0]}"


def test_the_check_sees_a_hidden_default() -> None:
    from shared.cli import HelpFormatter

    parser = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    parser.add_argument("--steps", type=int, default=28, help="sampling steps")
    parser.add_argument("--flag", action="store_true", help="a switch")
    text = parser.format_help()
    assert "sampling steps (default: 28)" in text and "False" not in text


@pytest.mark.parametrize("argv", [["--log-level", "warning", "bench", "make-synthetic"],
                                  ["bench", "make-synthetic", "--log-level", "warning"],
                                  ["bench", "--log-level", "warning", "make-synthetic"]])
def test_log_level_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = build_parser().parse_args([*argv, "DIR"])
    assert args.log_level == "WARNING" and args.dir == "DIR"


def test_log_level_defaults_to_info_and_refuses_junk(capsys) -> None:
    assert build_parser().parse_args(["bench", "make-synthetic", "DIR"]).log_level == "INFO"
    with pytest.raises(SystemExit):
        main(["score", "x.png", "-r", "a", "--log-level", "loud"])
    assert "use one of DEBUG, INFO" in capsys.readouterr().err
