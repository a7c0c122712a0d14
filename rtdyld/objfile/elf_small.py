"""The symbol and relocation rows of a small ELF object, checked in plain Python.

A program object added on its own has a dozen symbols and a few dozen
relocations.  Checking tables that small with numpy costs some fifty calls
whose fixed cost (and, in a cold link, the cache misses of numpy's code)
is many times the work on the rows; a loop over the fields (a list each,
see :func:`symbol_columns`) is faster up to a few hundred rows.  An
object whose rows all pass has its tables converted with its batch's
(:mod:`.elf_deferred`), where it adds rows, not calls.  Larger tables
keep the reader's vectorised checks.

The checks are the reader's.  A row the reader would reject makes
:func:`valid` say no, and the reader's own code then raises its precise
error; so this module never words an error itself.
"""

from __future__ import annotations

from typing import NamedTuple

from ..x86_64.edges import WIDTH, Edge
from . import elf_tables as T

# Tables up to this many rows are checked here: converting them in plain
# Python was measured faster than the vectorised conversion below about 200
# relocations (under a microsecond a row against some 70 us of numpy calls
# per object), cache-cold or not; checking alone costs less still.
ROWS = 192
RELA_SIZE = 24

_BIND = T.BIND_MAP.tolist()  # 255: unknown binding
_EDGE = T.ELF_EDGE.tolist()  # T.UNSUPPORTED: no edge kind
_WIDTH = [int(w) for w in WIDTH]
_NONE = int(Edge.NONE)


class SymbolColumns(NamedTuple):
    """The fields of a symbol table the names and the pull names read, one list each
    (an archive member's are read for those alone: the checks read st_value themselves)."""

    name: list[int]
    info: list[int]
    shndx: list[int]


# A table's fields are strided slices of its bytes viewed as words: each
# column is one C-level copy, and no tuple per row.  Native byte order is
# the file's: rtdyld reads x86-64 objects on the x86-64 host that runs them.
def symbol_columns(table: memoryview) -> SymbolColumns:
    """The st_name, st_info and st_shndx of each entry of an ELF64 symbol table."""
    return SymbolColumns(table.cast("I")[0::6].tolist(), table.cast("B")[4::24].tolist(), table.cast("H")[3::12].tolist())


def valid(reader, tables: tuple[list[memoryview], list[int]]) -> bool:
    """Whether the object ``reader`` read (whose SHT_RELA tables and the
    sections they patch are ``tables``) is small enough to check here and
    has no row the reader would reject."""
    rela, targets = tables
    if reader.sym_columns is None or reader.xindex is not None or len(reader.bounds) >= T.SHN_LORESERVE:
        return False  # (section numbers that may be reserved ones: the reader tells them apart)
    if sum(len(t) for t in rela) > ROWS * RELA_SIZE:
        return False
    return _symbols_valid(reader) and _relocations_valid(reader, rela, targets)


def _symbols_valid(reader) -> bool:
    bounds = reader.bounds  # per section number; -1 where not loaded (unbounded)
    n = len(bounds)
    columns = reader.sym_columns
    values = memoryview(reader.sym_bytes).cast("Q")[1::3].tolist()  # st_value
    for info, shndx, value in zip(columns.info, columns.shndx, values):
        if _BIND[info >> 4] == 255:
            return False
        if shndx < n:
            if value > bounds[shndx] >= 0:  # value == size: an end label
                return False
        elif shndx != T.SHN_ABS and shndx != T.SHN_COMMON:
            return False  # past the last section, or a reserved number we do not support
    return True


def _relocations_valid(reader, rela: list[memoryview], targets: list[int]) -> bool:
    sizes = [s.size for s in reader.sections]
    nsyms = reader.nsyms
    last = len(_EDGE) - 1
    for table, target in zip(rela, targets):
        size = sizes[target]
        words = table.cast("Q")  # r_offset, r_info, r_addend
        for offset, info in zip(words[0::3].tolist(), words[1::3].tolist()):
            kind = _EDGE[min(info & 0xFFFFFFFF, last)]
            if info >> 32 >= nsyms or kind == T.UNSUPPORTED:
                return False
            if kind != _NONE and offset + _WIDTH[kind] > size:
                return False
    return True
