"""Time rtdyld's link phases by wrapping them for the length of a ``with`` block.

``read`` is ``Linker.add_object`` (the ELF reader), each BatchLinker phase
is timed as its own method, and ``publish`` is ``Linker._publish`` (memory
protections and symbol publication).  Phases rtdyld does not have (yet) are
left out, so the breakdown follows the linker as it changes.  The wrappers
cost a few function calls per link, not per relocation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import wraps

# (class attribute, label), in pipeline order.
LINKER_PHASES = (("add_object", "read"), ("_publish", "publish"))
BATCH_PHASES = (
    ("select_groups", "comdat"),
    ("concatenate", "concat"),
    ("resolve", "resolve"),
    ("scan", "scan"),
    ("allocate", "allocate"),
    ("assign_addresses", "addresses"),
    ("write_sections", "write"),
    ("apply_fixups", "fixup"),
    ("result", "result"),
)
FIXUP = "fixup"


class PhaseLog:
    """Seconds per phase for each link made while instrumented."""

    def __init__(self) -> None:
        self.runs: list[dict[str, float]] = []
        self.labels: list[str] = []

    def new_run(self) -> None:
        self.runs.append({})

    def record(self, label: str, seconds: float) -> None:
        if not self.runs:
            self.new_run()
        run = self.runs[-1]
        run[label] = run.get(label, 0.0) + seconds

    def run(self, index: int) -> dict[str, float]:
        """Seconds per phase of one link, in pipeline order."""
        run = self.runs[index]
        return {label: run[label] for label in self.labels if label in run}


@contextmanager
def rtdyld_phases() -> Iterator[PhaseLog]:
    """Instrument rtdyld's Linker and BatchLinker; restore them on exit."""
    from rtdyld.batch import BatchLinker
    from rtdyld.linker import Linker

    log = PhaseLog()
    patched = []
    for cls, phases in ((Linker, LINKER_PHASES[:1]), (BatchLinker, BATCH_PHASES), (Linker, LINKER_PHASES[1:])):
        for attr, label in phases:
            original = cls.__dict__.get(attr)
            if original is None:
                continue
            setattr(cls, attr, _timed(original, label, log))
            patched.append((cls, attr, original))
            log.labels.append(label)
    try:
        yield log
    finally:
        for cls, attr, original in reversed(patched):
            setattr(cls, attr, original)


def _timed(fn, label: str, log: PhaseLog):
    @wraps(fn)
    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            log.record(label, time.perf_counter() - t0)

    return timed
