"""Mach-O constants and on-disk record layouts (64-bit, little-endian).

Values follow <mach-o/loader.h>, <mach-o/nlist.h> and
<mach-o/x86_64/reloc.h>.  The fixed-size tables (sections, nlist_64,
relocation_info) are numpy structured dtypes so readers can view a whole
table at once.
"""

from __future__ import annotations

import struct

import numpy as np

# --- header ------------------------------------------------------------------

MH_MAGIC = 0xFEEDFACE
MH_CIGAM = 0xCEFAEDFE
MH_MAGIC_64 = 0xFEEDFACF
MH_CIGAM_64 = 0xCFFAEDFE
MAGICS = frozenset({MH_MAGIC, MH_CIGAM, MH_MAGIC_64, MH_CIGAM_64})

CPU_TYPE_X86_64 = 0x01000007
MH_OBJECT = 0x1
MH_SUBSECTIONS_VIA_SYMBOLS = 0x2000

# magic, cputype, cpusubtype, filetype, ncmds, sizeofcmds, flags, reserved
MACH_HEADER_64 = struct.Struct("<IiiIIIII")

# --- load commands -----------------------------------------------------------

LOAD_COMMAND = struct.Struct("<II")  # cmd, cmdsize

LC_SYMTAB = 0x2
LC_DYSYMTAB = 0xB
LC_SEGMENT_64 = 0x19
LC_VERSION_MIN_MACOSX = 0x24
LC_VERSION_MIN_IPHONEOS = 0x25
LC_VERSION_MIN_TVOS = 0x2F
LC_VERSION_MIN_WATCHOS = 0x30
LC_BUILD_VERSION = 0x32

# cmd, cmdsize, segname, vmaddr, vmsize, fileoff, filesize, maxprot,
# initprot, nsects, flags
SEGMENT_COMMAND_64 = struct.Struct("<II16sQQQQiiII")
# cmd, cmdsize, symoff, nsyms, stroff, strsize
SYMTAB_COMMAND = struct.Struct("<IIIIII")
# cmd, cmdsize, then nine (index, count) pairs and offsets; only the symbol
# ranges (ilocalsym .. nundefsym) matter to a relocatable object.
DYSYMTAB_COMMAND = struct.Struct("<II18I")
VERSION_MIN_COMMAND = struct.Struct("<IIII")  # cmd, cmdsize, version, sdk
BUILD_VERSION_COMMAND = struct.Struct("<IIIIII")  # ..., platform, minos, sdk, ntools
BUILD_TOOL_VERSION_SIZE = 8

SECTION_64 = np.dtype(
    [
        ("sectname", "S16"),
        ("segname", "S16"),
        ("addr", "<u8"),
        ("size", "<u8"),
        ("offset", "<u4"),
        ("align", "<u4"),
        ("reloff", "<u4"),
        ("nreloc", "<u4"),
        ("flags", "<u4"),
        ("reserved1", "<u4"),
        ("reserved2", "<u4"),
        ("reserved3", "<u4"),
    ]
)
assert SECTION_64.itemsize == 80

# --- section types and attributes ----------------------------------------------

SECTION_TYPE = 0x000000FF
S_REGULAR = 0x0
S_ZEROFILL = 0x1
S_CSTRING_LITERALS = 0x2
S_NON_LAZY_SYMBOL_POINTERS = 0x6
S_LAZY_SYMBOL_POINTERS = 0x7
S_SYMBOL_STUBS = 0x8
S_MOD_INIT_FUNC_POINTERS = 0x9
S_MOD_TERM_FUNC_POINTERS = 0xA
S_GB_ZEROFILL = 0xC
S_LAZY_DYLIB_SYMBOL_POINTERS = 0x10
S_THREAD_LOCAL_REGULAR = 0x11
S_THREAD_LOCAL_ZEROFILL = 0x12
S_THREAD_LOCAL_VARIABLES = 0x13
S_THREAD_LOCAL_VARIABLE_POINTERS = 0x14
S_THREAD_LOCAL_INIT_FUNCTION_POINTERS = 0x15

ZEROFILL_TYPES = frozenset({S_ZEROFILL, S_GB_ZEROFILL, S_THREAD_LOCAL_ZEROFILL})
THREAD_LOCAL_TYPES = frozenset(range(S_THREAD_LOCAL_REGULAR, S_THREAD_LOCAL_INIT_FUNCTION_POINTERS + 1))
# Sections whose contents the static linker fills from the indirect symbol
# table rather than from relocations.
INDIRECT_TYPES = frozenset(
    {
        S_NON_LAZY_SYMBOL_POINTERS,
        S_LAZY_SYMBOL_POINTERS,
        S_SYMBOL_STUBS,
        S_LAZY_DYLIB_SYMBOL_POINTERS,
        S_THREAD_LOCAL_VARIABLE_POINTERS,
    }
)

S_ATTR_PURE_INSTRUCTIONS = 0x80000000
S_ATTR_DEBUG = 0x02000000
S_ATTR_SOME_INSTRUCTIONS = 0x00000400

# --- symbols (nlist_64) --------------------------------------------------------

NLIST_64 = np.dtype(
    [
        ("n_strx", "<u4"),
        ("n_type", "u1"),
        ("n_sect", "u1"),
        ("n_desc", "<u2"),
        ("n_value", "<u8"),
    ]
)
assert NLIST_64.itemsize == 16

N_STAB = 0xE0
N_PEXT = 0x10
N_TYPE = 0x0E
N_EXT = 0x01

N_UNDF = 0x0
N_ABS = 0x2
N_INDR = 0xA
N_PBUD = 0xC
N_SECT = 0xE

N_WEAK_REF = 0x0040
N_WEAK_DEF = 0x0080

# --- relocations (relocation_info) ----------------------------------------------

RELOCATION_INFO = np.dtype([("r_address", "<i4"), ("r_info", "<u4")])
assert RELOCATION_INFO.itemsize == 8

R_SCATTERED = 0x80000000

X86_64_RELOC_UNSIGNED = 0
X86_64_RELOC_SIGNED = 1
X86_64_RELOC_BRANCH = 2
X86_64_RELOC_GOT_LOAD = 3
X86_64_RELOC_GOT = 4
X86_64_RELOC_SUBTRACTOR = 5
X86_64_RELOC_SIGNED_1 = 6
X86_64_RELOC_SIGNED_2 = 7
X86_64_RELOC_SIGNED_4 = 8
X86_64_RELOC_TLV = 9

# The rtype rtdyld stores for a SUBTRACTOR/UNSIGNED pair, read as one edge.
RTYPE_SUBTRACTOR_PAIR = 0x105
# ... and for an __eh_frame pointer the assembler resolved without a relocation.
RTYPE_IMPLICIT_EH_FRAME = 0x200

RELOC_NAMES: dict[int, str] = {
    X86_64_RELOC_UNSIGNED: "X86_64_RELOC_UNSIGNED",
    X86_64_RELOC_SIGNED: "X86_64_RELOC_SIGNED",
    X86_64_RELOC_BRANCH: "X86_64_RELOC_BRANCH",
    X86_64_RELOC_GOT_LOAD: "X86_64_RELOC_GOT_LOAD",
    X86_64_RELOC_GOT: "X86_64_RELOC_GOT",
    X86_64_RELOC_SUBTRACTOR: "X86_64_RELOC_SUBTRACTOR",
    X86_64_RELOC_SIGNED_1: "X86_64_RELOC_SIGNED_1",
    X86_64_RELOC_SIGNED_2: "X86_64_RELOC_SIGNED_2",
    X86_64_RELOC_SIGNED_4: "X86_64_RELOC_SIGNED_4",
    X86_64_RELOC_TLV: "X86_64_RELOC_TLV",
    RTYPE_SUBTRACTOR_PAIR: "X86_64_RELOC_SUBTRACTOR+X86_64_RELOC_UNSIGNED",
    RTYPE_IMPLICIT_EH_FRAME: "implicit __eh_frame pointer",
}
