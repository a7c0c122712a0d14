"""Run the registered benchmarks and print their summary."""

from __future__ import annotations

import argparse
import importlib
import os
import platform

from . import BENCHMARKS, report
from .report import Row
from .session import Options, Session


def parse_args(argv: list[str] | None) -> tuple[Options, list[str]]:
    p = argparse.ArgumentParser(prog="python -m bench", description="rtdyld benchmarks against llvmlite's JITs")
    p.add_argument("--quick", action="store_true", help="fewer sizes and runs")
    p.add_argument("--runs", type=int, help="timed runs per engine and case (default 7, 3 with --quick)")
    p.add_argument("--max-relocs", type=int, metavar="N", help="cap every object at N relocations")
    p.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    args = p.parse_args(argv)
    runs = args.runs if args.runs is not None else (3 if args.quick else 7)
    if runs < 1:
        p.error("--runs must be at least 1")
    options = Options(quick=args.quick, runs=runs, budget=1.0 if args.quick else 4.0, max_relocs=args.max_relocs)
    return options, args.only or list(BENCHMARKS)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; the exit status is 1 if rtdyld linked anything wrongly."""
    options, names = parse_args(argv)
    session = Session(options)
    print(_header(options))
    rows: list[Row] = []
    for name in names:
        module = importlib.import_module(f"{__package__}.{name}")
        rows += module.run(session)
    print(report.summary(rows, session.peer_names))
    if session.goals:
        print()
        print(report.goals(session.goals))
    for text in session.notes:
        print(f"note: {text}")
    for text in session.wrong:
        print(f"error: rtdyld linked {text}")
    return 1 if session.wrong else 0


def _header(options: Options) -> str:
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    mode = "quick" if options.quick else "full"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"rtdyld benchmarks ({mode}, up to {options.runs} timed runs after 1 warm-up) on {platform.machine()} "
        f"with {os.cpu_count()} CPUs (load average {load:.1f}), Python {platform.python_version()}, "
        f"numpy {ver('numpy')}, llvmlite {ver('llvmlite')}\n"
    )
