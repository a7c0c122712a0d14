"""Write a minimal x86-64 ELF shared object in memory, for the host's dynamic loader.

Some things only the process's own loader can do soundly — giving every
thread, existing or future, a copy of a TLS block is one — so rtdyld hands
it a tiny shared object built here.  The object has no code and no section
headers: one read-write PT_LOAD holding its dynamic tables, a data area the
loader relocates (that is how results come back: the loader writes module
ids and thread-pointer offsets into it), an optional PT_TLS image, and a
PT_GNU_STACK so the loader never makes the stack executable.

Everything is placed at virtual address == file offset, starting at 0.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PAGE = 4096

PT_LOAD, PT_DYNAMIC, PT_TLS, PT_GNU_STACK = 1, 2, 7, 0x6474E551
PF_R, PF_W = 4, 2
DT_NULL, DT_HASH, DT_STRTAB, DT_SYMTAB, DT_RELA, DT_RELASZ, DT_RELAENT = 0, 4, 5, 6, 7, 8, 9
DT_STRSZ, DT_SYMENT, DT_SONAME, DT_FLAGS = 10, 11, 14, 30
DF_STATIC_TLS = 0x10

EHDR_SIZE, PHDR_SIZE, SYM_SIZE, RELA_SIZE, DYN_SIZE = 64, 56, 24, 24, 16


@dataclass(frozen=True)
class Relocation:
    """A dynamic relocation at ``offset`` of the data area, against the null symbol."""

    offset: int
    type: int
    addend: int = 0


@dataclass(frozen=True)
class TlsImage:
    """A PT_TLS segment: ``init`` bytes, then zeros up to ``memsz``, aligned to ``align``."""

    init: bytes
    memsz: int
    align: int


@dataclass
class SharedObject:
    """The bytes of the object and where its data area landed (a virtual address)."""

    image: bytes
    data_vaddr: int


def _align(n: int, a: int) -> int:
    return -(-n // max(1, a)) * max(1, a)


def build_shared_object(
    data: bytes = b"",
    relocations: tuple[Relocation, ...] | list[Relocation] = (),
    tls: TlsImage | None = None,
    soname: str = "",
    flags: int = 0,
) -> SharedObject:
    """An ELF64 ET_DYN image the dynamic loader accepts.

    ``data`` is a read-write area the ``relocations`` patch (offsets are
    relative to it); ``flags`` goes to DT_FLAGS (e.g. DF_STATIC_TLS).
    """
    nph = 3 + (tls is not None)
    strtab = b"\0" + (soname.encode() + b"\0" if soname else b"")
    off = EHDR_SIZE + nph * PHDR_SIZE
    sym_off = _align(off, 8)
    hash_off = sym_off + SYM_SIZE  # one symbol: the null one
    str_off = hash_off + 4 * 4
    rela_off = _align(str_off + len(strtab), 8)
    data_off = _align(rela_off + RELA_SIZE * len(relocations), 16)
    tls_off = None
    end = data_off + len(data)
    if tls is not None:
        tls_off = _align(end, tls.align)
        end = tls_off + len(tls.init)
    dyn_off = _align(end, 8)
    dyn = [
        (DT_HASH, hash_off),
        (DT_STRTAB, str_off),
        (DT_SYMTAB, sym_off),
        (DT_STRSZ, len(strtab)),
        (DT_SYMENT, SYM_SIZE),
    ]
    if soname:
        dyn.append((DT_SONAME, 1))
    if relocations:
        dyn += [(DT_RELA, rela_off), (DT_RELASZ, RELA_SIZE * len(relocations)), (DT_RELAENT, RELA_SIZE)]
    if flags:
        dyn.append((DT_FLAGS, flags))
    dyn.append((DT_NULL, 0))
    total = dyn_off + DYN_SIZE * len(dyn)

    out = bytearray(total)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # ELFCLASS64, little endian, SysV
    out[:EHDR_SIZE] = ident + struct.pack(
        "<HHIQQQIHHHHHH", 3, 62, 1, 0, EHDR_SIZE, 0, 0, EHDR_SIZE, PHDR_SIZE, nph, 64, 0, 0
    )
    phdrs = [
        (PT_LOAD, PF_R | PF_W, 0, 0, total, total, PAGE),
        (PT_DYNAMIC, PF_R | PF_W, dyn_off, dyn_off, DYN_SIZE * len(dyn), DYN_SIZE * len(dyn), 8),
    ]
    if tls is not None:
        phdrs.append((PT_TLS, PF_R, tls_off, tls_off, len(tls.init), tls.memsz, tls.align))
    phdrs.append((PT_GNU_STACK, PF_R | PF_W, 0, 0, 0, 0, 16))
    for i, (ptype, pflags, poff, vaddr, filesz, memsz, align) in enumerate(phdrs):
        at = EHDR_SIZE + i * PHDR_SIZE
        out[at : at + PHDR_SIZE] = struct.pack("<IIQQQQQQ", ptype, pflags, poff, vaddr, vaddr, filesz, memsz, align)
    # SysV hash: one bucket, one chain entry per symbol (just the null one).
    out[hash_off : hash_off + 16] = struct.pack("<IIII", 1, 1, 0, 0)
    out[str_off : str_off + len(strtab)] = strtab
    for i, r in enumerate(relocations):
        at = rela_off + i * RELA_SIZE
        out[at : at + RELA_SIZE] = struct.pack("<QQq", data_off + r.offset, r.type, r.addend)
    out[data_off : data_off + len(data)] = data
    if tls is not None:
        out[tls_off : tls_off + len(tls.init)] = tls.init
    for i, (tag, val) in enumerate(dyn):
        out[dyn_off + i * DYN_SIZE : dyn_off + (i + 1) * DYN_SIZE] = struct.pack("<qQ", tag, val)
    return SharedObject(bytes(out), data_off)
