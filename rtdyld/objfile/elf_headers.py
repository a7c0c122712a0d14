"""The ELF header and section header table, read directly from the file bytes.

Reading these with pyelftools cost 1–2 ms per object (it builds a parser
object per field and copies the whole file into a stream): more than the
rest of reading a typical archive member, and 70% of linking Debian's libz.a
and libbz2.a.  The table is unpacked with one ``struct.iter_unpack`` over the
bytes instead, checked here before anything indexes with it.

Each header is left a plain tuple of its fields (:data:`ELF64_SHDR` order,
sh_addr dropped), which the reader unpacks where it reads them: an object
per header, or a name decoded for every section, cost more than the rest
of reading a small archive member's headers, and most sections of an
object (debug info, relocation tables, string tables) need neither.
Names are decoded on request (:func:`section_name`),
every name offset having been checked with the table.
An object has a dozen or so sections: numpy's per-call cost (and, in a cold
link, the cache misses of its code) outweighs what it saves on so few rows.
"""

from __future__ import annotations

import struct

from .strtab import names_at

SHN_XINDEX = 0xFFFF
SHDR_SIZE = 64

# sh_name, sh_type, sh_flags, (sh_addr,) sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize.
ELF64_SHDR = struct.Struct("<IIQ8xQQIIQQ")
# The ELF header's fields the reader checks or follows, in one unpacking:
# e_ident's magic, class and data encoding; e_type, e_machine; e_shoff;
# e_shentsize, e_shnum, e_shstrndx.
ELF64_EHDR = struct.Struct("<4sBB10xHH20xQ10xHHH")


class HeaderError(ValueError):
    """A malformed header; the reader adds the object's name."""


def read_section_headers(data, shoff: int, shentsize: int, shnum: int, shstrndx: int) -> tuple[list[tuple], bytes]:
    """Every section header of an ELF64 little-endian object whose ELF
    header (``e_shoff`` and on, as given) was checked by the caller, and
    the section name table's bytes (empty if there is none).  Raises
    HeaderError for any offset, count or name that does not fit the file."""
    if shoff == 0:
        return [], b""
    size = len(data)
    if shentsize != SHDR_SIZE:
        raise HeaderError(f"section header size {shentsize}, expected {SHDR_SIZE}")
    if shoff > size - SHDR_SIZE:
        raise HeaderError(_past_end(shoff, shnum or 1, size))
    n = shnum
    if shnum == 0 or shstrndx == SHN_XINDEX:
        # Counts too big for the ELF header live in section 0 (SHN_XINDEX escapes).
        _, _, _, _, first_size, first_link, _, _, _ = ELF64_SHDR.unpack_from(data, shoff)
        n = shnum or first_size
        if shstrndx == SHN_XINDEX:
            shstrndx = first_link
    if n == 0:
        return [], b""
    if n > (size - shoff) // SHDR_SIZE:
        raise HeaderError(_past_end(shoff, n, size))
    table = memoryview(data)[shoff : shoff + n * SHDR_SIZE]
    rows = list(ELF64_SHDR.iter_unpack(table))
    # The section name table, once every section's name (but section 0's,
    # which names nothing) is known to start in it and end with a NUL.
    if shstrndx == 0:
        return rows, b""
    if shstrndx >= n:
        raise HeaderError(f"section name table index {shstrndx} is past the last section ({n})")
    _, _, _, offset, length, _, _, _, _ = rows[shstrndx]
    if offset > size or length > size - offset:
        raise HeaderError(
            f"section name table (offset {offset:#x}, size {length:#x}) extends past the end of the file"
        )
    strtab = bytes(memoryview(data)[offset : offset + length])
    # A name is read up to the first NUL at or after its offset: every
    # offset up to the table's last NUL has one, every other has none.
    # (sh_name of each header after the first, one strided slice of the words.)
    last_nul = strtab.rfind(b"\0")
    if n > 1 and max(table.cast("I")[16::16]) > last_nul:
        at, i = next((row[0], i) for i, row in enumerate(rows) if i and row[0] > last_nul)
        raise HeaderError(f"section [{i}] name offset {at} is past the section name table or unterminated")
    return rows, strtab


def _past_end(shoff: int, n: int, size: int) -> str:
    return (f"the table at offset {shoff:#x} ({n} entries of {SHDR_SIZE} bytes) runs past the end of "
            f"the file ({size} bytes)")


def section_name(strtab: bytes, rows: list[tuple], i: int) -> str:
    """The name of section ``i``, for a message or a group without a signature
    (rows as :func:`read_section_headers` gives them, ``strtab`` the name table
    it checked their offsets against).  Section 0 is named nothing: its
    sh_name is not checked."""
    return names_at(strtab, [rows[i][0]])[0] if i and strtab else ""
