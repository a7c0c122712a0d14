"""Decode x86-64 Mach-O relocation_info tables into edges, in bulk.

Mach-O keeps the addend in the bytes being fixed up and, for non-extern
entries, names a section instead of a symbol.  The conventions below turn
both into the model's explicit ``(sym, sym2, addend)`` so that the shared
formulas (S + A - P, S - S2 + A) hold with P the address of the field itself.
``content`` is the field's current value (sign-extended), ``P0`` the field's
address in the object as written (section addr + r_address), ``T0`` the
original address of a non-extern target's section:

* extern, absolute (UNSIGNED):   A = content
* extern, pc-relative:           A = content - 4.  The assembler writes the
  addend relative to the end of the 4-byte field and has already folded in
  any immediate bytes that follow it (for SIGNED_1/2/4 the field holds -1,
  -2, -4 plus the symbol offset), so no further SIGNED_N correction applies.
* non-extern, absolute:          sym = the target section's symbol,
  A = content - T0 (content is the target's original address).
* non-extern, pc-relative:       sym = the target section's symbol,
  A = content + P0 - T0 (content is the final displacement in the original
  layout, immediate bytes included, whatever SIGNED_N says).
* SUBTRACTOR then UNSIGNED at the same place: one Difference edge with
  S = UNSIGNED's target, S2 = SUBTRACTOR's, A = content, minus T0 of the
  UNSIGNED side and plus T0 of the SUBTRACTOR side when they are non-extern.
  Which of the two lies in the fixed-up block does not matter for S - S2 + A.

These agree with LLVM JITLink's MachO_x86_64 reader and with ld64.
"""

from __future__ import annotations

import numpy as np

from rtdyld.errors import MalformedObjectError, UnsupportedRelocationError
from rtdyld.objfile import macho_format as mf
from rtdyld.objfile.model import empty_relocs
from rtdyld.x86_64.edges import Edge

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    from rtdyld.objfile.macho import RawSection

# Edge for each (r_type, r_pcrel, r_length); NONE marks a combination that
# x86-64 does not define.
_KIND = np.zeros((16, 2, 4), dtype=np.uint8)
_KIND[mf.X86_64_RELOC_UNSIGNED, 0, 3] = Edge.Pointer64
_KIND[mf.X86_64_RELOC_UNSIGNED, 0, 2] = Edge.Pointer32
for _t in (mf.X86_64_RELOC_SIGNED, mf.X86_64_RELOC_SIGNED_1, mf.X86_64_RELOC_SIGNED_2, mf.X86_64_RELOC_SIGNED_4):
    _KIND[_t, 1, 2] = Edge.Delta32
_KIND[mf.X86_64_RELOC_BRANCH, 1, 2] = Edge.Branch32
_KIND[mf.X86_64_RELOC_GOT_LOAD, 1, 2] = Edge.GOTDelta32Relaxable
_KIND[mf.X86_64_RELOC_GOT, 1, 2] = Edge.GOTDelta32
_KIND[mf.X86_64_RELOC_SUBTRACTOR, 0, 3] = Edge.Difference64
_KIND[mf.X86_64_RELOC_SUBTRACTOR, 0, 2] = Edge.Difference32
_KIND[mf.X86_64_RELOC_TLV, 1, 2] = Edge.NONE  # rejected by name below

# A GOT slot holds a symbol's address, so it cannot stand for section + offset.
_NEEDS_EXTERN = (mf.X86_64_RELOC_GOT_LOAD, mf.X86_64_RELOC_GOT, mf.X86_64_RELOC_TLV)


def read_relocations(
    obj: str,
    mv: memoryview,
    raw_sections: list[RawSection],
    names: list[str],
    nsyms: int,
) -> np.ndarray:
    """The relocations of every loaded section as a RELOC_DTYPE table.

    ``raw_sections`` must already be validated (tables and data inside the
    file); ``names`` covers the nlist entries (the first ``nsyms`` symbols).
    The result is sorted by (section, offset).
    """
    tables = [s for s in raw_sections if s.index >= 0 and s.nreloc]
    if not tables:
        return empty_relocs()
    for s in tables:
        if s.zero_fill:
            raise MalformedObjectError(f"{obj}: zero-fill section {s.number} ({s.name}) has relocations")
    return _Decoder(obj, mv, raw_sections, names, nsyms, tables).decode()


class _Decoder:
    def __init__(self, obj, mv, raw_sections, names, nsyms, tables):
        self.obj = obj
        self.raw = raw_sections
        self.names = names
        self.nsyms = nsyms
        entries = [np.frombuffer(mv, mf.RELOCATION_INFO, count=s.nreloc, offset=s.reloff) for s in tables]
        rel = np.concatenate(entries)
        counts = [s.nreloc for s in tables]
        # Per entry: the raw section it patches (0-based into raw_sections).
        self.rsec = np.repeat(np.array([s.number - 1 for s in tables], np.int64), counts)
        self.address = rel["r_address"].astype(np.int64)
        info = rel["r_info"].astype(np.int64)
        self.symnum = info & 0xFFFFFF
        self.pcrel = (info >> 24) & 1
        self.length = (info >> 25) & 3
        self.extern = ((info >> 27) & 1).astype(bool)
        self.rtype = info >> 28
        self.mv = mv

    # --- messages ----------------------------------------------------------------------

    def where(self, i: int) -> str:
        s = self.raw[int(self.rsec[i])]
        text = f"{self.obj}: section {s.name} offset {int(self.address[i]):#x}"
        rtype = int(self.rtype[i])
        return f"{text}: {mf.RELOC_NAMES.get(rtype, f'relocation type {rtype}')}"

    def target(self, i: int) -> str:
        n = int(self.symnum[i])
        if self.extern[i]:
            return f"symbol {self.names[n]!r}" if self.names[n] else f"symbol {n}"
        return f"section {self.raw[n - 1].name}"

    def malformed(self, mask: np.ndarray, message) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            raise MalformedObjectError(f"{self.where(i)}: {message(i)}")

    def unsupported(self, mask: np.ndarray, message) -> None:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            raise UnsupportedRelocationError(f"{self.where(i)}: {message(i)}")

    # --- decoding ----------------------------------------------------------------------

    def decode(self) -> np.ndarray:
        address, rtype, symnum, extern = self.address, self.rtype, self.symnum, self.extern
        nraw = len(self.raw)

        self.malformed(address < 0, lambda i: "scattered relocations do not exist on x86-64")
        self.unsupported(rtype > mf.X86_64_RELOC_TLV, lambda i: "unknown relocation type")
        kind = _KIND[rtype, self.pcrel, self.length]
        valid = (kind != Edge.NONE) | (rtype == mf.X86_64_RELOC_TLV)
        self.unsupported(
            ~valid,
            lambda i: f"r_pcrel={int(self.pcrel[i])} r_length={int(self.length[i])} is not a valid combination",
        )
        width = np.left_shift(1, self.length)
        size = np.array([s.size for s in self.raw], np.int64)[self.rsec]
        self.malformed(
            address + width > size,
            lambda i: f"{int(width[i])}-byte field runs past the end of the section ({int(size[i]):#x} bytes)",
        )
        self.malformed(
            extern & (symnum >= self.nsyms),
            lambda i: f"symbol number {int(symnum[i])} is out of range ({self.nsyms} symbols)",
        )
        self.malformed(
            ~extern & ((symnum == 0) | (symnum > nraw)),
            lambda i: f"section number {int(symnum[i])} is out of range (1..{nraw})",
        )
        tsec = np.where(extern, 0, symnum - 1)
        raw_index = np.array([s.index for s in self.raw], np.int64)
        self.malformed(
            ~extern & (raw_index[tsec] < 0),
            lambda i: f"targets {self.target(i)}, which is not loaded",
        )
        self.unsupported(
            (rtype == mf.X86_64_RELOC_TLV) & extern,
            lambda i: f"thread-local variable access to {self.target(i)} is not supported",
        )
        self.unsupported(
            np.isin(rtype, _NEEDS_EXTERN) & ~extern,
            lambda i: f"a GOT or TLV reference must name a symbol, not {self.target(i)}",
        )

        pair, partner = self.pairs()
        content = self.contents(width)

        # Per entry: its target symbol and the original address that the
        # non-extern encoding folded into the content.
        raw_addr = np.array([s.addr for s in self.raw], np.int64)
        sym = np.where(extern, symnum, self.nsyms + raw_index[tsec])
        base = np.where(extern, 0, raw_addr[tsec])
        p0 = raw_addr[self.rsec] + address
        pcrel = self.pcrel.astype(bool)
        addend = np.where(
            pcrel,
            np.where(extern, content - 4, content + p0 - base),
            content - base,
        )

        keep = np.ones(len(rtype), bool)
        keep[partner] = False
        sym2 = np.full(len(rtype), -1, np.int64)
        rtype_out = rtype.copy()
        sym2[pair] = sym[pair]
        sym[pair] = sym[partner]
        addend[pair] = content[pair] - base[partner] + base[pair]
        rtype_out[pair] = mf.RTYPE_SUBTRACTOR_PAIR

        out = empty_relocs(int(keep.sum()))
        out["section"] = raw_index[self.rsec][keep]
        out["offset"] = address[keep]
        out["kind"] = kind[keep]
        out["rtype"] = rtype_out[keep]
        out["sym"] = sym[keep]
        out["sym2"] = sym2[keep]
        out["addend"] = addend[keep]
        return out[np.lexsort((out["offset"], out["section"]))]

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices of SUBTRACTOR entries and of the UNSIGNED entries they consume."""
        rtype = self.rtype
        pair = np.flatnonzero(rtype == mf.X86_64_RELOC_SUBTRACTOR)
        partner = pair + 1
        has_next = partner < len(rtype)
        nxt = np.where(has_next, partner, 0)
        ok = (
            has_next
            & (self.rsec[nxt] == self.rsec[pair])
            & (rtype[nxt] == mf.X86_64_RELOC_UNSIGNED)
            & (self.address[nxt] == self.address[pair])
            & (self.length[nxt] == self.length[pair])
        )
        bad = np.zeros(len(rtype), bool)
        bad[pair[~ok]] = True
        self.malformed(bad, lambda i: "not followed by an X86_64_RELOC_UNSIGNED for the same field")
        return pair, partner

    def contents(self, width: np.ndarray) -> np.ndarray:
        """The implicit addend stored in each field, sign-extended to int64."""
        offsets = np.array([s.offset for s in self.raw], np.int64)[self.rsec] + self.address
        out = np.empty(len(offsets), np.int64)
        for size, dtype in ((8, "<i8"), (4, "<i4")):
            mask = width == size
            if mask.any():
                # Element k of this overlapping view is the field starting at byte k.
                fields = np.ndarray((len(self.mv) - size + 1,), dtype, buffer=self.mv, strides=(1,))
                out[mask] = fields[offsets[mask]]
        return out
