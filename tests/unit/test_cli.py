"""The command line's help: every command and every argument says what it is."""

import argparse

from clusterchat.cli import build_parser


def _parsers(
    parser: argparse.ArgumentParser, name: str
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                found += _parsers(sub, f"{name} {sub_name}")
    return found


def test_every_argument_of_every_command_has_a_help_text() -> None:
    """`clusterchat client --help` listed HOST and PORT with nothing beside them."""
    missing = [
        f"{name}: {action.dest}"
        for name, parser in _parsers(build_parser(), "clusterchat")
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction | argparse._HelpAction)
        and not action.help
    ]
    assert missing == []
