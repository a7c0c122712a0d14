"""Read x86-64 ELF relocatable objects into the format-neutral model.

pyelftools parses the ELF header and section headers (including the
SHN_XINDEX escapes for large section counts); the symbol and relocation
tables, which can hold hundreds of thousands of entries, are read in bulk as
numpy structured arrays over the section bytes.  Every index and offset is
checked before use: malformed input raises MalformedObjectError naming the
object and the offending section or entry.
"""

from __future__ import annotations

import io
import re

import numpy as np
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.enums import ENUM_SH_TYPE_AMD64, ENUM_SH_TYPE_BASE

from ..errors import MalformedObjectError, UnsupportedRelocationError
from ..x86_64.edges import WIDTH, Edge
from . import elf_tables as T
from .elf_precheck import check_section_table
from .model import (
    RELOC_DTYPE,
    SEC_ABS,
    SEC_COMMON,
    SEC_DISCARDED,
    SEC_UNDEF,
    SYM_DTYPE,
    Group,
    ObjectFile,
    Section,
    SectionFlags,
    SectionRole,
)
from .strtab import read_names

_SH_TYPE = {**ENUM_SH_TYPE_BASE, **ENUM_SH_TYPE_AMD64}
_PRIORITY = re.compile(r"^\.(init_array|fini_array|ctors|dtors)\.(\d+)$")
# A .bss may be large but not absurd: bigger than this is a corrupt header,
# rejected before anything is reserved.
MAX_ZERO_FILL = 1 << 36


def is_elf(data: bytes | memoryview) -> bool:
    return bytes(data[:4]) == b"\x7fELF"


class _Header:
    """The section-header fields we use, as plain ints."""

    __slots__ = ("align", "entsize", "flags", "info", "link", "name", "offset", "size", "type")

    def __init__(self, name, h):
        self.name = name
        t = h["sh_type"]
        self.type = t if isinstance(t, int) else _SH_TYPE.get(t, -1)
        self.flags = int(h["sh_flags"])
        self.offset = int(h["sh_offset"])
        self.size = int(h["sh_size"])
        self.link = int(h["sh_link"])
        self.info = int(h["sh_info"])
        self.align = int(h["sh_addralign"]) or 1
        self.entsize = int(h["sh_entsize"])


def read_elf(data: bytes | memoryview, name: str) -> ObjectFile:
    """Read an ELF64 x86-64 ET_REL object.  Raises MalformedObjectError."""
    return _ElfReader(data, name).read()


class _ElfReader:
    def __init__(self, data, name: str):
        self.data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self.name = name

    def fail(self, msg: str) -> MalformedObjectError:
        return MalformedObjectError(f"{self.name}: {msg}")

    # --- headers -------------------------------------------------------------

    def read(self) -> ObjectFile:
        d = self.data
        if len(d) < 64 or not is_elf(d):
            raise self.fail("not an ELF object (bad magic or truncated header)")
        if d[4] != 2:
            raise self.fail("wrong ELF class: only 64-bit (ELFCLASS64) objects are supported")
        if d[5] != 1:
            raise self.fail("wrong data encoding: only little-endian x86-64 objects are supported")
        e_type = int.from_bytes(d[16:18], "little")
        machine = int.from_bytes(d[18:20], "little")
        if machine != T.EM_X86_64:
            raise self.fail(f"wrong machine {machine}: only x86-64 (EM_X86_64) objects are supported")
        if e_type != T.ET_REL:
            raise self.fail(f"not a relocatable object (e_type {e_type}); rtdyld links .o files")
        check_section_table(d, self.fail)
        try:
            self.headers = self._read_section_headers()
        except (ELFError, ValueError, KeyError, IndexError, TypeError, AssertionError) as e:
            raise self.fail(f"bad section headers: {e}") from None
        except Exception as e:  # construct's StreamError and friends
            raise self.fail(f"bad section headers: {e}") from None
        for i, h in enumerate(self.headers):
            if h.type != T.SHT_NOBITS and i and h.type != 0:
                if h.offset + h.size > len(d):
                    raise self.fail(
                        f"section [{i}] {h.name!r} extends past the end of the file "
                        f"(offset {h.offset:#x} + size {h.size:#x} > {len(d):#x})"
                    )
            if h.align & (h.align - 1):
                raise self.fail(f"section [{i}] {h.name!r} has alignment {h.align}, not a power of two")
        self._read_symtab()
        self._select_sections()
        symbols = self._convert_symbols()
        relocs = self._read_relocations(symbols)
        return ObjectFile(
            name=self.name,
            format="elf",
            sections=self.sections,
            symbols=symbols,
            names=self.names,
            relocs=relocs,
            groups=self.groups,
            rtype_names=T.R_X86_64,
        )

    def _read_section_headers(self) -> list[_Header]:
        elf = ELFFile(io.BytesIO(bytes(self.data)))
        n = elf.num_sections()
        if n * 64 > len(self.data):
            raise ValueError(f"{n} section headers cannot fit in {len(self.data)} bytes")
        headers = []
        for i in range(n):
            sec = elf.get_section(i)
            headers.append(_Header(sec.name if i else "", sec.header))
        return headers

    def _bytes(self, h: _Header) -> memoryview:
        return memoryview(self.data)[h.offset : h.offset + h.size]

    def _table(self, h: _Header, dtype: np.dtype, what: str) -> np.ndarray:
        if h.size % dtype.itemsize:
            raise self.fail(f"{what} section {h.name!r} size {h.size} is not a multiple of {dtype.itemsize}")
        return np.frombuffer(self._bytes(h), dtype=dtype)

    # --- symbols -------------------------------------------------------------

    def _read_symtab(self) -> None:
        tabs = [i for i, h in enumerate(self.headers) if h.type == T.SHT_SYMTAB]
        if len(tabs) > 1:
            raise self.fail("more than one symbol table")
        self.symtab_index = tabs[0] if tabs else None
        if self.symtab_index is None:
            self.raw_syms = np.zeros(0, dtype=T.ELF64_SYM)
            self.names = []
            return
        h = self.headers[self.symtab_index]
        self.raw_syms = self._table(h, T.ELF64_SYM, "symbol table")
        if not 0 < h.link < len(self.headers) or self.headers[h.link].type != T.SHT_STRTAB:
            raise self.fail(f"symbol table's string table index {h.link} is not a string table")
        try:
            self.names = read_names(self._bytes(self.headers[h.link]), self.raw_syms["st_name"])
        except ValueError as e:
            raise self.fail(f"symbol table: {e}") from None
        self.xindex = None
        for i, sh in enumerate(self.headers):
            if sh.type == T.SHT_SYMTAB_SHNDX and sh.link == self.symtab_index:
                self.xindex = self._table(sh, np.dtype("<u4"), "extended section index")
                if len(self.xindex) < len(self.raw_syms):
                    raise self.fail("extended section index table is shorter than the symbol table")

    def _select_sections(self) -> None:
        """Pick the sections to load and read COMDAT groups."""
        self.sections: list[Section] = []
        self.groups: list[Group] = []
        n = len(self.headers)
        self.model_index = np.full(n, SEC_DISCARDED, dtype=np.int32)
        for i, h in enumerate(self.headers):
            if not (h.flags & T.SHF_ALLOC) or h.type not in T.LOADABLE_TYPES:
                continue
            if h.type == T.SHT_NOBITS and h.size > MAX_ZERO_FILL:
                raise self.fail(f"section [{i}] {h.name!r} claims {h.size} bytes of zero-fill")
            flags = SectionFlags.NONE
            if h.flags & T.SHF_WRITE:
                flags |= SectionFlags.WRITE
            if h.flags & T.SHF_EXECINSTR:
                flags |= SectionFlags.EXEC
            if h.flags & T.SHF_TLS:
                flags |= SectionFlags.TLS
            if h.flags & T.SHF_MERGE:
                flags |= SectionFlags.MERGE
            if h.flags & T.SHF_STRINGS:
                flags |= SectionFlags.STRINGS
            if h.type == T.SHT_NOBITS:
                flags |= SectionFlags.ZERO_FILL
            role, priority = _role(h)
            self.model_index[i] = len(self.sections)
            self.sections.append(
                Section(
                    name=h.name,
                    data=b"" if h.type == T.SHT_NOBITS else self._bytes(h),
                    size=h.size,
                    align=h.align,
                    flags=flags,
                    role=role,
                    priority=priority,
                    source_index=i,
                )
            )
        for i, h in enumerate(self.headers):
            if h.type != T.SHT_GROUP:
                continue
            words = self._table(h, np.dtype("<u4"), "group")
            if len(words) == 0 or not (words[0] & T.GRP_COMDAT):
                continue
            if h.link != self.symtab_index or h.info >= len(self.raw_syms):
                raise self.fail(f"group section [{i}] {h.name!r} has a bad signature symbol {h.info}")
            members = words[1:]
            if len(members) and int(members.max()) >= n:
                raise self.fail(f"group section [{i}] {h.name!r} names a section past the last one")
            loaded = [int(self.model_index[m]) for m in members if self.model_index[m] >= 0]
            gi = len(self.groups)
            for m in loaded:
                self.sections[m].group = gi
            self.groups.append(Group(signature=self.names[h.info] or h.name, sections=loaded))

    def _convert_symbols(self) -> np.ndarray:
        raw = self.raw_syms
        out = np.zeros(len(raw), dtype=SYM_DTYPE)
        if not len(raw):
            return out
        shndx = raw["st_shndx"].astype(np.int64)
        if self.xindex is not None:
            x = shndx == T.SHN_XINDEX
            shndx[x] = self.xindex[: len(raw)][x]
        elif np.any(shndx == T.SHN_XINDEX):
            raise self.fail("a symbol uses SHN_XINDEX but there is no extended section index table")
        special = (shndx >= T.SHN_LORESERVE) & (shndx <= 0xFFFF) & (raw["st_shndx"] != T.SHN_XINDEX)
        regular = ~special & (shndx != T.SHN_UNDEF)
        bad = regular & (shndx >= len(self.headers))
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise self.fail(f"symbol {i} ({self.names[i]!r}) has bad section index {int(shndx[i])}")
        sec = np.full(len(raw), SEC_UNDEF, dtype=np.int32)
        sec[regular] = self.model_index[shndx[regular]]
        sec[special & (shndx == T.SHN_ABS)] = SEC_ABS
        sec[special & (shndx == T.SHN_COMMON)] = SEC_COMMON
        odd = special & (shndx != T.SHN_ABS) & (shndx != T.SHN_COMMON)
        if np.any(odd):
            i = int(np.flatnonzero(odd)[0])
            raise self.fail(f"symbol {i} ({self.names[i]!r}) has unsupported section index {int(shndx[i]):#x}")
        bind = T.BIND_MAP[raw["st_info"] >> 4]
        if np.any(bind == 255):
            i = int(np.flatnonzero(bind == 255)[0])
            raise self.fail(f"symbol {i} ({self.names[i]!r}) has unknown binding {int(raw['st_info'][i] >> 4)}")
        out["value"] = raw["st_value"]
        out["size"] = raw["st_size"]
        out["section"] = sec
        out["bind"] = bind
        out["type"] = T.TYPE_MAP[raw["st_info"] & 0xF]
        out["vis"] = raw["st_other"] & 3
        # Defined symbols must lie within their section (value == size marks an end label).
        defined = sec >= 0
        if np.any(defined):
            sizes = np.array([s.size for s in self.sections] or [0], dtype=np.uint64)
            over = defined.copy()
            over[defined] = out["value"][defined] > sizes[sec[defined]]
            if np.any(over):
                i = int(np.flatnonzero(over)[0])
                raise self.fail(
                    f"symbol {self.names[i]!r} at {int(out['value'][i]):#x} lies past the end of "
                    f"section {self.sections[sec[i]].name!r}"
                )
        return out

    # --- relocations ------------------------------------------------------------

    def _read_relocations(self, symbols: np.ndarray) -> np.ndarray:
        parts = []
        for i, h in enumerate(self.headers):
            if h.type not in (T.SHT_RELA, T.SHT_REL):
                continue
            if h.info >= len(self.headers):
                raise self.fail(f"relocation section [{i}] {h.name!r} applies to missing section {h.info}")
            target = int(self.model_index[h.info])
            if target < 0:
                continue  # debug info and other sections we do not load
            if h.link != self.symtab_index:
                raise self.fail(f"relocation section [{i}] {h.name!r} does not use the symbol table")
            rela = h.type == T.SHT_RELA
            raw = self._table(h, T.ELF64_RELA if rela else T.ELF64_REL, "relocation")
            parts.append(self._convert_relocs(raw, rela, target, symbols))
        if not parts:
            r = np.zeros(0, dtype=RELOC_DTYPE)
            return r
        relocs = np.concatenate(parts)
        order = np.lexsort((relocs["offset"], relocs["section"]))
        return relocs[order]

    def _convert_relocs(self, raw, rela: bool, target: int, symbols) -> np.ndarray:
        sec = self.sections[target]
        info = raw["r_info"]
        rtype = (info & 0xFFFFFFFF).astype(np.int64)
        sym = (info >> 32).astype(np.int64)
        where = lambda k: f"{sec.name}+{int(raw['r_offset'][k]):#x}"
        bad = sym >= len(symbols)
        if np.any(bad):
            k = int(np.flatnonzero(bad)[0])
            raise self.fail(f"{where(k)}: relocation refers to symbol {int(sym[k])}, past the symbol table")
        kinds = np.full(len(raw), T.UNSUPPORTED, dtype=np.uint8)
        known = rtype < len(T.ELF_EDGE)
        kinds[known] = T.ELF_EDGE[rtype[known]]
        bad = kinds == T.UNSUPPORTED
        if np.any(bad):
            k = int(np.flatnonzero(bad)[0])
            t = int(rtype[k])
            tname = T.R_X86_64.get(t, f"relocation type {t}")
            why = (
                "thread-local storage relocations are not supported yet"
                if t in T.TLS_TYPES
                else "this relocation type is not supported"
            )
            symname = self.names[int(sym[k])] if int(sym[k]) < len(self.names) else "?"
            raise UnsupportedRelocationError(
                f"{self.name}: {where(k)}: {tname} against {symname or '<section>'!r}: {why}"
            )
        keep = kinds != Edge.NONE
        out = np.zeros(int(keep.sum()), dtype=RELOC_DTYPE)
        out["section"] = target
        out["offset"] = raw["r_offset"][keep]
        out["kind"] = kinds[keep]
        out["rtype"] = rtype[keep]
        out["sym"] = sym[keep]
        out["sym2"] = -1
        width = WIDTH[out["kind"]]
        end = out["offset"].astype(np.uint64) + width.astype(np.uint64)
        past = (end > np.uint64(sec.size)) | (out["offset"] > np.uint64(sec.size))
        if np.any(past):
            k = int(np.flatnonzero(past)[0])
            raise self.fail(
                f"{sec.name}+{int(out['offset'][k]):#x}: {T.R_X86_64[int(out['rtype'][k])]} "
                f"writes past the end of the section (size {sec.size:#x})"
            )
        if rela:
            out["addend"] = raw["r_addend"][keep]
        else:
            out["addend"] = _implicit_addends(sec, out)
        return out


def _implicit_addends(sec: Section, relocs: np.ndarray) -> np.ndarray:
    """SHT_REL addends live in the bytes being patched: gather them in bulk."""
    if sec.flags & SectionFlags.ZERO_FILL:
        return np.zeros(len(relocs), dtype=np.int64)
    buf = np.frombuffer(sec.data, dtype=np.uint8)
    width = WIDTH[relocs["kind"]]
    off = relocs["offset"].astype(np.int64)
    value = np.zeros(len(relocs), dtype=np.uint64)
    for k in range(8):
        m = width > k
        value[m] |= buf[off[m] + k].astype(np.uint64) << np.uint64(8 * k)
    signed = value.view(np.int64).copy()
    for w in (1, 2, 4):
        m = width == w
        sh = np.int64(64 - 8 * w)
        signed[m] = (signed[m] << sh) >> sh
    unsigned32 = relocs["kind"] == Edge.Pointer32
    signed[unsigned32] = value[unsigned32].astype(np.int64)
    return signed


def _role(h: _Header) -> tuple[SectionRole, int | None]:
    m = _PRIORITY.match(h.name)
    priority = int(m.group(2)) if m else None
    base = m.group(1) if m else h.name.lstrip(".")
    if h.type == T.SHT_PREINIT_ARRAY:
        return SectionRole.INIT_ARRAY, -1
    if h.type == T.SHT_INIT_ARRAY or base == "init_array":
        return SectionRole.INIT_ARRAY, priority
    if h.type == T.SHT_FINI_ARRAY or base == "fini_array":
        return SectionRole.FINI_ARRAY, priority
    # .ctors.N counts down: .ctors.65435 is priority 100.
    if base == "ctors":
        return SectionRole.CTORS, None if priority is None else 65535 - priority
    if base == "dtors":
        return SectionRole.DTORS, None if priority is None else 65535 - priority
    if h.type == T.SHT_X86_64_UNWIND or h.name == ".eh_frame":
        return SectionRole.EH_FRAME, None
    return SectionRole.NORMAL, None
