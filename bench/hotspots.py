"""Profile rtdyld linking one generated object: where does the time go?

    python -m bench.hotspots [--relocs 200000] [--runs 3] [--top 20] [--cpu]

Runs one untimed warm-up link, then ``--runs`` links under cProfile, and
prints the functions with the most own time (share of the profiled total)
and the most cumulative time.  Not a benchmark: it prints no ratios.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

from .engines import Rtdyld
from .gen import make


def profile(relocs: int, runs: int, cpu: bool = False) -> pstats.Stats:
    """cProfile statistics of ``runs`` rtdyld links, on wall-clock or (``cpu``) process CPU time."""
    gen = make(relocs)
    engine = Rtdyld()
    prof = cProfile.Profile(time.process_time) if cpu else cProfile.Profile()
    for i in range(runs + 1):
        state = engine.prepare(gen)
        try:
            if i:
                prof.enable()
            engine.link(state, gen)
            prof.disable()
        finally:
            engine.release(state)
    return pstats.Stats(prof)


def top(stats: pstats.Stats, count: int, by: str) -> list[tuple[str, int, float, float]]:
    """(function, calls, own seconds, cumulative seconds) of rtdyld and what it calls,
    largest ``by`` ("own" or "cum") first."""
    here = os.path.dirname(os.path.abspath(__file__))
    rows = [
        (_where(key), nc, tt, ct)
        for key, (_, nc, tt, ct, _) in stats.stats.items()
        if os.path.dirname(os.path.abspath(key[0])) != here
    ]
    rows.sort(key=lambda r: r[2] if by == "own" else r[3], reverse=True)
    return rows[:count]


def _where(key: tuple[str, int, str]) -> str:
    """``file:line(function)`` with the file relative to its package."""
    path, line, func = key
    if path == "~":
        return func
    parts = Path(path).parts
    short = parts[-2:]
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in ("rtdyld", "memmgr"):
            short = parts[i:]
            break
        if parts[i] == "site-packages":
            short = parts[i + 1 :]
            break
    return f"{'/'.join(short)}:{line}({func})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hotspots", description=__doc__.splitlines()[0])
    p.add_argument("--relocs", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--cpu", action="store_true", help="profile CPU time instead of wall-clock time (busy machines)")
    args = p.parse_args(argv)
    stats = profile(args.relocs, args.runs, args.cpu)
    # The outermost frame's cumulative time is the whole link.
    total = max(ct for _, _, _, ct, _ in stats.stats.values())
    clock = "CPU" if args.cpu else "wall-clock"
    print(f"rtdyld, {args.relocs} relocations, {args.runs} links: {total * 1e3 / args.runs:.1f} ms {clock} per link\n")
    for by, title in (("own", "own time"), ("cum", "cumulative time")):
        print(f"top {args.top} by {title} (ms per link, share of the profiled total)")
        for where, calls, tt, ct in top(stats, args.top, by):
            t = tt if by == "own" else ct
            print(f"  {t * 1e3 / args.runs:8.1f} ms {100 * t / total:5.1f}%  {calls // args.runs:>8} calls  {where}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
