"""Check an ELF object's section header table before anything parses it.

pyelftools trusts the header table: a table cut short, an offset past the
end of the file or an odd entry size surfaces as a low-level message
("expected 4, found 0", "Python int too large to convert to C ssize_t",
"Expected sh_entsize of SHT_REL section to be 16", "String Table not found")
with no section named.  These checks read the raw table in bulk and say
which section, which field and which numbers are wrong.  They accept
everything a compiler writes, including the SHN_XINDEX escapes for large
section counts.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

SHDR = np.dtype(
    [("name", "<u4"), ("type", "<u4"), ("flags", "<u8"), ("addr", "<u8"), ("offset", "<u8"), ("size", "<u8"),
     ("link", "<u4"), ("info", "<u4"), ("addralign", "<u8"), ("entsize", "<u8")]
)  # fmt: skip
SHN_XINDEX = 0xFFFF
SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_REL = 2, 3, 4, 8, 9
SHF_COMPRESSED = 0x800
CHDR_SIZE = 24
# Table entries have a fixed size (pyelftools insists on sh_entsize too).
_ENTRY_SIZES = {SHT_SYMTAB: ("SHT_SYMTAB", 24), SHT_RELA: ("SHT_RELA", 24), SHT_REL: ("SHT_REL", 16)}
# What each table's sh_link must name.
_LINKS = {SHT_SYMTAB: (SHT_STRTAB, "its string table"), SHT_RELA: (SHT_SYMTAB, "a symbol table"),
          SHT_REL: (SHT_SYMTAB, "a symbol table")}  # fmt: skip


def check_section_table(data: bytes | memoryview, fail: Callable[[str], Exception]) -> None:
    """Raise ``fail(message)`` if the section header table cannot be read as is."""
    size = len(data)
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shoff == 0:
        if shnum:
            raise fail(f"{shnum} section headers but no section header table (e_shoff is 0)")
        return
    if shentsize != SHDR.itemsize:
        raise fail(f"section header size e_shentsize is {shentsize}, not {SHDR.itemsize}")
    if shoff + SHDR.itemsize > size:
        raise fail(f"section header table at {shoff:#x} lies past the end of the file ({size:#x} bytes)")
    if shnum == 0:  # extended numbering: the count is section 0's sh_size
        (shnum,) = struct.unpack_from("<Q", data, shoff + 32)
    if shstrndx == SHN_XINDEX:  # ... and the name table's index its sh_link
        (shstrndx,) = struct.unpack_from("<I", data, shoff + 40)
    if shoff + shnum * SHDR.itemsize > size:
        raise fail(
            f"section header table (offset {shoff:#x}, {shnum} entries of {SHDR.itemsize} bytes) runs past the "
            f"end of the file ({size:#x} bytes)"
        )
    h = np.frombuffer(data, SHDR, count=shnum, offset=shoff)
    if not 0 < shstrndx < shnum:
        raise fail(f"section name table index e_shstrndx {shstrndx} is not one of the {shnum} sections")
    names = h[shstrndx]
    if int(names["type"]) != SHT_STRTAB:
        raise fail(f"section name table [{shstrndx}] (e_shstrndx) has type {int(names['type'])}, not SHT_STRTAB")
    names_at, names_size = int(names["offset"]), int(names["size"])
    if names_at + names_size > size:
        raise fail(
            f"section name table [{shstrndx}] extends past the end of the file "
            f"(offset {names_at:#x} + size {names_size:#x} > {size:#x})"
        )
    table = bytes(data[names_at : names_at + names_size])

    def label(i: int) -> str:
        at = int(h["name"][i])
        stop = table.find(b"\0", at)
        name = table[at:stop].decode("utf-8", "surrogateescape") if at < len(table) and stop >= 0 else ""
        return f"section [{i}] {name!r}"

    end = h["offset"].astype(object) + h["size"].astype(object)  # no uint64 wrap-around
    past = np.flatnonzero((h["type"] != SHT_NOBITS) & (end > size))
    past = past[past > 0]
    if len(past):
        i = int(past[0])
        raise fail(
            f"{label(i)} extends past the end of the file "
            f"(offset {int(h['offset'][i]):#x} + size {int(h['size'][i]):#x} > {size:#x})"
        )
    for sh_type, (kind, want) in _ENTRY_SIZES.items():
        bad = np.flatnonzero((h["type"] == sh_type) & ((h["entsize"] != want) | (h["size"] % want != 0)))
        if len(bad):
            i = int(bad[0])
            raise fail(
                f"{label(i)} ({kind}) has entry size {int(h['entsize'][i])} and size {int(h['size'][i])}; "
                f"{kind} entries are {want} bytes"
            )
    for sh_type, (want, what) in _LINKS.items():
        tables = np.flatnonzero(h["type"] == sh_type)
        link = h["link"][tables].astype(np.int64)
        inside = link < shnum
        bad = ~inside
        bad[inside] = h["type"][link[inside]] != want
        if np.any(bad):
            k = int(np.flatnonzero(bad)[0])
            i, target = int(tables[k]), int(link[k])
            found = f"section [{target}] of type {int(h['type'][target])}" if target < shnum else "no section"
            raise fail(f"{label(i)} links to {found} (sh_link {target}), not to {what}")
    compressed = np.flatnonzero(((h["flags"] & SHF_COMPRESSED) != 0) & (h["type"] != SHT_NOBITS))
    small = compressed[h["size"][compressed] < CHDR_SIZE]
    if len(small):
        i = int(small[0])
        raise fail(
            f"{label(i)} is compressed (SHF_COMPRESSED) but too small ({int(h['size'][i])} bytes) "
            f"for its {CHDR_SIZE}-byte compression header"
        )
