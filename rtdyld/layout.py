"""Group a batch's sections into protection segments and assign offsets.

Four segments, in this order, each starting on a page: code and stubs (RX),
read-only data and the GOT (R), writable data (RW), zero-fill (RW, never
written).  Sections are packed by alignment, so many small sections share a
page.  ``.data.rel.ro`` is relocated before protections are applied, so it
can live with the read-only data.
"""

from __future__ import annotations

from operator import attrgetter

from .objfile.model import Section, SectionFlags, SectionRole

TEXT, RODATA, DATA, BSS = "text", "rodata", "data", "bss"
SEGMENT_ORDER = (TEXT, RODATA, DATA, BSS)


# Plain ints: IntFlag arithmetic costs microseconds, and this runs for every section.
_EXEC, _ZERO_FILL, _WRITE = int(SectionFlags.EXEC), int(SectionFlags.ZERO_FILL), int(SectionFlags.WRITE)
_TLS = int(SectionFlags.TLS)
_EH_FRAME = int(SectionRole.EH_FRAME)


def segment_of(section: Section) -> str:
    seg = _BY_FLAGS.get(section.flags)
    if seg is not None:
        return seg
    f = int(section.flags)
    if f & _TLS:
        seg = RODATA  # the template each thread's copy is made from (rtdyld.tls)
    elif f & _EXEC:
        seg = TEXT
    elif f & _ZERO_FILL:
        seg = BSS
    elif f & _WRITE:  # writable data, unless it is .data.rel.ro: never cached, it depends on the name
        return RODATA if section.name.startswith(".data.rel.ro") else DATA
    else:
        seg = RODATA
    _BY_FLAGS[f] = seg
    return seg


# Segment by section flags, where the flags alone decide it: a dict look-up
# per section, not IntFlag arithmetic.
_BY_FLAGS: dict[int, str] = {}
_FLAGS = attrgetter("flags")


def segments_of(sections: list[Section]) -> list[str]:
    """:func:`segment_of` each of ``sections``: the flags' segments looked up
    at C speed, a Python call only for a section the flags do not decide."""
    segments = list(map(_BY_FLAGS.get, map(_FLAGS, sections)))
    if None in segments:
        segments = [seg or segment_of(s) for seg, s in zip(segments, sections)]
    return segments


class SegmentPlan:
    """A segment being laid out: ``size`` is the end of what is placed so far."""

    # A plain class: a dataclass decoration execs generated code at import (start-up).
    def __init__(self, name: str, size: int = 0) -> None:
        self.name = name
        self.size = size

    def place(self, size: int, align: int) -> int:
        """Offset of ``size`` more bytes aligned to ``align``."""
        align = max(1, align)
        off = (self.size + align - 1) // align * align
        self.size = off + size
        return off


def place_sections(plans: dict[str, SegmentPlan], placed: list, sections: list, set_aside=()) -> tuple[list, list]:
    """``place`` each section (``sections[i]`` is placed[i]'s) in its segment,
    in order, setting the PlacedSection's ``work`` to its offset there.

    Unwind tables (role EH_FRAME) of the objects numbered in ``set_aside``
    are left unplaced: they are returned, as PlacedSections and their
    Sections, for the caller to place after the rest.  One loop over the
    ends kept in a dict: a call per section costs more than the arithmetic.
    """
    ends = {name: plan.size for name, plan in plans.items()}
    aside: list = []
    aside_sections: list = []
    for p, s in zip(placed, sections):
        if s.role == _EH_FRAME and p.obj in set_aside:
            aside.append(p)
            aside_sections.append(s)
            continue
        align = s.align
        off = ends[p.segment]
        if align > 1:
            off = (off + align - 1) // align * align
        p.work = off
        ends[p.segment] = off + s.size
    for name, end in ends.items():
        plans[name].size = end
    return aside, aside_sections


def plan_segments() -> dict[str, SegmentPlan]:
    return {name: SegmentPlan(name) for name in SEGMENT_ORDER}
