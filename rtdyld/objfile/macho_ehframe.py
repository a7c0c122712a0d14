"""Make the implicit pointers of a Mach-O __eh_frame explicit edges.

The assembler resolves an FDE's pc_begin and LSDA pointers when it writes the
object (they are differences between two sections of the same file) and
emits no relocation for them; ld64 and JITLink re-derive them by parsing the
section.  rtdyld places sections independently, so the reader turns each such
field into an edge to its target's section symbol, as an ELF assembler's
R_X86_64_PC32 would, with the same non-extern conventions as
:mod:`rtdyld.objfile.macho_relocs`.  Fields that already carry a relocation
(the personality's X86_64_RELOC_GOT) are left to it.

Walking the records is sequential (each starts where the last one ends), so
it is a loop over records that only collects field offsets; reading the
fields and mapping them to sections is vectorised.
"""

from __future__ import annotations

import struct

import numpy as np

from rtdyld.errors import MalformedObjectError, UnsupportedRelocationError
from rtdyld.objfile import macho_format as mf
from rtdyld.objfile.model import empty_relocs
from rtdyld.x86_64.edges import Edge

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    from rtdyld.objfile.macho import RawSection

DW_EH_PE_omit = 0xFF
DW_EH_PE_pcrel = 0x10
_APPLICATION = 0x70
_INDIRECT = 0x80
# Size of a pointer for each low-nibble format; absent = variable or unknown.
_SIZES = {0x0: 8, 0x2: 2, 0x3: 4, 0x4: 8, 0xA: 2, 0xB: 4, 0xC: 8}
_SIGNED = {0x0, 0x9, 0xA, 0xB, 0xC}


class _Bad(Exception):
    """A malformed record; becomes MalformedObjectError naming the record's offset."""


class _Unsupported(Exception):
    """A pointer encoding rtdyld does not rewrite; becomes UnsupportedRelocationError."""


class _Cursor:
    def __init__(self, data: bytes, pos: int, end: int):
        self.data, self.pos, self.end = data, pos, end

    def take(self, n: int) -> int:
        start = self.pos
        self.pos += n
        if self.pos > self.end:
            raise _Bad("record ends inside a field")
        return start

    def u8(self) -> int:
        return self.data[self.take(1)]

    def u32(self) -> int:
        return struct.unpack_from("<I", self.data, self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack_from("<Q", self.data, self.take(8))[0]

    def uleb(self) -> int:
        value = shift = 0
        while True:
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    def cstring(self) -> bytes:
        end = self.data.find(b"\0", self.pos, self.end)
        if end < 0:
            raise _Bad("unterminated augmentation string")
        text = self.data[self.pos : end]
        self.pos = end + 1
        return text


class _CIE:
    def __init__(self, fde_enc: int, lsda_enc: int, has_aug_data: bool):
        self.fde_enc = fde_enc
        self.lsda_enc = lsda_enc
        self.has_aug_data = has_aug_data


def implicit_eh_frame_edges(
    obj: str,
    mv: memoryview,
    eh: RawSection,
    raw_sections: list[RawSection],
    nsyms: int,
    explicit: np.ndarray,
) -> np.ndarray:
    """Edges (RELOC_DTYPE) for the pointer fields of ``eh`` that have no relocation.

    ``explicit`` holds the offsets within ``eh`` that relocations already patch.
    """
    data = bytes(mv[eh.offset : eh.offset + eh.size])
    try:
        fields = _pointer_fields(data)
    except _Bad as e:
        raise MalformedObjectError(f"{obj}: section {eh.name} offset {e.args[1]:#x}: {e.args[0]}") from None
    except _Unsupported as e:
        raise UnsupportedRelocationError(f"{obj}: section {eh.name} offset {e.args[1]:#x}: {e.args[0]}") from None
    if not fields:
        return empty_relocs()
    offset, width, enc = (np.array(column, np.int64) for column in zip(*fields))
    keep = ~np.isin(offset, explicit)
    offset, width, enc = offset[keep], width[keep], enc[keep]

    buf = np.frombuffer(data + bytes(8), np.uint8)
    raw = np.ascontiguousarray(buf[offset[:, None] + np.arange(8)]).view("<i8").ravel()
    low = raw & 0xFFFFFFFF
    signed_low = low.astype(np.uint32).view(np.int32).astype(np.int64)
    pcrel = (enc & _APPLICATION) == DW_EH_PE_pcrel
    signed = pcrel | np.isin(enc & 0xF, list(_SIGNED))
    value = np.where(width == 8, raw, np.where(signed, signed_low, low))

    p0 = eh.addr + offset
    target = np.where(pcrel, p0 + value, value)
    # A null absolute pointer stands for "none".
    present = pcrel | (value != 0)
    offset, width, pcrel, value, p0, target = (a[present] for a in (offset, width, pcrel, value, p0, target))

    starts = np.array([s.addr for s in raw_sections], np.int64)
    ends = starts + np.array([s.size for s in raw_sections], np.int64)
    order = np.argsort(starts, kind="stable")
    pos = np.searchsorted(starts[order], target, side="right") - 1
    sec = order[np.maximum(pos, 0)]
    inside = (pos >= 0) & (target >= starts[sec]) & (target <= ends[sec])
    if not inside.all():
        i = int(np.flatnonzero(~inside)[0])
        raise MalformedObjectError(
            f"{obj}: section {eh.name} offset {int(offset[i]):#x}: pointer to {int(target[i]):#x} lies in no section"
        )
    index = np.array([s.index for s in raw_sections], np.int64)[sec]
    loaded = index >= 0  # pointers into sections we do not load describe nothing we run

    out = empty_relocs(int(loaded.sum()))
    out["section"] = eh.index
    out["offset"] = offset[loaded]
    out["kind"] = np.where(
        pcrel, np.where(width == 8, Edge.Delta64, Edge.Delta32), np.where(width == 8, Edge.Pointer64, Edge.Pointer32)
    )[loaded]
    out["rtype"] = mf.RTYPE_IMPLICIT_EH_FRAME
    out["sym"] = nsyms + index[loaded]
    addend = np.where(pcrel, value + p0, value) - starts[sec]
    out["addend"] = addend[loaded]
    return out


def _pointer_fields(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, width, encoding) of every FDE's pc_begin and LSDA pointer."""
    cies: dict[int, _CIE] = {}
    fields: list[tuple[int, int, int]] = []
    pos = 0
    while pos + 4 <= len(data):
        record = pos
        try:
            cur = _Cursor(data, pos, len(data))
            length = cur.u32()
            if length == 0:  # terminator
                break
            id_size = 4
            if length == 0xFFFFFFFF:
                length = cur.u64()
                id_size = 8
            end = cur.pos + length
            if end > len(data):
                raise _Bad("record runs past the end of the section")
            cur.end = end
            id_field = cur.pos
            cie_id = cur.u32() if id_size == 4 else cur.u64()
            if cie_id != 0:
                cie_at = id_field - cie_id
                cie = cies.get(cie_at)
                if cie is None:
                    cie = cies[cie_at] = _parse_cie(data, cie_at)
                fields.extend(_fde_fields(cur, cie))
            elif record not in cies:
                cies[record] = _parse_cie(data, record)
        except _Bad as e:
            raise _Bad(e.args[0], record) from None
        except _Unsupported as e:
            raise _Unsupported(e.args[0], record) from None
        pos = end
    return fields


def _parse_cie(data: bytes, at: int) -> _CIE:
    if not 0 <= at < len(data):
        raise _Bad("FDE points at no CIE")
    cur = _Cursor(data, at, len(data))
    length = cur.u32()
    id_size = 4
    if length == 0xFFFFFFFF:
        length = cur.u64()
        id_size = 8
    cur.end = min(cur.pos + length, len(data))
    if (cur.u32() if id_size == 4 else cur.u64()) != 0:
        raise _Bad("FDE points at another FDE, not a CIE")
    version = cur.u8()
    augmentation = cur.cstring()
    if b"eh" in augmentation:
        raise _Unsupported("CIE augmentation 'eh' (a GCC 2 era layout)")
    cur.uleb()  # code alignment
    cur.uleb()  # data alignment (sleb128; only skipped)
    if version == 1:
        cur.u8()
    else:
        cur.uleb()
    fde_enc, lsda_enc = 0x00, DW_EH_PE_omit
    has_aug_data = augmentation.startswith(b"z")
    if has_aug_data:
        cur.uleb()
        for ch in augmentation[1:]:
            if ch == ord("R"):
                fde_enc = cur.u8()
            elif ch == ord("L"):
                lsda_enc = cur.u8()
            elif ch == ord("P"):
                enc = cur.u8()
                cur.take(_size(enc, "personality"))
            elif ch not in b"SB":
                break  # the augmentation length covers the rest
    return _CIE(fde_enc, lsda_enc, has_aug_data)


def _size(enc: int, what: str) -> int:
    size = _SIZES.get(enc & 0x0F)
    if size is None or enc & _APPLICATION not in (0, DW_EH_PE_pcrel):
        raise _Unsupported(f"{what} pointer encoding {enc:#04x} is not supported")
    return size


def _fde_fields(cur: _Cursor, cie: _CIE) -> list[tuple[int, int, int]]:
    if cie.fde_enc & _INDIRECT:
        raise _Unsupported(f"pc_begin pointer encoding {cie.fde_enc:#04x} is not supported")
    width = _size(cie.fde_enc, "pc_begin")
    if width == 2:
        raise _Unsupported(f"pc_begin pointer encoding {cie.fde_enc:#04x} is not supported")
    fields = [(cur.take(width), width, cie.fde_enc)]
    cur.take(width)  # pc_range
    if cie.has_aug_data:
        cur.uleb()
        if cie.lsda_enc != DW_EH_PE_omit:
            lsda_width = _size(cie.lsda_enc, "LSDA")
            if lsda_width == 2 or cie.lsda_enc & _INDIRECT:
                raise _Unsupported(f"LSDA pointer encoding {cie.lsda_enc:#04x} is not supported")
            fields.append((cur.take(lsda_width), lsda_width, cie.lsda_enc))
    return fields
