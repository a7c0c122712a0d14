"""A warm batch's definitions, made from the entry's columns when first asked for.

A warm load publishes a batch's names without making a SymbolDef for each:
:class:`~rtdyld.definitions.BatchDefinitions` holds the names, and
:class:`EntryColumns` makes a name's SymbolDef from the entry's columns the
first time a look-up, a later batch or a listing asks for it (most names of
a batch are never asked for); the columns themselves are decoded then.  The SymbolDefs are the ones the cold link
made: the same fields, the address moved to where the batch now lies.
"""

from __future__ import annotations

from ..definitions import BatchDefinitions
from ..symbols import SymbolDef
from .placed import made_from

_M64 = (1 << 64) - 1
# SymbolDef's fields in order, up to the last one an entry holds (``batch`` is set at publication).
POSITIONAL = SymbolDef.FIELDS[:-1]
assert SymbolDef.FIELDS[-1] == "batch" and POSITIONAL[:2] == ("name", "address")
# The type of every column an entry holds (the address as an offset and whether it is one).
_COLUMN_TYPES = {**{f: SymbolDef.__annotations__[f] for f in POSITIONAL[2:]},
                 "address_offset": "int", "address_relative": "int"}
_TYPES = {"int": (int,), "str": (str,)}
assert set(_COLUMN_TYPES.values()) <= _TYPES.keys()


class EntryColumns:
    """The ``make`` of a :class:`~rtdyld.definitions.DefinitionTable` over an
    entry's definition columns (plain lists, but for the names), which
    ``columns()`` gives when first needed, for a batch at ``base`` that
    defines ``count`` names."""

    def __init__(self, columns, count: int, base: int, files: list[str], size: int) -> None:
        self._columns = columns
        self._count = count
        self._base = base
        self._files = files  # those of the cache entry, named and deleted by errors
        self._size = size  # of the batch's memory, which holds every address relative to its base
        self._defs: dict[str, list] | None = None

    def _decoded(self) -> dict[str, list]:
        if self._defs is None:
            self._defs = made_from(self._files, "definitions", self._check)
        return self._defs

    def _check(self) -> dict[str, list]:
        defs = self._columns()
        for f, kind in _COLUMN_TYPES.items():
            column, types = defs[f], _TYPES[kind]
            if len(column) != self._count or not all(type(v) in types for v in column):
                raise ValueError(f"a definition column {f!r} of the wrong length or type")
        size = self._size
        if any(rel and not 0 <= off <= size for off, rel in zip(defs["address_offset"], defs["address_relative"])):
            raise ValueError("a definition outside the batch's memory")
        return defs

    def make(self, names: list[str], rows: list[int], batch) -> list[SymbolDef]:
        """SymbolDefs of ``names`` (entry rows ``rows``), attributed to ``batch``."""
        defs, base = self._decoded(), self._base
        offset, relative = defs["address_offset"], defs["address_relative"]
        columns = [defs[f] for f in POSITIONAL[2:]]
        out = []
        for name, i in zip(names, rows):
            address = (offset[i] + base if relative[i] else offset[i]) & _M64
            # SymbolDef(name, address, size, type, bind, vis, origin, section, batch)
            out.append(SymbolDef(name, address, *[c[i] for c in columns], batch))
        return out


def warm_definitions(names: list[str], columns, base: int, files: list[str], size: int) -> BatchDefinitions:
    """name -> SymbolDef of a batch restored at ``base`` (``size`` bytes) that
    defines ``names``, each made on first use from the columns of the cache
    entry in ``files`` that ``columns()`` gives."""
    rows = dict(zip(names, range(len(names))))
    if len(rows) != len(names):
        raise ValueError("a name defined twice")
    return BatchDefinitions(rows, EntryColumns(columns, len(names), base, files, size))
