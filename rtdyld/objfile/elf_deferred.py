"""ELF relocation tables converted for a whole batch at once (and for one object, fast).

Converting one archive member's relocations takes some twenty numpy calls
on tables of a few dozen rows: the per-call cost, not the rows, is what a
link of a small archive pays, once per member.  So members read for a batch
keep their SHT_RELA tables as uncopied views (their headers already
checked), and :func:`convert_pending` turns the tables of every such object
of the batch into model relocations in one pass when the batch is joined.

The checks are the reader's, over all rows at once.  When any row is bad,
the objects are converted one by one with the reader's own code, in batch
order, so the error is exactly the one reading that object alone raises
(object, section, offset, relocation type, symbol).  An object whose
relocations are asked for before then (a validator, a trace) is converted
alone on the spot.  Objects added one by one take the same path at once
(:func:`convert_now`): fewer numpy calls than the reader's own
conversion, which remains for SHT_REL tables and for naming bad entries.
"""

from __future__ import annotations

import numpy as np

from ..x86_64.edges import WIDTH, Edge
from . import elf_tables as T
from .model import RELOC_DTYPE, SEC_ABS, SEC_COMMON, SEC_UNDEF, Bind, ObjectFile

# Width of each kind's fixup, zero for the unsupported marker (rows so marked fail anyway).
_WIDTH = np.zeros(256, dtype=np.uint64)
_WIDTH[: len(WIDTH)] = WIDTH
_NONE = int(Edge.NONE)
_GLOBAL = int(Bind.GLOBAL)
_LAST_TYPE = len(T.ELF_EDGE) - 1


class _Pending:
    """What converting an object's relocations needs: its reader, and per
    SHT_RELA table its bytes, its row count, the section it patches and that
    section's size."""

    __slots__ = ("counts", "reader", "sizes", "tables", "targets")

    def __init__(self, reader, tables: list[memoryview], targets: list[int]):
        self.reader = reader
        self.tables = tables
        self.targets = targets
        self.counts = [len(t) // T.ELF64_RELA.itemsize for t in tables]
        self.sizes = [reader.sections[t].size for t in targets]


class DeferredElfObject(ObjectFile):
    """An ELF object whose ``relocs`` are converted on first use, or with its batch."""

    _pending: _Pending | None = None
    _relocs: np.ndarray | None = None
    pull_names: tuple[list[str], list[str]] | None = None

    @property
    def relocs(self) -> np.ndarray:
        if self._pending is not None:
            convert_pending([self])
        return self._relocs

    @relocs.setter
    def relocs(self, value: np.ndarray | None) -> None:
        self._relocs = value


def deferred_object(reader, symbols: np.ndarray, tables: list[np.ndarray], targets: list[int]) -> ObjectFile:
    """The object ``reader`` read, its relocations left as ``tables`` patching sections ``targets``."""
    obj = DeferredElfObject(
        name=reader.name,
        format="elf",
        sections=reader.sections,
        symbols=symbols,
        names=reader.names,
        relocs=None,
        groups=reader.groups,
        rtype_names=T.R_X86_64,
    )
    obj._pending = _Pending(reader, tables, targets)
    obj.pull_names = _pull_names(symbols, reader.names)
    return obj


def _pull_names(symbols: np.ndarray, names: list[str]) -> tuple[list[str], list[str]]:
    """What lazy extraction asks of a member, worked out once from its
    non-local symbols: (names it defines for others, names it needs),
    as :func:`rtdyld.archives.defined_globals` and ``strong_undefined`` give them."""
    bind = symbols["bind"]
    named = np.flatnonzero(bind).tolist()
    defined, needed = [], []
    for i, sec, b in zip(named, symbols["section"][named].tolist(), bind[named].tolist()):
        name = names[i]
        if not name:
            continue
        if sec >= 0 or sec == SEC_ABS or sec == SEC_COMMON:
            defined.append(name)
        elif sec == SEC_UNDEF and b == _GLOBAL:
            needed.append(name)
    return defined, needed


def convert_pending(objects: list[ObjectFile]) -> None:
    """Convert the relocations of every deferred object among ``objects`` together."""
    pend = [(o, p) for o in objects if (p := getattr(o, "_pending", None)) is not None]
    if not pend:
        return
    converted = _convert([p for _, p in pend], [len(o.symbols) for o, _ in pend])
    for (o, p), relocs in zip(pend, converted or [None] * len(pend)):
        # A bad row anywhere: the reader's own conversion raises the precise error of the first bad object.
        o._relocs = relocs if relocs is not None else p.reader._read_relocations(o.symbols)
        o._pending = None


def convert_now(reader, symbols: np.ndarray, tables: list[memoryview], targets: list[int]) -> np.ndarray | None:
    """One object's relocations through the batch conversion (fewer
    numpy calls than the reader's); None if a row is bad, for the reader to name."""
    converted = _convert([_Pending(reader, tables, targets)], [len(symbols)])
    return converted[0] if converted is not None else None


def _convert(pend: list[_Pending], nsyms: list[int]) -> list[np.ndarray] | None:
    """Model relocations of each pending object (with ``nsyms`` symbols), or
    None if any row would make the reader raise."""
    tables: list[memoryview] = []
    counts: list[int] = []
    sections: list[int] = []  # per table: the patched section, object-local
    sizes: list[int] = []  # per table: that section's size
    per_object: list[int] = []  # tables of each object
    for p in pend:
        tables += p.tables
        counts += p.counts
        sections += p.targets
        sizes += p.sizes
        per_object.append(len(p.tables))
    # The tables' bytes end to end: one copy at C speed, however many tables.
    raw = np.frombuffer(b"".join(tables), dtype=T.ELF64_RELA)
    rows = np.array(counts, dtype=np.int64)
    single = len(pend) == 1
    robj = None if single else np.repeat(np.repeat(np.arange(len(pend)), per_object), rows)
    section = np.repeat(np.array(sections, dtype=np.int32), rows)
    info = raw["r_info"]
    rtype = (info & 0xFFFFFFFF).astype(np.uint32)
    sym = info >> 32
    kinds = T.ELF_EDGE[np.minimum(rtype, _LAST_TYPE)]
    kinds[rtype > _LAST_TYPE] = T.UNSUPPORTED
    offset = raw["r_offset"]
    size = np.repeat(np.array(sizes, dtype=np.uint64), rows)
    past = ((offset + _WIDTH[kinds] > size) | (offset > size)) & (kinds != _NONE)
    symbols = np.uint64(nsyms[0]) if single else np.array(nsyms, dtype=np.uint64)[robj]
    bad = (sym >= symbols) | (kinds == T.UNSUPPORTED) | past
    if np.count_nonzero(bad):
        return None
    keep = kinds != _NONE
    if np.count_nonzero(keep) < len(keep):
        section, offset, kinds, rtype, sym = section[keep], offset[keep], kinds[keep], rtype[keep], sym[keep]
        robj = None if single else robj[keep]
        addend = raw["r_addend"][keep]
    else:
        addend = raw["r_addend"]
    # Each object's rows sorted by (section, offset), as the reader leaves them.
    a, b = section[:-1], section[1:]
    in_order = (b > a) | ((b == a) & (offset[1:] >= offset[:-1]))
    if not single:
        in_order = (robj[1:] > robj[:-1]) | ((robj[1:] == robj[:-1]) & in_order)
    out = np.empty(len(section), dtype=RELOC_DTYPE)
    if np.count_nonzero(in_order) < len(in_order):
        order = np.lexsort((offset, section) if single else (offset, section, robj))
        section, offset, kinds, rtype, sym, addend = (
            section[order], offset[order], kinds[order], rtype[order], sym[order], addend[order]
        )
        robj = None if single else robj[order]
    out["section"] = section
    out["offset"] = offset
    out["kind"] = kinds
    out["rtype"] = rtype
    out["sym"] = sym
    out["sym2"] = -1
    out["addend"] = addend
    if single:
        return [out]
    ends = np.cumsum(np.bincount(robj, minlength=len(pend))).tolist()
    return [out[start:end] for start, end in zip([0, *ends[:-1]], ends)]
