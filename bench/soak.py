"""Soak: load, call and unload one module 10,000 times; mappings and RSS stay flat.

Each cycle compiles fixtures/lifecycle/cycle.ll with llvmlite
(``Linker.add_module``), finalizes it, calls it twice, checks both results and
removes the batch.  Every ``--every`` cycles it prints the number of
mappings in /proc/self/maps (all of them, and those in rtdyld's reserved
range), the RSS and the live allocations; at the end, their growth since the
warm-up.  A leak of one page or one mapping per cycle shows up as thousands.

    python bench/soak.py [--cycles N] [--every N]
    python -m bench --only soak          (300 cycles with --quick)
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CYCLE_IR = Path(__file__).resolve().parent.parent / "fixtures" / "lifecycle" / "cycle.ll"
CYCLES = 10_000
WARM_UP = 100
EVERY = 1_000
# --quick: enough to see a page or a mapping lost per cycle.
QUICK_CYCLES = 300
QUICK_WARM_UP = 20
QUICK_EVERY = 100
# Growth after the warm-up still called flat: allocator noise, not a leak.
MAPPING_SLACK = 2
RSS_SLACK = 8 << 20


@dataclass
class Sample:
    cycle: int
    mappings: int
    reserved_mappings: int
    rss: int
    live_allocations: int


@dataclass
class Result:
    samples: list[Sample]
    seconds: float
    wrong: list[str]

    @property
    def mapping_growth(self) -> int:
        return self.samples[-1].mappings - self.samples[0].mappings

    @property
    def reserved_growth(self) -> int:
        return self.samples[-1].reserved_mappings - self.samples[0].reserved_mappings

    @property
    def rss_growth(self) -> int:
        return self.samples[-1].rss - self.samples[0].rss

    @property
    def flat(self) -> bool:
        return self.mapping_growth <= MAPPING_SLACK and self.reserved_growth <= 0 and self.rss_growth < RSS_SLACK


def cycle_step(x: int, calls_before: int) -> int:
    """What cycle.ll's cycle_step returns: 3x + cycle_bias + strlen("cycle") + count."""
    return 3 * x + 7 + 5 + calls_before


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sample(cycle: int, memory) -> Sample:
    lo, hi = memory.reach_range()
    total = reserved = 0
    with open("/proc/self/maps") as f:
        for line in f:
            total += 1
            start, end = (int(x, 16) for x in line.split(maxsplit=1)[0].split("-"))
            reserved += start < hi and lo < end
    return Sample(cycle, total, reserved, _rss(), len(memory.live_allocations()))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):+.2f}" if n else "+0.00"


def _row(s: Sample, base: Sample) -> str:
    return (
        f"{s.cycle:>8}  {s.mappings:>8}  {s.reserved_mappings:>8}  {s.rss / (1 << 20):>8.1f}  "
        f"{_mib(s.rss - base.rss):>10}  {s.live_allocations:>4}"
    )


def soak(cycles: int = CYCLES, every: int = EVERY, warm_up: int = WARM_UP, out=print) -> Result:
    """Run ``warm_up`` then ``cycles`` load/call/remove cycles, printing a sample every ``every``."""
    import rtdyld

    source = CYCLE_IR.read_text()
    ln = rtdyld.Linker()
    wrong: list[str] = []

    def one_cycle(i: int) -> None:
        ln.add_module(source, name=f"cycle{i}")
        handle = ln.finalize()
        step = ln.function("cycle_step", "int64_t(int64_t)")
        got = (step(i), step(i))
        want = (cycle_step(i, 0), cycle_step(i, 1))
        if got != want and len(wrong) < 10:
            wrong.append(f"cycle.ll in cycle {i}: cycle_step({i}) gave {got}, expected {want}")
        handle.remove()

    try:
        for i in range(warm_up):
            one_cycle(i)
        gc.collect()
        samples = [_sample(0, ln.memory)]
        out(f"soak: {cycles} cycles of add_module -> finalize -> call -> remove, after {warm_up} warm-up cycles")
        out(f"{'cycle':>8}  {'mappings':>8}  {'reserved':>8}  {'RSS MiB':>8}  {'growth MiB':>10}  {'live':>4}")
        out(_row(samples[0], samples[0]))
        start = time.perf_counter()
        for i in range(1, cycles + 1):
            one_cycle(i)
            if i % every == 0 or i == cycles:
                gc.collect()
                samples.append(_sample(i, ln.memory))
                out(_row(samples[-1], samples[0]))
        seconds = time.perf_counter() - start
    finally:
        ln.close()
    result = Result(samples, seconds, wrong)
    verdict = "flat" if result.flat else "GROWING"
    out(
        f"growth over {cycles} cycles: {result.mapping_growth:+d} mappings "
        f"({result.reserved_growth:+d} in the reserved range), RSS {_mib(result.rss_growth)} MiB "
        f"({result.rss_growth / cycles / 1024:+.2f} KiB/cycle): {verdict}; "
        f"{seconds:.1f} s, {cycles / seconds:.0f} cycles/s"
    )
    for text in wrong:
        out(f"error: {text}")
    return result


def run(session) -> list:
    """The ``python -m bench`` entry: a soak, no timing rows."""
    if session.options.quick:
        result = soak(QUICK_CYCLES, QUICK_EVERY, QUICK_WARM_UP)
    else:
        result = soak(CYCLES, EVERY, WARM_UP)
    print()
    session.wrong.extend(result.wrong)
    if not result.flat:
        session.note(
            f"soak: mappings or RSS grew over {result.samples[-1].cycle} load/unload cycles "
            f"({result.mapping_growth:+d} mappings, RSS {_mib(result.rss_growth)} MiB)"
        )
    return []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/soak.py", description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=CYCLES, help=f"load/unload cycles (default {CYCLES})")
    p.add_argument("--every", type=int, default=EVERY, help=f"print a sample every N cycles (default {EVERY})")
    p.add_argument("--warm-up", type=int, default=WARM_UP, help=f"cycles before the baseline (default {WARM_UP})")
    args = p.parse_args(argv)
    if args.cycles < 1 or args.every < 1 or args.warm_up < 0:
        p.error("--cycles and --every must be at least 1, --warm-up at least 0")
    result = soak(args.cycles, args.every, args.warm_up)
    return 0 if result.flat and not result.wrong else 1


if __name__ == "__main__":
    sys.path.insert(0, str(CYCLE_IR.parent.parent.parent))
    sys.exit(main())
