"""Where to put a reservation: free gaps from /proc/self/maps, and mapping them.

A reservation is an inaccessible (PROT_NONE) anonymous mapping that only
claims address space.  ``reserve_near`` puts it within reach of an address,
``reserve_low`` below 2 GiB, ``reserve_anywhere`` where the kernel likes.
"""

from __future__ import annotations

import resource

from . import libc
from .errors import MemMgrError
from .procmaps import Mapping, read_maps

# Highest user address mmap hands out without an explicit hint above it
# (47-bit user space; with 5-level paging the kernel still stays below this
# unless asked).
USER_TOP = 0x7FFF_FFFF_F000

# Every byte of a "near" reservation is at most this far from ``near``.  The
# 16 MiB margin keeps rel32 displacements valid for targets slightly beyond the
# reservation's edge (addends, symbols at the end of host data).
REACH = (1 << 31) - (16 << 20)

# Exclusive upper end of memory usable by 32-bit absolute (also sign-extended)
# addresses.
LOW_LIMIT = 1 << 31

# The stack grows down into the gap below it up to its rlimit, and the kernel
# itself keeps at least 128 MiB between the stack and mmap_base.
_STACK_KEEP_OUT = 128 << 20
# brk() grows [heap] upwards; a reservation directly above it would push
# malloc onto its slower mmap fallback.
_HEAP_KEEP_OUT = 64 << 20


def _mmap_min_addr() -> int:
    try:
        with open("/proc/sys/vm/mmap_min_addr", encoding="ascii") as f:
            value = int(f.read())
    except (OSError, ValueError):
        value = 0
    return max(value, 0x10000)


def _stack_keep_out() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    if soft == resource.RLIM_INFINITY:
        return _STACK_KEEP_OUT
    return max(_STACK_KEEP_OUT, soft + (1 << 20))


def _align_up(x: int, page: int) -> int:
    return -(-x // page) * page


def _align_down(x: int, page: int) -> int:
    return x // page * page


def free_gaps(
    maps: list[Mapping], page: int = libc.PAGE_SIZE
) -> list[tuple[int, int]]:
    """Unmapped ``[start, end)`` ranges between ``mmap_min_addr`` and ``USER_TOP``.

    Room the stack and the brk heap will grow into is treated as taken.
    """
    taken = []
    stack_keep_out = _stack_keep_out()
    for m in maps:
        if m.start >= USER_TOP:
            continue
        start, end = m.start, m.end
        if m.path == "[stack]":
            start -= stack_keep_out
        elif m.path == "[heap]":
            end += _HEAP_KEEP_OUT
        taken.append((start, end))
    taken.sort()
    gaps = []
    cursor = _align_up(_mmap_min_addr(), page)
    for start, end in taken:
        start = _align_down(start, page)
        if start > cursor:
            gaps.append((cursor, start))
        cursor = max(cursor, _align_up(end, page))
    if cursor < USER_TOP:
        gaps.append((cursor, USER_TOP))
    return gaps


def distance(base: int, size: int, point: int) -> int:
    """Distance from ``point`` to the nearest byte of ``[base, base+size)``."""
    if point < base:
        return base - point
    if point >= base + size:
        return point - (base + size - 1)
    return 0


def candidates(
    size: int,
    lo: int,
    hi: int,
    prefer: int,
    gaps: list[tuple[int, int]],
    page: int = libc.PAGE_SIZE,
) -> list[int]:
    """Bases for ``size`` bytes inside ``[lo, hi)``, one per fitting gap, closest to ``prefer`` first."""
    lo, hi = _align_up(lo, page), _align_down(hi, page)
    found = []
    for gap_lo, gap_hi in gaps:
        a, b = max(gap_lo, lo), min(gap_hi, hi)
        if b - a < size:
            continue
        base = min(max(_align_down(prefer - size // 2, page), a), b - size)
        found.append((distance(base, size, prefer), base))
    found.sort()
    return [base for _, base in found]


def within_reach(base: int, size: int, near: int) -> bool:
    """Whether every byte of ``[base, base+size)`` is within ``REACH`` of ``near``."""
    return base >= near - REACH and base + size - 1 <= near + REACH


def _map_at(base: int, size: int, lo: int, hi: int) -> int | None:
    try:
        got = libc.mmap(
            base, size, libc.PROT_NONE, libc.RESERVE_FLAGS | libc.MAP_FIXED_NOREPLACE
        )
    except MemMgrError:
        # EEXIST: something was mapped there since we read the maps.
        return None
    # Kernels before 4.17 ignore MAP_FIXED_NOREPLACE and treat the address as
    # a mere hint, so the mapping may have landed elsewhere.
    if got == base or (got >= lo and got + size <= hi):
        return got
    libc.munmap(got, size)
    return None


def reserve_in_window(size: int, lo: int, hi: int, prefer: int) -> int | None:
    """Reserve ``size`` bytes wholly inside ``[lo, hi)``, as close to ``prefer`` as a gap allows.

    Returns the base, or ``None`` if no free gap there takes it.
    """
    lo = max(lo, _mmap_min_addr())
    hi = min(hi, USER_TOP)
    # Two rounds: another thread may map into a gap between reading the maps
    # and our mmap, which then fails with EEXIST.
    for _ in range(2):
        bases = candidates(size, lo, hi, prefer, free_gaps(read_maps()))
        if not bases:
            return None
        for base in bases:
            got = _map_at(base, size, lo, hi)
            if got is not None:
                return got
    return None


def reserve_near(size: int, near: int) -> int | None:
    """Reserve ``size`` bytes every byte of which is within ``REACH`` of ``near``; ``None`` if impossible."""
    return reserve_in_window(size, near - REACH, near + REACH + 1, near)


def reserve_low(size: int) -> int | None:
    """Reserve ``size`` bytes ending at or below 2 GiB; ``None`` if impossible."""
    try:
        got = libc.mmap(0, size, libc.PROT_NONE, libc.RESERVE_FLAGS | libc.MAP_32BIT)
    except MemMgrError:
        got = None
    if got is not None:
        if got + size <= LOW_LIMIT:
            return got
        libc.munmap(got, size)
    # MAP_32BIT only searches 1-2 GiB; the rest of the low space may be free.
    return reserve_in_window(size, 0, LOW_LIMIT, LOW_LIMIT)


def reserve_anywhere(size: int) -> int:
    """Reserve ``size`` bytes wherever the kernel places them; raises MemMgrError."""
    return libc.mmap(0, size, libc.PROT_NONE, libc.RESERVE_FLAGS)
