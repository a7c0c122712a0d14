"""A batch of members read for it joins their tables as they are converted
(rtdyld.objfile.elf_deferred.convert_batch): the joined tables must be the
ones joining each object's own tables gives, and each object's own tables,
cut from the batch's when asked for, the ones the reader gives it alone.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from fixtures_build import FIXTURES
from test_elf_deferred import PIE, none_row_and_rows_out_of_order, readers_table, rela_entry

from rtdyld.batch import BatchLinker
from rtdyld.inputs import parse_member
from rtdyld.objfile.elf_deferred import DeferredElfObject, convert_batch, convert_pending
from rtdyld.symbols import Dylib

CHAIN = FIXTURES / "archive_link"
SPLIT = ("-O2", "-fPIE", "-ffunction-sections", "-fdata-sections")


def _members(objects: list[tuple[str, bytes]]) -> list[DeferredElfObject]:
    members = [parse_member(d, n) for n, d in objects]
    assert all(isinstance(o, DeferredElfObject) and o._pending is not None for o in members)
    return members


def _joined(objects: list[tuple[str, bytes]], converted_first: bool) -> BatchLinker:
    """The batch's tables: joined as converted, or (``converted_first``)
    joined from each object's tables, converted beforehand."""
    members = _members(objects)
    if converted_first:
        convert_pending(members)
    b = BatchLinker(members, Dylib(), memory=None, kept_groups=set())
    b.select_groups()
    b.concatenate()
    return b


def _same_batch(a: BatchLinker, b: BatchLinker) -> None:
    assert a.relocs.dtype == b.relocs.dtype
    assert a.relocs.tolist() == b.relocs.tolist()
    for column in ("gsec", "sym_obj", "sym_base", "value", "size", "bind", "stype", "vis"):
        assert np.asarray(getattr(a, column)).tolist() == np.asarray(getattr(b, column)).tolist(), column
    assert a.names == b.names
    assert [(p.obj, p.index, p.segment) for p in a.placed] == [(p.obj, p.index, p.segment) for p in b.placed]


@pytest.mark.parametrize("flags", [PIE, SPLIT])
def test_the_converted_tables_are_the_joined_tables(build, flags):
    sources = ("fptr.c", "switch.c", "strings.c", "ctors.c", "sortcmp.c", CHAIN / "mid.c", CHAIN / "leaf.c")
    objects = [(str(s), build.cc_bytes(s, *flags)) for s in sources]
    direct = _joined(objects, converted_first=False)
    assert direct.sym_obj.tolist() != [0] * direct.nsyms and len(direct.relocs) > 50
    _same_batch(direct, _joined(objects, converted_first=True))
    # Each object's own tables, cut from the batch's, are the reader's.
    for obj, (_, data) in zip(direct.objects, objects):
        assert obj.relocs.tolist() == readers_table(data).tolist(), obj.name
        assert len(obj.symbols) == int(np.count_nonzero(direct.sym_obj == direct.objects.index(obj)))


def test_dropped_none_rows_and_unsorted_tables(build):
    """Rows out of order are sorted within their object, NONE rows dropped,
    and the rows' batch section numbers follow them."""
    fptr, leaf = none_row_and_rows_out_of_order(build)
    objects = [("fptr.o", fptr), ("leaf.o", leaf), ("mid.o", build.cc_bytes(CHAIN / "mid.c", *SPLIT))]
    direct = _joined(objects, converted_first=False)
    _same_batch(direct, _joined(objects, converted_first=True))
    key = direct.relocs["section"].astype(np.int64) << 40 | direct.relocs["offset"].astype(np.int64)
    assert np.all(key[1:] > key[:-1])
    # The conversion's census of kinds, which the scan reuses, counts the rows kept.
    census = np.bincount(direct.relocs["kind"], minlength=len(direct.kind_count)).tolist()
    assert direct.kind_count == census and direct.kind_count[0] == 0


def test_only_a_batch_of_objects_still_waiting_is_converted_whole(build):
    objects = [(s, build.cc_bytes(s, *PIE)) for s in ("fptr.c", "switch.c")]
    members = _members(objects)
    assert len(members[1].relocs)  # converted alone, as a validator or a trace would
    assert convert_batch(members) is None
    assert members[0]._pending is not None
    b = BatchLinker(members, Dylib(), memory=None, kept_groups=set())
    b.select_groups()
    b.concatenate()
    _same_batch(b, _joined(objects, converted_first=True))


def test_a_bad_row_leaves_the_objects_to_the_readers_conversion(build):
    data = bytearray(build.cc_bytes("switch.c", *PIE))
    at, _, info = rela_entry(bytes(data), index=0)
    struct.pack_into("<Q", data, at + 8, (info & 0xFFFFFFFF) | (10**6 << 32))  # a symbol past the table
    members = _members([("fptr.o", build.cc_bytes("fptr.c", *PIE)), ("switch.o", bytes(data))])
    assert convert_batch(members) is None
    assert all(o._pending is not None for o in members)
    b = BatchLinker(members, Dylib(), memory=None, kept_groups=set())
    b.select_groups()
    with pytest.raises(Exception, match=r"switch\.o: .*relocation refers to symbol 1000000, past the symbol table"):
        b.concatenate()


def test_dropped_comdat_copies(build):
    """The second object's copies of the shared COMDAT groups are dropped
    with their relocations; its symbols there refer to the kept copies."""
    objects = [(s, build.cxx(s, "-O2", "-fPIE").read_bytes()) for s in ("shapes_a.cpp", "shapes_b.cpp")]
    direct = _joined(objects, converted_first=False)
    assert direct.dropped[1] and len(direct.placed) < sum(len(o.sections) for o in direct.objects)
    _same_batch(direct, _joined(objects, converted_first=True))
    # The dropped sections' rows are still the object's own.
    for obj, (_, data) in zip(direct.objects, objects):
        assert obj.relocs.tolist() == readers_table(data).tolist(), obj.name


def test_a_batch_joined_again_gives_the_same_tables(build):
    """A batch that failed after joining is linked again from the same
    objects (their own tables cut from the first join's): the same rows."""
    objects = [(s, build.cc_bytes(s, *SPLIT)) for s in ("fptr.c", "switch.c", "strings.c")]
    first = _joined(objects, converted_first=False)
    rows = first.relocs.tolist()
    again = BatchLinker(first.objects, Dylib(), memory=None, kept_groups=set())
    again.select_groups()
    again.concatenate()
    assert again.relocs is not first.relocs
    _same_batch(again, first)
    assert again.relocs.tolist() == rows
