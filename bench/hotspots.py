"""Profile rtdyld linking one generated object: where does the time go?

    python -m bench.hotspots [--relocs 200000] [--runs 3] [--top 20] [--cpu]
    python -m bench.hotspots --case libz.a [--runs 200]

Runs one untimed warm-up link, then ``--runs`` links under cProfile, and
prints the functions with the most own time (share of the profiled total)
and the most cumulative time.  With ``--case``, each link is a cold link of
that case of :mod:`bench.cold_link` (program objects and archives, a new
session each time), where small per-member and per-link costs add up.
Not a benchmark: it prints no ratios.
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


def profile_case(case: str, runs: int, cpu: bool = False) -> pstats.Stats:
    """cProfile statistics of ``runs`` cold links of a :mod:`bench.cold_link` case."""
    from rtdyld import Linker

    from . import cold_link

    chosen = next((c for c in cold_link.CASES if c.name == case), None)
    if chosen is None:
        raise SystemExit(f"no cold_link case {case!r}: {', '.join(c.name for c in cold_link.CASES)}")
    reason = cold_link._unavailable(chosen)
    if reason:
        raise SystemExit(f"cold_link case {case!r} is unavailable: {reason}")
    inputs = cold_link._inputs(chosen)
    prof = cProfile.Profile(time.process_time) if cpu else cProfile.Profile()
    for i in range(runs + 1):
        ln = Linker()
        try:
            if i:
                prof.enable()
            cold_link._link_rtdyld(ln, inputs.programs, inputs.archives)
            prof.disable()
        finally:
            ln.close()
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
    p.add_argument("--case", help="profile cold links of this bench.cold_link case (libz.a, libbz2.a, ...) instead")
    args = p.parse_args(argv)
    stats = profile_case(args.case, args.runs, args.cpu) if args.case else profile(args.relocs, args.runs, args.cpu)
    # The outermost frame's cumulative time is the whole link.
    total = max(ct for _, _, _, ct, _ in stats.stats.values())
    clock = "CPU" if args.cpu else "wall-clock"
    what = f"cold links of {args.case}" if args.case else f"{args.relocs} relocations"
    print(f"rtdyld, {what}, {args.runs} links: {total * 1e3 / args.runs:.1f} ms {clock} per link\n")
    for by, title in (("own", "own time"), ("cum", "cumulative time")):
        print(f"top {args.top} by {title} (ms per link, share of the profiled total)")
        for where, calls, tt, ct in top(stats, args.top, by):
            t = tt if by == "own" else ct
            print(f"  {t * 1e3 / args.runs:8.1f} ms {100 * t / total:5.1f}%  {calls // args.runs:>8} calls  {where}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
