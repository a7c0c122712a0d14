"""ELF x86-64 constants and the relocation-type table.

The psABI names are kept verbatim so traces and greps speak the user's
language.  ``ELF_EDGE`` maps a relocation type to the edge kind that applies
it; types with no entry are unsupported and rejected by name.
"""

from __future__ import annotations

import numpy as np

from ..x86_64.edges import Edge
from .model import SEC_ABS, SEC_COMMON

R_X86_64 = {
    0: "R_X86_64_NONE",
    1: "R_X86_64_64",
    2: "R_X86_64_PC32",
    3: "R_X86_64_GOT32",
    4: "R_X86_64_PLT32",
    5: "R_X86_64_COPY",
    6: "R_X86_64_GLOB_DAT",
    7: "R_X86_64_JUMP_SLOT",
    8: "R_X86_64_RELATIVE",
    9: "R_X86_64_GOTPCREL",
    10: "R_X86_64_32",
    11: "R_X86_64_32S",
    12: "R_X86_64_16",
    13: "R_X86_64_PC16",
    14: "R_X86_64_8",
    15: "R_X86_64_PC8",
    16: "R_X86_64_DTPMOD64",
    17: "R_X86_64_DTPOFF64",
    18: "R_X86_64_TPOFF64",
    19: "R_X86_64_TLSGD",
    20: "R_X86_64_TLSLD",
    21: "R_X86_64_DTPOFF32",
    22: "R_X86_64_GOTTPOFF",
    23: "R_X86_64_TPOFF32",
    24: "R_X86_64_PC64",
    25: "R_X86_64_GOTOFF64",
    26: "R_X86_64_GOTPC32",
    27: "R_X86_64_GOT64",
    28: "R_X86_64_GOTPCREL64",
    29: "R_X86_64_GOTPC64",
    30: "R_X86_64_GOTPLT64",
    31: "R_X86_64_PLTOFF64",
    32: "R_X86_64_SIZE32",
    33: "R_X86_64_SIZE64",
    34: "R_X86_64_GOTPC32_TLSDESC",
    35: "R_X86_64_TLSDESC_CALL",
    36: "R_X86_64_TLSDESC",
    37: "R_X86_64_IRELATIVE",
    38: "R_X86_64_RELATIVE64",
    41: "R_X86_64_GOTPCRELX",
    42: "R_X86_64_REX_GOTPCRELX",
}

TLS_TYPES = frozenset({16, 17, 18, 19, 20, 21, 22, 23, 34, 35, 36})

_SUPPORTED = {
    0: Edge.NONE,
    1: Edge.Pointer64,
    2: Edge.Delta32,
    4: Edge.Branch32,
    9: Edge.GOTDelta32,
    10: Edge.Pointer32,
    11: Edge.Pointer32Signed,
    12: Edge.Pointer16,
    13: Edge.Delta16,
    14: Edge.Pointer8,
    15: Edge.Delta8,
    17: Edge.DTPOffset64,
    18: Edge.TPOffset64,
    19: Edge.TLSGDDelta32,
    20: Edge.TLSLDDelta32,
    21: Edge.DTPOffset32,
    22: Edge.GOTTPOffDelta32,
    23: Edge.TPOffset32,
    24: Edge.Delta64,
    25: Edge.GOTBaseOffset64,
    26: Edge.GOTBaseDelta32,
    27: Edge.GOTOffset64,
    28: Edge.GOTDelta64,
    29: Edge.GOTBaseDelta64,
    31: Edge.PLTOffset64,
    32: Edge.Size32,
    33: Edge.Size64,
    41: Edge.GOTDelta32Relaxable,
    42: Edge.GOTDelta32Relaxable,
}

UNSUPPORTED = 255
# One entry past the last type we name: types beyond the table are clamped to it.
ELF_EDGE = np.full(65, UNSUPPORTED, dtype=np.uint8)
for _t, _k in _SUPPORTED.items():
    ELF_EDGE[_t] = _k

# Section header types and flags we act on.
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA = 1, 2, 3, 4
SHT_NOBITS, SHT_REL = 8, 9
SHT_INIT_ARRAY, SHT_FINI_ARRAY, SHT_PREINIT_ARRAY = 14, 15, 16
SHT_GROUP, SHT_SYMTAB_SHNDX = 17, 18
SHT_X86_64_UNWIND = 0x70000001
LOADABLE_TYPES = frozenset(
    {SHT_PROGBITS, SHT_NOBITS, SHT_INIT_ARRAY, SHT_FINI_ARRAY, SHT_PREINIT_ARRAY, SHT_X86_64_UNWIND}
)

SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
SHF_MERGE, SHF_STRINGS, SHF_TLS = 0x10, 0x20, 0x400
GRP_COMDAT = 1

SHN_UNDEF, SHN_LORESERVE, SHN_ABS, SHN_COMMON, SHN_XINDEX = 0, 0xFF00, 0xFFF1, 0xFFF2, 0xFFFF
# Section-number look-up of symbols: markers for numbers that name no section,
# the reserved range (SHN_LORESERVE..0xffff), and the size bound of non-section symbols.
BAD_INDEX, UNSUPPORTED_INDEX = -100, -101
RESERVED_SECTIONS = np.full(0x10000 - SHN_LORESERVE, UNSUPPORTED_INDEX, dtype=np.int32)
RESERVED_SECTIONS[SHN_ABS - SHN_LORESERVE] = SEC_ABS
RESERVED_SECTIONS[SHN_COMMON - SHN_LORESERVE] = SEC_COMMON
NO_SECTION = np.iinfo(np.uint64).max

EM_X86_64 = 62
ET_REL = 1

ELF64_SYM = np.dtype(
    [("st_name", "<u4"), ("st_info", "u1"), ("st_other", "u1"), ("st_shndx", "<u2"),
     ("st_value", "<u8"), ("st_size", "<u8")]
)
ELF64_RELA = np.dtype([("r_offset", "<u8"), ("r_info", "<u8"), ("r_addend", "<i8")])
ELF64_REL = np.dtype([("r_offset", "<u8"), ("r_info", "<u8")])

# st_info binding -> Bind (GNU_UNIQUE behaves as GLOBAL in a single process).
BIND_MAP = np.full(16, 255, dtype=np.uint8)
BIND_MAP[[0, 1, 2, 10]] = [0, 1, 2, 1]
# st_info type -> SymType (STT_COMMON is an object).
TYPE_MAP = np.full(16, 0, dtype=np.uint8)
TYPE_MAP[[0, 1, 2, 3, 4, 5, 6, 10]] = [0, 1, 2, 3, 4, 1, 5, 6]
