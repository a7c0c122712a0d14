"""The symbol and relocation rows of a small ELF object, checked in plain Python.

A program object added on its own has a dozen symbols and a few dozen
relocations.  Checking tables that small with numpy costs some fifty calls
whose fixed cost (and, in a cold link, the cache misses of numpy's code)
is many times the work on the rows; a loop over the symbols' fields (a
list each, see :func:`symbol_columns`) and built-in functions over the
relocations' are faster up to a few hundred rows.  An
object whose rows all pass has its tables converted with its batch's
(:mod:`.elf_deferred`), where it adds rows, not calls.  Larger tables
keep the reader's vectorised checks.

The checks are the reader's.  A row the reader would reject makes
:func:`valid` say no, and the reader's own code then raises its precise
error; so this module never words an error itself.
"""

from __future__ import annotations

from itertools import compress
from operator import add

from ..x86_64.edges import WIDTH
from . import elf_tables as T
from .model import Bind

# Tables up to this many rows are checked here: converting them in plain
# Python was measured faster than the vectorised conversion below about 200
# relocations (under a microsecond a row against some 70 us of numpy calls
# per object), cache-cold or not; checking alone costs less still.
ROWS = 192
RELA_SIZE = 24
# An ELF64 symbol's size (elf_tables.ELF64_SYM's, as a plain int: asking
# the numpy dtype costs a cold link a few microseconds).
SYM_SIZE = 24
assert SYM_SIZE == T.ELF64_SYM.itemsize

_BIND = T.BIND_MAP.tolist()  # 255: unknown binding
_STRONG = frozenset(i for i, bind in enumerate(_BIND) if bind == Bind.GLOBAL)  # GLOBAL, GNU_UNIQUE
# Relocations are checked a table at a time by built-in functions over the
# fields (max, set inclusion, map): no Python code runs per row.
_EDGE = T.ELF_EDGE.tolist()[:-1]  # per relocation type; T.UNSUPPORTED: no edge kind
_SUPPORTED = frozenset(t for t, kind in enumerate(_EDGE) if kind != T.UNSUPPORTED)
# Per supported relocation type: how many bytes it writes (none for R_X86_64_NONE).
_REACH = [0 if kind == T.UNSUPPORTED else int(WIDTH[kind]) for kind in _EDGE]  # (WIDTH[NONE] is 0)


# A table's fields are strided slices of its bytes viewed as words: each
# column is one C-level copy, and no tuple per row.  Native byte order is
# the file's: rtdyld reads x86-64 objects on the x86-64 host that runs them.
def symbol_columns(table: memoryview) -> tuple[list[int], list[int], list[int]]:
    """The st_name, st_info and st_shndx of each entry of an ELF64 symbol
    table, one list each: what the names and the pull names read (the
    checks read st_value themselves: an archive member's rows are not
    checked on their own)."""
    return table.cast("I")[0::6].tolist(), table.cast("B")[4::24].tolist(), table.cast("H")[3::12].tolist()


def pull_names(names: list[str], infos: list[int], shndxs: list[int], defining: set[int]
               ) -> tuple[list[str], list[str]]:
    """What lazy extraction asks of an object, from its symbols' names,
    st_info and st_shndx: the names non-local rows define in a section of
    ``defining``, and those strong undefined rows need."""
    defined: list[str] = []
    needed: list[str] = []
    # One plain loop (a generator or two comprehensions cost more).
    for name, info, shndx in zip(names, infos, shndxs):
        if info >= 16 and name:  # (st_info below 16: local binding)
            if not shndx:  # SHN_UNDEF
                if info >> 4 in _STRONG:
                    needed.append(name)
            elif shndx in defining:
                defined.append(name)
    return defined, needed


def names_and_pull_names(
    strtab: bytes, columns: tuple[list[int], list[int], list[int]], defining: set[int]
) -> tuple[list[str], tuple[list[str], list[str]]] | None:
    """The names of a small symbol table's entries (``columns`` as
    :func:`symbol_columns` gives them) and their :func:`pull_names`, in one
    loop over the rows (the rule of :func:`pull_names` fused into the slicing:
    a second loop costs about 6% of reading an archive member, measured);
    None if the string table is not ASCII or an offset is bad
    (:func:`.strtab.names_at` then says which)."""
    offsets, infos, shndxs = columns
    defined: list[str] = []
    needed: list[str] = []
    names: list[str] = []
    try:
        # Each name sliced out of the table decoded once (ASCII: a string
        # index is a byte offset); offset 0, every section symbol's, once.
        text = strtab.decode("ascii")
        find = text.index
        first = text[: find("\0")]
        for at, info, shndx in zip(offsets, infos, shndxs):
            name = text[at : find("\0", at)] if at else first
            names.append(name)
            if info >= 16 and name:  # (st_info below 16: local binding)
                if not shndx:  # SHN_UNDEF
                    if info >> 4 in _STRONG:
                        needed.append(name)
                elif shndx in defining:
                    defined.append(name)
    except ValueError:  # UnicodeDecodeError included
        return None
    return names, (defined, needed)


def valid(reader, tables: tuple[list[memoryview], list[int]]) -> bool:
    """Whether the object ``reader`` read (whose SHT_RELA tables and the
    sections they patch are ``tables``) is small enough to check here and
    has no row the reader would reject."""
    # (One function: on the path of a link's first object, read with the
    # caches cold, each more to run costs more than its lines.)
    rela, targets = tables
    bounds = reader.bounds  # per section number; -1 where not loaded (unbounded)
    n = len(bounds)
    if reader.sym_columns is None or reader.xindex is not None or n >= T.SHN_LORESERVE:
        return False  # (section numbers that may be reserved ones: the reader tells them apart)
    if sum(map(len, rela)) > ROWS * RELA_SIZE:
        return False
    # The symbols: a plain loop (a dozen of them, where setting up the built-ins' look-ups would cost more).
    _, infos, shndxs = reader.sym_columns
    values = memoryview(reader.sym_bytes).cast("Q")[1::3].tolist()  # st_value
    for info, shndx, value in zip(infos, shndxs, values):
        if _BIND[info >> 4] == 255:
            return False
        if shndx < n:
            if value > bounds[shndx] >= 0:  # value == size: an end label
                return False
        elif shndx != T.SHN_ABS and shndx != T.SHN_COMMON:
            return False  # past the last section, or a reserved number we do not support
    # The relocations, a table at a time.
    sections = reader.sections
    nsyms = reader.nsyms
    for table, target in zip(rela, targets):
        words = table.cast("I")  # per row: r_offset (two words), r_info's type and symbol, r_addend (two)
        types = words[2::6]
        if not _SUPPORTED.issuperset(types) or max(words[3::6]) >= nsyms:
            return False
        # Where each write ends; R_X86_64_NONE (type 0) writes nothing, wherever it points.
        ends = compress(map(add, table.cast("Q")[0::3], map(_REACH.__getitem__, types)), types)
        if max(ends, default=0) > sections[target].size:
            return False
    return True
