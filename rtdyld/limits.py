"""Size limits checked before a batch asks for memory.

A corrupt header can claim a section (typically a .bss or __zerofill, which
has no file bytes to contradict it) of any size up to 2^64.  The readers
reject the absurd ones; what is left must still fit the memory manager's
reservation, since every batch is carved from it.  Failing here names the
object, the section and the numbers, instead of a bare "cannot allocate" or,
with a memory manager that backs working memory with buffers, a MemoryError.
"""

from __future__ import annotations

from .errors import LayoutError


def check_batch_fits(batch, plans) -> None:
    """Raise LayoutError if a section, a common, or the whole batch is larger
    than the reservation the batch is placed in (``batch.reach``)."""
    lo, hi = batch.reach
    capacity = hi - lo
    total = sum(plan.size for plan in plans.values())
    if total <= capacity and not batch.commons:
        # Every section lies within the total, so while it fits only an
        # alignment can be too large: one test per section, and the walk
        # below runs only to name what does not fit.
        for s in batch.placed_sections:
            if s.align > capacity:
                break
        else:
            return
    where = "below 2 GiB " if batch.low else ""
    for p, s in zip(batch.placed, batch.placed_sections):
        if s.size > capacity or s.align > capacity:
            obj = batch.objects[p.obj]
            raise LayoutError(
                f"{obj.name}: section {s.name!r} needs {s.size:#x} bytes aligned to {s.align:#x}, more than the "
                f"whole {capacity:#x}-byte memory reservation {where}the batch is placed in"
            )
    for name, (_, size, align) in batch.commons.items():
        if size > capacity or align > capacity:
            raise LayoutError(
                f"common symbol {name!r} needs {size:#x} bytes aligned to {align:#x}, more than the "
                f"whole {capacity:#x}-byte memory reservation {where}the batch is placed in"
            )
    if total > capacity:
        raise LayoutError(
            f"the batch needs {total:#x} bytes, more than the whole {capacity:#x}-byte memory "
            f"reservation {where}it is placed in"
        )
