"""Group a batch's sections into protection segments and assign offsets.

Four segments, in this order, each starting on a page: code and stubs (RX),
read-only data and the GOT (R), writable data (RW), zero-fill (RW, never
written).  Sections are packed by alignment, so many small sections share a
page.  ``.data.rel.ro`` is relocated before protections are applied, so it
can live with the read-only data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .objfile.model import Section, SectionFlags

TEXT, RODATA, DATA, BSS = "text", "rodata", "data", "bss"
SEGMENT_ORDER = (TEXT, RODATA, DATA, BSS)


# Plain ints: IntFlag arithmetic costs microseconds, and this runs for every section.
_EXEC, _ZERO_FILL, _WRITE = int(SectionFlags.EXEC), int(SectionFlags.ZERO_FILL), int(SectionFlags.WRITE)
_TLS = int(SectionFlags.TLS)


def segment_of(section: Section) -> str:
    f = int(section.flags)
    if f & _TLS:
        return RODATA  # the template each thread's copy is made from (rtdyld.tls)
    if f & _EXEC:
        return TEXT
    if f & _ZERO_FILL:
        return BSS
    if f & _WRITE and not section.name.startswith(".data.rel.ro"):
        return DATA
    return RODATA


@dataclass
class SegmentPlan:
    name: str
    size: int = 0
    items: list[tuple[str, int, int]] = field(default_factory=list)  # (label, offset, size)

    def place(self, label: str, size: int, align: int) -> int:
        align = max(1, align)
        off = (self.size + align - 1) // align * align
        self.size = off + size
        self.items.append((label, off, size))
        return off


def plan_segments() -> dict[str, SegmentPlan]:
    return {name: SegmentPlan(name) for name in SEGMENT_ORDER}
