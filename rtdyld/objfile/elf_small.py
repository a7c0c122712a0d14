"""The symbol and relocation tables of a small ELF object, converted in plain Python.

A program object added on its own has a dozen symbols and a few dozen
relocations.  Converting tables that small with numpy costs some fifty
calls whose fixed cost (and, in a cold link, the cache misses of numpy's
code) is many times the work on the rows; a loop over ``struct`` tuples
is faster up to a few hundred rows, and the model tables are then built
with one ``np.array`` each.  Larger tables keep the reader's vectorised
conversion.

The checks are the reader's.  A row the reader would reject makes
:func:`convert` give up (None), and the reader's own code then raises its
precise error; so this module never words an error itself.
"""

from __future__ import annotations

import struct

import numpy as np

from ..x86_64.edges import WIDTH, Edge
from . import elf_tables as T
from .model import RELOC_DTYPE, SEC_ABS, SEC_COMMON, SEC_UNDEF, SYM_DTYPE

# Tables up to this many rows are converted here: measured faster than the
# vectorised conversion below about 200 relocations (0.6 us a row against
# some 70 us of numpy calls per object), cache-cold or not.
ROWS = 192

ELF64_SYM = struct.Struct("<IBBHQQ")  # st_name, st_info, st_other, st_shndx, st_value, st_size
ELF64_RELA = struct.Struct("<QQq")  # r_offset, r_info, r_addend

_BIND = T.BIND_MAP.tolist()  # 255: unknown binding
_TYPE = T.TYPE_MAP.tolist()
_EDGE = T.ELF_EDGE.tolist()  # T.UNSUPPORTED: no edge kind
_WIDTH = [int(w) for w in WIDTH]
_NONE = int(Edge.NONE)


def convert(reader, tables: tuple[list[memoryview], list[int]]) -> tuple[np.ndarray, np.ndarray] | None:
    """(symbols, relocations) of the object ``reader`` read, whose SHT_RELA
    tables and the sections they patch are ``tables``; None if a table is
    too big to convert here or a row is bad."""
    rela, targets = tables
    if reader.sym_rows is None or reader.xindex is not None:
        return None
    if sum(len(t) for t in rela) > ROWS * ELF64_RELA.size:
        return None
    symbols = _symbols(reader)
    if symbols is None:
        return None
    relocs = _relocations(reader, rela, targets, len(symbols))
    if relocs is None:
        return None
    return symbols, relocs


def _symbols(reader) -> np.ndarray | None:
    model, bounds = reader.model_index, reader.bounds
    n = len(model)
    rows = []
    for _, info, other, shndx, value, size in reader.sym_rows:
        if shndx == T.SHN_UNDEF:
            sec = SEC_UNDEF
        elif shndx < n:
            sec = model[shndx]  # SEC_DISCARDED for a section not loaded
            if value > bounds[shndx]:  # value == size: an end label
                return None
        elif shndx == T.SHN_ABS:
            sec = SEC_ABS
        elif shndx == T.SHN_COMMON:
            sec = SEC_COMMON
        else:  # past the last section, or a reserved number we do not support
            return None
        bind = _BIND[info >> 4]
        if bind == 255:
            return None
        rows.append((value, size, sec, bind, _TYPE[info & 0xF], other & 3))
    return np.array(rows, dtype=SYM_DTYPE)


def _relocations(reader, rela: list[memoryview], targets: list[int], nsyms: int) -> np.ndarray | None:
    sizes = [s.size for s in reader.sections]
    rows = []
    in_order = True
    last = (-1, 0)
    for table, target in zip(rela, targets):
        size = sizes[target]
        for offset, info, addend in ELF64_RELA.iter_unpack(table):
            rtype = info & 0xFFFFFFFF
            sym = info >> 32
            kind = _EDGE[rtype] if rtype < len(_EDGE) else T.UNSUPPORTED
            if sym >= nsyms or kind == T.UNSUPPORTED:
                return None
            if kind == _NONE:
                continue
            if offset + _WIDTH[kind] > size:
                return None
            if in_order and (target, offset) < last:
                in_order = False
            last = (target, offset)
            rows.append((target, offset, kind, rtype, sym, -1, addend))
    if not in_order:  # stable, as the reader's lexsort: equal places keep their order
        rows.sort(key=lambda row: (row[0], row[1]))
    return np.array(rows, dtype=RELOC_DTYPE)
