"""The format-neutral object model every reader produces.

An :class:`ObjectFile` is a list of loadable sections plus two tables held as
numpy structured arrays: symbols and relocations.  Relocations are already
mapped to x86-64 edge kinds (:mod:`rtdyld.x86_64.edges`) with the readers'
format quirks folded into the addend, so everything after the reader is
format-blind.  Per-entry Python objects are built only on request (traces,
error messages).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, IntFlag
from types import MappingProxyType

from ..fieldwise import field_repr

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    import numpy as np

# --- symbols -----------------------------------------------------------------

# Special values of the ``section`` column of the symbol table.
SEC_UNDEF = -1  # defined elsewhere
SEC_ABS = -2  # ``value`` is an absolute address
SEC_COMMON = -3  # tentative definition: ``value`` = alignment, ``size`` = size
SEC_DISCARDED = -4  # defined in a section we do not load (debug info, a dropped COMDAT)

# A zero-fill section (.bss, __zerofill) has no file bytes to contradict its
# size: bigger than this, its header is corrupt, rejected before anything is reserved.
MAX_ZERO_FILL = 1 << 36


class Bind(IntEnum):
    LOCAL = 0
    GLOBAL = 1
    WEAK = 2


class SymType(IntEnum):
    NOTYPE = 0
    OBJECT = 1
    FUNC = 2
    SECTION = 3
    FILE = 4
    TLS = 5
    IFUNC = 6


class Visibility(IntEnum):
    DEFAULT = 0
    INTERNAL = 1
    HIDDEN = 2
    PROTECTED = 3


# The symbol table's and relocation table's columns (SYM_DTYPE, RELOC_DTYPE,
# BATCH_RELOC_DTYPE) and empty_relocs live in .columns, with numpy: a warm
# link from the link cache reads neither table, and so never imports numpy.
_COLUMNS = frozenset({"SYM_DTYPE", "RELOC_DTYPE", "BATCH_RELOC_DTYPE", "empty_relocs"})


def __getattr__(name: str):
    if name in _COLUMNS:
        from . import columns

        value = globals()[name] = getattr(columns, name)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- sections ----------------------------------------------------------------


class SectionFlags(IntFlag):
    NONE = 0
    WRITE = 1
    EXEC = 2
    ZERO_FILL = 4  # no file bytes: .bss, __zerofill
    TLS = 8
    MERGE = 16
    STRINGS = 32


class SectionRole(IntEnum):
    NORMAL = 0
    INIT_ARRAY = 1  # pointers run at finalize, in priority order
    FINI_ARRAY = 2  # pointers run at removal, reverse order
    CTORS = 3  # legacy .ctors: run in reverse order
    DTORS = 4
    EH_FRAME = 5


# The classes below are records the link cache walks by field (rtdyld.fieldwise):
# FIELDS lists them in the order __init__ takes them, and ENUM_FIELDS those
# the cache restores as enums; tests/test_imports.py checks both against
# __init__ and the annotations.


class Section:
    """One loadable section of an object."""

    FIELDS = ("name", "data", "size", "align", "flags", "role", "priority", "group", "source_index")
    __slots__ = FIELDS  # no dict per section, a member having a dozen
    ENUM_FIELDS = MappingProxyType({"flags": SectionFlags, "role": SectionRole})  # restored as enums by the cache

    name: str  # as the object names it (".text.foo", "__TEXT,__text")
    data: bytes | memoryview  # file bytes; empty for ZERO_FILL
    size: int
    align: int
    flags: SectionFlags
    role: SectionRole  # NORMAL unless given
    priority: int | None  # init/fini priority (".init_array.00101" -> 101)
    group: int | None  # index into ObjectFile.groups (COMDAT)
    source_index: int  # the format's own section number, for messages; -1 unless given

    def __init__(self, name: str, data: bytes | memoryview, size: int, align: int, flags: SectionFlags,
                 role: SectionRole = SectionRole.NORMAL, priority: int | None = None, group: int | None = None,
                 source_index: int = -1) -> None:
        self.name = name
        self.data = data
        self.size = size
        self.align = align
        self.flags = flags
        self.role = role
        self.priority = priority
        self.group = group
        self.source_index = source_index

    def _key(self) -> tuple:
        return (self.name, self.data, self.size, self.align, self.flags, self.role, self.priority, self.group,
                self.source_index)

    def __eq__(self, other):
        return self._key() == other._key() if other.__class__ is self.__class__ else NotImplemented

    __hash__ = None  # (mutable, compared by value)

    def __repr__(self) -> str:
        return field_repr(self)


class Group:
    """A COMDAT group: keep one copy per signature, drop the others."""

    FIELDS = ("signature", "sections")
    signature: str
    sections: list[int]

    def __init__(self, signature: str, sections: list[int]) -> None:
        self.signature = signature
        self.sections = sections

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return (self.signature, self.sections) == (other.signature, other.sections)

    __hash__ = None  # (mutable, compared by value)

    def __repr__(self) -> str:
        return field_repr(self)


class ObjectFile:
    """A relocatable object, read into tables.

    ``symbols`` and ``names`` are parallel; ``relocs`` is sorted by
    (section, offset).  ``symbol_prefix`` is the format's global-name
    decoration ("_" for Mach-O C symbols): host look-ups strip exactly it.
    """

    FIELDS = ("name", "format", "sections", "symbols", "names", "relocs", "groups", "symbol_prefix", "rtype_names",
              "subsections_via_symbols")
    name: str
    format: str  # "elf" or "macho"
    sections: list[Section]
    symbols: np.ndarray  # SYM_DTYPE
    names: list[str]
    relocs: np.ndarray  # RELOC_DTYPE
    groups: list[Group]  # none unless given
    symbol_prefix: str = ""  # (the defaults with a value are class attributes too, as they always were)
    rtype_names: Mapping[int, str]  # none unless given
    subsections_via_symbols: bool = False

    def __init__(self, name: str, format: str, sections: list[Section], symbols: np.ndarray, names: list[str],
                 relocs: np.ndarray, groups: list[Group] | None = None, symbol_prefix: str = "",
                 rtype_names: Mapping[int, str] | None = None, subsections_via_symbols: bool = False) -> None:
        self.name = name
        self.format = format
        self.sections = sections
        self.symbols = symbols
        self.names = names
        self.relocs = relocs
        self.groups = [] if groups is None else groups
        self.symbol_prefix = symbol_prefix
        self.rtype_names = {} if rtype_names is None else rtype_names
        self.subsections_via_symbols = subsections_via_symbols

    # Compared by identity: its fields hold numpy tables, which compare element-wise.

    def __repr__(self) -> str:
        return field_repr(self)

    def reloc_type_name(self, rtype: int) -> str:
        return self.rtype_names.get(int(rtype), f"type {int(rtype)}")

    def describe_symbol(self, index: int) -> str:
        """A readable name even for nameless section symbols."""
        name = self.names[index] if 0 <= index < len(self.names) else ""
        if name:
            return name
        sec = int(self.symbols["section"][index])
        if 0 <= sec < len(self.sections):
            return self.sections[sec].name
        return f"<symbol {index}>"


_LOCAL_BIND, _GLOBAL_BIND = int(Bind.LOCAL), int(Bind.GLOBAL)  # plain ints: an enum member costs a look-up per use


def names_by_role_of_rows(rows, sections: list[int], binds: list[int], names: list[str]) -> tuple[list[str], list[str]]:
    """What lazy extraction asks of an object, from the given symbol rows:
    (names it defines for others: global or weak, in a section, absolute or
    tentative, as in ld; names it needs: strong undefined, since weak
    references pull no member).  Local and nameless rows are skipped."""
    defines: list[str] = []
    needs: list[str] = []
    for i, sec, bind in zip(rows, sections, binds):
        name = names[i]
        if bind == _LOCAL_BIND or not name:
            continue
        if sec >= 0 or sec == SEC_ABS or sec == SEC_COMMON:
            defines.append(name)
        elif sec == SEC_UNDEF and bind == _GLOBAL_BIND:
            needs.append(name)
    return defines, needs
