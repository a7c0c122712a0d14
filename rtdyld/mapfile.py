"""The memory layout of a linked batch, as a linker map file shows it.

Segments in address order with their protection and size; in each, the
sections placed there (with the object they come from), the stub area, the
GOT, tentative (common) definitions, and the padding between them up to the
segment's last page.  Sections pinned to an address of their own
(``--map-section``) are listed apart, since their target address is not in
the allocation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .batch import STUB_SIZE, LinkedBatch
from .errors import LayoutError

PAD = "*fill*"


@dataclass
class MapItem:
    address: int  # target address
    size: int
    kind: str  # "section", "stubs", "got", "common", "fill"
    name: str  # section name, "*stubs*", "*GOT*", the common symbol, or PAD
    object: str = ""
    align: int = 1
    note: str = ""


@dataclass
class MapSegment:
    name: str
    address: int
    size: int  # bytes requested
    span: int  # bytes reserved (whole pages)
    prot: str  # "r-x", "r--", "rw-"
    zero_fill: bool
    items: list[MapItem] = field(default_factory=list)


@dataclass
class MemoryMap:
    base: int
    size: int
    page_size: int
    segments: list[MapSegment]
    pinned: list[MapItem]

    def to_json(self) -> dict:
        return asdict(self)


def _prot(prot) -> str:
    p = int(prot)
    return ("r" if p & 1 else "-") + ("w" if p & 2 else "-") + ("x" if p & 4 else "-")


def memory_map(batch: LinkedBatch) -> MemoryMap:
    """Where everything of ``batch`` lives."""
    alloc = batch.allocation
    base, page = alloc.target_base, alloc.page_size
    by_segment: dict[str, list[MapItem]] = {s.name: [] for s in alloc.segments}
    pinned: list[MapItem] = []

    def place(item: MapItem) -> None:
        by_segment[_segment_of(batch, item)].append(item)

    for p in batch.sections:
        obj = batch.objects[p.obj]
        s = obj.sections[p.index]
        item = MapItem(base + p.work, s.size, "section", s.name, obj.name, s.align)
        if p.address != base + p.work:
            pinned.append(MapItem(p.address, s.size, "section", s.name, obj.name, s.align,
                                  f"pinned; working copy in {p.segment} at {base + p.work:#x}"))
            item.note = f"pinned at {p.address:#x}"
        by_segment[p.segment].append(item)
    if batch.stubs:
        first = min(batch.stubs.values())
        n = len(batch.stubs)
        place(MapItem(first, STUB_SIZE * n, "stubs", "*stubs*", align=8, note=f"{n} stub{'s' if n != 1 else ''}"))
    if batch.got:
        n = len(batch.got)
        place(MapItem(batch.got_base, 8 * n, "got", "*GOT*", align=8, note=f"{n} slot{'s' if n != 1 else ''}"))
    if batch.tls is not None and batch.tls.got_address and batch.tls.got_size:
        t = batch.tls
        n = len(t.gd_targets) + t.local_dynamic
        place(MapItem(t.got_address, t.got_size, "got", "*TLS GOT*", align=16,
                      note=f"{n} module/offset pair{'s' if n != 1 else ''}, {len(t.ie_targets)} TP-offset slot"
                      f"{'s' if len(t.ie_targets) != 1 else ''}"))
    for d in batch.definitions.values():
        if d.section == "COMMON":
            place(MapItem(d.address, d.size, "common", d.name, d.origin, note="tentative definition"))
    segments = []
    for seg in alloc.segments:
        start = base + seg.offset
        span = -(-seg.size // page) * page
        items = sorted(by_segment[seg.name], key=lambda i: (i.address, i.size))
        filled: list[MapItem] = []
        cursor = start
        for item in items:
            if item.address > cursor:
                filled.append(MapItem(cursor, item.address - cursor, "fill", PAD))
            filled.append(item)
            cursor = max(cursor, item.address + item.size)
        if start + span > cursor:
            filled.append(MapItem(cursor, start + span - cursor, "fill", PAD, note="to the end of the page"))
        segments.append(MapSegment(seg.name, start, seg.size, span, _prot(seg.prot), seg.zero_fill, filled))
    return MemoryMap(base, alloc.size, page, segments, pinned)


def _segment_of(batch: LinkedBatch, item: MapItem) -> str:
    """The segment holding ``item``, a table or symbol the batch placed.

    Raises LayoutError if no segment holds it: the batch's record of where
    it put things disagrees with its memory (only a batch restored from a
    damaged link-cache entry could), and a map that silently dropped or
    misplaced the item would explain bytes wrongly."""
    alloc = batch.allocation
    off = item.address - alloc.target_base
    for seg in alloc.segments:
        if seg.offset <= off < seg.offset + max(seg.size, 1):
            return seg.name
    what = f"common symbol {item.name!r} of {item.object}" if item.kind == "common" else item.name
    raise LayoutError(
        f"memory map: {what} at {item.address:#x} is outside the batch's memory "
        f"({alloc.target_base:#x}-{alloc.target_base + alloc.size:#x})"
    )


def format_map(m: MemoryMap) -> str:
    """The map as text, one line per segment and one per item under it."""
    pages = m.size // m.page_size if m.page_size else 0
    plural = "s" if pages != 1 else ""
    out = [f"Memory map: {m.base:#x}-{m.base + m.size:#x}, {m.size:#x} bytes in {pages} page{plural} of {m.page_size:#x}"]
    aw = max([len(f"{m.base + m.size:#x}")] + [len(f"{i.address:#x}") for i in m.pinned])
    for seg in m.segments:
        out.append("")
        kind = ", zero-fill" if seg.zero_fill else ""
        if not seg.size:
            out.append(f"segment {seg.name} {seg.prot}{kind}: empty")
            continue
        out.append(f"segment {seg.name} {seg.prot}{kind}: {seg.address:#x}-{seg.address + seg.span:#x}, "
                   f"{seg.size:#x} bytes used of {seg.span:#x}")
        out.extend(_item_lines(seg.items, aw))
    if m.pinned:
        out.append("")
        out.append("pinned sections:")
        out.extend(_item_lines(m.pinned, aw))
    return "\n".join(out) + "\n"


def _item_lines(items: list[MapItem], aw: int) -> list[str]:
    rows = []
    for i in items:
        extra = [f"align {i.align}"] if i.kind == "section" else []
        if i.note:
            extra.append(i.note)
        rows.append((f"{i.address:#x}".rjust(aw), f"{i.size:#x}", i.name, i.object, ", ".join(extra)))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    return [
        f"  {a}  {s.rjust(widths[1])}  {n.ljust(widths[2])}  {o.ljust(widths[3])}  {e}".rstrip()
        for a, s, n, o, e in rows
    ]


__all__ = ["MapItem", "MapSegment", "MemoryMap", "format_map", "memory_map"]
