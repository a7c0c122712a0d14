"""Small ELF objects' rows checked in plain Python (rtdyld.objfile.elf_small).

An object read alone whose rows pass is converted later, with its batch:
it must get exactly the tables of the reader's vectorised conversion, and
where a row is bad, reading it must raise exactly the reader's error.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile
from fixtures_build import FIXTURES

import rtdyld
from rtdyld.inputs import parse_object
from rtdyld.objfile import elf_small
from rtdyld.objfile.elf import _ElfReader
from rtdyld.objfile.elf_deferred import DeferredElfObject
from rtdyld.objfile.model import ObjectFile

PIE = ("-O2", "-fPIE")
SECTIONS = ("-O2", "-fPIE", "-ffunction-sections", "-fdata-sections")
SOURCES = ("fptr.c", "switch.c", "strings.c", "ctors.c", "sortcmp.c", str(FIXTURES / "archive_link" / "mid.c"))
R_X86_64_PLT32 = 4


def vectorised(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(symbols, relocations) as the reader's numpy conversion gives them."""
    reader = _ElfReader(data, "ref.o")
    reader.read()
    symbols = reader._convert_symbols()
    return symbols, reader._read_relocations(symbols)


def small(data: bytes) -> bool:
    """Whether reading the object alone found its rows valid with the plain-Python checks."""
    verdicts, check = [], elf_small.valid

    def valid(reader, tables):
        verdicts.append(check(reader, tables))
        return verdicts[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(elf_small, "valid", valid)
        try:
            parse_object(data, "ref.o")
        except rtdyld.LinkError:
            pass
    return verdicts == [True]


def rela_entries(data: bytes, section: str = ".rela.text") -> tuple[int, int]:
    """(file offset of the first entry, number of entries) of a SHT_RELA table."""
    rela = ELFFile(io.BytesIO(data)).get_section_by_name(section)
    return rela["sh_offset"], rela.num_relocations()


@pytest.mark.parametrize("flags", [PIE, SECTIONS])
def test_small_objects_get_the_vectorised_tables(build, flags):
    for source in SOURCES:
        data = build.cc_bytes(source, *flags)
        assert small(data), source
        obj = parse_object(data, source)
        assert isinstance(obj, DeferredElfObject) and obj._pending is not None
        want_symbols, want_relocs = vectorised(data)
        assert obj.symbols.dtype == want_symbols.dtype and obj.relocs.dtype == want_relocs.dtype
        assert np.array_equal(obj.symbols, want_symbols), source
        assert np.array_equal(obj.relocs, want_relocs), source


def test_rows_out_of_order_are_sorted_as_the_reader_sorts_them(build):
    data = bytearray(build.cc_bytes("switch.c", *PIE))
    at, count = rela_entries(bytes(data))
    assert count >= 3
    rows = [bytes(data[at + 24 * k : at + 24 * (k + 1)]) for k in range(count)]
    data[at : at + 24 * count] = b"".join(reversed(rows))
    assert small(bytes(data))
    relocs = parse_object(bytes(data), "switch.o").relocs
    key = relocs["section"].astype(np.int64) << 40 | relocs["offset"].astype(np.int64)
    assert np.all(key[1:] >= key[:-1])
    assert np.array_equal(relocs, vectorised(bytes(data))[1])


def test_a_none_row_pointing_past_its_section_is_dropped_as_the_reader_drops_it(build):
    # R_X86_64_NONE writes nothing, so where it points is not checked.
    data = bytearray(build.cc_bytes("switch.c", *PIE))
    at, _ = rela_entries(bytes(data))
    struct.pack_into("<QQ", data, at, 0x7FFFFFF0, 0)  # r_offset far past .text; r_info: type 0, symbol 0
    assert small(bytes(data))
    obj = parse_object(bytes(data), "switch.o")
    want_symbols, want_relocs = vectorised(bytes(data))
    assert 0x7FFFFFF0 not in obj.relocs["offset"] and len(obj.relocs) > 0
    assert np.array_equal(obj.symbols, want_symbols)
    assert np.array_equal(obj.relocs, want_relocs)


def test_a_table_too_big_is_left_to_the_vectorised_conversion(build, monkeypatch):
    data = build.cc_bytes("switch.c", *PIE)
    _, count = rela_entries(data)
    monkeypatch.setattr(elf_small, "ROWS", count - 1)
    assert not small(data)
    obj = parse_object(data, "switch.o")
    assert type(obj) is ObjectFile
    assert np.array_equal(obj.relocs, vectorised(data)[1])


def _unsupported_type(data: bytearray) -> None:
    at, count = rela_entries(bytes(data))
    for k in range(count):
        (info,) = struct.unpack_from("<Q", data, at + 24 * k + 8)
        if info & 0xFFFFFFFF == R_X86_64_PLT32:
            struct.pack_into("<Q", data, at + 24 * k + 8, info & ~0xFFFFFFFF | 200)
            return
    raise AssertionError("no R_X86_64_PLT32 entry to retype")


def _past_the_symbol_table(data: bytearray) -> None:
    at, _ = rela_entries(bytes(data))
    (info,) = struct.unpack_from("<Q", data, at + 8)
    struct.pack_into("<Q", data, at + 8, (9999 << 32) | (info & 0xFFFFFFFF))


def _past_the_section(data: bytearray) -> None:
    at, _ = rela_entries(bytes(data))
    struct.pack_into("<Q", data, at, 0x7FFFFFF0)


def _symbol_past_its_section(data: bytearray) -> None:
    symtab = ELFFile(io.BytesIO(bytes(data))).get_section_by_name(".symtab")
    index = next(i for i, s in enumerate(symtab.iter_symbols()) if s["st_shndx"] not in ("SHN_UNDEF", "SHN_ABS"))
    struct.pack_into("<Q", data, symtab["sh_offset"] + index * 24 + 8, 0x100000)


def _unknown_binding(data: bytearray) -> None:
    symtab = ELFFile(io.BytesIO(bytes(data))).get_section_by_name(".symtab")
    data[symtab["sh_offset"] + (symtab.num_symbols() - 1) * 24 + 4] = 5 << 4


def _bad_section_number(data: bytearray) -> None:
    symtab = ELFFile(io.BytesIO(bytes(data))).get_section_by_name(".symtab")
    struct.pack_into("<H", data, symtab["sh_offset"] + (symtab.num_symbols() - 1) * 24 + 6, 0xFF20)


@pytest.mark.parametrize(
    "patch",
    [_unsupported_type, _past_the_symbol_table, _past_the_section, _symbol_past_its_section, _unknown_binding,
     _bad_section_number],
)
def test_a_bad_row_raises_the_readers_own_error(build, monkeypatch, patch):
    data = bytearray(build.cc_bytes("switch.c", *PIE))
    patch(data)
    assert not small(bytes(data))
    with pytest.raises(rtdyld.LinkError) as fast:
        parse_object(bytes(data), "switch.o")
    monkeypatch.setattr(elf_small, "ROWS", 0)  # the vectorised conversion alone
    with pytest.raises(rtdyld.LinkError) as reference:
        parse_object(bytes(data), "switch.o")
    assert type(fast.value) is type(reference.value)
    assert str(fast.value) == str(reference.value)
    assert str(fast.value).startswith("switch.o: ")
