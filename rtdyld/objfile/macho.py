"""Read 64-bit x86-64 Mach-O relocatable objects (MH_OBJECT) into the model.

Why a reader of our own: macholib parses headers and load commands but reads
nlist entries one Python object at a time and never reads section relocation
entries; LIEF reads everything, but hands out one bound C++ object per symbol
and per relocation (and is a large native dependency).  Both break the rule
that symbol and relocation tables are read in bulk, so the section headers,
the nlist_64 table and every relocation_info table are viewed as numpy
structured arrays over the input bytes, and all per-entry work is vectorised.

What is loaded, and how it maps onto the model:

* Sections are named "segment,section" ("__TEXT,__text").  Instructions
  (S_ATTR_PURE_INSTRUCTIONS / S_ATTR_SOME_INSTRUCTIONS) are EXEC; sections of
  the __DATA and __DATA_DIRTY segments, and every zero-fill section, are WRITE.
  __DATA_CONST is read-only: its pointers are fixed up in working memory
  before the batch is sealed, so it never needs to be writable once running.
  S_CSTRING_LITERALS are MERGE|STRINGS; S_MOD_INIT_FUNC_POINTERS and
  S_MOD_TERM_FUNC_POINTERS get the INIT_ARRAY and FINI_ARRAY roles, and
  __TEXT,__eh_frame the EH_FRAME role (read-only).  The FDE pointers that
  the assembler resolved without relocations become explicit edges
  (:mod:`rtdyld.objfile.macho_ehframe`), so the section survives being
  placed apart from the code it describes.
* Thread-local storage: only S_THREAD_LOCAL_REGULAR and
  S_THREAD_LOCAL_ZEROFILL (the initial image of the variables) carry the TLS
  flag.  __thread_vars (S_THREAD_LOCAL_VARIABLES) holds ordinary descriptors
  that the runtime patches, so it is plain data; symbols in any thread-local
  section are typed TLS.  Code that reaches a variable does so through
  X86_64_RELOC_TLV, which rtdyld does not apply yet.
* Deliberately not loaded: __LD,__compact_unwind (input for a final image's
  __unwind_info; unwinding uses __eh_frame) and debug information (the __DWARF
  segment and any S_ATTR_DEBUG section).  Symbols defined there get
  SEC_DISCARDED, and relocations inside them are not read.
* Mach-O symbols have no size: ``size`` is 0 except for commons.  STAB
  entries stay in the table as SEC_DISCARDED placeholders so that relocation
  symbol numbers index the table directly.  One section symbol per loaded
  section is appended after the nlist entries; non-extern (section-relative)
  relocations target it.

Relocations are decoded in :mod:`rtdyld.objfile.macho_relocs`; the record
layouts and constants live in :mod:`rtdyld.objfile.macho_format`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtdyld.errors import MalformedObjectError
from rtdyld.objfile import macho_format as mf
from rtdyld.objfile.macho_ehframe import implicit_eh_frame_edges
from rtdyld.objfile.macho_relocs import read_relocations
from rtdyld.objfile.model import (
    MAX_ZERO_FILL,
    SEC_ABS,
    SEC_COMMON,
    SEC_DISCARDED,
    SEC_UNDEF,
    SYM_DTYPE,
    Bind,
    ObjectFile,
    Section,
    SectionFlags,
    SectionRole,
    SymType,
    Visibility,
)

__all__ = ["is_macho", "read_macho"]

_MAX_ALIGN_LOG2 = 31
_DROPPED_SECTIONS = frozenset({"__LD,__compact_unwind"})


@dataclass
class RawSection:
    """One section header as the file has it, plus where it went in the model."""

    number: int  # 1-based Mach-O section number
    name: str  # "segment,section"
    segname: str
    addr: int
    size: int
    offset: int
    align: int  # log2, as stored
    reloff: int
    nreloc: int
    flags: int
    index: int = -1  # index into ObjectFile.sections, -1 when not loaded

    @property
    def type(self) -> int:
        return self.flags & mf.SECTION_TYPE

    @property
    def zero_fill(self) -> bool:
        return self.type in mf.ZEROFILL_TYPES

    @property
    def executable(self) -> bool:
        return bool(self.flags & (mf.S_ATTR_PURE_INSTRUCTIONS | mf.S_ATTR_SOME_INSTRUCTIONS))

    @property
    def loaded(self) -> bool:
        return not (self.segname == "__DWARF" or self.flags & mf.S_ATTR_DEBUG or self.name in _DROPPED_SECTIONS)


def is_macho(data: bytes | memoryview) -> bool:
    """True if ``data`` starts like a thin Mach-O file of any width or byte order.

    Deliberately broad: :func:`read_macho` then says precisely why a 32-bit or
    big-endian file cannot be loaded, instead of the input looking unknown.
    """
    head = bytes(memoryview(data)[:4])
    return len(head) == 4 and int.from_bytes(head, "little") in mf.MAGICS


def read_macho(data: bytes | memoryview, name: str) -> ObjectFile:
    """Read a 64-bit x86-64 MH_OBJECT into an :class:`ObjectFile`.

    Section data are views into ``data`` (no copy), so ``data`` must outlive
    the result.  Every offset, count and index is checked before use: a
    malformed or truncated input raises :class:`MalformedObjectError`, and a
    relocation rtdyld cannot apply raises :class:`UnsupportedRelocationError`,
    both naming ``name``.
    """
    return _Reader(data, name).read()


def _decode(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class _Reader:
    def __init__(self, data: bytes | memoryview, name: str):
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        self.mv = mv
        self.name = name
        self.raw_sections: list[RawSection] = []
        self.symtab: tuple[int, int, int, int] | None = None
        self.dysymtab: tuple[int, ...] | None = None
        self.flags = 0

    def fail(self, message: str) -> MalformedObjectError:
        return MalformedObjectError(f"{self.name}: {message}")

    # --- header and load commands ------------------------------------------------

    def read(self) -> ObjectFile:
        self.read_header()
        sections = self.read_sections()
        symbols, names = self.read_symbols(len(sections))
        nsyms = len(symbols) - len(sections)
        relocs = read_relocations(self.name, self.mv, self.raw_sections, names, nsyms)
        relocs = self.add_eh_frame_edges(relocs, nsyms)
        return ObjectFile(
            name=self.name,
            format="macho",
            sections=sections,
            symbols=symbols,
            names=names,
            relocs=relocs,
            symbol_prefix="_",
            rtype_names=mf.RELOC_NAMES,
            subsections_via_symbols=bool(self.flags & mf.MH_SUBSECTIONS_VIA_SYMBOLS),
        )

    def add_eh_frame_edges(self, relocs: np.ndarray, nsyms: int) -> np.ndarray:
        eh = next((s for s in self.raw_sections if s.index >= 0 and s.name == "__TEXT,__eh_frame"), None)
        if eh is None or eh.zero_fill:
            return relocs
        explicit = relocs["offset"][relocs["section"] == eh.index]
        implicit = implicit_eh_frame_edges(self.name, self.mv, eh, self.raw_sections, nsyms, explicit)
        if not len(implicit):
            return relocs
        merged = np.concatenate([relocs, implicit])
        return merged[np.lexsort((merged["offset"], merged["section"]))]

    def read_header(self) -> None:
        mv = self.mv
        if len(mv) < 4:
            raise self.fail(f"truncated Mach-O header ({len(mv)} bytes)")
        magic = int.from_bytes(mv[:4], "little")
        if magic in (mf.MH_MAGIC, mf.MH_CIGAM):
            raise self.fail("32-bit Mach-O; only 64-bit x86-64 objects are supported")
        if magic == mf.MH_CIGAM_64:
            raise self.fail("big-endian Mach-O; only 64-bit x86-64 objects are supported")
        if magic != mf.MH_MAGIC_64:
            raise self.fail(f"not a Mach-O file (magic {magic:#010x})")
        if len(mv) < mf.MACH_HEADER_64.size:
            raise self.fail(f"truncated Mach-O header ({len(mv)} bytes)")
        _, cputype, _, filetype, ncmds, sizeofcmds, flags, _ = mf.MACH_HEADER_64.unpack_from(mv, 0)
        if cputype != mf.CPU_TYPE_X86_64:
            raise self.fail(f"cputype {cputype & 0xFFFFFFFF:#x} is not x86-64")
        if filetype != mf.MH_OBJECT:
            raise self.fail(f"filetype {filetype} is not MH_OBJECT (a relocatable object)")
        self.flags = flags
        start = mf.MACH_HEADER_64.size
        end = start + sizeofcmds
        if end > len(mv):
            raise self.fail(f"load commands ({sizeofcmds} bytes) run past the end of the file ({len(mv)} bytes)")
        off = start
        for i in range(ncmds):
            if off + mf.LOAD_COMMAND.size > end:
                raise self.fail(f"load command {i} at offset {off:#x} is past the end of the load commands")
            cmd, cmdsize = mf.LOAD_COMMAND.unpack_from(mv, off)
            if cmdsize < mf.LOAD_COMMAND.size or off + cmdsize > end:
                raise self.fail(f"load command {i} (cmd {cmd:#x}) at offset {off:#x} has a bad cmdsize {cmdsize}")
            self.read_command(i, cmd, mv[off : off + cmdsize])
            off += cmdsize

    def read_command(self, i: int, cmd: int, body: memoryview) -> None:
        def need(size: int, what: str) -> None:
            if len(body) < size:
                raise self.fail(f"load command {i} ({what}) is truncated: cmdsize {len(body)} < {size}")

        if cmd == mf.LC_SEGMENT_64:
            need(mf.SEGMENT_COMMAND_64.size, "LC_SEGMENT_64")
            nsects = mf.SEGMENT_COMMAND_64.unpack_from(body, 0)[9]
            need(mf.SEGMENT_COMMAND_64.size + nsects * mf.SECTION_64.itemsize, "LC_SEGMENT_64")
            headers = np.frombuffer(body, mf.SECTION_64, count=nsects, offset=mf.SEGMENT_COMMAND_64.size)
            for h in headers:
                self.add_section(h)
        elif cmd == mf.LC_SYMTAB:
            need(mf.SYMTAB_COMMAND.size, "LC_SYMTAB")
            if self.symtab is not None:
                raise self.fail(f"load command {i} is a second LC_SYMTAB")
            self.symtab = mf.SYMTAB_COMMAND.unpack_from(body, 0)[2:]
        elif cmd == mf.LC_DYSYMTAB:
            need(mf.DYSYMTAB_COMMAND.size, "LC_DYSYMTAB")
            self.dysymtab = mf.DYSYMTAB_COMMAND.unpack_from(body, 0)[2:8]
        elif cmd == mf.LC_BUILD_VERSION:
            need(mf.BUILD_VERSION_COMMAND.size, "LC_BUILD_VERSION")
            ntools = mf.BUILD_VERSION_COMMAND.unpack_from(body, 0)[5]
            need(mf.BUILD_VERSION_COMMAND.size + ntools * mf.BUILD_TOOL_VERSION_SIZE, "LC_BUILD_VERSION")
        elif cmd in (
            mf.LC_VERSION_MIN_MACOSX,
            mf.LC_VERSION_MIN_IPHONEOS,
            mf.LC_VERSION_MIN_TVOS,
            mf.LC_VERSION_MIN_WATCHOS,
        ):
            need(mf.VERSION_MIN_COMMAND.size, "LC_VERSION_MIN")

    def add_section(self, h: np.void) -> None:
        number = len(self.raw_sections) + 1
        segname = _decode(h["segname"])
        name = f"{segname},{_decode(h['sectname'])}"
        s = RawSection(
            number=number,
            name=name,
            segname=segname,
            addr=int(h["addr"]),
            size=int(h["size"]),
            offset=int(h["offset"]),
            align=int(h["align"]),
            reloff=int(h["reloff"]),
            nreloc=int(h["nreloc"]),
            flags=int(h["flags"]),
        )
        where = f"section {number} ({name})"
        filesize = len(self.mv)
        if s.align > _MAX_ALIGN_LOG2:
            raise self.fail(f"{where} has alignment 2**{s.align}")
        if s.addr + s.size >= 1 << 63:
            raise self.fail(f"{where} address range [{s.addr:#x}, +{s.size:#x}) is out of range")
        if s.zero_fill and s.size > MAX_ZERO_FILL:
            raise self.fail(f"{where} claims {s.size:#x} bytes of zero-fill (more than {MAX_ZERO_FILL:#x})")
        if not s.zero_fill and s.offset + s.size > filesize:
            raise self.fail(
                f"{where} data (offset {s.offset:#x}, size {s.size:#x}) runs past the end of the file"
                f" ({filesize} bytes)"
            )
        if s.nreloc and s.reloff + s.nreloc * mf.RELOCATION_INFO.itemsize > filesize:
            raise self.fail(
                f"{where} relocation table (offset {s.reloff:#x}, {s.nreloc} entries) runs past the end"
                f" of the file ({filesize} bytes)"
            )
        self.raw_sections.append(s)

    # --- sections ------------------------------------------------------------------

    def read_sections(self) -> list[Section]:
        sections: list[Section] = []
        for s in self.raw_sections:
            if not s.loaded:
                continue
            if s.type in mf.INDIRECT_TYPES and s.size:
                raise self.fail(
                    f"section {s.number} ({s.name}) is filled from the indirect symbol table,"
                    " which x86-64 objects do not use and rtdyld does not read"
                )
            s.index = len(sections)
            sections.append(self.make_section(s))
        return sections

    def make_section(self, s: RawSection) -> Section:
        flags = SectionFlags.NONE
        if s.executable:
            flags |= SectionFlags.EXEC
        if s.segname in ("__DATA", "__DATA_DIRTY") or s.zero_fill:
            flags |= SectionFlags.WRITE
        if s.zero_fill:
            flags |= SectionFlags.ZERO_FILL
        if s.type in (mf.S_THREAD_LOCAL_REGULAR, mf.S_THREAD_LOCAL_ZEROFILL):
            flags |= SectionFlags.TLS
        if s.type == mf.S_CSTRING_LITERALS:
            flags |= SectionFlags.MERGE | SectionFlags.STRINGS
        role = SectionRole.NORMAL
        if s.type == mf.S_MOD_INIT_FUNC_POINTERS:
            role = SectionRole.INIT_ARRAY
        elif s.type == mf.S_MOD_TERM_FUNC_POINTERS:
            role = SectionRole.FINI_ARRAY
        elif s.name == "__TEXT,__eh_frame":
            role = SectionRole.EH_FRAME
        data = self.mv[0:0] if s.zero_fill else self.mv[s.offset : s.offset + s.size]
        return Section(
            name=s.name,
            data=data,
            size=s.size,
            align=1 << s.align,
            flags=flags,
            role=role,
            source_index=s.number,
        )

    # --- symbols -------------------------------------------------------------------

    def read_symbols(self, nsections: int) -> tuple[np.ndarray, list[str]]:
        nl, strtab = self.symbol_tables()
        nsyms = len(nl)
        names = self.symbol_names(nl["n_strx"], strtab)

        n_type = nl["n_type"]
        n_sect = nl["n_sect"].astype(np.int64)
        n_desc = nl["n_desc"]
        n_value = nl["n_value"]
        stab = (n_type & mf.N_STAB) != 0
        ext = (n_type & mf.N_EXT) != 0
        kind = n_type & mf.N_TYPE
        in_sect = ~stab & (kind == mf.N_SECT)
        absolute = ~stab & (kind == mf.N_ABS)
        undef = ~stab & (kind == mf.N_UNDF)
        common = undef & ext & (n_value != 0)
        undef &= ~common

        bad = ~stab & ~(in_sect | absolute | undef | common)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            what = {mf.N_INDR: "N_INDR", mf.N_PBUD: "N_PBUD"}.get(int(kind[i]), f"{int(kind[i]):#x}")
            raise self.fail(f"symbol {i} ({names[i]!r}) has unsupported type {what}")

        # Per raw section (index = Mach-O section number; 0 = NO_SECT).
        raw = self.raw_sections
        sec_index = np.array([SEC_DISCARDED] + [s.index if s.loaded else SEC_DISCARDED for s in raw], np.int64)
        sec_addr = np.array([0] + [s.addr for s in raw], np.uint64)
        sec_end = np.array([0] + [s.addr + s.size for s in raw], np.uint64)
        sec_exec = np.array([False] + [s.executable for s in raw])
        sec_tls = np.array([False] + [s.type in mf.THREAD_LOCAL_TYPES for s in raw])

        bad = in_sect & ((n_sect == 0) | (n_sect > len(raw)))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise self.fail(
                f"symbol {i} ({names[i]!r}) has section number {int(n_sect[i])}; the object has {len(raw)} sections"
            )
        sect = np.where(in_sect, n_sect, 0)
        bad = in_sect & ((n_value < sec_addr[sect]) | (n_value > sec_end[sect]))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            s = raw[int(sect[i]) - 1]
            raise self.fail(
                f"symbol {i} ({names[i]!r}) value {int(n_value[i]):#x} lies outside section"
                f" {s.number} ({s.name}) [{s.addr:#x}, {s.addr + s.size:#x}]"
            )

        symbols = np.zeros(nsyms + nsections, dtype=SYM_DTYPE)
        sym = symbols[:nsyms]
        sym["section"] = np.select(
            [in_sect, absolute, common, undef],
            [sec_index[sect], SEC_ABS, SEC_COMMON, SEC_UNDEF],
            SEC_DISCARDED,
        )
        comm_align = np.left_shift(np.uint64(1), ((n_desc >> 8) & 0xF).astype(np.uint64))
        sym["value"] = np.select(
            [in_sect, absolute, common],
            [n_value - sec_addr[sect], n_value, comm_align],
            0,
        )
        sym["size"] = np.where(common, n_value, 0)
        weak_ref = (n_desc & mf.N_WEAK_REF) != 0
        weak_def = (n_desc & mf.N_WEAK_DEF) != 0
        defined = in_sect | absolute | common
        sym["bind"] = np.select(
            [stab | ~ext, (undef & weak_ref) | (defined & weak_def)],
            [Bind.LOCAL, Bind.WEAK],
            Bind.GLOBAL,
        )
        sym["vis"] = np.where(~stab & ((n_type & mf.N_PEXT) != 0), Visibility.HIDDEN, Visibility.DEFAULT)
        sym["type"] = np.select(
            [in_sect & sec_exec[sect], in_sect & sec_tls[sect], defined],
            [SymType.FUNC, SymType.TLS, SymType.OBJECT],
            SymType.NOTYPE,
        )

        section_syms = symbols[nsyms:]
        section_syms["section"] = np.arange(nsections)
        section_syms["type"] = SymType.SECTION
        section_syms["bind"] = Bind.LOCAL
        return symbols, names + [""] * nsections

    def symbol_tables(self) -> tuple[np.ndarray, bytes]:
        if self.symtab is None:
            return np.zeros(0, mf.NLIST_64), b""
        symoff, nsyms, stroff, strsize = self.symtab
        filesize = len(self.mv)
        if symoff + nsyms * mf.NLIST_64.itemsize > filesize:
            raise self.fail(
                f"symbol table (offset {symoff:#x}, {nsyms} entries) runs past the end of the file ({filesize} bytes)"
            )
        if stroff + strsize > filesize:
            raise self.fail(
                f"string table (offset {stroff:#x}, {strsize} bytes) runs past the end of the file ({filesize} bytes)"
            )
        if self.dysymtab is not None:
            for label, (first, count) in zip(
                ("local", "external", "undefined"), zip(self.dysymtab[0::2], self.dysymtab[1::2])
            ):
                if first + count > nsyms:
                    raise self.fail(
                        f"LC_DYSYMTAB {label} symbols [{first}, {first + count}) exceed the"
                        f" {nsyms} symbols of LC_SYMTAB"
                    )
        nl = np.frombuffer(self.mv, mf.NLIST_64, count=nsyms, offset=symoff) if nsyms else np.zeros(0, mf.NLIST_64)
        return nl, bytes(self.mv[stroff : stroff + strsize])

    def symbol_names(self, strx: np.ndarray, strtab: bytes) -> list[str]:
        strx = strx.astype(np.int64)
        bad = strx >= max(len(strtab), 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise self.fail(f"symbol {i} has string index {int(strx[i])} past the string table ({len(strtab)} bytes)")
        nul = np.flatnonzero(np.frombuffer(strtab, np.uint8) == 0)
        after = np.searchsorted(nul, strx)
        bad = (after == len(nul)) & (strx != 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise self.fail(f"symbol {i} name at string index {int(strx[i])} is not NUL-terminated")
        # n_strx == 0 is the empty name, whatever byte 0 of the table holds.
        ends = np.where(strx == 0, 0, np.append(nul, 0)[after])
        starts, stops = strx.tolist(), ends.tolist()
        if strtab.isascii():
            text = strtab.decode("ascii")
            return [text[a:b] for a, b in zip(starts, stops)]
        return [strtab[a:b].decode("utf-8", "surrogateescape") for a, b in zip(starts, stops)]
