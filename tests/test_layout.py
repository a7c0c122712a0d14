"""Segment assignment and placement of a batch's sections."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rtdyld import layout as L
from rtdyld import unwind
from rtdyld.batch import PlacedSection
from rtdyld.objfile.model import Section, SectionFlags, SectionRole


def _section(name: str, flags: SectionFlags, size: int = 16, align: int = 8) -> Section:
    return Section(name, b"" if flags & SectionFlags.ZERO_FILL else bytes(size), size, align, flags)


def test_segments_by_flags_and_by_name_for_writable_data():
    W, X, Z, T = SectionFlags.WRITE, SectionFlags.EXEC, SectionFlags.ZERO_FILL, SectionFlags.TLS
    cases = [
        (".text", X, L.TEXT),
        (".rodata", SectionFlags.NONE, L.RODATA),
        (".rodata.str1.1", SectionFlags.MERGE | SectionFlags.STRINGS, L.RODATA),
        (".data", W, L.DATA),
        (".data.rel.ro.local", W, L.RODATA),  # relocated before it is sealed read-only
        (".data", W, L.DATA),  # the same flags again: the name still decides
        (".bss", W | Z, L.BSS),
        (".tdata", W | T, L.RODATA),
        (".tbss", W | Z | T, L.RODATA),
    ]
    for _ in range(2):  # the second round answers the flags-only cases from memory
        assert [L.segment_of(_section(n, f)) for n, f, _ in cases] == [seg for _, _, seg in cases]


sections = st.lists(
    st.tuples(
        st.sampled_from(L.SEGMENT_ORDER),
        st.integers(0, 5000),
        st.sampled_from([0, 1, 2, 4, 8, 16, 64, 4096]),
    ),
    max_size=40,
)


@given(sections, st.integers(0, 100))
def test_placing_sections_together_is_placing_them_one_by_one(rows, already):
    one_by_one = L.plan_segments()
    together = L.plan_segments()
    for plans in (one_by_one, together):
        plans[L.RODATA].place(already, 1)  # something placed before
    expected = [one_by_one[seg].place(size, align) for seg, size, align in rows]
    placed = [PlacedSection(0, i, seg) for i, (seg, _, _) in enumerate(rows)]
    L.place_sections(together, placed, [_section(".s", SectionFlags.NONE, size, align) for _, size, align in rows])
    assert [p.work for p in placed] == expected
    assert {n: p.size for n, p in together.items()} == {n: p.size for n, p in one_by_one.items()}
    for p, (_, _, align) in zip(placed, rows):
        assert p.work % max(align, 1) == 0


def test_unwind_tables_are_set_aside_then_placed_back_to_back_after_the_rest():
    """An ELF object's .eh_frame goes after the rest of the read-only data, the
    first keeping its alignment, the others 4-aligned, then a 4-byte terminator;
    EH_FRAME sections of objects not set aside (Mach-O) are placed in order."""
    eh = SectionRole.EH_FRAME
    rows = [  # (object, section)
        (0, Section(".rodata", b"", 5, 1, SectionFlags.NONE)),
        (0, Section(".eh_frame", b"", 0x2A, 8, SectionFlags.NONE, eh)),
        (1, Section("__TEXT,__eh_frame", b"", 16, 8, SectionFlags.NONE, eh)),
        (0, Section(".rodata.2", b"", 3, 1, SectionFlags.NONE)),
        (2, Section(".eh_frame", b"", 0x30, 8, SectionFlags.NONE, eh)),
    ]
    placed = [PlacedSection(o, i, L.RODATA) for i, (o, _) in enumerate(rows)]
    plans = L.plan_segments()
    tables, table_sections = L.place_sections(plans, placed, [s for _, s in rows], {0, 2})
    assert tables == [placed[1], placed[4]] and table_sections == [rows[1][1], rows[4][1]]
    assert [p.work for p in (placed[0], placed[2], placed[3])] == [0, 8, 24]
    assert plans[L.RODATA].size == 27
    image = unwind.place(plans[L.RODATA], tables, table_sections)
    assert [p.work for p in tables] == [32, 32 + 0x2C] and {p.segment for p in tables} == {L.RODATA}
    assert plans[L.RODATA].size == 32 + 0x2C + 0x30 + unwind.TERMINATOR
    assert (image.segment_offset, image.size) == (32, 0x2C + 0x30 + unwind.TERMINATOR)
    assert unwind.place(plans[L.RODATA], [], []) is None
