"""Helpers shared by the command-line test modules."""

from __future__ import annotations

import shlex

from rtdyld.cli import main


def fixture_args(path) -> list[str]:
    """The options on a fixture's ``# ARGS:`` line."""
    for line in path.read_text().splitlines():
        if line.startswith("# ARGS:"):
            return shlex.split(line[len("# ARGS:"):])
    raise AssertionError(f"{path} has no # ARGS: line")


def rtdyld(capsys, *args) -> tuple[int, str, str]:
    """Run the ``rtdyld`` command in-process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err
