"""The symbols of a linked batch: its map, its target ids, what it leaves undefined.

A :class:`BatchSymbols` answers the questions the trace, the checker and the
``symbols`` command ask of a :class:`~rtdyld.batch.LinkedBatch`: the name
and address of a canonical target id (as ``LinkedBatch.tables["target"]``
holds them), the address of any named symbol, local ones included, and who
supplied each external.  :func:`undefined_references` resolves the names a
set of objects needs without linking and without raising, for
``rtdyld symbols --undefined`` (over ``Linker.pending_objects()``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .batch import External, LinkedBatch, PlacedSection
from .objfile.model import SEC_ABS, SEC_COMMON, SEC_UNDEF, Bind, ObjectFile, SymType, Visibility
from .symbols import Dylib, SymbolDef

GOT_SYMBOL = "_GLOBAL_OFFSET_TABLE_"


def matches_object(name: str, wanted: str) -> bool:
    """Whether object ``name`` is the one a user calls ``wanted``: the same
    display name, or the same file name (``foo.o`` for ``build/foo.o``)."""
    return name == wanted or os.path.basename(name) == wanted


@dataclass
class SymbolRow:
    """One line of the symbol map."""

    name: str
    address: int
    size: int
    type: str  # FUNC, OBJECT, ... ("" for externals: the batch cannot know)
    bind: str  # GLOBAL, WEAK, LOCAL, or EXTERNAL
    vis: str
    origin: str  # defining object, or where an external came from
    section: str = ""  # defining section ("COMMON", "*ABS*"); "" for externals

    @property
    def external(self) -> bool:
        return self.bind == "EXTERNAL"


class BatchSymbols:
    """Name and address look-ups over one linked batch."""

    def __init__(self, batch: LinkedBatch):
        self.batch = batch
        counts = [len(o.symbols) for o in batch.objects]
        self.sym_base = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.nsyms = int(self.sym_base[-1])
        self.placed: dict[tuple[int, int], PlacedSection] = {(p.obj, p.index): p for p in batch.sections}
        self._by_name: dict[str, list[tuple[int, int]]] | None = None

    # --- objects and sections --------------------------------------------------

    def object_index(self, name: str) -> int:
        """Index of the object called ``name`` (display name or file name); KeyError if none."""
        hits = [i for i, o in enumerate(self.batch.objects) if o.name == name]
        if not hits:
            hits = [i for i, o in enumerate(self.batch.objects) if matches_object(o.name, name)]
        if not hits:
            raise KeyError(name)
        return hits[0]

    def placed_section(self, obj: int, section: str) -> PlacedSection:
        """The placed section called ``section`` of object ``obj``; KeyError if it is not loaded."""
        for si, s in enumerate(self.batch.objects[obj].sections):
            if s.name == section and (obj, si) in self.placed:
                return self.placed[(obj, si)]
        raise KeyError(section)

    def section_name(self, p: PlacedSection) -> str:
        return self.batch.objects[p.obj].sections[p.index].name

    # --- canonical target ids ----------------------------------------------------

    def locate(self, target: int) -> tuple[int, int]:
        """(object index, symbol index in that object) of a batch target id."""
        oi = int(np.searchsorted(self.sym_base, target, side="right")) - 1
        return oi, target - int(self.sym_base[oi])

    def external(self, target: int) -> External | None:
        """The external a target id stands for, or None for a batch symbol."""
        return self.batch.externals[target - self.nsyms] if target >= self.nsyms else None

    def target_name(self, target: int) -> str:
        e = self.external(target)
        if e is not None:
            return e.name
        oi, li = self.locate(target)
        return self.batch.objects[oi].describe_symbol(li)

    def target_source(self, target: int) -> str:
        """Who supplied a target: the resolver's answer for an external, else the defining object."""
        e = self.external(target)
        if e is not None:
            return e.source
        return self.batch.objects[self.locate(target)[0]].name

    def target_address(self, target: int) -> int | None:
        e = self.external(target)
        if e is not None:
            return e.address
        return self.local_address(*self.locate(target))

    # --- symbols by name -----------------------------------------------------------

    def local_address(self, obj: int, index: int) -> int | None:
        """Address of symbol ``index`` of object ``obj``, or None if it has none in this batch."""
        o = self.batch.objects[obj]
        sec = int(o.symbols["section"][index])
        value = int(o.symbols["value"][index])
        if sec >= 0:
            p = self.placed.get((obj, sec))
            return None if p is None else p.address + value
        if sec == SEC_ABS:
            return value
        if sec == SEC_COMMON:
            d = self.batch.definitions.get(o.names[index])
            return d.address if d is not None else None
        return None

    def _named(self) -> dict[str, list[tuple[int, int]]]:
        if self._by_name is None:
            table: dict[str, list[tuple[int, int]]] = {}
            for oi, o in enumerate(self.batch.objects):
                sec = o.symbols["section"]
                stype = o.symbols["type"]
                for li in np.flatnonzero((sec != SEC_UNDEF) & (stype != SymType.SECTION) & (stype != SymType.FILE)):
                    name = o.names[int(li)]
                    if name:
                        table.setdefault(name, []).append((oi, int(li)))
            self._by_name = table
        return self._by_name

    def symbol_address(self, name: str) -> int:
        """Address of ``name`` as this batch sees it: its own definitions, then
        its externals, then a local symbol of one of its objects.  KeyError if
        unknown, LookupError if it names local symbols of several objects."""
        d = self.batch.definitions.get(name)
        if d is not None:
            return d.address
        for e in self.batch.externals:
            if e.name == name:
                return e.address
        hits = [(oi, a) for oi, li in self._named().get(name, []) if (a := self.local_address(oi, li)) is not None]
        if len({a for _, a in hits}) > 1:
            where = ", ".join(self.batch.objects[oi].name for oi, _ in hits)
            raise LookupError(f"{name!r} names local symbols of several objects ({where})")
        if hits:
            return hits[0][1]
        raise KeyError(name)

    def targets_named(self, name: str) -> list[int]:
        """Every canonical target id the batch's relocations use for ``name``."""
        tables = self.batch.tables
        if not tables:
            return []
        return [t for t in np.unique(tables["target"]).tolist() if self.target_name(t) == name]


def _definition_row(d: SymbolDef, section: str) -> SymbolRow:
    return SymbolRow(
        name=d.name,
        address=d.address,
        size=d.size,
        type=_enum_name(SymType, d.type),
        bind=_enum_name(Bind, d.bind),
        vis=_enum_name(Visibility, d.vis),
        origin=d.origin,
        section=section,
    )


def _enum_name(enum, value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)


def symbol_map(batch: LinkedBatch, locals: bool = False) -> list[SymbolRow]:
    """The batch's definitions and externals (and, with ``locals``, its named
    local symbols), sorted by address then name."""
    rows = [_definition_row(d, d.section or "*ABS*") for d in batch.definitions.values()]
    for e in batch.externals:
        rows.append(SymbolRow(e.name, e.address, e.size, "", "EXTERNAL", "", e.source))
    if locals:
        view = BatchSymbols(batch)
        for oi, o in enumerate(batch.objects):
            s = o.symbols
            keep = (s["bind"] == Bind.LOCAL) & (s["type"] != SymType.SECTION) & (s["type"] != SymType.FILE)
            for li in np.flatnonzero(keep).tolist():
                address = view.local_address(oi, li)
                if not o.names[li] or address is None:
                    continue
                sec = int(s["section"][li])
                section = o.sections[sec].name if sec >= 0 else "*ABS*"
                rows.append(
                    SymbolRow(
                        name=o.names[li],
                        address=address,
                        size=int(s["size"][li]),
                        type=_enum_name(SymType, int(s["type"][li])),
                        bind="LOCAL",
                        vis=_enum_name(Visibility, int(s["vis"][li])),
                        origin=o.name,
                        section=section,
                    )
                )
    rows.sort(key=lambda r: (r.address, r.name))
    return rows


# --- undefined references without linking -------------------------------------------


@dataclass
class Undefined:
    """A name the objects reference and do not define, and what resolving it gives."""

    name: str
    referrers: list[str] = field(default_factory=list)
    found: SymbolDef | None = None
    weak: bool = True  # every reference is weak: it may stay undefined (address 0)

    @property
    def missing(self) -> bool:
        return self.found is None and not self.weak and self.name != GOT_SYMBOL

    @property
    def status(self) -> str:
        if self.name == GOT_SYMBOL:
            return "the batch's GOT"
        if self.found is not None:
            return self.found.origin
        return "weak undefined (address 0)" if self.weak else "MISSING"


def undefined_references(objects: list[ObjectFile], resolver: Dylib) -> list[Undefined]:
    """Resolve what ``objects`` need from outside themselves, as a batch of
    them would, without raising: missing names come back with ``missing`` set."""
    defined: set[str] = set()
    for o in objects:
        s = o.symbols
        m = ((s["section"] >= 0) | (s["section"] == SEC_ABS) | (s["section"] == SEC_COMMON)) & (
            s["bind"] != Bind.LOCAL
        )
        defined.update(o.names[i] for i in np.flatnonzero(m).tolist())
    found: dict[str, Undefined] = {}
    prefixes: dict[str, str] = {}
    for o in objects:
        s = o.symbols
        refs = (s["section"] == SEC_UNDEF) & (s["bind"] != Bind.LOCAL)
        for i in np.flatnonzero(refs).tolist():
            name = o.names[i]
            if not name or name in defined:
                continue
            u = found.setdefault(name, Undefined(name))
            prefixes.setdefault(name, o.symbol_prefix)
            if o.name not in u.referrers:
                u.referrers.append(o.name)
            if int(s["bind"][i]) != Bind.WEAK:
                u.weak = False
    for name, u in found.items():
        if name != GOT_SYMBOL:
            u.found = resolver.resolve(name, prefixes[name])
    return sorted(found.values(), key=lambda u: u.name)


__all__ = [
    "BatchSymbols",
    "SymbolRow",
    "Undefined",
    "matches_object",
    "symbol_map",
    "undefined_references",
]
