"""Repeated, verified timing of one engine loading one object."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .engines import Engine
from .gen import Generated

T = TypeVar("T")


def prepared(prepare: Callable[[], T]) -> T:
    """The session ``prepare()`` makes (untimed), made right after a full collection.

    The collection keeps the garbage of earlier runs from being collected
    inside the timed link that follows.  It runs before the set-up rather
    than just before the clock: a full collection walks every Python object
    and evicts the interpreter's working set from the CPU caches, so run just
    before the clock it charged the Python engine's first steps for refilling
    them (about 0.2 ms of a 1 ms warm link in a new process, measured) and the
    C++ peers nothing measurable; a program creates its engine and links, with
    no collection in between.  Every engine, rtdyld and peer, is timed this way."""
    gc.collect()
    return prepare()


class EngineFailed(Exception):
    """The engine could not link the object at all (not a wrong result)."""


@dataclass
class Measurement:
    engine: str
    relocs: int
    times: list[float]  # wall-clock seconds per timed run, warm-up excluded
    cpu: list[float]  # this process's CPU seconds per timed run (steadier on a busy machine)
    results: tuple[int, int]  # what bench_check and bench_pad_ok returned
    check: str  # "ok", or what was wrong with the results
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase of the median run

    @property
    def median(self) -> float:
        """The middle run (the lower one of an even count), so its phases add up to it."""
        return statistics.median_low(self.times)

    @property
    def cpu_median(self) -> float:
        return statistics.median_low(self.cpu)

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def ok(self) -> bool:
        return self.check == "ok"

    @property
    def relocs_per_second(self) -> float:
        return self.relocs / self.median


def measure(engine: Engine, gen: Generated, runs: int, budget: float, warmup: int = 1) -> Measurement:
    """Link ``gen`` ``warmup + n`` times, each in a fresh session, and verify the first link.

    ``n`` is ``runs``, fewer when the warm-up shows that ``runs`` links would
    take longer than ``budget`` seconds, and never less than one.
    """
    times: list[float] = []
    cpu: list[float] = []
    results: tuple[int, int] | None = None
    with engine.instrument() as log:
        for i in range(warmup + runs):
            elapsed, used, checked = _link_once(engine, gen, log, verify=results is None)
            results = results or checked
            if i < warmup:
                if i == warmup - 1:
                    runs = max(1, min(runs, int(budget / max(elapsed, 1e-9))))
                continue
            times.append(elapsed)
            cpu.append(used)
            if len(times) == runs:
                break
        phases = log.run(warmup + times.index(statistics.median_low(times))) if log is not None else {}
    return Measurement(engine.name, gen.relocs, times, cpu, results, _verdict(results, gen), phases)


def _link_once(engine: Engine, gen: Generated, log, verify: bool) -> tuple[float, float, tuple[int, int] | None]:
    """Wall and CPU seconds of one link in a fresh session, and the check results if ``verify``."""
    state = prepared(lambda: engine.prepare(gen))
    try:
        if log is not None:
            log.new_run()
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            engine.link(state, gen)
        except RuntimeError as e:
            raise EngineFailed(str(e).strip() or type(e).__name__) from None
        elapsed, used = time.perf_counter() - t0, time.process_time() - c0
        return elapsed, used, engine.run_checks(state) if verify else None
    finally:
        engine.release(state)


def _verdict(results: tuple[int, int], gen: Generated) -> str:
    check, pad_ok = results
    wrong = []
    if check != gen.expected_check:
        wrong.append(f"bench_check returned {check:#x}, expected {gen.expected_check:#x}")
    if pad_ok != gen.expected_pad_ok:
        wrong.append(f"bench_pad_ok returned {pad_ok}, expected {gen.expected_pad_ok}")
    return "; ".join(wrong) or "ok"
