"""A small in-memory ELF object describing a linked batch, for GDB's JIT interface.

GDB reads each registered image with BFD as if it were an object file and
takes every allocated section's ``sh_addr`` as the absolute address it was
loaded at; symbol values are offsets in their section, as in any ``ET_REL``
object.  The image holds:

- ``.text``: a copy of the batch's code segment at its address, so GDB can
  disassemble and look up symbols;
- ``.eh_frame``: a copy of the batch's relocated unwind tables at their
  address (their PC-relative pointers then decode to the real code), so GDB
  unwinds through the linked frames the way the C++ runtime does;
- ``.symtab``/``.strtab``: one STT_FUNC symbol per linked function, with
  its size, locals first as ELF requires.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")

ET_REL = 1
EM_X86_64 = 62
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB = 1, 2, 3
SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4
STB_LOCAL, STB_GLOBAL = 0, 1
STT_FUNC = 2


@dataclass(frozen=True)
class ImageSection:
    name: str
    address: int
    data: bytes
    executable: bool


class _Strings:
    def __init__(self):
        self.data = bytearray(b"\0")
        self.index: dict[str, int] = {}

    def add(self, s: str) -> int:
        if s not in self.index:
            self.index[s] = len(self.data)
            self.data += s.encode(errors="replace") + b"\0"
        return self.index[s]


def build_image(sections: list[ImageSection], symbols) -> bytes:
    """The ELF bytes.  ``symbols`` are CodeSymbols; each is attached to the
    section containing its address (symbols outside every section are left out)."""
    shstr = _Strings()
    strtab = _Strings()
    body = bytearray()
    headers = [SHDR.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    offset = EHDR.size

    def add_data(data: bytes, align: int) -> int:
        nonlocal body
        pad = -(offset + len(body)) % align
        body += b"\0" * pad
        at = offset + len(body)
        body += data
        return at

    for s in sections:
        at = add_data(s.data, 16)
        flags = SHF_ALLOC | (SHF_EXECINSTR if s.executable else 0)
        headers.append(SHDR.pack(shstr.add(s.name), SHT_PROGBITS, flags, s.address, at, len(s.data), 0, 0, 1, 0))
    ordered = sorted(symbols, key=lambda sym: not sym.local)  # locals first
    entries = [SYM.pack(0, 0, 0, 0, 0, 0)]
    first_global = None
    for sym in ordered:
        for i, s in enumerate(sections, start=1):
            if s.address <= sym.address < s.address + max(len(s.data), 1):
                if not sym.local and first_global is None:
                    first_global = len(entries)
                bind = STB_LOCAL if sym.local else STB_GLOBAL
                entries.append(
                    SYM.pack(strtab.add(sym.name), (bind << 4) | STT_FUNC, 0, i, sym.address - s.address, sym.size)
                )
                break
    if first_global is None:
        first_global = len(entries)
    symtab_index = len(headers)
    at = add_data(b"".join(entries), 8)
    headers.append(
        SHDR.pack(shstr.add(".symtab"), SHT_SYMTAB, 0, 0, at, SYM.size * len(entries), symtab_index + 1,
                  first_global, 8, SYM.size)
    )
    at = add_data(bytes(strtab.data), 1)
    headers.append(SHDR.pack(shstr.add(".strtab"), SHT_STRTAB, 0, 0, at, len(strtab.data), 0, 0, 1, 0))
    name = shstr.add(".shstrtab")
    at = add_data(bytes(shstr.data), 1)
    headers.append(SHDR.pack(name, SHT_STRTAB, 0, 0, at, len(shstr.data), 0, 0, 1, 0))
    shoff = offset + len(body) + (-(offset + len(body)) % 8)
    body += b"\0" * (shoff - offset - len(body))
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    ehdr = EHDR.pack(ident, ET_REL, EM_X86_64, 1, 0, 0, shoff, 0, EHDR.size, 0, 0, SHDR.size, len(headers),
                     len(headers) - 1)
    return ehdr + bytes(body) + b"".join(headers)
