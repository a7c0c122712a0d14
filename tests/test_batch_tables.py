"""The batch's joined tables: every object's rows in batch-wide numbering."""

from __future__ import annotations

import numpy as np
import pytest

from rtdyld.batch import BatchLinker
from rtdyld.objfile.model import (
    RELOC_DTYPE,
    SEC_DISCARDED,
    SEC_UNDEF,
    SYM_DTYPE,
    Group,
    ObjectFile,
    Section,
    SectionFlags,
)
from rtdyld.symbols import Dylib
from rtdyld.x86_64.edges import Edge


def _object(name: str, nsections: int, nsyms: int, relocs: list[tuple], groups=()) -> ObjectFile:
    sections = [Section(f".text.{i}", bytes(64), 64, 16, SectionFlags.EXEC) for i in range(nsections)]
    syms = np.zeros(nsyms, dtype=SYM_DTYPE)
    syms["section"] = [i % nsections if nsections else SEC_UNDEF for i in range(nsyms)]
    syms["bind"] = 0  # local: nothing to resolve
    table = np.zeros(len(relocs), dtype=RELOC_DTYPE)
    for row, (section, offset, sym, sym2, addend) in zip(table, relocs):
        row["section"], row["offset"], row["sym"], row["sym2"], row["addend"] = section, offset, sym, sym2, addend
        row["kind"], row["rtype"] = int(Edge.Pointer64), 1
    return ObjectFile(name, "elf", sections, syms, [f"{name}.s{i}" for i in range(nsyms)], table, list(groups))


def _joined(objects, kept=()):
    b = BatchLinker(objects, Dylib(), memory=None, kept_groups=set(kept))
    b.select_groups()
    b.concatenate()
    return b


def _expected(b: BatchLinker) -> list[tuple]:
    """Each kept row, renumbered the plain way: one object and one row at a time."""
    gid = {(p.obj, p.index): g for g, p in enumerate(b.placed)}
    rows = []
    base = 0
    for oi, obj in enumerate(b.objects):
        for r in obj.relocs.tolist():
            section, offset, kind, rtype, sym, sym2, addend = r
            if (oi, section) not in gid:
                continue  # a dropped section's relocations go with it
            rows.append((gid[oi, section], offset, kind, rtype, sym + base, sym2 + base if sym2 >= 0 else -1,
                         addend, oi, sym))
        base += len(obj.symbols)
    return rows


def _rows(b: BatchLinker) -> list[tuple]:
    return [tuple(r) for r in b.relocs.tolist()]


def test_rows_in_batch_numbering():
    objects = [
        _object("a.o", 2, 3, [(0, 8, 2, -1, -4), (1, 0, 0, 1, 7)]),
        _object("b.o", 3, 4, [(2, 16, 3, 2, 0), (0, 4, 1, -1, 9)]),
    ]
    b = _joined(objects)
    assert _rows(b) == _expected(b)
    assert b.gsec.tolist() == [0, 1, 0, 2, 3, 4, 2]


def test_dropped_sections_and_objects_without_sections():
    group = [Group("sig", [1])]
    objects = [
        _object("a.o", 2, 2, [(1, 0, 0, -1, 0)], groups=group),
        _object("empty.o", 0, 1, []),
        _object("b.o", 2, 3, [(0, 8, 1, 2, 0), (1, 0, 2, -1, 0)], groups=group),
    ]
    b = _joined(objects)
    assert [(p.obj, p.index) for p in b.placed] == [(0, 0), (0, 1), (2, 0)]
    assert _rows(b) == _expected(b)
    # A symbol in the dropped copy refers to the kept one; an undefined one stays undefined.
    assert b.gsec.tolist() == [0, 1, SEC_UNDEF, 2, SEC_DISCARDED, 2]


@pytest.mark.parametrize("strided", [False, True])
def test_tables_of_any_layout(strided):
    objects = [_object("a.o", 1, 2, [(0, 8 * i, i % 2, -1, i) for i in range(6)])]
    if strided:  # a table that is a view with gaps: joined column by column
        objects[0].relocs = objects[0].relocs[::2]
        objects.append(_object("b.o", 1, 1, [(0, 0, 0, 0, 1)]))
    b = _joined(objects)
    assert _rows(b) == _expected(b)
