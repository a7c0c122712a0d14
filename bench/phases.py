"""Per-phase timing of rtdyld's links: the same instrumentation as
``rtdyld run --stats`` (:mod:`rtdyld.phases`), under the names the
benchmarks use."""

from __future__ import annotations

from rtdyld.phases import FIXUP, PhaseLog
from rtdyld.phases import timed_phases as rtdyld_phases

__all__ = ["FIXUP", "PhaseLog", "rtdyld_phases"]
