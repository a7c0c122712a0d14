"""A reserved address range and its page-granular first-fit free list.

Pure bookkeeping: no system calls happen here.
"""

from __future__ import annotations

import bisect

from .errors import AllocationError, MemMgrError


class Reservation:
    """``[base, base+size)`` carved into blocks by first fit, coalescing on release."""

    def __init__(self, base: int, size: int, page_size: int, label: str):
        if base % page_size or size % page_size or size <= 0:
            raise MemMgrError(f"reservation 0x{base:x}+{size:#x} is not page aligned")
        self.base = base
        self.size = size
        self.page_size = page_size
        self.label = label
        # Sorted, disjoint, never adjacent: free [start, end) address ranges.
        self._starts: list[int] = [base]
        self._ends: list[int] = [base + size]

    @property
    def end(self) -> int:
        return self.base + self.size

    def contains(self, addr: int) -> bool:
        """Whether ``addr`` lies inside the reserved range."""
        return self.base <= addr < self.end

    def free_bytes(self) -> int:
        """Total free bytes."""
        return sum(e - s for s, e in zip(self._starts, self._ends))

    def largest_free(self) -> int:
        """Size of the largest free block in bytes."""
        return max((e - s for s, e in zip(self._starts, self._ends)), default=0)

    def free_blocks(self) -> list[tuple[int, int]]:
        """Free blocks as ``(address, size)``, in address order."""
        return [(s, e - s) for s, e in zip(self._starts, self._ends)]

    def take(self, nbytes: int) -> int:
        """Claim the lowest free block of ``nbytes`` (a page multiple); return its address.

        Raises AllocationError naming the request and what is free if none fits.
        """
        if nbytes <= 0 or nbytes % self.page_size:
            raise MemMgrError(f"cannot take {nbytes} bytes: not a positive page multiple")
        for i, (start, end) in enumerate(zip(self._starts, self._ends)):
            if end - start >= nbytes:
                if end - start == nbytes:
                    del self._starts[i], self._ends[i]
                else:
                    self._starts[i] = start + nbytes
                return start
        raise AllocationError(
            f"cannot allocate {nbytes} bytes ({nbytes // self.page_size} pages) in the "
            f"{self.label} reservation [0x{self.base:x}, 0x{self.end:x}) of "
            f"{self.size} bytes: {self.free_bytes()} bytes free, largest free "
            f"block {self.largest_free()} bytes"
        )

    def give(self, addr: int, nbytes: int) -> None:
        """Return ``[addr, addr+nbytes)`` to the free list, merging with free neighbours."""
        end = addr + nbytes
        if addr < self.base or end > self.end or addr % self.page_size or nbytes % self.page_size:
            raise MemMgrError(f"0x{addr:x}+{nbytes:#x} is not a block of this reservation")
        i = bisect.bisect_right(self._starts, addr)
        if (i > 0 and self._ends[i - 1] > addr) or (
            i < len(self._starts) and self._starts[i] < end
        ):
            raise MemMgrError(f"0x{addr:x}+{nbytes:#x} is already free")
        merge_left = i > 0 and self._ends[i - 1] == addr
        merge_right = i < len(self._starts) and self._starts[i] == end
        if merge_left and merge_right:
            self._ends[i - 1] = self._ends[i]
            del self._starts[i], self._ends[i]
        elif merge_left:
            self._ends[i - 1] = end
        elif merge_right:
            self._starts[i] = addr
        else:
            self._starts.insert(i, addr)
            self._ends.insert(i, end)
