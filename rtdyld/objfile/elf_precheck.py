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


def check_section_tables(
    headers: list[tuple], indices: list[int], name: Callable[[int], str], fail: Callable[[str], Exception]
) -> None:
    """Raise ``fail(message)`` if a table the headers describe cannot be read as is.

    ``headers`` are the object's section headers (as
    ``elf_headers.read_section_headers`` gives them), ``indices`` (in
    order) those of its symbol and relocation tables and of its compressed
    sections: the reader sorts them out in its walk over the headers, so
    that the others are not looked at twice.  ``name(i)`` is section i's
    name, for a message.
    """
    n = len(headers)
    for i in indices:
        _, t, flags, _, size, link, _, _, entsize = headers[i]
        sized = _ENTRY_SIZES.get(t)
        if sized is not None:
            kind, want = sized
            if entsize != want or size % want:
                raise fail(
                    f"{_label(i, name)} ({kind}) has entry size {entsize} and size {size}; {kind} entries are "
                    f"{want} bytes"
                )
            # Every table with an entry size also has a link to check.
            want_type, what = _LINKS[t]
            if link >= n or headers[link][1] != want_type:
                found = f"section [{link}] of type {headers[link][1]}" if link < n else "no section"
                raise fail(f"{_label(i, name)} links to {found} (sh_link {link}), not to {what}")
        if flags & SHF_COMPRESSED and t != SHT_NOBITS and size < CHDR_SIZE:
            raise fail(
                f"{_label(i, name)} is compressed (SHF_COMPRESSED) but too small ({size} bytes) for its "
                f"{CHDR_SIZE}-byte compression header"
            )


def _label(i: int, name: Callable[[int], str]) -> str:
    # Built only for a message: a section's name is decoded only then.
    return f"section [{i}] {name(i)!r}"
