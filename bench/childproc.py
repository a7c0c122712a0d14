"""Benchmark work run in a child Python process, from the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """This process's environment with the repository first on PYTHONPATH."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def run_python(code: str, args: list[str], env: dict[str, str] | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -c code args...`` in the repository, output captured as text."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        check=False,
        cwd=REPO,
        env=child_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_line(proc: subprocess.CompletedProcess) -> str:
    """The last non-blank line the child printed (stdout, then stderr), or its exit status."""
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def probe(code: str, args: list[str]) -> str | None:
    """Run a peer's trial link in a child, since a failed LLVM link can end the
    process: None if it exited 0, else why not."""
    proc = run_python(code, args)
    return None if proc.returncode == 0 else _why(proc)


def _why(proc: subprocess.CompletedProcess) -> str:
    """Why a child failed: its last line, without LLVM's prefix."""
    return last_line(proc).removeprefix("LLVM ERROR: ")


def write_objects(objects: list[bytes], directory: str) -> list[str]:
    """``objects`` written to ``directory`` as 0.o, 1.o, ...: their paths."""
    paths = []
    for i, data in enumerate(objects):
        p = Path(directory) / f"{i}.o"
        p.write_bytes(data)
        paths.append(str(p))
    return paths


def run_json(code: str, args: list[str], env: dict[str, str] | None = None,
             timeout: float = 120) -> tuple[dict | None, str | None]:
    """``python -c code args...`` that prints a JSON object last: (that object, None),
    or (None, why not) if it exited non-zero, printed no JSON or ran past ``timeout``
    seconds, so a child that fails or hangs is reported rather than ending or
    stalling the benchmark."""
    try:
        proc = run_python(code, args, env, timeout)
    except subprocess.TimeoutExpired:
        return None, f"no answer within {timeout:g} s"
    if proc.returncode != 0:
        return None, _why(proc)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1]), None
    except (IndexError, ValueError):
        return None, f"printed no result: {last_line(proc)}"
