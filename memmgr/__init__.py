"""memmgr: memory for linked code — reserve, carve, protect, release.

memmgr knows nothing of object files.  It maps, protects and unmaps memory
through libc (cffi in ABI mode) and hands out *allocations*.

Reservations
    A :class:`MemoryManager` reserves one contiguous, inaccessible address
    range on first use (1 GiB by default, placed within 2 GiB − 16 MiB of a
    caller-supplied ``near`` address when one is given) and carves every
    allocation from it, first fit, page granular, coalescing freed blocks.  So
    everything linked into the process stays within ±2 GiB of everything else
    and 32-bit PC-relative references always reach.  A second reservation
    below 2 GiB serves ``allocate(..., low=True)`` for code that needs 32-bit
    absolute addresses.

Allocations
    One allocation is one page-aligned block holding several segments in
    request order, each starting on a page boundary with its own final
    protection.  Each has a *target address* (``target_base``: where the code
    will run) and *working memory* (``memory``: where the linker writes).  In
    process they are the same pages; :class:`VirtualMemory` chooses target
    addresses on paper and backs working memory with private buffers, for
    links that never run.  Compute with target addresses, write to working
    memory, and never assume the two are equal.

Life cycle (as in LLVM JITLink)
    ``in-flight``
        fresh from :meth:`MemoryManager.allocate`: every page readable and
        writable, none executable, all zero.  The linker writes the segments.
    ``finalized``
        :meth:`Allocation.finalize` gives each segment its final protection.
        No page is ever writable and executable at the same time.
    ``released``
        :meth:`Allocation.release` drops the pages (they read as zero when the
        range is handed out again) and returns the range to the free list.
        Releasing an in-flight allocation abandons it; releasing twice does
        nothing; finalizing after release raises :class:`MemMgrError`.

Every MemoryManager is thread safe and registered, weakly, so that
:func:`live_managers` can list every reservation of the process (for checks
that released memory really was given back).
"""

from __future__ import annotations

from .allocation import Allocation, Prot, Segment, SegmentRequest
from .errors import AllocationError, MemMgrError
from .libc import PAGE_SIZE
from .manager import MemoryManager, live_managers
from .procmaps import Mapping, read_maps
from .virtual import VirtualMemory

__all__ = [
    "PAGE_SIZE",
    "Allocation",
    "AllocationError",
    "Mapping",
    "MemMgrError",
    "MemoryManager",
    "Prot",
    "Segment",
    "SegmentRequest",
    "VirtualMemory",
    "live_managers",
    "read_maps",
]
