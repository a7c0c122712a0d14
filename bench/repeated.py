"""Cold links repeated in one process, as a JIT that opens, links and closes session after session meets them.

:mod:`bench.cold_link` makes each session right after a full collection, so
that no garbage of earlier links is collected inside the timed link.  A
long-running process gets no such collection: the interpreter collects when
allocations pass its thresholds, and a collection traces every object
still alive in the generations it collects, including whatever earlier,
closed sessions left for the collector to find (objects in reference
cycles, which reference counting cannot free).

Here each engine links the same case round after round in one process,
taking turns as in :mod:`bench.cold_link` (a new session each time, closed
after the link), and no collection is forced after the first: the times
include the collections that fall inside the links.  The table gives the
mean beside the median (a collection inside a link raises the mean more
than the median), the collector's time inside the links, and the objects
one closed session leaves for the collector: 0 when a closed session is
freed by reference counting alone.
"""

from __future__ import annotations

import functools
import gc
import statistics
import time
from typing import Self

from . import cold_link, report
from .cold_link import AVAILABILITY, PEER, PEERS, Case, check_link
from .report import Row
from .session import Session
from .timing import Measurement

CASES = ("libz.a + libbz2.a", cold_link.GENERATED)
ROUNDS_PER_RUN = 20  # rounds per --runs: enough for a link to meet the collector's thresholds many times
WARM_UP = 3


class _CollectorClock:
    """Seconds the cyclic garbage collector has run since the clock was made."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start

    def __enter__(self) -> Self:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def run(session: Session) -> list[Row]:
    rows: list[Row] = []
    for case in (c for c in cold_link.CASES if c.name in CASES):
        reason = cold_link._unavailable(case)
        if reason:
            session.note(f"repeated {case.name} skipped: {reason}")
            continue
        rows += _run_case(session, cold_link._inputs(case))
    return rows


def _run_case(session: Session, inputs: cold_link.Inputs) -> list[Row]:
    case = inputs.case
    engines = {"rtdyld": cold_link._rtdyld(inputs)}
    relocs = {"rtdyld": inputs.relocs["rtdyld"]}
    objects = [d for _, d in inputs.programs] + inputs.pulled
    reason = AVAILABILITY[PEER].unavailable() or cold_link._probe(PEER, case, objects)
    if reason:
        session.note(f"repeated {case.name}: {PEER} not timed ({reason})")
    else:
        engines[PEER] = PEERS[PEER](objects, cold_link._entries(case))
        relocs[PEER] = inputs.relocs["pulled"]
    opts = session.options
    rounds = opts.runs * (ROUNDS_PER_RUN // 4 if opts.quick else ROUNDS_PER_RUN)
    measured, collector, left = _measure(engines, relocs, case, rounds)
    rt = measured["rtdyld"]
    if not rt.ok:
        session.wrong.append(f"{case.name} (repeated): {rt.check}")
    peer = measured.get(PEER)
    headers = ["engine", "runs", "median ms", "mean ms", "collector ms per link", "left per session",
               "rtdyld/engine (mean)", "check"]
    lines = []
    for label, m in measured.items():
        lines.append([
            label, str(len(m.times)), report.timing(m), report.ms(statistics.fmean(m.times)),
            report.ms(collector[label] / len(m.times)), str(left[label]),
            f"{statistics.fmean(rt.times) / statistics.fmean(m.times):.2f}", m.check,
        ])
    title = (f"repeated: {' + '.join(case.drivers) or 'gen_prog.o'} against {case.name}, "
             f"{rounds} links per engine in one process, no forced collection")
    print(report.table(headers, lines, title))
    print()
    return [Row("repeated", f"{case.name} (no forced collection)", rt.relocs, rt, {PEER: peer})]


def _measure(engines: dict[str, cold_link._Timed], relocs: dict[str, int], case: Case, rounds: int
             ) -> tuple[dict[str, Measurement], dict[str, float], dict[str, int]]:
    """Each engine's measurement over ``rounds`` turns, the collector's
    seconds inside its links, and the objects one of its closed sessions
    left for the collector."""
    checks = {}
    for label, timed in engines.items():  # a checked first link each, then the warm-up
        state = timed.prepare()
        try:
            timed.link(state)
            checks[label] = check_link(case, functools.partial(timed.address, state))
        finally:
            timed.release(state)
    times: dict[str, list[float]] = {label: [] for label in engines}
    cpu: dict[str, list[float]] = {label: [] for label in engines}
    collector = dict.fromkeys(engines, 0.0)
    order = list(engines)
    gc.collect()  # the first rounds start from a clean heap; none is forced after
    with _CollectorClock() as clock:
        for r in range(WARM_UP + rounds):
            for label in order[r % len(order):] + order[: r % len(order)]:
                timed = engines[label]
                state = timed.prepare()
                try:
                    before = clock.seconds
                    elapsed, used = cold_link._link_once(timed, state)
                    inside = clock.seconds - before
                finally:
                    timed.release(state)
                    del state
                if r >= WARM_UP:
                    times[label].append(elapsed)
                    cpu[label].append(used)
                    collector[label] += inside
    left = {label: _left_for_collector(timed) for label, timed in engines.items()}
    measured = {
        label: Measurement(engine=label, relocs=relocs[label], times=times[label], cpu=cpu[label],
                           results=checks[label][0], check=checks[label][1])
        for label in engines
    }
    return measured, collector, left


def _left_for_collector(timed: cold_link._Timed) -> int:
    """How many objects one linked and closed session leaves that only the
    cyclic garbage collector can free."""
    gc.collect()
    state = timed.prepare()
    try:
        timed.link(state)
    finally:
        timed.release(state)
    del state
    return gc.collect()
