"""Time the phases of a link by wrapping them for the length of a ``with`` block.

``read`` is ``Linker.add_object`` (the object readers), ``archives`` is
``Linker.add_archive`` (archive headers and symbol indexes), ``pull`` is the
lazy extraction of archive members (reading the members it loads), each
BatchLinker phase is timed as its own method, and ``publish`` is
``Linker._publish`` (memory protections and symbol publication).  Phases
rtdyld does not have are left out, so the breakdown follows the linker as it
changes.  The wrappers cost a few function calls per link, not per
relocation, and nothing is wrapped outside the block.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import wraps

# (class attribute, label), in pipeline order.
LINKER_INPUT_PHASES = (("add_object", "read"), ("add_archive", "archives"), ("_pulls", "pull"))
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
LINKER_OUTPUT_PHASES = (("_publish", "publish"),)
FIXUP = "fixup"


class PhaseLog:
    """Seconds per phase for each link made while instrumented, and the span
    from the first phase's start to the last one's end."""

    def __init__(self) -> None:
        self.runs: list[dict[str, float]] = []
        self.spans: list[list[float]] = []  # [first start, last end] per run
        self.labels: list[str] = []

    def new_run(self) -> None:
        self.runs.append({})
        self.spans.append([])

    def record(self, label: str, start: float, end: float) -> None:
        if not self.runs:
            self.new_run()
        run = self.runs[-1]
        run[label] = run.get(label, 0.0) + (end - start)
        span = self.spans[-1]
        if not span:
            span[:] = [start, end]
        span[1] = end

    def run(self, index: int) -> dict[str, float]:
        """Seconds per phase of one link, in pipeline order."""
        run = self.runs[index]
        return {label: run[label] for label in self.labels if label in run}

    def span(self, index: int) -> float:
        """Seconds from the start of the first phase to the end of the last."""
        span = self.spans[index]
        return span[1] - span[0] if span else 0.0


@contextmanager
def timed_phases() -> Iterator[PhaseLog]:
    """Instrument Linker and BatchLinker; restore them on exit."""
    from .linker import Linker

    log = PhaseLog()
    patched = []

    def patch(cls, phases, at: int) -> None:
        labels = []
        for attr, label in phases:
            original = cls.__dict__.get(attr)
            if original is None:
                continue
            setattr(cls, attr, _timed(original, label, log))
            patched.append((cls, attr, original))
            labels.append(label)
        log.labels[at:at] = labels

    patch(Linker, LINKER_INPUT_PHASES, 0)
    batch_at = len(log.labels)
    patch(Linker, LINKER_OUTPUT_PHASES, batch_at)
    batch = sys.modules.get(f"{__package__}.batch")
    if batch is not None:
        patch(batch.BatchLinker, BATCH_PHASES, batch_at)
    else:
        # A batch restored from the link cache never loads the batch linker
        # (nor numpy, which it imports): its phases are instrumented when the
        # first cold link loads it.
        cold = Linker.__dict__["_link_group_cold"]

        def first_cold_link(self, *args, **kwargs):
            if Linker.__dict__.get("_link_group_cold") is first_cold_link:
                Linker._link_group_cold = cold
                from .batch import BatchLinker

                patch(BatchLinker, BATCH_PHASES, batch_at)
            return cold(self, *args, **kwargs)

        Linker._link_group_cold = first_cold_link
        patched.append((Linker, "_link_group_cold", cold))
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
            log.record(label, t0, time.perf_counter())

    return timed


def print_stats(log: PhaseLog, file=None) -> None:
    """One ``<phase>_s=<seconds>`` line per phase of the last link, then
    ``other_s`` (what no phase covers), then ``link_s``: first input read to
    symbols published."""
    out = file if file is not None else sys.stderr
    if not log.runs:
        return
    phases = log.run(-1)
    link = log.span(-1)
    for label, seconds in phases.items():
        print(f"{label}_s={seconds:.6f}", file=out)
    print(f"other_s={max(0.0, link - sum(phases.values())):.6f}", file=out)
    print(f"link_s={link:.6f}", file=out)
