"""Link time against relocation count, rtdyld and MCJIT, with rtdyld's phases.

A linear linker shows a flat µs-per-relocation column (wall clock, like
every median here; "cpu ms" is this process's CPU time for the same run,
steadier when other work competes for the machine).  The fixup
throughput is relocations over the time of ``BatchLinker.apply_fixups``
alone: computing every value (GOT slots, stubs, relaxation), range checks,
and the writes.  The phase table times each of rtdyld's phases the same way
(see ``bench.phases``); "rest" is what the phases do not cover, such as the
session's bookkeeping.  A linear fit of the medians shows whether the time
per relocation stays flat.

The memory table compares what one link maps (every segment of its
allocation, GOT and stubs included) with the sum of its sections' sizes
plus one page per segment; the goal is at most 1.1 times that.
"""

from __future__ import annotations

from . import report
from .engines import Rtdyld
from .gen import Generated, make
from .phases import FIXUP
from .report import Row
from .session import Session

SIZES = (1_000, 5_000, 20_000, 50_000, 200_000, 500_000)
QUICK_SIZES = (1_000, 5_000, 20_000, 50_000)
# JITLink (and LLJIT) are timed by link_object; at 500k relocations JITLink
# alone would take longer than the whole benchmark run.
PEERS = ("MCJIT",)
FIXUP_CASE = 200_000  # the fixup throughput goal is stated at this size
FIXUP_GOAL = 5e6
MEMORY_GOAL = 1.1


def run(session: Session) -> list[Row]:
    opts = session.options
    rows: list[Row] = []
    memory = []
    for relocs in opts.sizes(QUICK_SIZES if opts.quick else SIZES):
        gen = make(relocs)
        rows.append(Row("scaling", "pic/small", gen.relocs, session.rtdyld(gen), session.peers(gen, PEERS)))
        memory.append(mapped_memory(gen))
    print(report.table(*_times(rows), "scaling: link time against relocations (medians)"))
    print(_linearity(rows))
    print()
    print(report.table(*_phases(rows), "scaling: rtdyld phases (median ms)"))
    print()
    print(report.table(*_memory(memory), "scaling: memory mapped against section sizes"))
    print()
    _goals(session, rows, memory)
    return rows


def _goals(session: Session, rows: list[Row], memory: list[tuple[int, int, int, int]]) -> None:
    if len(rows) > 1:
        per = ", ".join(_per_reloc(r.rtdyld.median, r.relocs) for r in rows)
        session.goal("time linear in relocations", f"{rows[0].relocs}-{rows[-1].relocs} relocations",
                     f"µs per relocation: {per}", None)
    at = next((r.rtdyld for r in rows if r.relocs == FIXUP_CASE), None)
    rate = _fixup_rate(rows)
    if at is None:  # --quick and --max-relocs stop short of the size the goal is stated at
        shown, met = "not run at this size", None
    elif not at.ok:
        shown, met = "rtdyld linked wrongly", None
    elif rate is None:
        shown, met = "the fixup phase was not timed", None
    else:
        shown, met = f"{report.rate(rate)}/s", _fixup_met(rate)
    session.goal(f"fixup >= {report.rate(FIXUP_GOAL)} relocations/s", f"{FIXUP_CASE} relocations", shown, met)
    ratios = [_memory_ratio(row) for row in memory]
    if ratios:
        session.goal(f"memory <= {MEMORY_GOAL}x sections + a page per segment",
                     f"{memory[0][0]}-{memory[-1][0]} relocations", f"{min(ratios):.3f}-{max(ratios):.3f}x",
                     all(map(_memory_met, ratios)))


def _fixup_met(rate: float) -> bool:
    """The fixup goal, judged on the rate as shown (millions, two places)."""
    return round(rate / 1e6, 2) >= FIXUP_GOAL / 1e6


def _memory_met(ratio: float) -> bool:
    """The memory goal, judged on the ratio as shown (three places)."""
    return round(ratio, 3) <= MEMORY_GOAL


def _fixup_rate(rows: list[Row]) -> float | None:
    """Relocations per second of the fixup phase at FIXUP_CASE, if that size ran."""
    fixup = next((r.rtdyld.phases.get(FIXUP) for r in rows if r.relocs == FIXUP_CASE), None)
    return FIXUP_CASE / fixup if fixup else None


def mapped_memory(gen: Generated) -> tuple[int, int, int, int]:
    """(relocations, bytes mapped, bytes of sections, segments) of one rtdyld link of ``gen``."""
    engine = Rtdyld()
    ln = engine.prepare(gen)
    try:
        engine.link(ln, gen)
        batch = ln.handles[-1].batch
        sections = sum(batch.objects[p.obj].sections[p.index].size for p in batch.sections)
        segments = sum(1 for s in batch.allocation.segments if s.size)
        return gen.relocs, batch.allocation.size, sections, segments
    finally:
        engine.release(ln)


def _memory_ratio(row: tuple[int, int, int, int]) -> float:
    """Bytes mapped over the sections' bytes plus a page per segment, for a row of :func:`mapped_memory`."""
    from memmgr import libc

    _, mapped, sections, segments = row
    return mapped / (sections + libc.PAGE_SIZE * segments)


def _memory(rows: list[tuple[int, int, int, int]]) -> tuple[list[str], list[list[str]]]:
    headers = ["relocs", "mapped KiB", "sections KiB", "segments", "mapped/(sections+pages)", f"goal <= {MEMORY_GOAL}"]
    lines = []
    for row in rows:
        relocs, mapped, sections, segments = row
        ratio = _memory_ratio(row)
        lines.append([str(relocs), f"{mapped / 1024:.1f}", f"{sections / 1024:.1f}", str(segments), f"{ratio:.3f}",
                      "ok" if _memory_met(ratio) else "MISSED"])
    return headers, lines


def _linearity(rows: list[Row]) -> str:
    """Least-squares fit t = a + b*n of the medians, the worst relative residual,
    and the fixup throughput at FIXUP_CASE against its goal."""
    n = [r.relocs for r in rows]
    t = [r.rtdyld.median for r in rows]
    lines = []
    if len(rows) >= 3:
        mean_n, mean_t = sum(n) / len(n), sum(t) / len(t)
        b = sum((x - mean_n) * (y - mean_t) for x, y in zip(n, t)) / sum((x - mean_n) ** 2 for x in n)
        a = mean_t - b * mean_n
        worst = max(abs(y - (a + b * x)) / y for x, y in zip(n, t))
        lines.append(
            f"linear fit: t = {a * 1e3:.2f} ms + {b * 1e9:.1f} ns x relocs; worst residual {100 * worst:.0f}% of a median"
        )
    rate = _fixup_rate(rows)
    if rate is not None:
        verdict = "meets" if _fixup_met(rate) else "misses"
        lines.append(f"fixup throughput at {FIXUP_CASE} relocations: {report.rate(rate)} relocs/s "
                     f"({verdict} the goal of {report.rate(FIXUP_GOAL)})")
    return "\n".join(lines)


def _times(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    headers = ["relocs", "runs", "rtdyld ms", "cpu ms", "µs/reloc", "fixup ms", "fixup relocs/s"]
    for name in PEERS:
        headers += [f"{name} ms", "cpu ms", "µs/reloc", f"rtdyld/{name}"]
    lines = []
    for r in rows:
        m = r.rtdyld
        fixup = m.phases.get(FIXUP)
        cells = [
            str(r.relocs),
            str(len(m.times)),
            report.timing(m),
            report.ms(m.cpu_median),
            _per_reloc(m.median, r.relocs),
            report.ms(fixup) if fixup else report.MISSING,
            report.rate(r.relocs / fixup) if fixup else report.MISSING,
        ]
        for name in PEERS:
            peer = r.peers.get(name)
            cells += [
                report.timing(peer),
                report.ms(peer.cpu_median) if peer is not None else report.MISSING,
                _per_reloc(peer.median, r.relocs) if peer is not None else report.MISSING,
                report.ratio(m, peer),
            ]
        lines.append(cells)
    return headers, lines


def _phases(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    labels = list(dict.fromkeys(label for r in rows for label in r.rtdyld.phases))
    lines = []
    for r in rows:
        phases = r.rtdyld.phases
        rest = r.rtdyld.median - sum(phases.values())
        lines.append([str(r.relocs)] + [report.ms(phases.get(label, 0.0)) for label in labels] + [report.ms(rest)])
    return ["relocs"] + labels + ["rest"], lines


def _per_reloc(seconds: float, relocs: int) -> str:
    return f"{seconds * 1e6 / relocs:.2f}"
