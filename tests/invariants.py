"""Process-wide invariants checked after every test.

Released memory is given back: every byte of a memory manager's reservations
that no live allocation holds must be mapped PROT_NONE (so a stale pointer into
removed code faults instead of running it) and hold no resident page (so the
contents of removed or aborted batches are gone, not just hidden).  The
reservations are found through :func:`memmgr.live_managers`; residency comes
from ``mincore(2)``, read through cffi in ABI mode.  And between tests no
allocation is still in flight: a batch that failed or was aborted released
its memory instead of leaving it behind, writable.  And a closed Linker
holds no memory for indirect stubs, lazy trampolines or its lazy resolver.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import cffi
import numpy as np

from memmgr import PAGE_SIZE, MemoryManager, live_managers, read_maps

_ffi = cffi.FFI()
_ffi.cdef("int mincore(void *addr, size_t length, unsigned char *vec);")
_libc = _ffi.dlopen(None)


@dataclass(frozen=True)
class Violation:
    """One range of a reservation that breaks the invariant, and why."""

    start: int
    end: int
    problem: str

    def __str__(self) -> str:
        return f"0x{self.start:x}-0x{self.end:x}: {self.problem}"


def resident_pages(start: int, length: int) -> np.ndarray | None:
    """Addresses of the resident pages of a mapped range, or None if part of it is unmapped."""
    npages = -(-length // PAGE_SIZE)
    vec = _ffi.new("unsigned char[]", max(npages, 1))
    if _libc.mincore(_ffi.cast("void *", start), length, vec) != 0:
        return None
    flags = np.frombuffer(_ffi.buffer(vec, npages), dtype=np.uint8)
    return start + np.flatnonzero(flags & 1).astype(np.int64) * PAGE_SIZE


def _first_run(pages: np.ndarray) -> tuple[int, int]:
    """The first run of consecutive page addresses: ``(start, end)``."""
    gaps = np.flatnonzero(np.diff(pages) != PAGE_SIZE)
    last = int(pages[gaps[0]]) if len(gaps) else int(pages[-1])
    return int(pages[0]), last + PAGE_SIZE


def free_range_violations(start: int, end: int, maps=None) -> list[Violation]:
    """Why ``[start, end)``, a free range of a reservation, is not given back (empty if it is)."""
    maps = read_maps() if maps is None else maps
    out = []
    starts = [m.start for m in maps]
    i = max(bisect.bisect_right(starts, start) - 1, 0)
    covered = start
    for m in maps[i:]:
        if m.start >= end:
            break
        if m.end <= start:
            continue
        if m.start > covered:
            out.append(Violation(covered, m.start, "not mapped: the reservation has a hole"))
        if m.perms[:3] != "---":
            lo, hi = max(m.start, start), min(m.end, end)
            out.append(Violation(lo, hi, f"still accessible ({m.perms[:3]})"))
        covered = max(covered, m.end)
    if covered < end:
        out.append(Violation(covered, end, "not mapped: the reservation has a hole"))
    pages = resident_pages(start, end - start)
    if pages is not None and len(pages):
        lo, hi = _first_run(pages)
        out.append(Violation(lo, hi, f"{len(pages)} page(s) of the free range still resident (committed)"))
    return out


def unreleased_memory(managers: list[MemoryManager] | None = None) -> list[str]:
    """Every free reservation range, of ``managers`` (default: all live ones), not given back."""
    maps = read_maps()
    out = []
    for mm in live_managers() if managers is None else managers:
        for base, size in mm.all_free_blocks():
            out.extend(f"free range of a memory manager, {v}" for v in free_range_violations(base, base + size, maps))
    return out


def abandoned_allocations(managers: list[MemoryManager] | None = None) -> list[str]:
    """Allocations still in flight: a batch that failed or was aborted without releasing its memory.

    Between tests nothing is being linked, so every live allocation must have
    been finalized (a loaded batch) or released.
    """
    return [
        f"allocation still in flight (never finalized nor released): {a!r}"
        for mm in (live_managers() if managers is None else managers)
        for a in mm.live_allocations()
        if a.state == "in-flight"
    ]


def leaked_indirection() -> list[str]:
    """Stub, trampoline and resolver allocations still live although their Linker was closed."""
    from rtdyld.lazy import leaked_allocations

    return [f"indirection memory of a closed Linker not released: {a!r}" for a in leaked_allocations()]


class ReleaseGuard:
    """Reports each unreleased range once, so one leak fails one test."""

    def __init__(self) -> None:
        self.reported: set[str] = set()

    def report(self) -> list[str]:
        found = unreleased_memory() + abandoned_allocations() + leaked_indirection()
        bad = [v for v in found if v not in self.reported]
        self.reported.update(bad)
        return bad
