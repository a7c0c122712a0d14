"""VirtualMemory: target addresses chosen on paper, working memory in private buffers.

For links that never execute (checks, dry runs, linking for elsewhere): the
interface is the MemoryManager's, but nothing is mapped or protected, and the
same sequence of requests always gets the same target addresses.
"""

from __future__ import annotations

from collections.abc import Iterable

from .allocation import Allocation, SegmentRequest, layout
from .errors import AllocationError, MemMgrError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    from typing import Self

_LOW_LIMIT = 1 << 31


class _Region:
    def __init__(self, base: int, size: int, label: str):
        self.base, self.size, self.label = base, size, label
        self.cursor = base
        self.used = False

    @property
    def end(self) -> int:
        return self.base + self.size

    def bump(self, nbytes: int, page_size: int) -> int:
        if self.cursor + nbytes > self.end:
            raise AllocationError(
                f"cannot allocate {nbytes} bytes ({nbytes // page_size} pages) in the "
                f"{self.label} virtual range [0x{self.base:x}, 0x{self.end:x}): "
                f"{self.end - self.cursor} bytes left"
            )
        base = self.cursor
        self.cursor += nbytes
        return base


class VirtualMemory:
    """Bump-allocates page-aligned target addresses upwards from ``base``; never reuses them.

    ``low=True`` allocations come from the main range when it lies wholly
    below 2 GiB (the default ``base`` does), otherwise from
    ``[low_base, low_base + low_reserve_size)``, which must then lie below
    2 GiB.  ``finalize`` and ``release`` only record the state; working
    memory is a zeroed private buffer per allocation.
    """

    def __init__(
        self,
        base: int = 0x10000,
        page_size: int = 4096,
        reserve_size: int = 1 << 30,
        low_base: int = 0x10000,
        low_reserve_size: int = 256 << 20,
    ):
        if page_size <= 0 or page_size & (page_size - 1):
            raise ValueError(f"page size {page_size} is not a power of two")
        if base % page_size or low_base % page_size:
            raise ValueError("base addresses must be page aligned")
        if reserve_size <= 0 or low_reserve_size <= 0:
            raise ValueError("range sizes must be positive")
        self.page_size = page_size
        self.near = None
        self._main = _Region(base, reserve_size, "main")
        if self._main.end <= _LOW_LIMIT:
            self._low = self._main
        else:
            self._low = _Region(low_base, low_reserve_size, "low (below 2 GiB)")
            if self._low.end > _LOW_LIMIT:
                raise ValueError("the low range must lie below 2 GiB")
            if self._low.base < self._main.end and self._main.base < self._low.end:
                raise ValueError("the low range overlaps the main range")
        self._live: dict[int, Allocation] = {}

    @property
    def near_ok(self) -> bool | None:
        """``None`` before the main range is used, then True (there is no ``near`` to miss)."""
        return True if self._main.used else None

    def _region(self, low: bool) -> _Region:
        region = self._low if low else self._main
        region.used = True
        return region

    def reservations(self) -> list[tuple[int, int]]:
        """``(base, size)`` of each range used so far: main first, then low if separate."""
        regions = [self._main] if self._low is self._main else [self._main, self._low]
        return [(r.base, r.size) for r in regions if r.used]

    def reach_range(self, low: bool = False) -> tuple[int, int]:
        """``[lo, hi)`` of the range ``allocate(..., low=low)`` draws from."""
        r = self._region(low)
        return r.base, r.end

    def contains(self, addr: int) -> bool:
        """Whether ``addr`` lies inside a range used so far."""
        return any(base <= addr < base + size for base, size in self.reservations())

    def allocate(self, requests: Iterable[SegmentRequest], low: bool = False) -> Allocation:
        """Make an in-flight allocation exactly as MemoryManager.allocate, at the next free target address."""
        segments, total = layout(list(requests), self.page_size)
        base = self._region(low).bump(total, self.page_size)
        memory = memoryview(bytearray(total))
        alloc = Allocation(self, base, total, segments, memory, self.page_size, low)
        self._live[id(alloc)] = alloc
        return alloc

    def live_allocations(self) -> list[Allocation]:
        """Allocations not yet released, in allocation order."""
        return list(self._live.values())

    def _finalize(self, alloc: Allocation, runs: list[list[int]]) -> None:
        if id(alloc) not in self._live:
            raise MemMgrError(f"{alloc!r} does not belong to this VirtualMemory")

    def _release(self, alloc: Allocation) -> None:
        self._live.pop(id(alloc), None)

    def close(self) -> None:
        """Mark every live allocation released."""
        for alloc in self._live.values():
            alloc._mark_released()
        self._live.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<VirtualMemory base=0x{self._main.base:x} next=0x{self._main.cursor:x}>"
