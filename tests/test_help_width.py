"""Every `--help` reads whole at 80 columns: no sentence of a command's docstring or of an option's
help is cut by a hard line break that the terminal then wraps again."""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest
import typer
from rich.text import Text
from typer.testing import CliRunner

from saelineage.cli import app

WIDTH = 80
_BOX = re.compile(r"[│╭╮╰╯─]")


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, command) of every command under `group`, sub-groups included. Typed `Any`: typer
    builds its own (vendored) click classes, so `click.Group` is not theirs."""
    out: list[tuple[tuple[str, ...], Any]] = []
    for name, cmd in group.commands.items():
        out.append(((*path, name), cmd))
        if hasattr(cmd, "commands"):
            out += _commands(cmd, (*path, name))
    return out


COMMANDS = _commands(typer.main.get_command(app))


def _flat(text: str) -> str:
    return " ".join(text.split())


def _render(args: list[str]) -> tuple[str, str]:
    """The help as printed at WIDTH columns, and as one line without the panels' borders."""
    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": str(WIDTH)}, terminal_width=WIDTH)
    assert res.exit_code == 0, res.output
    return res.output, _flat(_BOX.sub(" ", res.output))


def _docstring_paragraphs(cmd: Any) -> list[str]:
    """The paragraphs of a command's source docstring (independent of how cli.py passes them on);
    a group's help is its Typer(help=...) text."""
    if hasattr(cmd, "commands"):
        doc = Text.from_markup(cmd.help or "").plain
    else:
        doc = inspect.getdoc(cmd.callback) or ""
    return [_flat(p) for p in doc.split("\n\n") if p.strip()]


def test_every_command_is_checked():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"collect", "stats", "analyze", "ablate", "ceiling", "export", "prompt", "serve"} <= names
    assert {"export-site", "train", "releases", "demo", "labels", "labels import"} <= names


def _ragged_lines(raw: str) -> list[str]:
    """Lines of the description (above the first panel) that end although the next line's first
    word would have fit: a line break from the source, not from the terminal's wrapping. The text
    is padded by one column on each side, so a line holds WIDTH - 2 characters of text."""
    prose = raw.split("╭", 1)[0].splitlines()
    return [
        line
        for line, nxt in zip(prose, prose[1:])
        if line.strip() and nxt.strip() and len(line.rstrip()) + 1 + len(nxt.split()[0]) < WIDTH - 2
    ]


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_is_whole_at_80_columns(path, cmd):
    raw, flat = _render(list(path))
    assert max(len(line) for line in raw.splitlines()) <= WIDTH
    assert not _ragged_lines(raw), f"`{' '.join(path)} --help` breaks lines early:\n{raw}"
    for paragraph in _docstring_paragraphs(cmd):
        assert paragraph in flat, f"docstring paragraph broken in `{' '.join(path)} --help`: {paragraph!r}"
    for param in cmd.params:
        help_text = getattr(param, "help", None)
        if help_text:
            # rich breaks a table cell only where it is full or where the text has a line break
            assert "\n" not in help_text, f"help of {param.name} has a hard line break"
            shown = _flat(Text.from_markup(help_text).plain)  # as rich prints it: escapes undone
            assert shown in flat, f"help of {param.name} broken in `{' '.join(path)} --help`: {shown!r}"


def test_root_help_lists_each_command_summary_whole():
    _, flat = _render([])
    for path, cmd in COMMANDS:
        if len(path) == 1:
            assert _docstring_paragraphs(cmd)[0] in flat, path
