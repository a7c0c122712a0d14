"""A batch's definitions as a read-only mapping over its symbol tables.

A batch linked from a large archive defines thousands of names and few of
them are ever asked for, yet a SymbolDef for each cost a fifth of the link
(some 5 ms for 7,922 definitions).  So ``LinkedBatch.definitions`` keeps
the batch's arrays and makes a name's SymbolDef the first time something
asks for it — a look-up, a later batch resolving against it, a symbol map,
removal — and returns that same object while the batch is loaded, so
identity checks such as ``published.get(name) is d`` hold.  Asking for all the values
(``values()``, ``items()``) makes the missing ones in one vectorised pass.
"""

from __future__ import annotations

import weakref
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView

from .lazy_numpy import np
from .symbols import SymbolDef

# Up to this many SymbolDefs at once, per-element reads (``ndarray.item``)
# cost less than one fancy-indexing call per column.
_SCALAR_ROWS = 8


class DefinitionTable:
    """The columns a SymbolDef is made from, indexed by batch-wide symbol number."""

    def __init__(self, address: np.ndarray, size: np.ndarray, type: np.ndarray, bind: np.ndarray,
                 vis: np.ndarray, obj: np.ndarray, section: np.ndarray, objects: list, placed: list,
                 commons: dict) -> None:
        self.address = address  # final addresses (uint64)
        self.size = size
        self.type = type
        self.bind = bind
        self.vis = vis
        self.obj = obj  # index into ``objects`` of each symbol's object
        self.section = section  # index into ``placed``, negative for absolute and common symbols
        self.objects = objects  # ObjectFile per batch object: the definition's origin
        self.placed = placed  # PlacedSection per batch section: the definition's section name
        self.commons = commons  # name -> (symbol, size, align) of merged tentative definitions

    def make(self, names: list[str], rows: list[int], batch) -> list[SymbolDef]:
        """SymbolDefs of ``names`` (symbol ``rows``), attributed to ``batch``."""
        columns = (self.address, self.size, self.type, self.bind, self.vis, self.obj, self.section)
        if len(rows) <= _SCALAR_ROWS:
            values = [[col.item(i) for i in rows] for col in columns]
        else:
            idx = np.array(rows, dtype=np.int64)
            values = [col[idx].tolist() for col in columns]
        objects, placed, commons = self.objects, self.placed, self.commons
        out = []
        for name, address, size, stype, bind, vis, oi, sec in zip(names, *values):
            if name in commons:
                section, size = "COMMON", commons[name][1]
            elif sec >= 0:
                p = placed[sec]
                section = objects[p.obj].sections[p.index].name
            else:
                section = ""
            out.append(SymbolDef(name, address, size, stype, bind, vis, objects[oi].name, section, batch))
        return out


class BatchDefinitions(Mapping):
    """name -> SymbolDef of one batch, each made on first access (see the module docstring).

    ``rows`` maps each defined name to its symbol number in ``table``; its
    order is the mapping's order.  ``batch`` is the Handle once published.

    The Handle holds this mapping (through its LinkedBatch) and every
    SymbolDef made holds the Handle, so the mapping refers to the Handle
    weakly and, once the batch is removed (:meth:`detach`), keeps no
    SymbolDef it makes: a removed batch, its tables and its sections are then
    freed as soon as nothing else refers to them, not at the next full
    garbage collection, which would also have to trace them at every
    collection until then.
    """

    def __init__(self, rows: dict[str, int], table: DefinitionTable):
        self._rows = rows
        self._table = table
        self._made: dict[str, SymbolDef] = {}
        self._complete = not rows
        self._batch: weakref.ref | None = None
        self._detached = False

    @property
    def batch(self):
        """The Handle the batch was published as, or None."""
        return self._batch() if self._batch is not None else None

    def __getitem__(self, name: str) -> SymbolDef:
        d = self._made.get(name)
        if d is None:
            d = self._make_one(name)
        return d

    def get(self, name: str, default=None):
        d = self._made.get(name)
        if d is not None:
            return d
        return self._make_one(name) if name in self._rows else default

    def _make_one(self, name: str) -> SymbolDef:
        (d,) = self._table.make([name], [self._rows[name]], self.batch)
        if self._detached:
            return d
        # setdefault: two threads making the same name keep one object.
        return self._made.setdefault(name, d)

    def __contains__(self, name) -> bool:
        return name in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def keys(self) -> KeysView:
        return self._rows.keys()

    def values(self) -> ValuesView:
        return self._all().values()

    def items(self) -> ItemsView:
        return self._all().items()

    def _all(self) -> dict[str, SymbolDef]:
        if self._complete:
            return self._made
        made = {} if self._detached else self._made
        missing = [name for name in self._rows if name not in made]
        rows = self._rows
        for d in self._table.make(missing, [rows[name] for name in missing], self.batch):
            made.setdefault(d.name, d)
        # In the batch's order, as a dict of SymbolDefs would be.
        ordered = {name: made[name] for name in rows}
        if not self._detached:
            self._made = ordered
            self._complete = True
        return ordered

    def holders(self) -> dict[str, BatchDefinitions]:
        """``name -> self`` for every name: how PublishedSymbols refers to them."""
        return dict.fromkeys(self._rows, self)

    def set_batch(self, handle) -> None:
        """Attribute every definition, made or yet to be made, to ``handle``."""
        self._batch = weakref.ref(handle)
        for d in list(self._made.values()):
            d.batch = handle

    def detach(self) -> None:
        """The batch was removed: forget the SymbolDefs made, which refer to
        its Handle (whoever holds one keeps it), and keep none made later
        (each ask makes a new one)."""
        self._detached = True
        self._made = {}
        self._complete = not self._rows

    def __repr__(self) -> str:
        return f"<BatchDefinitions: {len(self._rows)} names, {len(self._made)} made>"
