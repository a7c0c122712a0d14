"""ELF symbol and relocation tables converted for a whole batch at once.

Converting one archive member's tables takes some fifty numpy calls on
tables of a few dozen rows: the per-call cost, not the rows, is what a link
of a small archive pays, once per member.  So members read for a batch keep
their symbol and SHT_RELA tables as uncopied views (every header already
checked), lazy extraction gets the names each member defines and needs from
the raw symbol table, and :func:`convert_batch` turns the tables of every
such object of the batch into the batch's joined tables in one pass; each
object's own are cut from them only when asked for (a trace, a message,
the link cache).  :func:`convert_pending` converts any set of them into
each object's own tables.

The checks are the reader's, over all rows at once.  When any row is bad,
the objects are converted one by one with the reader's own code, in batch
order (each object's symbols, then its relocations), so the error is
exactly the one reading the first bad object alone raises (object, section,
offset, relocation type, symbol).  An object whose tables are asked for
before then (a validator, a trace) is converted alone on the spot.  A
small object added on its own has its rows checked as it is read
(:mod:`.elf_small`) and joins the same conversion (:func:`checked_object`);
a larger one converts its relocations through the same code at once
(:func:`convert_now`): fewer numpy calls than the reader's own conversion,
which remains for SHT_REL tables and for naming bad entries.
"""

from __future__ import annotations

from array import array
from itertools import accumulate
from operator import ge, gt

import numpy as np

from ..errors import LinkError
from ..x86_64.edges import WIDTH, Edge
from . import elf_small
from . import elf_tables as T
from .model import (
    BATCH_RELOC_DTYPE,
    RELOC_DTYPE,
    SEC_UNDEF,
    SYM_DTYPE,
    ObjectFile,
)

# Width of each kind's fixup, zero for the unsupported marker (rows so marked fail anyway).
_WIDTH = np.zeros(256, dtype=np.uint64)
_WIDTH[: len(WIDTH)] = WIDTH
_NONE = int(Edge.NONE)
# Section numbers from SHN_ABS (0xfff1) up wrap round to 0.. when _SHIFT is added in 16 bits.
_SHIFT = 0x10000 - T.SHN_ABS
_RESERVED_TOP = array("q", [int(T.RESERVED_SECTIONS[k - T.SHN_LORESERVE]) for k in range(T.SHN_ABS, 0x10000)])
_UNBOUNDED_TOP = array("q", [-1] * _SHIFT)  # NO_SECTION in 64 bits
# What ends each object's block: past its last section, BAD_INDEX and unbounded.
_BAD_END = array("q", [T.BAD_INDEX])
_UNBOUNDED_END = array("q", [-1])

# The batch conversion reads and writes rows through these views of the
# ELF and model records, so that a field the two share is copied in one
# call, as plain bytes.  (Structured sub-arrays would say the same in
# fewer lines but cost several times as much per call.)  Symbols: st_value
# and st_size are the model's value and size; st_info and st_other (one
# 16-bit word, of which the low ten bits count) give bind, type and vis
# (three bytes) through one look-up.
_SYM_IN = np.dtype({"names": ["attrs", "shndx", "value", "size", "value_size"],
                    "formats": ["<u2", "<u2", "<u8", "<u8", "V16"], "offsets": [4, 6, 8, 16, 8], "itemsize": 24})
_SYM_OUT = np.dtype({"names": ["value_size", "section", "attrs"], "formats": ["V16", "<i4", "V3"],
                     "offsets": [0, 16, 20], "itemsize": SYM_DTYPE.itemsize})
assert [SYM_DTYPE.fields[f][1] for f in ("section", "bind", "type", "vis")] == [16, 20, 21, 22]
_ATTRS = np.zeros(1024, dtype=[("bind", "u1"), ("type", "u1"), ("vis", "u1")])
_ATTRS["bind"] = T.BIND_MAP[(np.arange(1024) & 0xFF) >> 4]
_ATTRS["type"] = T.TYPE_MAP[np.arange(1024) & 0xF]
_ATTRS["vis"] = np.arange(1024) >> 8
_BAD_BIND = _ATTRS["bind"] == 255
# Relocations: r_info's low and high halves are the model's rtype and sym,
# next to each other in both records, so r_offset, r_info and r_addend are three copies.
_RELA_IN = np.dtype({"names": ["offset", "info", "rtype", "sym", "addend"],
                     "formats": ["<u8", "<u8", "<u4", "<u4", "<i8"], "offsets": [0, 8, 8, 12, 16], "itemsize": 24})
_RELOC_OUT = np.dtype({"names": ["section", "offset", "kind", "info", "sym2", "addend"],
                       "formats": ["<i4", "<u8", "u1", "<u8", "<i4", "<i8"],
                       "offsets": [0, 4, 12, 13, 21, 25], "itemsize": RELOC_DTYPE.itemsize})
assert [RELOC_DTYPE.fields[f][1] for f in ("offset", "kind", "rtype", "sym", "sym2", "addend")] == [4, 12, 13, 17, 21, 25]
# The same rows in the batch's layout, with each row's object and its own symbol number.
_BATCH_OUT = np.dtype({"names": [*_RELOC_OUT.names, "obj", "lsym"],
                      "formats": [*(_RELOC_OUT.fields[f][0] for f in _RELOC_OUT.names), "<i4", "<i4"],
                      "offsets": [*(_RELOC_OUT.fields[f][1] for f in _RELOC_OUT.names),
                                  BATCH_RELOC_DTYPE.fields["obj"][1], BATCH_RELOC_DTYPE.fields["lsym"][1]],
                      "itemsize": BATCH_RELOC_DTYPE.itemsize})


class _Pending:
    """What converting an object's tables needs: its reader (which holds the
    raw symbol table and the section map), and its (non-empty) SHT_RELA
    tables' bytes and the section each patches; its rows in all.  Kept
    lean: what waits for the batch to be joined counts towards the next
    garbage collection.

    What the batch conversion reads of each object is gathered here as the
    object is read, while its reader and sections are in the cache: each
    table's rows and the size of the section it patches, the object's
    section count, and (:func:`_section_blocks`) its symbols' section map."""

    __slots__ = ("blocks", "counts", "nsections", "reader", "rows", "sizes", "tables", "targets")

    def __init__(self, reader, tables: list[memoryview], targets: list[int], blocks: bool = False):
        self.reader = reader
        self.tables = tables
        self.targets = targets
        sections = reader.sections
        self.nsections = len(sections)
        # (One plain loop for both lists: comprehensions are a function call
        # each; 24 is an SHT_RELA row's size, checked against the header's
        # entry size before the object got here.)
        self.counts = counts = []
        self.sizes = sizes = []
        rows = 0
        for table, target in zip(tables, targets):
            n = len(table) // 24
            counts.append(n)
            rows += n
            sizes.append(sections[target].size)
        self.rows = rows
        self.blocks = _section_blocks(reader) if blocks else None


class BatchTables:
    """The symbol and relocation tables of a batch's objects, converted
    together, the objects' rows end to end in batch order (how each column
    is numbered, the object's own way or across the batch, is said below).

    The batch reads the symbols' columns; the model's table of them
    (``symbols``) is made only if an object's own is asked for."""

    # A plain class, not a NamedTuple: making one of those compiles each
    # field's annotation and execs generated code, at every start-up.
    __slots__ = ("_symbols", "kind_counts", "object_sections", "raw_symbols", "relocs", "symbol_attrs", "symbol_counts",
                 "symbol_owner", "symbol_sections")

    def __init__(self, raw_symbols: np.ndarray, symbol_attrs: np.ndarray, object_sections: np.ndarray,
                 symbol_counts: list[int], symbol_owner: np.ndarray, symbol_sections: np.ndarray,
                 relocs: np.ndarray, kind_counts: list[int]) -> None:
        self.raw_symbols = raw_symbols  # the ELF rows (_SYM_IN): ``value`` and ``size`` are the model's
        self.symbol_attrs = symbol_attrs  # per symbol, its model bind, type and vis
        self.object_sections = object_sections  # per symbol, its section in its object's numbering (the model's)
        self.symbol_counts = symbol_counts  # per object
        self.symbol_owner = symbol_owner  # per symbol, its object
        # the symbols' sections numbered across the batch as ``relocs`` numbers
        # them (SEC_* numbers as they are), in 64 bits, for the batch to renumber in place
        self.symbol_sections = symbol_sections
        # BATCH_RELOC_DTYPE, each object's rows sorted by (section, offset), the
        # sections numbered across the batch (each object's after the previous
        # one's, an object without sections taking one number); ``sym`` numbered
        # across the batch, ``lsym`` the object's own.
        self.relocs = relocs
        self.kind_counts = kind_counts  # rows of each edge kind, indexed by kind
        self._symbols: np.ndarray | None = None  # the model's symbol table (SYM_DTYPE), once made

    @property
    def symbols(self) -> np.ndarray:
        if self._symbols is None:
            self._symbols = _symbol_table(self.raw_symbols, self.symbol_attrs, self.object_sections)
        return self._symbols


class DeferredElfObject(ObjectFile):
    """An ELF object whose ``symbols`` and ``relocs`` are converted on first
    use, or with its batch (then cut from the batch's tables when asked for)."""

    _pending: _Pending | None = None
    _symbols: np.ndarray | None = None
    _relocs: np.ndarray | None = None
    # (the batch's tables, first and end symbol row, first and end relocation
    # row, the batch's number for its first section)
    _rows: tuple[BatchTables, int, int, int, int, int] | None = None
    pull_names: tuple[list[str], list[str]] | None = None

    @property
    def symbols(self) -> np.ndarray:
        if self._symbols is None:
            if self._rows is not None:
                self._cut()
            elif self._pending is not None:
                convert_pending([self])
        return self._symbols

    @symbols.setter
    def symbols(self, value: np.ndarray | None) -> None:
        self._symbols = value

    @property
    def relocs(self) -> np.ndarray:
        if self._rows is not None:
            self._cut()
        elif self._pending is not None:
            convert_pending([self])
        return self._relocs

    def _cut(self) -> None:
        """Its own tables from the batch's: the symbols a view, the
        relocations renumbered back (a table set since stays)."""
        tables, s0, s1, r0, r1, first = self._rows
        self._rows = None
        if self._symbols is None:
            self._symbols = tables.symbols[s0:s1]
        if self._relocs is None:
            rows = tables.relocs[r0:r1]
            relocs = rows[list(RELOC_DTYPE.names)].astype(RELOC_DTYPE)
            relocs["section"] -= first
            relocs["sym"] = rows["lsym"]
            self._relocs = relocs

    @relocs.setter
    def relocs(self, value: np.ndarray | None) -> None:
        self._relocs = value


def deferred_object(reader) -> ObjectFile | None:
    """The object ``reader`` has read up to its sections, its symbol and
    relocation tables left for its batch; None if it has SHT_REL tables
    (read eagerly).  The symbol table of an object with extended section
    indexes is converted now."""
    # (The batch conversion tells reserved section numbers by their value:
    # an object with as many sections leaves them to the reader.)
    lazy_symbols = reader.nsyms > 0 and reader.xindex is None and len(reader.model_index) < T.SHN_LORESERVE
    symbols = None if lazy_symbols else reader._convert_symbols()
    try:
        tables = reader._rela_tables()
    except LinkError:
        if lazy_symbols:
            reader._convert_symbols()  # a symbol error comes first, as when reading eagerly
        raise
    if tables is None:
        return None
    return _deferred(reader, symbols, tables)


def checked_object(reader, tables: tuple[list[memoryview], list[int]]) -> ObjectFile:
    """The object ``reader`` has read, its rows checked (:mod:`.elf_small`)
    and its SHT_RELA ``tables`` left to convert with its batch."""
    return _deferred(reader, None if reader.nsyms else reader._convert_symbols(), tables)


def _deferred(reader, symbols: np.ndarray | None, tables: tuple[list[memoryview], list[int]]) -> ObjectFile:
    # The object's fields set as its dict in one step, not by
    # ObjectFile.__init__: that assigns ``symbols`` and ``relocs`` through
    # this class's properties, two Python calls more for every member.
    obj = object.__new__(DeferredElfObject)
    obj.__dict__ = {
        "name": reader.name, "format": "elf", "sections": reader.sections, "names": reader.names,
        "groups": reader.groups, "symbol_prefix": "", "rtype_names": T.R_X86_64, "subsections_via_symbols": False,
        "_symbols": symbols, "_pending": _Pending(reader, *tables, symbols is None),
        # (Those of a small table were worked out with its names: elf_small.names_and_pull_names.
        # An object whose symbols are converted already leaves them to archives.names_by_role.)
        "pull_names": (reader.pull_names or _raw_pull_names(reader)) if symbols is None else None,
    }  # fmt: skip
    return obj


# What _deferred sets: the model's fields, ``symbols`` and ``relocs`` as their attributes behind the properties.
assert set(ObjectFile.FIELDS) == {
    "name", "format", "sections", "symbols", "names", "relocs", "groups", "symbol_prefix", "rtype_names",
    "subsections_via_symbols"}


def _raw_pull_names(reader) -> tuple[list[str], list[str]]:
    """:func:`rtdyld.archives.names_by_role` from the raw symbol table (the
    section numbers and bindings the conversion maps; rows it would reject
    count for neither)."""
    names = reader.names
    columns = reader.sym_columns
    if columns is not None:  # a small table, already unpacked (and its names not ASCII)
        _, info, shndx = columns
    else:
        raw = reader.raw_syms
        at = np.flatnonzero(raw["st_info"] >> 4)  # the non-local rows, a few of a big table
        names = [names[i] for i in at.tolist()]
        info, shndx = raw["st_info"][at].tolist(), raw["st_shndx"][at].tolist()
    return elf_small.pull_names(names, info, shndx, reader.defining)


def convert_pending(objects: list[ObjectFile]) -> None:
    """Convert the tables of every deferred object among ``objects`` together."""
    pend = [(o, p) for o in objects if (p := getattr(o, "_pending", None)) is not None]
    if not pend:
        return
    lazy = [(o, p) for o, p in pend if o._symbols is None]
    if lazy:
        symbols = _convert_symbols([p for _, p in lazy])
        if symbols is None:
            # A bad row: each object's symbols then relocations through the
            # reader's own code, in batch order, raise what reading it would.
            for o, p in pend:
                if o._symbols is None:
                    o._symbols = p.reader._convert_symbols()
                o._relocs = p.reader._read_relocations(o._symbols)
                o._pending = None
            return
        for (o, _), table in zip(lazy, symbols):
            o._symbols = table
    converted = _convert([p for _, p in pend], [len(o._symbols) for o, _ in pend])
    for (o, p), relocs in zip(pend, converted or [None] * len(pend)):
        # A bad row anywhere: the reader's own conversion raises the precise error of the first bad object.
        o._relocs = relocs if relocs is not None else p.reader._read_relocations(o.symbols)
        o._pending = None


def convert_batch(objects: list[ObjectFile]) -> BatchTables | None:
    """The tables of ``objects`` converted together, as the batch joins
    them; each object's own are cut from them when first asked for.  None
    unless every object still waits for both its tables (others are
    converted by :func:`convert_pending` and joined), or if a row is bad
    (then :func:`convert_pending` raises the reader's error)."""
    pend = []
    for o in objects:
        p = getattr(o, "_pending", None)
        if p is None or o._symbols is not None:
            return None
        pend.append(p)
    if not pend:
        return None
    converted = _symbol_rows(pend)
    if converted is None:
        return None
    raw, attrs, own, owner, sections, counts = converted
    converted = _relocation_rows(pend, counts, batch=True)
    if converted is None:
        return None
    relocs, rows, firsts, kinds = converted
    tables = BatchTables(raw, attrs, own, counts, owner, sections, relocs, kinds)
    s0 = r0 = 0
    for o, n, m, first in zip(objects, counts, rows, firsts):
        o._pending = None
        o._rows = (tables, s0, s0 + n, r0, r0 + m, first)
        s0 += n
        r0 += m
    return tables


def convert_now(reader, symbols: np.ndarray, tables: list[memoryview], targets: list[int]) -> np.ndarray | None:
    """One object's relocations through the batch conversion (fewer
    numpy calls than the reader's); None if a row is bad, for the reader to name."""
    converted = _convert([_Pending(reader, tables, targets)], [len(symbols)])
    return converted[0] if converted is not None else None


def _section_blocks(reader) -> tuple[array, array]:
    """The object ``reader`` read's block of the symbols' look-up table
    (:func:`_symbol_rows`), indexed by section number plus _SHIFT: the
    model section (SEC_UNDEF for section 0) and the bound of a symbol's
    value there (-1: unbounded), as 64-bit numbers; made as the object is
    read, the batch only joins them."""
    # (The reader's model_index and bounds are 64-bit arrays already: joined, not converted.)
    sections = _RESERVED_TOP + reader.model_index + _BAD_END
    sections[_SHIFT] = SEC_UNDEF
    return sections, _UNBOUNDED_TOP + reader.bounds + _UNBOUNDED_END


def _convert_symbols(pend: list[_Pending]) -> list[np.ndarray] | None:
    """Model symbol tables of the objects read for ``pend``, or None if any
    row would make the reader raise (bad section number or binding, a
    value past its section)."""
    converted = _symbol_rows(pend)
    if converted is None:
        return None
    raw, attrs, sec, _, _, counts = converted
    return _per_object(_symbol_table(raw, attrs, sec), counts)


def _per_object(out: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    """``out``, the objects' rows end to end, cut into each object's (``counts`` rows each)."""
    if len(counts) == 1:
        return [out]
    ends = list(accumulate(counts))
    return [out[start:end] for start, end in zip([0, *ends[:-1]], ends)]


def _symbol_rows(pend: list[_Pending]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                 list[int]] | None:
    """The rows of the objects of ``pend`` end to end, checked: the ELF
    rows (_SYM_IN), their model bind, type and vis, their model section
    in 64 bits, each row's object (its place in ``pend``), their section
    numbered across the batch (as :func:`_relocation_rows` numbers them;
    SEC_* numbers as they are), and how many rows each object has; or None
    if a row is bad.  :func:`_symbol_table` makes the model's table."""
    # One look-up table for every row: per object, its block (made as it
    # was read, see :func:`_section_blocks`) of the model section and the
    # bound a symbol's value must not pass, indexed by section number plus
    # _SHIFT (in 16 bits, so SHN_ABS and SHN_COMMON wrap round to the
    # block's first entries); every other number past the object's last
    # section, reserved or not, is clamped to the block's last entry,
    # BAD_INDEX.  A third row holds the block's object, a fourth the number
    # across the batch of the object's first section.  Gathered in one
    # pass (in a cold link each pass of Python code costs more than its
    # lists), with each row's block's first and last entries: repeated by
    # the arrays, at C speed, not by numpy from lists (several times the cost).
    counts: list[int] = []  # per object: its symbols
    parts: list = []  # per object: its raw symbol table
    first_entry, last_entry = array("q"), array("q")  # per row
    table, bound, owners, bases = array("q"), array("q"), array("q"), array("q")
    base = 0  # the object's first section's number across the batch
    for k, p in enumerate(pend):
        reader = p.reader
        n = reader.nsyms
        counts.append(n)
        parts.append(reader.sym_bytes)
        sections, bounds = p.blocks
        first_entry += array("q", [len(table)]) * n
        table += sections
        bound += bounds
        last_entry += array("q", [len(table) - 1]) * n
        owners += array("q", [k]) * len(sections)
        bases += array("q", [base]) * len(sections)
        base += p.nsections or 1
    raw = np.frombuffer(b"".join(parts), dtype=_SYM_IN)
    at = np.frombuffer(first_entry, dtype=np.int64) + np.add(raw["shndx"], _SHIFT, dtype=np.uint16)
    np.minimum(at, np.frombuffer(last_entry, dtype=np.int64), out=at)
    lookup = np.frombuffer(table + bound + owners + table + bases, dtype=np.int64).reshape(5, -1)
    # The batch's numbers: a section's with its object's first's added, on
    # the blocks (a few entries per object), not on the rows.
    batch = lookup[3]
    np.add(batch, lookup[4], out=batch, where=batch >= 0)
    # The four look-ups in one (ndarray.take: the same as indexing, at half
    # the call's cost); NO_SECTION, 2**64 - 1, is -1 in 64 bits.  (Its rows
    # by index: unpacking an array iterates it until an IndexError, a
    # message formatted and dropped.)
    rows = lookup[:4].take(at, axis=1)
    sec, limit, owner, gsec = rows[0], rows[1], rows[2], rows[3]
    attrs = raw["attrs"] & 0x3FF
    bad = raw["value"] > limit.view(np.uint64)
    bad |= sec <= T.BAD_INDEX
    bad |= _BAD_BIND.take(attrs)
    if np.count_nonzero(bad):
        return None
    return raw, _ATTRS.take(attrs), sec, owner, gsec, counts


def _symbol_table(raw: np.ndarray, attrs: np.ndarray, sections: np.ndarray) -> np.ndarray:
    """The model's symbol table (SYM_DTYPE) of :func:`_symbol_rows`' columns."""
    out = np.empty(len(raw), dtype=_SYM_OUT)
    out["value_size"] = raw["value_size"]
    out["section"] = sections
    out["attrs"] = attrs.view("V3")
    return out.view(SYM_DTYPE)


def _convert(pend: list[_Pending], nsyms: list[int]) -> list[np.ndarray] | None:
    """Model relocations of each pending object (with ``nsyms`` symbols), or
    None if any row would make the reader raise."""
    converted = _relocation_rows(pend, nsyms)
    if converted is None:
        return None
    out, rows = converted[:2]
    return _per_object(out, rows)


def _relocation_rows(pend: list[_Pending], nsyms: list[int],
                     batch: bool = False) -> tuple[np.ndarray, list[int], list[int], list[int]] | None:
    """:func:`_convert`'s tables end to end (each object's rows sorted, the
    objects in order), how many rows each object has, the number of each
    object's first section across the batch, and how many rows there are
    of each edge kind (a list indexed by kind).  With ``batch``
    the rows are in the batch's layout (BATCH_RELOC_DTYPE): each row's
    object, its symbol numbered across the batch (``sym``, the symbols of
    the objects of ``pend`` end to end) and the object's own (``lsym``),
    its section numbered across the batch (each object's after the previous
    one's, an object without sections taking one number, as the batch
    numbers them)."""
    # What is per table, gathered in one pass over the objects (in a cold
    # link each pass of Python code costs more than the lists it makes).
    tables: list[memoryview] = []
    counts: list[int] = []  # per table: its rows
    sections: list[int] = []  # per table: the patched section, object-local
    sizes: list[int] = []  # per table: that section's size
    symbols: list[int] = []  # per table: its object's symbol count
    place: list[int] = []  # per table: the patched section numbered across the batch
    owner: list[int] = []  # per table: its object
    # per table: its object's first symbol's number across the batch, as
    # r_info's upper half (added to a row's r_info, it numbers the row's
    # symbol across the batch: the checks bound the sum by the batch's symbols)
    base: list[int] = []
    firsts: list[int] = []  # per object: its first section's number across the batch
    first = first_symbol = 0
    for k, (p, n) in enumerate(zip(pend, nsyms)):
        ntables = len(p.tables)
        tables += p.tables
        counts += p.counts
        sections += p.targets
        sizes += p.sizes
        symbols += [n] * ntables
        place += map(first.__add__, p.targets)
        owner += [k] * ntables
        base += [first_symbol << 32] * ntables
        firsts.append(first)
        first += p.nsections or 1
        first_symbol += n
    # The tables' bytes end to end: one copy at C speed, however many tables.
    if not tables:
        return np.empty(0, dtype=BATCH_RELOC_DTYPE if batch else RELOC_DTYPE), [0] * len(pend), firsts, [0] * 256
    raw = np.frombuffer(b"".join(tables), dtype=_RELA_IN)
    starts = [0, *accumulate(counts)][:-1]
    offset = raw["offset"]
    sym = raw["sym"]
    kinds = T.ELF_EDGE.take(raw["rtype"], mode="clip")  # the last entry: every type past the table
    # How many rows of each kind: R_X86_64_NONE rows (dropped) and
    # unsupported ones (rejected) are rare, so their masks are made only when present.
    census = np.bincount(kinds, minlength=256).tolist()
    if census[T.UNSUPPORTED]:
        return None
    dropped = census[_NONE]
    census[_NONE] = 0  # (the rows that stay: the batch's census of kinds)
    # Where each row's write ends (an offset past 2**64 - 8 wraps below
    # it), R_X86_64_NONE rows aside; then the farthest of each table
    # against the size of the section it patches, and the highest symbol
    # number against its object's symbol count.
    # In place: a 64-bit temporary per row costs more than the arithmetic on a big batch.
    reach = _WIDTH.take(kinds)
    reach += offset
    np.maximum(reach, offset, out=reach)
    if dropped:
        none = kinds == _NONE
        reach[none] = 0
    # (A value per table, tens of them: compared as lists, which in a cold
    # link costs less than the numpy calls to compare them as arrays.)
    if any(map(gt, np.maximum.reduceat(reach, starts).tolist(), sizes)):
        return None
    if any(map(ge, np.maximum.reduceat(sym, starts).tolist(), symbols)):
        return None
    # Each row's section numbered across the batch, object and first
    # symbol: per table, repeated in one call, on an array made by the
    # array module (numpy would work out a list's type and shape, item by
    # item); its rows by index, as unpacking it would raise and drop an
    # IndexError at its end.  The rows' order is one key,
    # that section (far below 2**24) above the offset (which the checks
    # bound by a section size, far below 2**40).  The reader leaves each
    # object's rows sorted by (section, offset); so does this, sorting only
    # if a key decreases (compilers write some tables out of order).
    per_table = np.frombuffer(array("q", place + owner + base), dtype=np.int64).reshape(3, -1)
    per_row = per_table.repeat(np.frombuffer(array("q", counts), dtype=np.int64), axis=1)
    place, owner, base = per_row[0], per_row[1], per_row[2]
    key = np.left_shift(place, 40)
    key |= offset.view(np.int64)
    out = np.empty(len(raw), dtype=_BATCH_OUT if batch else _RELOC_OUT)
    out["offset"] = offset
    if batch:
        # rtype, and sym numbered across the batch, in one (no subtrahend symbols in ELF)
        np.add(raw["info"], base.view(np.uint64), out=out["info"])
        out["obj"] = owner
        out["lsym"] = sym
    else:
        out["info"] = raw["info"]
    out["addend"] = raw["addend"]
    # (An object's own numbers are the batch's for a batch of one.)
    out["section"] = place if batch or len(pend) == 1 else np.repeat(sections, counts)
    out["kind"] = kinds
    out["sym2"] = -1
    out = out.view(BATCH_RELOC_DTYPE if batch else RELOC_DTYPE)
    # R_X86_64_NONE rows go; the records move once, not column by column.
    if dropped:
        kept_rows = (np.array(counts) - np.add.reduceat(none, starts, dtype=np.int64)).tolist() if len(pend) > 1 else None
        keep = ~none
        out = out.compress(keep)  # (compress and take: a tenth of the cost of indexing records)
        key = key.compress(keep)
    if np.count_nonzero(key[1:] < key[:-1]):
        out = out.take(np.argsort(key, kind="stable"))
    if len(pend) == 1:
        return out, [len(out)], firsts, census
    if dropped:
        per_table = iter(kept_rows)
        return out, [sum(next(per_table) for _ in p.tables) for p in pend], firsts, census
    return out, [p.rows for p in pend], firsts, census
