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

_M64 = (1 << 64) - 1
# SymbolDef's fields in order, up to the last one an entry holds (``batch`` is set at publication).
POSITIONAL = SymbolDef.FIELDS[:-1]
assert SymbolDef.FIELDS[-1] == "batch" and POSITIONAL[:2] == ("name", "address")


class EntryColumns:
    """The ``make`` of a :class:`~rtdyld.definitions.DefinitionTable` over an
    entry's definition columns (plain lists, but for the names), which
    ``columns()`` gives when first needed, for a batch at ``base`` that
    defines ``count`` names."""

    def __init__(self, columns, count: int, base: int) -> None:
        self._columns = columns
        self._count = count
        self._base = base
        self._defs: dict[str, list] | None = None

    def _decoded(self) -> dict[str, list]:
        if self._defs is None:
            defs = self._columns()
            if any(len(defs[f]) != self._count for f in (*POSITIONAL[2:], "address_offset", "address_relative")):
                raise ValueError("definition columns of unequal length")
            self._defs = defs
        return self._defs

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


def warm_definitions(names: list[str], columns, base: int) -> BatchDefinitions:
    """name -> SymbolDef of a batch restored at ``base`` that defines ``names``,
    each made on first use from the columns ``columns()`` gives."""
    rows = dict(zip(names, range(len(names))))
    if len(rows) != len(names):
        raise ValueError("a name defined twice")
    return BatchDefinitions(rows, EntryColumns(columns, len(names), base))
