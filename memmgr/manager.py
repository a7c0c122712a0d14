"""MemoryManager: real memory in this process, carved from reservations."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable

from . import libc, placement
from .allocation import Allocation, SegmentRequest, layout
from .errors import AllocationError, MemMgrError
from .reservation import Reservation

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    from typing import Self

_MIN_RESERVE = 16 << 20

# Every manager of the process, so that invariant checks can find all
# reservations; weak, so that registering keeps nothing alive.
_registry: weakref.WeakSet[MemoryManager] = weakref.WeakSet()
_registry_lock = threading.Lock()


def live_managers() -> list[MemoryManager]:
    """Every MemoryManager of this process not yet garbage collected (closed ones included)."""
    with _registry_lock:
        return list(_registry)


def _sizes(size: int) -> list[int]:
    """``size``, then its halves down to 16 MiB (or just ``size`` if smaller), page rounded."""
    floor = min(size, _MIN_RESERVE)
    out = []
    while size >= floor:
        out.append(-(-size // libc.PAGE_SIZE) * libc.PAGE_SIZE)
        size //= 2
    return out


class MemoryManager:
    """Allocates in-process memory from one main reservation (and one low one).

    The main reservation (``reserve_size`` bytes, default 1 GiB) is made on
    first use; everything allocated from it is within ±2 GiB of everything
    else.  With ``near``, it is placed so that every byte is within
    2 GiB − 16 MiB of ``near``; :attr:`near_ok` says whether that worked.  If
    no gap within reach takes the full size, halves down to 16 MiB are tried
    before ``near`` is given up and the kernel picks the place (trying halves
    again if it must).  :meth:`reach_range` gives the range actually reserved.
    The low reservation (``low_reserve_size``, default 256 MiB, halves down to
    16 MiB likewise) lies below 2 GiB and serves ``allocate(..., low=True)``.

    Reservations are given back only by :meth:`close`, never by garbage
    collection, since linked code may still run from them.  Thread safe.
    """

    def __init__(
        self,
        reserve_size: int = 1 << 30,
        near: int | None = None,
        low_reserve_size: int = 256 << 20,
    ):
        if reserve_size <= 0 or low_reserve_size <= 0:
            raise ValueError("reservation sizes must be positive")
        self.reserve_size = reserve_size
        self.near = near
        self.low_reserve_size = low_reserve_size
        self.page_size = libc.PAGE_SIZE
        self._main: Reservation | None = None
        self._low: Reservation | None = None
        self._near_ok: bool | None = None
        self._live: dict[int, Allocation] = {}
        self._views: dict[int, memoryview] = {}  # reservation base -> its bytes, all of them
        self._closed = False
        self._lock = threading.RLock()
        with _registry_lock:
            _registry.add(self)

    # -- reservations -------------------------------------------------------

    @property
    def near_ok(self) -> bool | None:
        """``None`` before the main reservation exists; then whether it is within reach of ``near``.

        True when no ``near`` was given.
        """
        return self._near_ok

    def _reserve_main(self) -> Reservation:
        if self._main is not None:
            return self._main
        if self._closed:
            raise MemMgrError("memory manager is closed")
        base = size = None
        if self.near is not None:
            for size in _sizes(self.reserve_size):
                base = placement.reserve_near(size, self.near)
                if base is not None:
                    break
        if base is None:
            last_error: MemMgrError | None = None
            for size in _sizes(self.reserve_size):
                try:
                    base = placement.reserve_anywhere(size)
                    break
                except MemMgrError as e:
                    last_error = e
            if base is None:
                raise AllocationError(
                    f"could not reserve {self.reserve_size} bytes of address space "
                    f"(nor halves down to {min(self.reserve_size, _MIN_RESERVE)} bytes): "
                    f"{last_error}",
                    errno=last_error.errno if last_error else None,
                )
        assert size is not None
        self._main = self._viewed(Reservation(base, size, self.page_size, "main"))
        self._near_ok = self.near is None or placement.within_reach(base, size, self.near)
        return self._main

    def _reserve_low(self) -> Reservation:
        if self._low is not None:
            return self._low
        if self._closed:
            raise MemMgrError("memory manager is closed")
        for size in _sizes(self.low_reserve_size):
            base = placement.reserve_low(size)
            if base is not None:
                self._low = self._viewed(Reservation(base, size, self.page_size, "low (below 2 GiB)"))
                return self._low
        raise AllocationError(
            "memory below 2 GiB could not be reserved (needed for code built without "
            f"PIC); tried {self.low_reserve_size} bytes down to "
            f"{min(self.low_reserve_size, _MIN_RESERVE)} bytes"
        )

    def reservations(self) -> list[tuple[int, int]]:
        """``(base, size)`` of each reservation made so far: the main one first, then the low one."""
        with self._lock:
            return [(r.base, r.size) for r in (self._main, self._low) if r is not None]

    def reach_range(self, low: bool = False) -> tuple[int, int]:
        """``[lo, hi)`` of the reservation ``allocate(..., low=low)`` draws from, reserving it if needed."""
        with self._lock:
            r = self._reserve_low() if low else self._reserve_main()
            return r.base, r.end

    def contains(self, addr: int) -> bool:
        """Whether ``addr`` lies inside any reservation."""
        with self._lock:
            return any(r is not None and r.contains(addr) for r in (self._main, self._low))

    def free_blocks(self, low: bool = False) -> list[tuple[int, int]]:
        """Free ``(address, size)`` blocks of a reservation (empty if it does not exist yet)."""
        with self._lock:
            r = self._low if low else self._main
            return r.free_blocks() if r is not None else []

    def all_free_blocks(self) -> list[tuple[int, int]]:
        """Free ``(address, size)`` blocks of every reservation, taken at one instant.

        Every such byte was never handed out or has been released: it must be
        inaccessible (PROT_NONE) and hold no memory.
        """
        with self._lock:
            return [b for r in (self._main, self._low) if r is not None for b in r.free_blocks()]

    # -- allocations --------------------------------------------------------

    def allocate(self, requests: Iterable[SegmentRequest], low: bool = False) -> Allocation:
        """Make an in-flight allocation holding ``requests`` in order, each segment page aligned.

        All its pages are readable and writable (never executable) and read
        as zero.  A total of zero bytes yields a valid empty allocation based
        at the start of the reservation.  Raises AllocationError if the
        reservation cannot be made or the block does not fit, MemMgrError for
        a malformed request.
        """
        segments, total = layout(list(requests), self.page_size)
        with self._lock:
            if low:
                r = self._low or self._reserve_low()
            else:
                r = self._main or self._reserve_main()
            if total == 0:
                alloc = Allocation(
                    self, r.base, 0, segments, memoryview(bytearray()), self.page_size, low
                )
                self._live[id(alloc)] = alloc
                return alloc
            base = r.take(total)
            try:
                libc.mprotect(base, total, libc.PROT_READ | libc.PROT_WRITE)
            except MemMgrError:
                r.give(base, total)
                raise
            start = base - r.base
            memory = self._views[r.base][start : start + total]
            alloc = Allocation(self, base, total, segments, memory, self.page_size, low)
            self._live[id(alloc)] = alloc
            return alloc

    def _viewed(self, r: Reservation) -> Reservation:
        # One view of the whole reservation, made with it: slicing it costs
        # a tenth of wrapping every block in a cffi buffer of its own, and
        # the first allocation does not pay for making it.
        self._views[r.base] = memoryview(libc.ffi.buffer(libc.ffi.cast("char *", r.base), r.size))
        return r

    def live_allocations(self) -> list[Allocation]:
        """Allocations not yet released, in allocation order."""
        with self._lock:
            return list(self._live.values())

    def _finalize(self, alloc: Allocation, runs: list[list[int]]) -> None:
        # Pages are only RW in flight, and each mprotect sets a run's final
        # protection in one step, so no page is ever W and X.
        base = alloc.target_base
        with self._lock:
            for offset, length, prot in runs:
                libc.mprotect(base + offset, length, prot)

    def _release(self, alloc: Allocation) -> None:
        with self._lock:
            if id(alloc) not in self._live:
                return  # released by close() meanwhile; the reservation is gone
            if alloc.size:
                r = self._low if alloc.low else self._main
                assert r is not None
                self._scrub(alloc.target_base, alloc.size)
                r.give(alloc.target_base, alloc.size)
            self._live.pop(id(alloc), None)

    @staticmethod
    def _scrub(base: int, size: int) -> None:
        # A fresh MAP_FIXED mapping atomically replaces the old pages: their
        # contents are dropped (they read as zero next time), the range is
        # PROT_NONE again and, being MAP_NORESERVE, no longer accounted.
        try:
            libc.mmap(base, size, libc.PROT_NONE, libc.RESERVE_FLAGS | libc.MAP_FIXED)
            return
        except MemMgrError:
            pass
        # Replacing can fail with ENOMEM when the split would exceed
        # vm.max_map_count; MADV_DONTNEED drops the pages without a new mapping.
        # If this fails too the range stays out of the free list: leaked, never
        # handed out again with stale contents.
        libc.madvise(base, size, libc.MADV_DONTNEED)
        libc.mprotect(base, size, libc.PROT_NONE)

    # -- teardown -----------------------------------------------------------

    def close(self) -> None:
        """Unmap every reservation; all live allocations become released.

        Only call once no linked code can run any more.  Afterwards
        :meth:`allocate` raises MemMgrError; a second call does nothing.
        """
        with self._lock:
            for alloc in self._live.values():
                alloc._mark_released()
            self._live.clear()
            for r in (self._main, self._low):
                if r is not None:
                    libc.munmap(r.base, r.size)
            self._main = self._low = None
            self._views.clear()
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        parts = [f"0x{b:x}+{s:#x}" for b, s in self.reservations()]
        return f"<MemoryManager {' '.join(parts) or 'unreserved'} live={len(self._live)}>"
