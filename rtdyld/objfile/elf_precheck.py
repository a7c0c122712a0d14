"""Check the tables an ELF object's section headers describe, before any is read.

The header table itself is checked as it is read (`elf_headers`).  These
checks cover what the section headers say of each other: a symbol or
relocation table whose entry size is not the ELF64 one, a size that is not
a whole number of entries, a table whose ``sh_link`` does not name the kind
of section it must, a compressed section too small for its compression
header.  Each names the section, the field and the numbers, where reading
on would fail later with a message naming none of them.  They accept
everything a compiler writes.
"""

from __future__ import annotations

from collections.abc import Callable

SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS, SHT_REL = 2, 3, 4, 8, 9
SHF_COMPRESSED = 0x800
CHDR_SIZE = 24
# Table entries have a fixed size.
_ENTRY_SIZES = {SHT_SYMTAB: ("SHT_SYMTAB", 24), SHT_RELA: ("SHT_RELA", 24), SHT_REL: ("SHT_REL", 16)}
# What each table's sh_link must name.
_LINKS = {SHT_SYMTAB: (SHT_STRTAB, "its string table"), SHT_RELA: (SHT_SYMTAB, "a symbol table"),
          SHT_REL: (SHT_SYMTAB, "a symbol table")}  # fmt: skip


def check_section_tables(headers: list, fail: Callable[[str], Exception]) -> None:
    """Raise ``fail(message)`` if a table the headers describe cannot be read as is.

    ``headers`` are the object's section headers (``elf_headers.SectionHeader``).
    A plain loop: an object has tens of sections, and numpy calls on arrays
    that small cost more than they save.
    """
    n = len(headers)
    for i, h in enumerate(headers):
        sized = _ENTRY_SIZES.get(h.type)
        if sized is not None:
            kind, want = sized
            if h.entsize != want or h.size % want:
                raise fail(
                    f"{_label(i, h)} ({kind}) has entry size {h.entsize} and size {h.size}; {kind} entries are "
                    f"{want} bytes"
                )
            # Every table with an entry size also has a link to check.
            want_type, what = _LINKS[h.type]
            target = h.link
            if target >= n or headers[target].type != want_type:
                found = f"section [{target}] of type {headers[target].type}" if target < n else "no section"
                raise fail(f"{_label(i, h)} links to {found} (sh_link {target}), not to {what}")
        if h.flags & SHF_COMPRESSED and h.type != SHT_NOBITS and h.size < CHDR_SIZE:
            raise fail(
                f"{_label(i, h)} is compressed (SHF_COMPRESSED) but too small ({h.size} bytes) for its "
                f"{CHDR_SIZE}-byte compression header"
            )


def _label(i: int, h) -> str:
    # Built only for a message: formatting it for every header cost more than the checks.
    return f"section [{i}] {h.name!r}"
