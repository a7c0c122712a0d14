"""Unwind tables: lay out a batch's ``.eh_frame`` and register it with the unwinder.

libgcc's ``__register_frame(begin)`` takes the start of a whole ``.eh_frame``
image and walks it record by record until a zero length word, exactly as it
walks the ``.eh_frame`` a static linker builds (there the terminator comes
from ``crtend.o``).  So the batch's ELF ``.eh_frame`` sections are placed
back to back in the read-only segment, followed by four zero bytes, and the
whole run is registered once per batch.

Records are 4-byte aligned (LLVM pads them to 4, GCC to 8) and the sections
are only concatenated, so every CIE pointer, which is an offset back within
the same section, stays valid.  The first section keeps its alignment; the
others follow with alignment 4 so that no zero padding can end the walk early.

FDEs of a discarded COMDAT copy lose their relocations (see
``BatchLinker._check_discarded_locals``): their initial location would then
decode to an address inside the batch's own tables and widen the range the
unwinder files the batch under.  Such an FDE gets a zero CIE pointer, which
makes every unwinder pass treat it as a CIE that nothing refers to: skipped.

Only ELF sections take part: Mach-O unwind data is for Mach-O targets.
"""

from __future__ import annotations

import threading

from . import host
from . import layout as L
from .fieldwise import field_repr
from .lazy_numpy import np
from .objfile.model import ObjectFile

TERMINATOR = 4  # bytes of zero length word ending the image


class EhFrameImage:
    """The batch's concatenated ``.eh_frame``: ``size`` includes the terminator."""

    FIELDS = ("work", "address", "size", "segment_offset")  # (for its repr: rtdyld.fieldwise)

    def __init__(self, work: int, address: int, size: int, segment_offset: int) -> None:
        self.work = work  # offset into the allocation (set once segments are placed)
        self.address = address
        self.size = size
        self.segment_offset = segment_offset  # offset within the read-only segment, before placement

    def __repr__(self) -> str:
        return field_repr(self)


def table_objects(objects: list[ObjectFile]) -> set[int]:
    """Indices of the ``objects`` whose EH_FRAME sections are unwind tables: the ELF ones."""
    return {i for i, obj in enumerate(objects) if obj.format == "elf"}


def place(rodata, tables: list, sections: list) -> EhFrameImage | None:
    """Place the batch's unwind tables (``tables``, the PlacedSections of the
    EH_FRAME sections of :func:`table_objects`, and their ``sections``)
    contiguously in the read-only segment, ``rodata`` (a SegmentPlan), then
    the terminator.  The caller has placed everything else."""
    if not tables:
        return None
    # SegmentPlan.place's arithmetic inline: a call per table costs more than it.
    align = max(1, sections[0].align)
    first = work = -(-rodata.size // align) * align
    for p, s in zip(tables, sections):
        p.segment = L.RODATA
        p.work = work
        end = work + s.size
        work = -(-end // 4) * 4
    rodata.size = work + TERMINATOR  # 4-aligned after the last table
    return EhFrameImage(work=0, address=0, size=end + TERMINATOR - first, segment_offset=first)


def finish(image: EhFrameImage | None, memory: np.ndarray, dropped_offsets: np.ndarray) -> None:
    """Write the terminator and neutralise FDEs whose target was discarded.

    ``dropped_offsets`` are allocation offsets of relocations that were not
    applied because their target lies in a dropped COMDAT section."""
    if image is None:
        return
    end = image.work + image.size
    memory[end - TERMINATOR : end] = 0
    if not len(dropped_offsets):
        return
    words = memory[image.work : end]
    starts, cie_ptrs = _records(words)
    rel = np.asarray(dropped_offsets, dtype=np.int64) - image.work
    rel = rel[(rel >= 0) & (rel < len(words))]
    if not len(rel) or not len(starts):
        return
    owner = np.searchsorted(starts, rel, side="right") - 1
    for rec in np.unique(owner[owner >= 0]).tolist():
        at = int(cie_ptrs[rec])
        words[at : at + 4] = 0


def _records(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets of the records and the offsets of their CIE-pointer fields."""
    starts, ids = [], []
    off = 0
    n = len(data)
    while off + 4 <= n:
        length = int(data[off : off + 4].view("<u4")[0])
        if length == 0:
            break
        idf = off + 4
        if length == 0xFFFFFFFF:  # 64-bit DWARF: an 8-byte length follows
            if off + 12 > n:
                break
            length = int(data[off + 4 : off + 12].view("<u8")[0])
            idf = off + 12
        starts.append(off)
        ids.append(idf)
        off = idf + length
    return np.array(starts, dtype=np.int64), np.array(ids, dtype=np.int64)


# --- registration with the process unwinder ----------------------------------------

_lock = threading.Lock()
_unwinder: tuple | None = None


def _functions():
    """(__register_frame, __deregister_frame) from libgcc_s, which is the
    unwinder libstdc++ throws through; loaded if the process lacks it.
    (None, None) when there is no libgcc_s: nothing could throw then."""
    global _unwinder
    if _unwinder is not None:  # set once, never changed: no lock needed to read it
        return _unwinder
    with _lock:
        if _unwinder is None:
            try:
                handle, _ = host.open_library("libgcc_s.so.1")
            except host.LibraryNotFoundError:
                _unwinder = (None, None)
            else:
                reg = host.library_symbol(handle, "__register_frame")
                dereg = host.library_symbol(handle, "__deregister_frame")
                if reg and dereg:
                    # Declared with an integer argument, passed exactly as a pointer
                    # on x86-64: calls then need no pointer made per batch.
                    fn = "void (*)(uintptr_t)"
                    _unwinder = (host.ffi.cast(fn, reg), host.ffi.cast(fn, dereg))
                else:
                    _unwinder = (None, None)
        return _unwinder


def register(image: EhFrameImage | None) -> bool:
    """Hand the sealed image to the unwinder; True if it was registered."""
    if image is None or image.size <= TERMINATOR:
        return False
    reg, _ = _functions()
    if reg is None:
        return False
    reg(image.address)
    return True


def deregister(image: EhFrameImage | None) -> None:
    """Forget the image; must run before its memory is released."""
    _, dereg = _functions()
    if image is not None and dereg is not None:
        dereg(image.address)
