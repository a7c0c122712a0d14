"""Link time against relocation count, rtdyld and MCJIT, with rtdyld's phases.

A linear linker shows a flat µs-per-relocation column (wall clock, like
every median here; "cpu ms" is this process's CPU time for the same run,
steadier when other work competes for the machine).  The fixup
throughput is relocations over the time of ``BatchLinker.apply_fixups``
alone: computing every value (GOT slots, stubs, relaxation), range checks,
the before-bytes snapshot kept for traces, and the writes.  The phase table
times each of rtdyld's phases the same way (see ``bench.phases``); "rest" is
what the phases do not cover, such as the session's bookkeeping.
"""

from __future__ import annotations

from . import report
from .gen import make
from .phases import FIXUP
from .report import Row
from .session import Session

SIZES = (1_000, 5_000, 20_000, 50_000, 200_000, 500_000)
QUICK_SIZES = (1_000, 5_000, 20_000, 50_000)
# JITLink (and LLJIT) are timed by link_object; at 500k relocations JITLink
# alone would take longer than the whole benchmark run.
PEERS = ("MCJIT",)


def run(session: Session) -> list[Row]:
    opts = session.options
    rows: list[Row] = []
    for relocs in opts.sizes(QUICK_SIZES if opts.quick else SIZES):
        gen = make(relocs)
        rows.append(Row("scaling", "pic/small", gen.relocs, session.rtdyld(gen), session.peers(gen, PEERS)))
    print(report.table(*_times(rows), "scaling: link time against relocations (medians)"))
    print()
    print(report.table(*_phases(rows), "scaling: rtdyld phases (median ms)"))
    print()
    return rows


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
