"""Relocations of archive members converted with their batch (rtdyld.objfile.elf_deferred).

The batch-wide conversion must give every object exactly the table the
reader gives it alone, and a bad entry must fail the finalize with the
reader's own message, naming the member, leaving the session unchanged.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from archive_tools import build_gnu_archive
from elftools.elf.elffile import ELFFile
from fixtures_build import FIXTURES

import rtdyld
from rtdyld.inputs import parse_member, parse_object
from rtdyld.objfile.elf import _ElfReader
from rtdyld.objfile.elf_deferred import DeferredElfObject, convert_pending
from rtdyld.objfile.model import SEC_ABS, SEC_COMMON

PIE = ("-O2", "-fPIE")
CHAIN = FIXTURES / "archive_link"
SOURCES = ("fptr.c", "switch.c", "strings.c", "ctors.c", "sortcmp.c", str(CHAIN / "mid.c"), str(CHAIN / "leaf.c"))
R_X86_64_NONE = 0
R_X86_64_PLT32 = 4


def rela_count(data: bytes, section: str = ".rela.text") -> int:
    return ELFFile(io.BytesIO(data)).get_section_by_name(section).num_relocations()


def rela_entry(data: bytes, section: str = ".rela.text", index: int | None = None, rtype: int | None = None):
    """(file offset of the entry, its r_offset, its r_info) of a relocation of ``section``:
    number ``index``, or the first of type ``rtype``."""
    rela = ELFFile(io.BytesIO(data)).get_section_by_name(section)
    relocs = list(rela.iter_relocations())
    if index is None:
        index = next(i for i, r in enumerate(relocs) if r["r_info_type"] == rtype)
    r = relocs[index]
    return rela["sh_offset"] + index * rela["sh_entsize"], r["r_offset"], r["r_info"]


def readers_table(data: bytes) -> np.ndarray:
    """The relocations as the reader converts one object's tables by itself."""
    reader = _ElfReader(data, "ref.o")
    reader.read()
    return reader._read_relocations(reader._convert_symbols())


def eager_and_deferred(objects: list[tuple[str, bytes]]):
    """Each object read alone (as add_object does) and read as a member, converted with the others."""
    eager = [parse_object(d, n) for n, d in objects]
    for (_, d), o in zip(objects, eager):
        reference = readers_table(d)
        assert o.relocs.dtype == reference.dtype
        assert np.array_equal(o.relocs, reference)
    deferred = [parse_member(d, n) for n, d in objects]
    assert all(isinstance(o, DeferredElfObject) and o._pending is not None for o in deferred)
    convert_pending(deferred)
    assert all(o._pending is None for o in deferred)
    return eager, deferred


@pytest.mark.parametrize("flags", [PIE, ("-O2", "-fPIE", "-ffunction-sections", "-fdata-sections")])
def test_batch_conversion_gives_each_object_the_readers_table(build, flags):
    objects = [(s, build.cc_bytes(s, *flags)) for s in SOURCES]
    eager, deferred = eager_and_deferred(objects)
    assert sum(len(o.relocs) for o in eager) > 50
    for a, b in zip(eager, deferred):
        assert b.relocs.dtype == a.relocs.dtype
        assert np.array_equal(a.relocs, b.relocs), a.name


def none_row_and_rows_out_of_order(build) -> tuple[bytes, bytes]:
    """fptr.o with its first relocation turned into R_X86_64_NONE, and leaf.o
    with the last two entries of its table swapped, so its rows come out of order."""
    original = build.cc_bytes("fptr.c", *PIE)
    fptr = bytearray(original)
    at, _, info = rela_entry(original, index=0)
    struct.pack_into("<Q", fptr, at + 8, info & ~0xFFFFFFFF | R_X86_64_NONE)
    leaf = bytearray(build.cc_bytes(CHAIN / "leaf.c", *PIE))
    count = rela_count(bytes(leaf))
    assert count >= 2
    first, _, _ = rela_entry(bytes(leaf), index=count - 2)
    second, _, _ = rela_entry(bytes(leaf), index=count - 1)
    leaf[first : first + 24], leaf[second : second + 24] = leaf[second : second + 24], leaf[first : first + 24]
    return bytes(fptr), bytes(leaf)


def test_batch_conversion_drops_none_entries_and_sorts_each_object(build):
    original = build.cc_bytes("fptr.c", *PIE)
    fptr, leaf = none_row_and_rows_out_of_order(build)
    objects = [("fptr.o", fptr), ("leaf.o", leaf), ("mid.o", build.cc_bytes(CHAIN / "mid.c", *PIE))]
    eager, deferred = eager_and_deferred(objects)
    assert len(deferred[0].relocs) == len(parse_object(original, "fptr.o").relocs) - 1
    offsets = deferred[1].relocs["offset"]
    assert np.all(offsets[1:] >= offsets[:-1])
    for a, b in zip(eager, deferred):
        assert np.array_equal(a.relocs, b.relocs), a.name


def test_a_members_relocations_convert_alone_when_asked_first(build):
    data = build.cc_bytes("switch.c", *PIE)
    alone = parse_member(data, "switch.o")
    assert np.array_equal(alone.relocs, readers_table(data))
    convert_pending([alone])  # already converted: nothing to do
    assert alone._pending is None


def _chain_archive(build, tmp_path, patch_member: str, patch):
    paths, message = [], ""
    for stem in ("mid", "leaf"):
        data = bytearray(build.cc_bytes(CHAIN / f"{stem}.c", *PIE))
        if stem == patch_member:
            message = patch(data)
        (tmp_path / f"{stem}.o").write_bytes(bytes(data))
        paths.append(tmp_path / f"{stem}.o")
    return build_gnu_archive(tmp_path / "libchain.a", paths), message


def _retype(data: bytearray) -> str:
    at, offset, info = rela_entry(bytes(data), rtype=R_X86_64_PLT32)
    struct.pack_into("<Q", data, at + 8, info & ~0xFFFFFFFF | 200)
    return (
        f"libchain.a(mid.o): .text+{offset:#x}: relocation type 200 against 'leaf_value': "
        "this relocation type is not supported"
    )


def _past_symtab(data: bytearray) -> str:
    at, offset, info = rela_entry(bytes(data), index=0)
    struct.pack_into("<Q", data, at + 8, (9999 << 32) | (info & 0xFFFFFFFF))
    return f"libchain.a(leaf.o): .text+{offset:#x}: relocation refers to symbol 9999, past the symbol table"


@pytest.mark.parametrize(("member", "patch", "error"), [
    ("mid", _retype, rtdyld.UnsupportedRelocationError),
    ("leaf", _past_symtab, rtdyld.MalformedObjectError),
])
def test_a_bad_member_relocation_fails_the_finalize_by_name(build, tmp_path, member, patch, error):
    lib, message = _chain_archive(build, tmp_path, member, patch)
    ln = rtdyld.Linker()
    before = ln.snapshot()
    ln.add_object(build.cc_bytes(CHAIN / "chain_prog.c", *PIE), name="chain_prog.o")
    ln.add_archive(lib)
    with pytest.raises(error) as exc:
        ln.finalize()
    assert type(exc.value) is error
    assert str(exc.value) == message
    assert ln.snapshot() == before


def test_pull_names_of_a_member_are_what_extraction_would_compute(build):
    from rtdyld import archives

    for source in SOURCES:
        data = build.cc_bytes(source, *PIE)
        member, plain = parse_member(data, source), parse_object(data, source)
        assert member.pull_names == (archives.defined_globals(plain), archives.strong_undefined(plain))
        assert archives.defined_globals(member) == archives.defined_globals(plain)
        assert archives.strong_undefined(member) == archives.strong_undefined(plain)
        assert member.pull_names[0] and member.pull_names[1] is not None


def test_a_member_whose_symbols_convert_as_it_is_read_leaves_its_pull_names_to_extraction(build):
    # Symbols converted at once (extended section indexes, very many
    # sections): lazy extraction works the names out from the converted table.
    from rtdyld import archives
    from rtdyld.objfile import elf_deferred

    data = build.cc_bytes(str(CHAIN / "mid.c"), *PIE)
    reader = _ElfReader(data, "mid.o")
    reader.read(defer_tables=True)
    member = elf_deferred._deferred(reader, reader._convert_symbols(), reader._rela_tables())
    plain = parse_object(data, "mid.o")
    assert member.pull_names is None
    assert archives.names_by_role(member) == archives.names_by_role(plain)
    assert archives.names_by_role(member) == (["mid_value", "mid_counter"], ["leaf_value", "leaf_counter"])

def _symbol_entry(data: bytes, name: str) -> tuple[int, int]:
    """(index, file offset) of the symbol table entry of ``name``."""
    symtab = ELFFile(io.BytesIO(data)).get_section_by_name(".symtab")
    index = next(i for i, s in enumerate(symtab.iter_symbols()) if s.name == name)
    return index, symtab["sh_offset"] + index * symtab["sh_entsize"]


def _unknown_binding(data: bytearray) -> str:
    index, at = _symbol_entry(bytes(data), "leaf_value")
    data[at + 4] = (5 << 4) | (data[at + 4] & 0xF)  # st_info: binding 5, type kept
    return f"libchain.a(leaf.o): symbol {index} ('leaf_value') has unknown binding 5"


def _past_its_section(data: bytearray) -> str:
    _, at = _symbol_entry(bytes(data), "leaf_value")
    struct.pack_into("<Q", data, at + 8, 0x100000)  # st_value
    return "libchain.a(leaf.o): symbol 'leaf_value' at 0x100000 lies past the end of section '.text'"


def _reserved_section(data: bytearray) -> str:
    index, at = _symbol_entry(bytes(data), "leaf_value")
    struct.pack_into("<H", data, at + 6, 0xFF05)  # st_shndx: in the reserved range, neither ABS nor COMMON
    return f"libchain.a(leaf.o): symbol {index} ('leaf_value') has unsupported section index 0xff05"


@pytest.mark.parametrize("patch", [_unknown_binding, _past_its_section, _reserved_section])
def test_a_bad_member_symbol_fails_the_finalize_by_name(build, tmp_path, patch):
    lib, message = _chain_archive(build, tmp_path, "leaf", patch)
    ln = rtdyld.Linker()
    before = ln.snapshot()
    ln.add_object(build.cc_bytes(CHAIN / "chain_prog.c", *PIE), name="chain_prog.o")
    ln.add_archive(lib)
    with pytest.raises(rtdyld.MalformedObjectError) as exc:
        ln.finalize()
    assert str(exc.value) == message
    assert ln.snapshot() == before


def test_the_first_bad_member_in_batch_order_is_named_whatever_table_is_bad(build, tmp_path):
    """mid.o (pulled first) has a bad relocation, leaf.o a bad symbol: reading
    them one by one would stop at mid.o, and so does the batch conversion."""
    paths, messages = [], {}
    for stem, patch in (("mid", _retype), ("leaf", _unknown_binding)):
        data = bytearray(build.cc_bytes(CHAIN / f"{stem}.c", *PIE))
        messages[stem] = patch(data)
        (tmp_path / f"{stem}.o").write_bytes(bytes(data))
        paths.append(tmp_path / f"{stem}.o")
    lib = build_gnu_archive(tmp_path / "libchain.a", paths)
    ln = rtdyld.Linker()
    ln.add_object(build.cc_bytes(CHAIN / "chain_prog.c", *PIE), name="chain_prog.o")
    ln.add_archive(lib)
    with pytest.raises(rtdyld.UnsupportedRelocationError) as exc:
        ln.finalize()
    assert str(exc.value) == messages["mid"]


def test_symbols_of_a_member_convert_alone_when_asked_first(build):
    data = build.cc_bytes("fptr.c", *PIE)
    member = parse_member(data, "fptr.o")
    assert member._symbols is None
    assert np.array_equal(member.symbols, parse_object(data, "fptr.o").symbols)
    assert member._pending is None  # relocations converted with the symbols
    assert np.array_equal(member.relocs, readers_table(data))


def test_common_and_absolute_symbols_convert_as_the_reader_converts_them(build):
    """SHN_COMMON and SHN_ABS (the file symbol) are the reserved section
    numbers the batch conversion maps; every member's table must be the reader's."""
    common = build.cc_text(
        "int shared_count[4];\nint *counts(void) { return shared_count; }\n", *PIE, "-fcommon", stem="tentative"
    ).read_bytes()
    objects = [("tentative.o", common), ("fptr.o", build.cc_bytes("fptr.c", *PIE))]
    deferred = [parse_member(d, n) for n, d in objects]
    convert_pending(deferred)
    for (_, data), obj in zip(objects, deferred):
        reader = _ElfReader(data, "ref.o")
        reader.read()
        assert np.array_equal(obj.symbols, reader._convert_symbols())
    sections = deferred[0].symbols["section"].tolist()
    assert SEC_COMMON in sections and SEC_ABS in sections
