"""The ELF header and section header table, read without pyelftools.

Counts too large for the ELF header (SHN_XINDEX escapes) are followed to
section 0; every offset, count and name of a malformed table is rejected
with a message naming the object.
"""

from __future__ import annotations

import struct

import pytest
from fixtures_build import C_FLAG_SETS

import rtdyld
from rtdyld.objfile.elf import read_elf

PIE = C_FLAG_SETS["O2-pie"]
# More sections than e_shnum can hold (SHN_LORESERVE is 0xff00).
MANY = 0xFF00 + 200


def test_object_with_more_sections_than_the_header_can_count(build, tmp_path):
    lines = []
    for i in range(MANY):
        lines += [f'.section .text.f{i},"ax",@progbits', f".globl f{i}", f"f{i}:", f"  mov ${i % 1000}, %eax", "  ret"]
    lines += ['.section .text.last,"ax",@progbits', ".globl last", "last:", f"  call f{MANY - 1}", "  add $1, %eax",
              "  ret"]
    src = tmp_path / "many.s"
    src.write_text("\n".join(lines) + "\n")
    data = build.cc_bytes(src)
    (e_shnum,) = struct.unpack_from("<H", data, 0x3C)
    assert e_shnum == 0  # the count lives in section 0's sh_size
    ln = rtdyld.Linker()
    try:
        obj = ln.add_object(data, name="many.o")
        assert sum(s.name.startswith(".text.f") for s in obj.sections) == MANY
        ln.finalize()
        assert ln.function("last", "int(void)")() == (MANY - 1) % 1000 + 1
        assert ln.function("f1234", "int(void)")() == 234
    finally:
        ln.close()


def _shoff(data: bytearray) -> int:
    return struct.unpack_from("<Q", data, 0x28)[0]


def _shstrndx(data: bytearray) -> int:
    return struct.unpack_from("<H", data, 0x3E)[0]


def _set_shentsize(data):
    struct.pack_into("<H", data, 0x3A, 32)


def _shoff_past_the_end(data):
    struct.pack_into("<Q", data, 0x28, len(data) + 8)


def _too_many_sections(data):
    struct.pack_into("<H", data, 0x3C, 0xFEFF)


def _shstrndx_past_the_last(data):
    (shnum,) = struct.unpack_from("<H", data, 0x3C)
    struct.pack_into("<H", data, 0x3E, shnum + 3)


def _name_table_past_the_end(data):
    struct.pack_into("<Q", data, _shoff(data) + 64 * _shstrndx(data) + 0x18, len(data) - 4)


def _name_past_the_name_table(data):
    size = struct.unpack_from("<Q", data, _shoff(data) + 64 * _shstrndx(data) + 0x20)[0]
    struct.pack_into("<I", data, _shoff(data) + 64 * 1, size + 100)


MALFORMED = {
    "section header size": (_set_shentsize, "section header size 32"),
    "table past the end": (_shoff_past_the_end, "past the end of the file"),
    "too many sections": (_too_many_sections, "(65279 entries of 64 bytes) runs past the end of the file"),
    "name table index": (_shstrndx_past_the_last, "section name table index"),
    "name table past the end": (_name_table_past_the_end, "section name table (offset"),
    "name past the name table": (_name_past_the_name_table, "section [1] name offset"),
}


@pytest.mark.parametrize("what", MALFORMED)
def test_malformed_section_header_table(build, what):
    corrupt, message = MALFORMED[what]
    data = bytearray(build.cc_bytes("errors/ok.c", *PIE))
    corrupt(data)
    ln = rtdyld.Linker()
    with pytest.raises(rtdyld.MalformedObjectError) as exc:
        ln.add_object(bytes(data), name="headers.o")
    assert str(exc.value).startswith("headers.o: bad section headers: "), str(exc.value)
    assert message in str(exc.value)


def test_section_names_that_are_not_ascii(build):
    # Names are bytes to ELF: one not valid UTF-8 reads with its bytes escaped, as symbol names do.
    data = bytearray(build.cc_bytes("errors/ok.c", *PIE))
    (names,) = struct.unpack_from("<Q", data, _shoff(data) + 64 * _shstrndx(data) + 0x18)
    at = data.index(b".text\0", names)
    data[at + 2] = 0xE9  # ".t\xe9xt"
    obj = read_elf(bytes(data), "names.o")
    assert ".t\udce9xt" in [s.name for s in obj.sections]
    assert ".text" not in [s.name for s in obj.sections]
