"""Read x86-64 ELF relocatable objects into the format-neutral model.

The section header table (including the SHN_XINDEX escapes for large section
counts, see :mod:`.elf_headers`), the symbol and the relocation tables are
read in bulk: as numpy structured arrays over the file's bytes, uncopied,
or for the small tables of a typical object as lists in plain Python
(:mod:`.elf_small`), which is faster there.
Every index and offset is checked before use: malformed input raises
MalformedObjectError naming the object and the offending section or entry.
"""

from __future__ import annotations

import functools
import struct
from array import array

import numpy as np

from ..errors import LinkError, MalformedObjectError, UnsupportedRelocationError
from ..x86_64.edges import WIDTH, Edge
from . import elf_deferred, elf_small
from . import elf_tables as T
from .elf_headers import ELF64_EHDR, HeaderError, read_section_headers, section_name
from .elf_precheck import SHF_COMPRESSED, check_section_tables
from .elf_tables import (
    LOADABLE_TYPES,
    SHF_ALLOC,
    SHT_GROUP,
    SHT_NOBITS,
    SHT_REL,
    SHT_RELA,
    SHT_SYMTAB,
    SHT_SYMTAB_SHNDX,
)
from .model import (
    MAX_ZERO_FILL,
    RELOC_DTYPE,
    SEC_DISCARDED,
    SEC_UNDEF,
    SYM_DTYPE,
    Group,
    ObjectFile,
    Section,
    SectionFlags,
    SectionRole,
)
from .records import join
from .strtab import names_at, read_names

# Sections whose name may end in ".N", an init/fini priority (read with str
# methods, not a regular expression: compiling one is most of what a pattern
# costs a process that reads a few objects).
_PRIORITY_KINDS = ("init_array", "fini_array", "ctors", "dtors")
# Sections and objects are made with positional arguments, in the order of
# the model's fields: keyword arguments cost twice as much,
# which is a tenth of reading a small archive member.
assert list(Section.FIELDS) == [
    "name", "data", "size", "align", "flags", "role", "priority", "group", "source_index"]
assert list(ObjectFile.FIELDS)[:9] == [
    "name", "format", "sections", "symbols", "names", "relocs", "groups", "symbol_prefix", "rtype_names"]
_WIDTH = WIDTH.astype(np.uint64)
_DISCARDED, _UNBOUNDED = array("q", [SEC_DISCARDED]), array("q", [-1])
_NONE = int(Edge.NONE)
# Checks below test "any row bad?" with np.count_nonzero: a fifth of the cost of
# ndarray.any(), which matters with a dozen checks per archive member.


ELF_MAGIC = b"\x7fELF"


def is_elf(data: bytes | memoryview) -> bool:
    return data[:4] == ELF_MAGIC  # a byte view compares with bytes as it is, uncopied


def read_elf(data: bytes | memoryview, name: str, defer_tables: bool = False) -> ObjectFile:
    """Read an ELF64 x86-64 ET_REL object.  Raises MalformedObjectError.

    With ``defer_tables`` the headers are checked now, and the symbol and
    relocation entries when the batch is joined, for every object of the
    batch at once (:mod:`.elf_deferred`)."""
    return _ElfReader(data, name).read(defer_tables)


class _ElfReader:
    def __init__(self, data, name: str):
        if isinstance(data, bytes):
            self.data, self.view = data, memoryview(data)  # the view sliced for each section's bytes, uncopied
        else:  # (an archive member's bytes, a view of its archive's: one view serves both)
            self.data = self.view = memoryview(data).cast("B")
        self._headers = None
        self._shstrtab = b""
        self.name = name

    def fail(self, msg: str) -> MalformedObjectError:
        return MalformedObjectError(f"{self.name}: {msg}")

    # --- headers -------------------------------------------------------------

    def read(self, defer_tables: bool = False) -> ObjectFile:
        try:
            return self._read(defer_tables)
        finally:
            # The symbol columns, the sections where a symbol is defined and
            # the section headers serve reading: kept (with the reader) until
            # the batch is joined, a link's hundreds of them would set off a
            # garbage collection.
            self.sym_columns = None
            self.defining = None
            self._headers = None
            self._shstrtab = b""

    @property
    def headers(self) -> list[tuple]:
        """The section headers (tuples, :mod:`.elf_headers`); read again
        after :meth:`read` let them go, for converting a member's tables
        alone (to name a bad row)."""
        if self._headers is None:
            _, _, _, _, _, *table = ELF64_EHDR.unpack_from(self.data)
            self._headers, self._shstrtab = read_section_headers(self.data, *table)  # checked when first read
        return self._headers

    def _name(self, i: int) -> str:
        """Section ``i``'s name: decoded only for the sections loaded and for messages."""
        headers = self.headers  # (first: it reads the name table again if read() let it go)
        return section_name(self._shstrtab, headers, i)

    def _read(self, defer_tables: bool) -> ObjectFile:
        d = self.data
        if len(d) < 64:
            raise self.fail("not an ELF object (bad magic or truncated header)")
        magic, elf_class, encoding, e_type, machine, *table = ELF64_EHDR.unpack_from(d)
        if magic != ELF_MAGIC:
            raise self.fail("not an ELF object (bad magic or truncated header)")
        if elf_class != 2:
            raise self.fail("wrong ELF class: only 64-bit (ELFCLASS64) objects are supported")
        if encoding != 1:
            raise self.fail("wrong data encoding: only little-endian x86-64 objects are supported")
        if machine != T.EM_X86_64:
            raise self.fail(f"wrong machine {machine}: only x86-64 (EM_X86_64) objects are supported")
        if e_type != T.ET_REL:
            raise self.fail(f"not a relocatable object (e_type {e_type}); rtdyld links .o files")
        try:
            # (Read through the attribute, not the property, while reading: tens of look-ups an object.)
            headers, self._shstrtab = read_section_headers(d, *table)
        except HeaderError as e:
            raise self.fail(f"bad section headers: {e}") from None
        self._headers = headers
        end = len(d)
        shstrtab = self._shstrtab
        n = len(headers)
        # The loaded sections are made in the walk below (_read_groups says what the maps hold).
        self.sections = sections = []
        self.groups = []
        self.model_index = model_index = _DISCARDED * n
        self.bounds = bounds = _UNBOUNDED * n
        view = self.view
        # Their names sliced out of the name table decoded once (ASCII: a
        # string index is a byte offset), every offset checked with the table.
        text = shstrtab.decode("ascii") if shstrtab.isascii() else None
        find = text.index if text else None
        oversized = None  # the first zero-fill section too big, named after the checks that come first
        # The one walk over the headers: check each, make the loaded sections, and sort out
        # the few other kinds later steps read.
        symtabs, shndx_sections, group_sections, loadable, compressed = [], [], [], [], []
        self.rel_sections = rel_sections = []
        for i, (at, t, flags, offset, size, _, _, align, _) in enumerate(headers):
            if offset + size > end and t != SHT_NOBITS and t != 0 and i:  # (the rare condition first)
                raise self.fail(
                    f"section [{i}] {self._name(i)!r} extends past the end of the file "
                    f"(offset {offset:#x} + size {size:#x} > {end:#x})"
                )
            if align & (align - 1):
                raise self.fail(f"section [{i}] {self._name(i)!r} has alignment {align}, not a power of two")
            # (The kinds are disjoint; the most common first.)
            if t in LOADABLE_TYPES:
                if flags & SHF_ALLOC:
                    loadable.append(i)
                    name = text[at : find("\0", at)] if text and i else section_name(shstrtab, headers, i)
                    zero_fill = t == SHT_NOBITS
                    if zero_fill and size > MAX_ZERO_FILL:
                        if oversized is None:
                            oversized = f"section [{i}] {name!r} claims {size} bytes of zero-fill"
                    else:
                        kind, role, priority = _kind(name, t, flags & _FLAG_MASK)
                        model_index[i] = len(sections)
                        bounds[i] = size
                        # (name, data, size, align, flags, role, priority, group, source_index)
                        sections.append(
                            Section(name, b"" if zero_fill else view[offset : offset + size], size, align or 1,
                                    kind, role, priority, None, i)
                        )
            elif t == SHT_RELA or t == SHT_REL:
                rel_sections.append(i)
            elif t == SHT_SYMTAB:
                symtabs.append(i)
            elif t == SHT_SYMTAB_SHNDX:
                shndx_sections.append(i)
            elif t == SHT_GROUP:
                group_sections.append(i)
            if flags & SHF_COMPRESSED:
                compressed.append(i)
        # Where a non-local symbol is a definition: a loaded section, SHN_ABS or SHN_COMMON.
        self.defining = {*loadable, T.SHN_ABS, T.SHN_COMMON}
        # What the headers say of each other, for the few sections it concerns, in section order.
        tables = sorted({*symtabs, *rel_sections, *compressed})
        check_section_tables(headers, tables, self._name, self.fail)
        self._read_symtab(symtabs, shndx_sections)
        if oversized is not None:
            raise self.fail(oversized)
        if group_sections:
            self._read_groups(group_sections)
        if defer_tables:
            deferred = elf_deferred.deferred_object(self)
            if deferred is not None:
                return deferred
        try:
            tables = self._rela_tables()
        except LinkError:
            self._convert_symbols()  # a bad symbol is named first, as the tables are converted in that order
            raise
        if tables is not None and elf_small.valid(self, tables):
            # Every row checked: the tables are converted with the batch's, or on first use.
            return elf_deferred.checked_object(self, tables)
        symbols = self._convert_symbols()
        relocs = elf_deferred.convert_now(self, symbols, *tables) if tables is not None else None
        if relocs is None:  # SHT_REL tables, or a bad entry to name
            relocs = self._read_relocations(symbols)
        return self.object(ObjectFile, symbols, relocs)

    def object(self, cls: type[ObjectFile], symbols: np.ndarray | None, relocs: np.ndarray | None) -> ObjectFile:
        """The object read, as ``cls``, with these tables."""
        # (name, format, sections, symbols, names, relocs, groups, symbol_prefix, rtype_names)
        return cls(self.name, "elf", self.sections, symbols, self.names, relocs, self.groups, "", T.R_X86_64)

    def _bytes(self, i: int) -> memoryview:
        _, _, _, offset, size, _, _, _, _ = self.headers[i]
        return self.view[offset : offset + size]

    def _table(self, i: int, dtype: np.dtype, what: str) -> np.ndarray:
        size = self.headers[i][4]
        if size % dtype.itemsize:
            raise self.fail(f"{what} section {self._name(i)!r} size {size} is not a multiple of {dtype.itemsize}")
        return np.frombuffer(self._bytes(i), dtype=dtype)

    # --- symbols -------------------------------------------------------------

    def _read_symtab(self, tabs: list[int], shndx_sections: list[int]) -> None:
        if len(tabs) > 1:
            raise self.fail("more than one symbol table")
        self.symtab_index = tabs[0] if tabs else None
        self.xindex = None
        self.sym_columns = None
        self.pull_names = None
        if self.symtab_index is None:
            self.sym_bytes = b""
            self.nsyms = 0
            self.sym_columns = [], [], []
            self.names = []
            return
        headers = self._headers
        # (The table's entry size, size and link were checked with the other tables: elf_precheck.)
        _, _, _, offset, size, link, _, _, _ = headers[self.symtab_index]
        self.sym_bytes = self.view[offset : offset + size]
        self.nsyms = size // elf_small.SYM_SIZE
        if link == 0:  # (a section 0 posing as a string table)
            raise self.fail(f"symbol table's string table index {link} is not a string table")
        _, _, _, offset, size, _, _, _, _ = headers[link]
        strtab = bytes(self.data[offset : offset + size])  # (the file's bytes: a slice is the copy)
        try:
            if self.nsyms <= elf_small.ROWS:
                # A small table as lists of its fields: the names, the pull names
                # and (read alone) the checks of its rows work on them in plain Python.
                self.sym_columns = columns = elf_small.symbol_columns(self.sym_bytes)
                named = elf_small.names_and_pull_names(strtab, columns, self.defining)
                if named is not None:
                    self.names, self.pull_names = named
                else:  # (not ASCII, or a bad offset for names_at to name)
                    self.names = names_at(strtab, columns[0])
            else:
                self.names = read_names(strtab, self.raw_syms["st_name"])
        except ValueError as e:
            raise self.fail(f"symbol table: {e}") from None
        for i in shndx_sections:
            if headers[i][5] == self.symtab_index:  # sh_link
                self.xindex = self._table(i, np.dtype("<u4"), "extended section index")
                if len(self.xindex) < self.nsyms:
                    raise self.fail("extended section index table is shorter than the symbol table")

    @functools.cached_property
    def raw_syms(self) -> np.ndarray:
        """The symbol table as ELF64_SYM rows, over the file's bytes."""
        return np.frombuffer(self.sym_bytes, dtype=T.ELF64_SYM)

    def _read_groups(self, group_sections: list[int]) -> None:
        """Read COMDAT groups, once the walk over the headers has made the
        loaded sections (``self.sections``) and their maps: ``model_index``,
        section number -> index in self.sections or SEC_DISCARDED, and
        ``bounds``, section number -> how far a symbol defined there may
        lie, -1 where unbounded (NO_SECTION as a signed 64-bit number).
        Both are 64-bit arrays, not numpy (a dozen entries, where per-item
        numpy access costs more), which the batch conversion joins as they are."""
        headers = self._headers
        n = len(headers)
        model_index = self.model_index
        for i in group_sections:
            _, _, _, offset, size, link, info, _, _ = headers[i]
            if size % 4:
                raise self.fail(f"group section {self._name(i)!r} size {size} is not a multiple of 4")
            words = struct.unpack_from(f"<{size // 4}I", self.data, offset)
            if len(words) == 0 or not (words[0] & T.GRP_COMDAT):
                continue
            if link != self.symtab_index or info >= self.nsyms:
                raise self.fail(f"group section [{i}] {self._name(i)!r} has a bad signature symbol {info}")
            members = words[1:]
            if members and max(members) >= n:
                raise self.fail(f"group section [{i}] {self._name(i)!r} names a section past the last one")
            loaded = [model_index[m] for m in members if model_index[m] >= 0]
            gi = len(self.groups)
            for m in loaded:
                self.sections[m].group = gi
            self.groups.append(Group(signature=self.names[info] or self._name(i), sections=loaded))

    def _convert_symbols(self) -> np.ndarray:
        raw = self.raw_syms
        out = np.empty(len(raw), dtype=SYM_DTYPE)
        if not len(raw):
            return out
        sec = self._symbol_sections(raw)
        bind = T.BIND_MAP[raw["st_info"] >> 4]
        if np.count_nonzero(bind == 255):
            i = int(np.flatnonzero(bind == 255)[0])
            raise self.fail(f"symbol {i} ({self.names[i]!r}) has unknown binding {int(raw['st_info'][i] >> 4)}")
        out["value"] = raw["st_value"]
        out["size"] = raw["st_size"]
        out["section"] = sec
        out["bind"] = bind
        out["type"] = T.TYPE_MAP[raw["st_info"] & 0xF]
        out["vis"] = raw["st_other"] & 3
        # Defined symbols must lie within their section (value == size marks an end label).
        sizes = np.array([s.size for s in self.sections] + [T.NO_SECTION], dtype=np.uint64)
        over = raw["st_value"] > sizes[np.where(sec >= 0, sec, len(self.sections))]
        if np.count_nonzero(over):
            i = int(np.flatnonzero(over)[0])
            raise self.fail(
                f"symbol {self.names[i]!r} at {int(raw['st_value'][i]):#x} lies past the end of "
                f"section {self.sections[sec[i]].name!r}"
            )
        return out

    def _symbol_sections(self, raw: np.ndarray) -> np.ndarray:
        """Each symbol's section in the model, or SEC_*: one table look-up over
        the section numbers, then the reserved ones (SHN_ABS, SHN_COMMON)."""
        shndx = raw["st_shndx"].astype(np.int64)
        escaped = None
        if self.xindex is not None:
            escaped = shndx == T.SHN_XINDEX
            shndx[escaped] = self.xindex[: len(raw)][escaped]
        reserved = shndx >= T.SHN_LORESERVE
        if escaped is not None:
            reserved &= ~escaped
        n = len(self.model_index)  # the section count (the headers may have been let go)
        # model_index for 0..n-1 (0 is SHN_UNDEF), then "past the last section", then the reserved range.
        table = np.concatenate((np.array([*self.model_index, T.BAD_INDEX], dtype=np.int32), T.RESERVED_SECTIONS))
        table[0] = SEC_UNDEF
        sec = table[np.where(reserved, n + 1 + (shndx - T.SHN_LORESERVE), np.minimum(shndx, n))]
        bad = sec <= T.BAD_INDEX
        if np.count_nonzero(bad):
            i = int(np.flatnonzero(bad)[0])
            what = f"symbol {i} ({self.names[i]!r})"
            if not reserved[i]:
                raise self.fail(f"{what} has bad section index {int(shndx[i])}")
            if shndx[i] == T.SHN_XINDEX:
                raise self.fail("a symbol uses SHN_XINDEX but there is no extended section index table")
            raise self.fail(f"{what} has unsupported section index {int(shndx[i]):#x}")
        return sec

    # --- relocations ------------------------------------------------------------

    def _relocation_sections(self):
        """``(section number, SHT_RELA or SHT_REL, model section index)`` of
        each relocation table that patches a loaded section.  Their entry
        sizes and links to the (one) symbol table were checked with the
        other tables (:mod:`.elf_precheck`)."""
        headers = self.headers
        for i in self.rel_sections:
            info = headers[i][6]
            target = self._target(i, info)
            if target >= 0:  # (not debug info or another section we do not load)
                yield i, headers[i][1], target

    def _target(self, i: int, info: int) -> int:
        """The model section relocation table ``i`` patches (its sh_info), or SEC_DISCARDED."""
        model_index = self.model_index
        if info >= len(model_index):
            raise self.fail(f"relocation section [{i}] {self._name(i)!r} applies to missing section {info}")
        return model_index[info]

    def _rela_tables(self) -> tuple[list[memoryview], list[int]] | None:
        """The bytes of the non-empty SHT_RELA tables of loaded sections and
        the section each patches; None if a loaded section has SHT_REL
        entries (their addends are read eagerly)."""
        rela, targets = [], []
        headers = self.headers
        view = self.view
        model_index = self.model_index
        n = len(model_index)
        # (The loop of _relocation_sections, without a generator: read for every archive member.)
        for i in self.rel_sections:
            _, t, _, offset, size, _, info, _, _ = headers[i]
            target = model_index[info] if info < n else self._target(i, info)
            if target < 0:
                continue
            if t == T.SHT_REL:
                return None
            if size:
                rela.append(view[offset : offset + size])
                targets.append(target)
        return rela, targets

    def _read_relocations(self, symbols: np.ndarray) -> np.ndarray:
        # Every SHT_RELA section of the object is converted in one pass (the
        # per-call cost of numpy, not the row count, dominates for archive
        # members); SHT_REL, which x86-64 compilers do not emit, one by one.
        rela, rela_targets, parts = [], [], []
        for i, t, target in self._relocation_sections():
            if t == T.SHT_RELA:
                rela.append(self._table(i, T.ELF64_RELA, "relocation"))
                rela_targets.append(target)
            else:
                raw = self._table(i, T.ELF64_REL, "relocation")
                parts.append(self._convert_relocs(raw, False, np.full(len(raw), target, dtype=np.int32), symbols))
        if rela:
            targets = np.repeat(np.array(rela_targets, dtype=np.int32), [len(r) for r in rela])
            parts.insert(0, self._convert_relocs(join(rela, T.ELF64_RELA), True, targets, symbols))
        if not parts:
            return np.zeros(0, dtype=RELOC_DTYPE)
        # Columns are joined and (rarely) sorted as plain arrays; the packed
        # record array is built once, at the end.
        cols = {f: np.concatenate([p[f] for p in parts]) if len(parts) > 1 else parts[0][f] for f in parts[0]}
        section, offset = cols["section"], cols["offset"]
        dsec = np.diff(section)
        in_order = (dsec > 0) | ((dsec == 0) & (offset[1:] >= offset[:-1]))
        if np.count_nonzero(in_order) < len(in_order):
            order = np.lexsort((offset, section))
            cols = {f: c[order] for f, c in cols.items()}
        out = np.empty(len(section), dtype=RELOC_DTYPE)
        for f, c in cols.items():
            out[f] = c
        out["sym2"] = -1
        return out

    def _convert_relocs(self, raw, rela: bool, target: np.ndarray, symbols) -> dict[str, np.ndarray]:
        """Relocation entries patching sections ``target`` (one per entry) as
        columns of RELOC_DTYPE (all but sym2)."""
        info = raw["r_info"]
        rtype = (info & 0xFFFFFFFF).astype(np.uint32)
        sym = info >> 32
        where = lambda k: f"{self.sections[target[k]].name}+{int(raw['r_offset'][k]):#x}"
        bad = sym >= len(symbols)
        if np.count_nonzero(bad):
            k = int(np.flatnonzero(bad)[0])
            raise self.fail(f"{where(k)}: relocation refers to symbol {int(sym[k])}, past the symbol table")
        kinds = T.ELF_EDGE[np.minimum(rtype, len(T.ELF_EDGE) - 1)]
        kinds[rtype >= len(T.ELF_EDGE)] = T.UNSUPPORTED
        bad = kinds == T.UNSUPPORTED
        if np.count_nonzero(bad):
            k = int(np.flatnonzero(bad)[0])
            t = int(rtype[k])
            tname = T.R_X86_64.get(t, f"relocation type {t}")
            why = (
                "this thread-local storage relocation is not supported (TLS descriptors: "
                "build with -mtls-dialect=gnu)"
                if t in T.TLS_TYPES
                else "this relocation type is not supported"
            )
            symname = self.names[int(sym[k])] if int(sym[k]) < len(self.names) else "?"
            raise UnsupportedRelocationError(
                f"{self.name}: {where(k)}: {tname} against {symname or '<section>'!r}: {why}"
            )
        offset = raw["r_offset"]
        addend = raw["r_addend"] if rela else None
        none = kinds == _NONE
        if np.count_nonzero(none):
            keep = ~none
            kinds, rtype, sym, offset, target = kinds[keep], rtype[keep], sym[keep], offset[keep], target[keep]
            addend = addend[keep] if rela else None
        size = np.array([s.size for s in self.sections], dtype=np.uint64)[target]
        past = (offset + _WIDTH[kinds] > size) | (offset > size)
        if np.count_nonzero(past):
            k = int(np.flatnonzero(past)[0])
            sec = self.sections[target[k]]
            raise self.fail(
                f"{sec.name}+{int(offset[k]):#x}: {T.R_X86_64[int(rtype[k])]} "
                f"writes past the end of the section (size {sec.size:#x})"
            )
        if not rela:  # one SHT_REL section at a time: every row patches the same section
            addend = _implicit_addends(self.sections[target[0]], kinds, offset) if len(kinds) else target.astype(np.int64)
        return {
            "section": target,
            "offset": offset,
            "kind": kinds,
            "rtype": rtype,
            "sym": sym,
            "addend": addend,
        }


def _implicit_addends(sec: Section, kind: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """SHT_REL addends live in the bytes being patched: gather them in bulk."""
    if sec.flags & SectionFlags.ZERO_FILL:
        return np.zeros(len(kind), dtype=np.int64)
    buf = np.frombuffer(sec.data, dtype=np.uint8)
    width = WIDTH[kind]
    off = offset.astype(np.int64)
    value = np.zeros(len(kind), dtype=np.uint64)
    for k in range(8):
        m = width > k
        value[m] |= buf[off[m] + k].astype(np.uint64) << np.uint64(8 * k)
    signed = value.view(np.int64).copy()
    for w in (1, 2, 4):
        m = width == w
        sh = np.int64(64 - 8 * w)
        signed[m] = (signed[m] << sh) >> sh
    unsigned32 = kind == Edge.Pointer32
    signed[unsigned32] = value[unsigned32].astype(np.int64)
    return signed


_FLAG_BITS = (
    (T.SHF_WRITE, SectionFlags.WRITE),
    (T.SHF_EXECINSTR, SectionFlags.EXEC),
    (T.SHF_TLS, SectionFlags.TLS),
    (T.SHF_MERGE, SectionFlags.MERGE),
    (T.SHF_STRINGS, SectionFlags.STRINGS),
)
_FLAG_MASK = sum(bit for bit, _ in _FLAG_BITS)


def _section_flags(sh_flags: int, zero_fill: bool) -> SectionFlags:
    flags = SectionFlags.NONE
    for bit, flag in _FLAG_BITS:
        if sh_flags & bit:
            flags |= flag
    return flags | SectionFlags.ZERO_FILL if zero_fill else flags


@functools.lru_cache(maxsize=4096)
def _kind(name: str, sh_type: int, sh_flags: int) -> tuple[SectionFlags, SectionRole, int | None]:
    """A section's model flags, role and priority.  Cached: archive members
    repeat the same few section names and flags, and IntFlag arithmetic
    costs microseconds per operation."""
    return (_section_flags(sh_flags, sh_type == T.SHT_NOBITS), *_role(name, sh_type))


def _priority(name: str) -> tuple[str, int] | None:
    """(kind, N) for a name ".KIND.N" of _PRIORITY_KINDS with N decimal digits, else None."""
    kind, dot, digits = name[1:].partition(".")
    if name[:1] == "." and dot and kind in _PRIORITY_KINDS and digits.isdecimal():
        return kind, int(digits)
    return None


def _role(name: str, sh_type: int) -> tuple[SectionRole, int | None]:
    m = _priority(name)
    priority = m[1] if m else None
    base = m[0] if m else name.lstrip(".")
    if sh_type == T.SHT_PREINIT_ARRAY:
        return SectionRole.INIT_ARRAY, -1
    if sh_type == T.SHT_INIT_ARRAY or base == "init_array":
        return SectionRole.INIT_ARRAY, priority
    if sh_type == T.SHT_FINI_ARRAY or base == "fini_array":
        return SectionRole.FINI_ARRAY, priority
    # .ctors.N counts down: .ctors.65435 is priority 100.
    if base == "ctors":
        return SectionRole.CTORS, None if priority is None else 65535 - priority
    if base == "dtors":
        return SectionRole.DTORS, None if priority is None else 65535 - priority
    if sh_type == T.SHT_X86_64_UNWIND or name == ".eh_frame":
        return SectionRole.EH_FRAME, None
    return SectionRole.NORMAL, None
