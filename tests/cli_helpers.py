"""Helpers shared by the command-line test modules."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from fixtures_build import REPO

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


def rtdyld_subprocess(*args) -> subprocess.CompletedProcess:
    """Run ``python -m rtdyld ARGS`` in a child process from the repository, output captured."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "rtdyld", *map(str, args)],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
