"""The ELF header and section header table, read directly from the file bytes.

Reading these with pyelftools cost 1–2 ms per object (it builds a parser
object per field and copies the whole file into a stream): more than the
rest of reading a typical archive member, and 70% of linking Debian's libz.a
and libbz2.a.  The table is unpacked with one ``struct.iter_unpack`` over the
bytes instead, checked here field by field before anything indexes with it.
An object has a dozen or so sections: numpy's per-call cost (and, in a cold
link, the cache misses of its code) outweighs what it saves on so few rows.
"""

from __future__ import annotations

import struct

from .strtab import names_at

SHN_XINDEX = 0xFFFF
SHDR_SIZE = 64

# sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize.
ELF64_SHDR = struct.Struct("<IIQQQQIIQQ")
# e_shoff, then (after e_flags, e_ehsize, e_phentsize, e_phnum) e_shentsize, e_shnum, e_shstrndx.
_EHDR_TAIL = struct.Struct("<Q4xHHHHHH")


class SectionHeader:
    """The section-header fields the reader uses, as plain ints."""

    __slots__ = ("align", "entsize", "flags", "info", "link", "name", "offset", "size", "type")

    def __init__(self, name: str, row: tuple):
        self.name = name
        _, self.type, self.flags, _, self.offset, self.size, self.link, self.info, align, self.entsize = row
        self.align = align or 1


class HeaderError(ValueError):
    """A malformed header; the reader adds the object's name."""


def read_section_headers(data) -> list[SectionHeader]:
    """Every section header of an ELF64 little-endian object whose first 64
    bytes were checked by the caller.  Raises HeaderError for any offset,
    count or name that does not fit the file."""
    shoff, _ehsize, _phentsize, _phnum, shentsize, shnum, shstrndx = _EHDR_TAIL.unpack_from(data, 0x28)
    if shoff == 0:
        return []
    size = len(data)
    if shentsize != SHDR_SIZE:
        raise HeaderError(f"section header size {shentsize}, expected {SHDR_SIZE}")
    if shoff > size - SHDR_SIZE:
        raise HeaderError(_past_end(shoff, shnum or 1, size))
    _, _, _, _, _, first_size, first_link, _, _, _ = ELF64_SHDR.unpack_from(data, shoff)
    # Counts too big for the ELF header live in section 0 (SHN_XINDEX escapes).
    n = first_size if shnum == 0 else shnum
    if shstrndx == SHN_XINDEX:
        shstrndx = first_link
    if n == 0:
        return []
    if n > (size - shoff) // SHDR_SIZE:
        raise HeaderError(_past_end(shoff, n, size))
    rows = list(ELF64_SHDR.iter_unpack(memoryview(data)[shoff : shoff + n * SHDR_SIZE]))
    names = _section_names(data, rows, shstrndx)
    return [SectionHeader(name, row) for name, row in zip(names, rows)]


def _past_end(shoff: int, n: int, size: int) -> str:
    return (f"the table at offset {shoff:#x} ({n} entries of {SHDR_SIZE} bytes) runs past the end of "
            f"the file ({size} bytes)")


def _section_names(data, rows: list[tuple], shstrndx: int) -> list[str]:
    n = len(rows)
    if shstrndx == 0:
        return [""] * n
    if shstrndx >= n:
        raise HeaderError(f"section name table index {shstrndx} is past the last section ({n})")
    _, _, _, _, offset, size, _, _, _, _ = rows[shstrndx]
    if offset > len(data) or size > len(data) - offset:
        raise HeaderError(
            f"section name table (offset {offset:#x}, size {size:#x}) extends past the end of the file"
        )
    strtab = bytes(memoryview(data)[offset : offset + size])
    offsets = [row[0] for row in rows]
    try:
        return ["", *names_at(strtab, offsets[1:])]
    except ValueError:
        pass  # name the offending section below
    for i, at in enumerate(offsets[1:], start=1):
        if at >= size or strtab.find(b"\0", at) < 0:
            raise HeaderError(f"section [{i}] name offset {at} is past the section name table or unterminated")
    raise AssertionError("unreachable: names_at rejected a valid table")
