"""The top-level parser: every command answers --help, with its description as written."""

import importlib

import pytest

from biounet.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_that_keeps_its_docstring_lines(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    docstring = importlib.import_module(COMMANDS[name][0]).__doc__
    first, *rest = [line for line in docstring.strip().splitlines() if line.strip()]
    assert first in out
    # a second line of the docstring stays a line of its own, not reflowed into the first
    assert not rest or rest[0] in out.splitlines()
