"""The Mach-O reader: objects built at test time with llvmlite, read into the model.

Relocations are checked by meaning, not by raw numbers: every section is
placed at a fresh address (never the one the object was assembled at), every
undefined symbol and GOT slot gets an address of its own, and the model's
formula (S + A - P, S - S2 + A, GOT + G + A - P) must give what the
instruction or directive asked for at that layout.  One test also assembles
the same source for ELF and requires both readers' relocations to mean the
same thing.
"""

from __future__ import annotations

import functools
import io
import random
import struct

import llvmlite.binding as llvm
import numpy as np
import pytest
from elftools.elf.descriptions import describe_reloc_type
from elftools.elf.elffile import ELFFile

from rtdyld.errors import LinkError, MalformedObjectError, UnsupportedRelocationError
from rtdyld.objfile.macho import is_macho, read_macho
from rtdyld.objfile.model import (
    SEC_ABS,
    SEC_COMMON,
    SEC_DISCARDED,
    SEC_UNDEF,
    Bind,
    ObjectFile,
    SectionFlags,
    SectionRole,
    SymType,
    Visibility,
)
from rtdyld.x86_64.edges import WIDTH, Edge

MACHO = "x86_64-apple-macosx10.15"
ELF = "x86_64-unknown-linux-gnu"


# --- building objects ------------------------------------------------------------


@functools.cache
def _llvm_ready() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()


@functools.cache
def emit_ir(ir: str, triple: str = MACHO, reloc: str = "pic") -> bytes:
    _llvm_ready()
    module = llvm.parse_assembly(f'target triple = "{triple}"\n{ir}')
    machine = llvm.Target.from_triple(triple).create_target_machine(reloc=reloc, codemodel="small")
    return machine.emit_object(module)


def _asm_line(line: str) -> str:
    escaped = "".join(c if c.isprintable() and c not in '"\\' else f"\\{ord(c):02X}" for c in line)
    return f'module asm "{escaped}"'


def emit_asm(source: str, triple: str = MACHO) -> bytes:
    return emit_ir("\n".join(_asm_line(line) for line in source.strip().splitlines()), triple)


def read(data: bytes, name: str = "test.o") -> ObjectFile:
    return read_macho(data, name)


# --- evaluating relocations at a fresh layout ------------------------------------------


class Layout:
    """Sections at new, scattered addresses; externals and GOT slots elsewhere."""

    EXTERNALS = 0x7F00_0000_0000
    GOT = 0x6000_0000_0000

    def __init__(self, obj: ObjectFile):
        self.obj = obj
        # Reverse order and odd gaps: nothing may depend on the object's own layout.
        n = len(obj.sections)
        self.base = [0x1000_0000 + 0x10_0000 * (n - i) + 0x230 * i for i in range(n)]

    def sym(self, name: str) -> int:
        return self.obj.names.index(name)

    def section(self, name: str) -> int:
        return [s.name for s in self.obj.sections].index(name)

    def addr(self, index: int) -> int:
        sec = int(self.obj.symbols["section"][index])
        value = int(self.obj.symbols["value"][index])
        if sec >= 0:
            return self.base[sec] + value
        assert sec in (SEC_UNDEF, SEC_COMMON), f"no address for {self.obj.describe_symbol(index)}"
        return self.EXTERNALS + 0x100 * index

    def where(self, section: str, offset: int) -> int:
        """The address of ``offset`` in section ``section`` ("__TEXT,__text")."""
        return self.base[self.section(section)] + offset

    def of(self, target: str | tuple[str, int]) -> int:
        """The address of a symbol, of (symbol, offset) or of ("segment,section", offset)."""
        if isinstance(target, str):
            return self.addr(self.sym(target))
        name, offset = target
        return self.where(name, offset) if "," in name else self.of(name) + offset

    def slot(self, index: int) -> int:
        return self.GOT + 8 * index

    def value(self, r: np.void) -> int:
        kind = Edge(int(r["kind"]))
        S, A = self.addr(int(r["sym"])), int(r["addend"])
        P = self.base[int(r["section"])] + int(r["offset"])
        if kind in (Edge.Pointer64, Edge.Pointer32):
            return S + A
        if kind in (Edge.Delta64, Edge.Delta32, Edge.Branch32):
            return S + A - P
        if kind in (Edge.GOTDelta32, Edge.GOTDelta32Relaxable):
            return self.slot(int(r["sym"])) + A - P
        if kind in (Edge.Difference64, Edge.Difference32):
            return S - self.addr(int(r["sym2"])) + A
        raise AssertionError(f"unexpected edge {kind.name}")


def relocs_in(obj: ObjectFile, section: str) -> np.ndarray:
    index = [s.name for s in obj.sections].index(section)
    return obj.relocs[obj.relocs["section"] == index]


def symbol(obj: ObjectFile, name: str) -> np.void:
    return obj.symbols[obj.names.index(name)]


def section_symbol(obj: ObjectFile, section: str) -> int:
    """The index of the synthetic symbol of ``section``."""
    return len(obj.symbols) - len(obj.sections) + [s.name for s in obj.sections].index(section)


# --- the format's conventions ---------------------------------------------------------

C_MODULE = r"""
@.str = private unnamed_addr constant [6 x i8] c"hello\00"
@.str2 = private unnamed_addr constant [6 x i8] c"world\00"
@g = global ptr @.str2
@arr = global [2 x ptr] [ptr @.str, ptr getelementptr (i8, ptr @.str2, i64 2)]
@c = common global i32 0, align 4
@w = weak global i32 7
@h = hidden global i32 3
@z = global [100 x i8] zeroinitializer
@llvm.global_ctors = appending global [1 x { i32, ptr, ptr }] [{ i32, ptr, ptr } { i32 65535, ptr @ctor, ptr null }]

declare i32 @puts(ptr)
declare void @f0()
declare void @f1()
declare void @f2()
declare void @f3()
declare void @f4()

define internal void @ctor() {
  ret void
}

define i32 @main() {
  %r = call i32 @puts(ptr @.str)
  ret i32 %r
}

define double @add15(double %x) {
  %y = fadd double %x, 1.5
  ret double %y
}

define i32 @getc() {
  %v = load i32, ptr @c
  ret i32 %v
}

define void @sw(i32 %x) {
  switch i32 %x, label %d [ i32 0, label %a  i32 1, label %b  i32 2, label %c  i32 3, label %e  i32 4, label %f ]
a:
  tail call void @f0()
  ret void
b:
  tail call void @f1()
  ret void
c:
  tail call void @f2()
  ret void
e:
  tail call void @f3()
  ret void
f:
  tail call void @f4()
  ret void
d:
  ret void
}
"""


@pytest.fixture(scope="module")
def cmod() -> ObjectFile:
    return read(emit_ir(C_MODULE), "cmod.o")


def test_is_macho():
    macho = emit_ir(C_MODULE)
    assert is_macho(macho)
    assert is_macho(memoryview(macho))
    assert not is_macho(emit_ir(C_MODULE, triple=ELF))
    assert not is_macho(b"")
    assert not is_macho(b"\xcf\xfa")
    # Other Mach-O flavours are recognised so that read_macho can say why it refuses them.
    assert is_macho(struct.pack("<I", 0xFEEDFACE) + bytes(28))


def test_object_conventions(cmod):
    assert cmod.format == "macho"
    assert cmod.symbol_prefix == "_"
    assert cmod.subsections_via_symbols
    assert cmod.name == "cmod.o"
    assert cmod.rtype_names[2] == "X86_64_RELOC_BRANCH"
    assert cmod.rtype_names[0x105] == "X86_64_RELOC_SUBTRACTOR+X86_64_RELOC_UNSIGNED"
    data = bytearray(emit_ir(C_MODULE))
    flags = struct.unpack_from("<I", data, 24)[0]
    struct.pack_into("<I", data, 24, flags & ~0x2000)  # MH_SUBSECTIONS_VIA_SYMBOLS
    assert not read(bytes(data)).subsections_via_symbols


def test_sections(cmod):
    by_name = {s.name: s for s in cmod.sections}
    text = by_name["__TEXT,__text"]
    assert text.flags == SectionFlags.EXEC
    assert bytes(text.data) and len(text.data) == text.size
    assert by_name["__TEXT,__cstring"].flags == SectionFlags.MERGE | SectionFlags.STRINGS
    assert by_name["__TEXT,__literal8"].flags == SectionFlags.NONE
    assert by_name["__DATA,__data"].flags == SectionFlags.WRITE
    zero = by_name["__DATA,__common"]
    assert zero.flags == SectionFlags.WRITE | SectionFlags.ZERO_FILL
    assert zero.size == 100 and len(zero.data) == 0
    assert by_name["__DATA,__mod_init_func"].role == SectionRole.INIT_ARRAY
    eh = by_name["__TEXT,__eh_frame"]
    assert eh.role == SectionRole.EH_FRAME and not eh.flags & SectionFlags.WRITE
    assert "__LD,__compact_unwind" not in by_name
    for s in cmod.sections:
        assert s.align & (s.align - 1) == 0
    # source_index is the Mach-O section number: __compact_unwind (dropped) still counts.
    numbers = [s.source_index for s in cmod.sections]
    assert numbers == sorted(numbers) and numbers[0] == 1
    assert by_name["__TEXT,__eh_frame"].source_index == len(cmod.sections) + 1


def test_symbols(cmod):
    main = symbol(cmod, "_main")
    assert cmod.sections[main["section"]].name == "__TEXT,__text"
    assert (main["bind"], main["type"], main["vis"]) == (Bind.GLOBAL, SymType.FUNC, Visibility.DEFAULT)
    ctor = symbol(cmod, "_ctor")
    assert (ctor["bind"], ctor["type"]) == (Bind.LOCAL, SymType.FUNC)
    puts = symbol(cmod, "_puts")
    assert (puts["section"], puts["bind"], puts["type"]) == (SEC_UNDEF, Bind.GLOBAL, SymType.NOTYPE)
    c = symbol(cmod, "_c")
    assert (c["section"], c["size"], c["value"], c["bind"]) == (SEC_COMMON, 4, 4, Bind.GLOBAL)
    assert symbol(cmod, "_w")["bind"] == Bind.WEAK
    h = symbol(cmod, "_h")
    assert (h["bind"], h["vis"], h["type"]) == (Bind.GLOBAL, Visibility.HIDDEN, SymType.OBJECT)
    z = symbol(cmod, "_z")
    assert cmod.sections[z["section"]].name == "__DATA,__common"
    # The symbol value is the offset within the section: _g's pointer is where _g is.
    g = symbol(cmod, "_g")
    data = cmod.sections[g["section"]]
    assert data.name == "__DATA,__data"
    assert int(g["value"]) < data.size


def test_section_symbols_are_appended(cmod):
    n = len(cmod.sections)
    tail = cmod.symbols[-n:]
    assert list(tail["section"]) == list(range(n))
    assert set(tail["type"]) == {SymType.SECTION}
    assert set(tail["bind"]) == {Bind.LOCAL}
    assert set(tail["value"]) == {0}
    assert cmod.names[-n:] == [""] * n
    assert len(cmod.names) == len(cmod.symbols)
    assert cmod.describe_symbol(len(cmod.symbols) - n) == cmod.sections[0].name


def test_relocations_sorted_and_in_range(cmod):
    r = cmod.relocs
    keys = list(zip(r["section"].tolist(), r["offset"].tolist()))
    assert keys == sorted(keys)
    assert set(r["sym2"].tolist()) == {-1}
    for sec, off, kind in zip(r["section"], r["offset"], r["kind"]):
        assert off + WIDTH[kind] <= cmod.sections[sec].size
    # Nothing from the dropped __compact_unwind.
    assert all(cmod.sections[s].name != "__LD,__compact_unwind" for s in r["section"])


def test_call_and_string_reference(cmod):
    L = Layout(cmod)
    text = relocs_in(cmod, "__TEXT,__text")
    call = [r for r in text if cmod.names[r["sym"]] == "_puts"]
    assert len(call) == 1
    r = call[0]
    assert Edge(r["kind"]) == Edge.Branch32 and cmod.reloc_type_name(r["rtype"]) == "X86_64_RELOC_BRANCH"
    P = L.where("__TEXT,__text", int(r["offset"]))
    assert L.value(r) == L.of("_puts") - (P + 4)
    # The lea of "hello" is section-relative: section symbol plus the string's offset.
    cstring = L.section("__TEXT,__cstring")
    lea = [r for r in text if r["sym"] == section_symbol(cmod, "__TEXT,__cstring")]
    assert len(lea) == 1
    r = lea[0]
    assert Edge(r["kind"]) == Edge.Delta32
    offset = int(r["addend"]) + 4
    assert bytes(cmod.sections[cstring].data[offset : offset + 6]) == b"hello\0"
    P = L.where("__TEXT,__text", int(r["offset"]))
    assert L.value(r) == L.where("__TEXT,__cstring", offset) - (P + 4)


def test_double_constant(cmod):
    L = Layout(cmod)
    lit = L.section("__TEXT,__literal8")
    refs = [r for r in relocs_in(cmod, "__TEXT,__text") if cmod.symbols["section"][r["sym"]] == lit]
    assert len(refs) == 1
    offset = int(refs[0]["addend"]) + 4
    assert bytes(cmod.sections[lit].data[offset : offset + 8]) == struct.pack("<d", 1.5)


def test_common_through_got(cmod):
    refs = [r for r in cmod.relocs if cmod.names[r["sym"]] == "_c"]
    assert [Edge(r["kind"]) for r in refs] == [Edge.GOTDelta32Relaxable]
    assert cmod.reloc_type_name(refs[0]["rtype"]) == "X86_64_RELOC_GOT_LOAD"
    assert refs[0]["addend"] == -4


def test_pointer_initialisers(cmod):
    L = Layout(cmod)
    data = relocs_in(cmod, "__DATA,__data")
    cstring = cmod.sections[L.section("__TEXT,__cstring")]
    base = L.where("__TEXT,__cstring", 0)

    def pointee(symbol_name: str, index: int) -> bytes:
        field = int(symbol(cmod, symbol_name)["value"]) + 8 * index
        (r,) = [r for r in data if r["offset"] == field]
        assert Edge(r["kind"]) == Edge.Pointer64
        offset = L.value(r) - base
        return bytes(cstring.data[offset : offset + 4])

    assert pointee("_g", 0) == b"worl"
    assert pointee("_arr", 0) == b"hell"
    assert pointee("_arr", 1) == b"rld\0"


def test_static_constructor(cmod):
    (r,) = relocs_in(cmod, "__DATA,__mod_init_func")
    assert Edge(r["kind"]) == Edge.Pointer64 and r["addend"] == 0
    assert cmod.names[r["sym"]] in ("_ctor", "l_register_call_dtors")


def test_switch_and_static_model_load():
    obj = read(emit_ir(C_MODULE, reloc="static"))
    kinds = {Edge(k) for k in obj.relocs["kind"]}
    assert Edge.Branch32 in kinds
    assert all(0 <= s < len(obj.sections) for s in obj.relocs["section"])


# --- relocation types, one by one -----------------------------------------------------

SIGNED_SOURCE = """
.text
.globl _f
_f:
  movb $1, _x(%rip)
  movw $1, _x(%rip)
  movl $1, _x(%rip)
  movb $1, _x+3(%rip)
  movq _x+8(%rip), %rax
  movb $1, Lloc(%rip)
  movw $1, Lloc(%rip)
  movl $1, Lloc(%rip)
  movl $1, Lloc+2(%rip)
  leaq Lloc(%rip), %rax
  movl $1, _x+2(%rip)
  ret
.section __TEXT,__mystuff
  .byte 0,0,0
Lloc:
  .byte 1,2,3,4
"""

# (relocation type, target, bytes of immediate after the 4-byte field)
SIGNED_EXPECTED = [
    ("X86_64_RELOC_SIGNED_1", "_x", 1),
    ("X86_64_RELOC_SIGNED_2", "_x", 2),
    ("X86_64_RELOC_SIGNED_4", "_x", 4),
    ("X86_64_RELOC_SIGNED", ("_x", 3), 1),
    ("X86_64_RELOC_SIGNED", ("_x", 8), 0),
    ("X86_64_RELOC_SIGNED_1", ("__TEXT,__mystuff", 3), 1),
    ("X86_64_RELOC_SIGNED_2", ("__TEXT,__mystuff", 3), 2),
    ("X86_64_RELOC_SIGNED_4", ("__TEXT,__mystuff", 3), 4),
    # The assembler picks SIGNED_N from the final constant, not from the
    # instruction: these two carry 4 immediate bytes but say SIGNED_2.
    ("X86_64_RELOC_SIGNED_2", ("__TEXT,__mystuff", 5), 4),
    ("X86_64_RELOC_SIGNED", ("__TEXT,__mystuff", 3), 0),
    ("X86_64_RELOC_SIGNED_2", ("_x", 2), 4),
]


def test_signed_relocations():
    obj = read(emit_asm(SIGNED_SOURCE))
    L = Layout(obj)
    text = relocs_in(obj, "__TEXT,__text")
    assert len(text) == len(SIGNED_EXPECTED)
    mystuff = L.section("__TEXT,__mystuff")
    for r, (rtype, target, imm) in zip(text, SIGNED_EXPECTED):
        assert obj.reloc_type_name(r["rtype"]) == rtype
        assert Edge(r["kind"]) == Edge.Delta32
        P = L.where("__TEXT,__text", int(r["offset"]))
        # The CPU adds the displacement to the end of the instruction.
        assert L.value(r) == L.of(target) - (P + 4 + imm), (rtype, target)
        if isinstance(target, tuple) and target[0] == "__TEXT,__mystuff":
            assert obj.describe_symbol(int(r["sym"])) == "__TEXT,__mystuff"
            assert obj.symbols["section"][r["sym"]] == mystuff
            at = int(r["addend"]) + 4 + imm
            assert bytes(obj.sections[mystuff].data[at : at + 1]) == bytes([1 + target[1] - 3])
    # Extern SIGNED_N: the assembler already folded the -N into the field.
    assert [int(a) for a in text["addend"][:3]] == [-5, -6, -8]


GOT_SOURCE = """
.text
.globl _f
_f:
  movq _x@GOTPCREL(%rip), %rax
  pushq _y@GOTPCREL(%rip)
  call _g
  jmp _g
.data
  .long _y@GOTPCREL+4
  .long _y@GOTPCREL
"""


def test_got_and_branch_relocations():
    obj = read(emit_asm(GOT_SOURCE))
    L = Layout(obj)
    text = relocs_in(obj, "__TEXT,__text")
    expected = [
        ("X86_64_RELOC_GOT_LOAD", Edge.GOTDelta32Relaxable, "_x"),
        ("X86_64_RELOC_GOT", Edge.GOTDelta32, "_y"),
        ("X86_64_RELOC_BRANCH", Edge.Branch32, "_g"),
        ("X86_64_RELOC_BRANCH", Edge.Branch32, "_g"),
    ]
    assert len(text) == len(expected)
    for r, (rtype, kind, name) in zip(text, expected):
        assert obj.reloc_type_name(r["rtype"]) == rtype
        assert Edge(r["kind"]) == kind
        assert obj.names[r["sym"]] == name
        P = L.where("__TEXT,__text", int(r["offset"]))
        dest = L.slot(L.sym(name)) if "GOT" in rtype else L.of(name)
        assert L.value(r) == dest - (P + 4)
    # In data, X86_64_RELOC_GOT counts from the end of the field: "+4" makes it
    # the ELF GOTPCREL meaning (slot - P), as LLVM writes eh_frame personalities.
    data = relocs_in(obj, "__DATA,__data")
    slot = L.slot(L.sym("_y"))
    values = [L.value(r) for r in data]
    starts = [L.where("__DATA,__data", int(r["offset"])) for r in data]
    assert [Edge(k) for k in data["kind"]] == [Edge.GOTDelta32, Edge.GOTDelta32]
    assert values == [slot - starts[0], slot - (starts[1] + 4)]


SUBTRACTOR_SOURCE = """
.text
.globl _a
_a:
  ret
.data
.globl _d
_d:
  .quad _d - _a
  .quad _a - _d + 5
  .long _d - _a
  .long _a - _d - 3
Lhere:
  .quad _a - Lhere
  .quad Lfar - _a
  .quad _a - Lfar
  .long Lfar - Lhere
.section __TEXT,__mystuff
  .byte 0,0,0,0,0
Lfar:
  .byte 9
"""


def test_subtractor_pairs():
    obj = read(emit_asm(SUBTRACTOR_SOURCE))
    L = Layout(obj)
    a, d = L.of("_a"), L.of("_d")
    here = d + 0x18
    far = L.where("__TEXT,__mystuff", 5)
    expected = [
        (0x00, Edge.Difference64, d - a),
        (0x08, Edge.Difference64, a - d + 5),
        (0x10, Edge.Difference32, d - a),
        (0x14, Edge.Difference32, a - d - 3),
        (0x18, Edge.Difference64, a - here),
        (0x20, Edge.Difference64, far - a),
        (0x28, Edge.Difference64, a - far),
        (0x30, Edge.Difference32, far - here),
    ]
    data = relocs_in(obj, "__DATA,__data")
    assert [(int(r["offset"]), Edge(r["kind"]), L.value(r)) for r in data] == expected
    assert set(data["rtype"].tolist()) == {0x105}
    assert all(obj.reloc_type_name(t) == "X86_64_RELOC_SUBTRACTOR+X86_64_RELOC_UNSIGNED" for t in data["rtype"])
    assert (data["sym2"] >= 0).all()
    # The local-label sides are section-relative: the section symbol of __mystuff.
    mystuff = L.section("__TEXT,__mystuff")
    assert obj.symbols["section"][data["sym"][5]] == mystuff
    assert obj.symbols["section"][data["sym2"][6]] == mystuff
    at = int(data["addend"][5])
    assert bytes(obj.sections[mystuff].data[at : at + 1]) == b"\x09"


def test_fini_and_init_pointers():
    obj = read(emit_asm(".text\n_a:\n ret\n_b:\n ret\n.mod_init_func\n .quad _a\n.mod_term_func\n .quad _b"))
    L = Layout(obj)
    init = obj.sections[L.section("__DATA,__mod_init_func")]
    fini = obj.sections[L.section("__DATA,__mod_term_func")]
    assert (init.role, fini.role) == (SectionRole.INIT_ARRAY, SectionRole.FINI_ARRAY)
    (r,) = relocs_in(obj, "__DATA,__mod_term_func")
    assert L.value(r) == L.of("_b")


SYMBOLS_SOURCE = """
.text
.globl _f
_f:
  call _wr
  ret
.weak_reference _wr
.globl _wd
.weak_definition _wd
_wd:
  ret
.private_extern _ph
.globl _ph
_ph:
  ret
_loc:
  ret
.data
.globl _dat
_dat:
  .long 1
.const
_ro:
  .long 2
.comm _cc,16,3
.zerofill __DATA,__bss,_buf,64,4
.globl _absv
.set _absv, 0x1234
.section __DWARF,__debug_info,regular,debug
  .quad _f
_dbgsym:
  .long 0
.section __LD,__compact_unwind,regular,debug
  .quad _f
"""


def test_symbol_kinds():
    obj = read(emit_asm(SYMBOLS_SOURCE))

    def row(name):
        s = symbol(obj, name)
        return int(s["section"]), Bind(int(s["bind"])), SymType(int(s["type"])), Visibility(int(s["vis"]))

    text = [s.name for s in obj.sections].index("__TEXT,__text")
    assert row("_f") == (text, Bind.GLOBAL, SymType.FUNC, Visibility.DEFAULT)
    assert row("_wd") == (text, Bind.WEAK, SymType.FUNC, Visibility.DEFAULT)
    assert row("_ph") == (text, Bind.GLOBAL, SymType.FUNC, Visibility.HIDDEN)
    assert row("_loc") == (text, Bind.LOCAL, SymType.FUNC, Visibility.DEFAULT)
    assert row("_wr") == (SEC_UNDEF, Bind.WEAK, SymType.NOTYPE, Visibility.DEFAULT)
    assert row("_absv") == (SEC_ABS, Bind.GLOBAL, SymType.OBJECT, Visibility.DEFAULT)
    assert symbol(obj, "_absv")["value"] == 0x1234
    cc = symbol(obj, "_cc")
    assert (int(cc["section"]), int(cc["size"]), int(cc["value"])) == (SEC_COMMON, 16, 8)
    assert obj.sections[row("_ro")[0]].name == "__TEXT,__const"
    buf = obj.sections[row("_buf")[0]]
    assert buf.name == "__DATA,__bss" and buf.flags & SectionFlags.ZERO_FILL and buf.size == 64
    assert buf.align == 16


def test_debug_and_compact_unwind_are_dropped():
    obj = read(emit_asm(SYMBOLS_SOURCE))
    names = [s.name for s in obj.sections]
    assert not any(n.startswith(("__DWARF,", "__LD,")) for n in names)
    dbg = symbol(obj, "_dbgsym")
    assert dbg["section"] == SEC_DISCARDED
    # Only the call to _wr remains: the pointers in the dropped sections are not read.
    assert [obj.names[s] for s in obj.relocs["sym"]] == ["_wr"]


THREAD_LOCAL_IR = """
@t = thread_local global i32 5
define ptr @addr() {
  ret ptr null
}
"""


def test_thread_local_sections():
    obj = read(emit_ir(THREAD_LOCAL_IR))
    by_name = {s.name: s for s in obj.sections}
    assert by_name["__DATA,__thread_data"].flags == SectionFlags.WRITE | SectionFlags.TLS
    assert by_name["__DATA,__thread_vars"].flags == SectionFlags.WRITE
    assert symbol(obj, "_t")["type"] == SymType.TLS
    assert symbol(obj, "_t$tlv$init")["type"] == SymType.TLS


def test_tlv_access_is_unsupported():
    ir = THREAD_LOCAL_IR + "define i32 @get() {\n  %v = load i32, ptr @t\n  ret i32 %v\n}\n"
    with pytest.raises(UnsupportedRelocationError) as e:
        read(emit_ir(ir), "tls.o")
    message = str(e.value)
    for part in ("tls.o", "__TEXT,__text", "X86_64_RELOC_TLV", "'_t'", "offset 0x"):
        assert part in message


def test_reads_memoryview_and_bytearray():
    data = emit_asm(GOT_SOURCE)
    a = read(data)
    b = read_macho(memoryview(bytearray(data)), "v.o")
    assert a.names == b.names
    assert np.array_equal(a.relocs, b.relocs)
    assert bytes(a.sections[0].data) == bytes(b.sections[0].data)


# --- __eh_frame ---------------------------------------------------------------------------

EH_IR = """
declare i32 @__gxx_personality_v0(...)
declare void @mayThrow()
declare ptr @__cxa_begin_catch(ptr)
declare void @__cxa_end_catch()

define i32 @plain(i32 %x) {
  %y = add i32 %x, 1
  ret i32 %y
}

define i32 @catcher() personality ptr @__gxx_personality_v0 {
entry:
  invoke void @mayThrow() to label %ok unwind label %lp
ok:
  ret i32 0
lp:
  %e = landingpad { ptr, i32 } catch ptr null
  %p = extractvalue { ptr, i32 } %e, 0
  %x = call ptr @__cxa_begin_catch(ptr %p)
  call void @__cxa_end_catch()
  ret i32 1
}
"""


@pytest.fixture(scope="module")
def eh_image() -> bytes:
    return emit_ir(EH_IR)


def test_eh_frame_pointers_become_edges(eh_image):
    """FDE pc_begin and LSDA fields carry no relocation in Mach-O; the reader adds them."""
    obj = read(eh_image)
    L = Layout(obj)
    eh = relocs_in(obj, "__TEXT,__eh_frame")
    implicit = eh[eh["rtype"] == 0x200]
    assert {obj.reloc_type_name(t) for t in implicit["rtype"]} == {"implicit __eh_frame pointer"}
    assert {Edge(k) for k in implicit["kind"]} == {Edge.Delta64}
    # A DWARF pc-relative pointer counts from the field itself: S + A - P + P is the target.
    targets = {L.value(r) + L.where("__TEXT,__eh_frame", int(r["offset"])) for r in implicit}
    assert targets == {L.of("_plain"), L.of("_catcher"), L.where("__TEXT,__gcc_except_tab", 0)}
    # The personality pointer keeps its own relocation, read as slot - P.
    (pers,) = eh[eh["rtype"] == 4]
    assert obj.names[pers["sym"]] == "___gxx_personality_v0"
    assert L.value(pers) == L.slot(L.sym("___gxx_personality_v0")) - L.where("__TEXT,__eh_frame", int(pers["offset"]))


def test_malformed_eh_frame(eh_image):
    img = Image(eh_image)
    start = img.get("<I", img.section_field("__TEXT,__eh_frame", "offset"))
    malformed(Image(eh_image).put("<I", start, 0x10000).bytes(), "__TEXT,__eh_frame", "offset 0x0", "past the end")
    # The first FDE (after the 0x18-byte CIE) pointing its CIE pointer outside the section.
    malformed(Image(eh_image).put("<I", start + 0x1C, 0x7FFF).bytes(), "__TEXT,__eh_frame", "offset 0x18", "no CIE")


def test_eh_frame_corruption_never_escapes_as_a_bare_error(eh_image):
    img = Image(eh_image)
    start = img.get("<I", img.section_field("__TEXT,__eh_frame", "offset"))
    size = img.get("<Q", img.section_field("__TEXT,__eh_frame", "size"))
    rng = random.Random(99)
    for _ in range(400):
        data = bytearray(eh_image)
        for _ in range(rng.randint(1, 3)):
            data[start + rng.randrange(size)] = rng.randrange(256)
        try:
            read_macho(bytes(data), "fuzz.o")
        except LinkError as e:
            assert str(e).startswith("fuzz.o: ")


# --- ELF as the oracle ----------------------------------------------------------------

ORACLE_SOURCE = """
.text
.globl {p}f
{p}f:
  call {p}ext
  movq {p}ext@GOTPCREL(%rip), %rax
  pushq {p}ext2@GOTPCREL(%rip)
  movb $1, {p}ext+2(%rip)
  movw $7, {p}ext(%rip)
  movl $7, {p}ext2-8(%rip)
  leaq Lmsg(%rip), %rax
  movq Lval+8(%rip), %rax
  movb $1, Lval(%rip)
  ret
.data
.globl {p}d
{p}d:
  .quad 0
Lval:
  .quad 1, 2, 3
  .quad {p}ext + 16
  .quad Lval + 8
  .long {p}ext
{strings}
Lmsg:
  .asciz "hello"
"""

ELF_EDGES = {
    "R_X86_64_64": Edge.Pointer64,
    "R_X86_64_32": Edge.Pointer32,
    "R_X86_64_PC32": Edge.Delta32,
    "R_X86_64_PLT32": Edge.Branch32,
    "R_X86_64_GOTPCREL": Edge.GOTDelta32,
    "R_X86_64_GOTPCRELX": Edge.GOTDelta32Relaxable,
    "R_X86_64_REX_GOTPCRELX": Edge.GOTDelta32Relaxable,
}
SECTION_PAIRS = {".text": "__TEXT,__text", ".data": "__DATA,__data", ".rodata.str1.1": "__TEXT,__cstring"}


def _elf_meanings(data: bytes, L: Layout) -> list[tuple[str, int, Edge, int]]:
    """(section, offset, edge, value) for every ELF relocation, at Mach-O layout ``L``."""
    elf = ELFFile(io.BytesIO(data))
    symtab = elf.get_section_by_name(".symtab")
    out = []
    for sec in elf.iter_sections():
        if not sec.name.startswith(".rela"):
            continue
        patched = SECTION_PAIRS[sec.name[len(".rela") :]]
        for rel in sec.iter_relocations():
            s = symtab.get_symbol(rel["r_info_sym"])
            if s["st_shndx"] == "SHN_UNDEF":
                name = "_" + s.name
                S = L.of(name)
                G = L.slot(L.sym(name))
            else:
                target = SECTION_PAIRS[elf.get_section(s["st_shndx"]).name]
                S = L.where(target, s["st_value"])
                G = None
            kind = ELF_EDGES[describe_reloc_type(rel["r_info_type"], elf)]
            P = L.where(patched, rel["r_offset"])
            A = rel["r_addend"]
            value = G + A - P if kind in (Edge.GOTDelta32, Edge.GOTDelta32Relaxable) else S + A
            if kind in (Edge.Delta32, Edge.Branch32):
                value -= P
            out.append((patched, rel["r_offset"], kind, value))
    return sorted(out)


def test_same_meaning_as_elf():
    macho = read(emit_asm(ORACLE_SOURCE.format(p="_", strings=".cstring")))
    elf_strings = '.section .rodata.str1.1,"aMS",@progbits,1'
    elf = emit_asm(ORACLE_SOURCE.format(p="", strings=elf_strings), triple=ELF)
    L = Layout(macho)
    mine = sorted(
        (macho.sections[int(r["section"])].name, int(r["offset"]), Edge(int(r["kind"])), L.value(r))
        for r in macho.relocs
    )
    assert mine == _elf_meanings(elf, L)


# --- malformed input ---------------------------------------------------------------------


class Image:
    """Where things are in a Mach-O file, found independently of the reader."""

    def __init__(self, data: bytes):
        self.data = bytearray(data)
        ncmds, self.sizeofcmds = struct.unpack_from("<II", data, 16)
        self.commands: list[tuple[int, int, int]] = []
        self.sections: dict[str, int] = {}  # name -> offset of its section_64 header
        off = 32
        for _ in range(ncmds):
            cmd, size = struct.unpack_from("<II", data, off)
            self.commands.append((off, cmd, size))
            if cmd == 0x19:
                (nsects,) = struct.unpack_from("<I", data, off + 64)
                for k in range(nsects):
                    h = off + 72 + 80 * k
                    sect, seg = (data[h + i : h + i + 16].rstrip(b"\0").decode() for i in (0, 16))
                    self.sections[f"{seg},{sect}"] = h
            elif cmd == 0x2:
                self.symtab_cmd = off
                self.symoff, self.nsyms, self.stroff, self.strsize = struct.unpack_from("<IIII", data, off + 8)
            off += size

    def section_field(self, name: str, field: str) -> int:
        """File offset of a section_64 field."""
        return self.sections[name] + {"size": 40, "offset": 48, "reloff": 56, "nreloc": 60}[field]

    def get(self, fmt: str, off: int) -> int:
        return struct.unpack_from(fmt, self.data, off)[0]

    def put(self, fmt: str, off: int, value: int) -> Image:
        struct.pack_into(fmt, self.data, off, value)
        return self

    def reloc(self, section: str, i: int) -> int:
        """File offset of relocation entry ``i`` of ``section`` (file order)."""
        return self.get("<I", self.section_field(section, "reloff")) + 8 * i

    def nlist(self, name: str) -> int:
        for k in range(self.nsyms):
            off = self.symoff + 16 * k
            strx = self.get("<I", off)
            end = self.data.index(b"\0", self.stroff + strx)
            if bytes(self.data[self.stroff + strx : end]) == name.encode():
                return off
        raise KeyError(name)

    def bytes(self) -> bytes:
        return bytes(self.data)


def malformed(data: bytes, *parts: str) -> str:
    with pytest.raises(MalformedObjectError) as e:
        read_macho(data, "bad.o")
    message = str(e.value)
    assert message.startswith("bad.o: ")
    for part in parts:
        assert part in message, message
    return message


@pytest.fixture(scope="module")
def sub_image() -> bytes:
    return emit_asm(SUBTRACTOR_SOURCE)


def test_not_an_x86_64_object(sub_image):
    malformed(b"", "truncated Mach-O header")
    malformed(bytes(64), "not a Mach-O file")
    malformed(struct.pack("<I", 0xFEEDFACE) + bytes(28), "32-bit")
    malformed(struct.pack(">I", 0xFEEDFACF) + bytes(28), "big-endian")
    malformed(Image(sub_image).put("<I", 4, 0x0100000C).bytes(), "not x86-64")
    malformed(Image(sub_image).put("<I", 12, 2).bytes(), "not MH_OBJECT")


def test_truncated_load_commands(sub_image):
    img = Image(sub_image)
    malformed(Image(sub_image).put("<I", 20, len(sub_image)).bytes(), "load commands", "past the end")
    off, _, _ = img.commands[0]
    malformed(Image(sub_image).put("<I", off + 4, 0).bytes(), "load command 0", "cmdsize 0")
    malformed(Image(sub_image).put("<I", off + 4, img.sizeofcmds + 8).bytes(), "load command 0", "cmdsize")
    # A segment that claims more section headers than its command holds.
    malformed(Image(sub_image).put("<I", off + 64, 1000).bytes(), "load command 0", "LC_SEGMENT_64", "truncated")
    # More commands than sizeofcmds covers.
    malformed(Image(sub_image).put("<I", 16, len(img.commands) + 1).bytes(), "load command", "past the end")


def test_tables_past_end_of_file(sub_image):
    img = Image(sub_image)
    n = len(sub_image)
    data_field = img.section_field("__DATA,__data", "offset")
    malformed(Image(sub_image).put("<I", data_field, n - 4).bytes(), "__DATA,__data", "past the end")
    reloff = img.section_field("__DATA,__data", "reloff")
    malformed(Image(sub_image).put("<I", reloff, n - 8).bytes(), "__DATA,__data", "relocation table")
    malformed(Image(sub_image).put("<I", img.symtab_cmd + 12, 10**6).bytes(), "symbol table")
    malformed(Image(sub_image).put("<I", img.symtab_cmd + 20, n).bytes(), "string table")


def test_every_truncation_is_reported(sub_image):
    img = Image(sub_image)
    assert img.stroff + img.strsize == len(sub_image)  # the string table ends the file
    for cut in range(len(sub_image)):
        with pytest.raises(MalformedObjectError, match="^bad.o: "):
            read_macho(sub_image[:cut], "bad.o")


def test_bad_symbols(sub_image):
    img = Image(sub_image)
    a = img.nlist("_a")
    malformed(Image(sub_image).put("<B", a + 5, 200).bytes(), "symbol", "'_a'", "section number 200")
    malformed(Image(sub_image).put("<I", a, img.strsize + 5).bytes(), "string index", "past the string table")
    malformed(Image(sub_image).put("<Q", a + 8, 1 << 40).bytes(), "'_a'", "outside section")
    malformed(Image(sub_image).put("<B", a + 4, 0x0A | 1).bytes(), "'_a'", "N_INDR")


def test_stab_entries_are_placeholders(sub_image):
    img = Image(sub_image)
    a = img.nlist("_a")
    obj = read(Image(sub_image).put("<B", a + 4, 0x24).bytes())  # N_FUN
    s = symbol(obj, "_a")
    assert (s["section"], s["bind"]) == (SEC_DISCARDED, Bind.LOCAL)
    assert obj.names.index("_a") == (a - img.symoff) // 16


def test_bad_relocations(sub_image):
    img = Image(sub_image)
    size = img.get("<Q", img.section_field("__DATA,__data", "size"))
    first = img.reloc("__DATA,__data", 0)
    malformed(Image(sub_image).put("<i", first, size - 2).bytes(), "__DATA,__data", "past the end of the section")
    info = img.get("<I", first + 4)
    malformed(
        Image(sub_image).put("<I", first + 4, info | 0xFFFFFF).bytes(),
        "__DATA,__data",
        "symbol number 16777215 is out of range",
    )
    with pytest.raises(UnsupportedRelocationError, match="relocation type 12"):
        read_macho(Image(sub_image).put("<I", first + 4, (info & 0x0FFFFFFF) | (12 << 28)).bytes(), "bad.o")
    with pytest.raises(UnsupportedRelocationError, match="X86_64_RELOC_UNSIGNED.*r_pcrel=1"):
        read_macho(Image(sub_image).put("<I", first + 4, (info & 0x0FFFFFFF) | (1 << 24)).bytes(), "bad.o")
    malformed(Image(sub_image).put("<I", first, 0x80000000).bytes(), "scattered")


def test_subtractor_without_unsigned(sub_image):
    img = Image(sub_image)
    entries = [
        img.reloc("__DATA,__data", i) for i in range(img.get("<I", img.section_field("__DATA,__data", "nreloc")))
    ]
    sub = next(e for e in entries if img.get("<I", e + 4) >> 28 == 5 and img.get("<i", e) == 0)
    partner = sub + 8
    malformed(
        Image(sub_image).put("<i", partner, img.get("<i", partner) + 1).bytes(),
        "X86_64_RELOC_SUBTRACTOR",
        "not followed by an X86_64_RELOC_UNSIGNED",
    )
    # A SUBTRACTOR as the last entry of its table has no partner at all.
    last = entries[-1]
    malformed(
        Image(sub_image).put("<I", last + 4, (img.get("<I", last + 4) & 0x0FFFFFFF) | (5 << 28)).bytes(),
        "not followed by",
    )


def test_random_corruption_never_escapes_as_a_bare_error(sub_image):
    rng = random.Random(1234)
    img = Image(sub_image)
    hot = list(range(32 + img.sizeofcmds)) + list(range(img.symoff, img.symoff + 16 * img.nsyms))
    hot += list(range(img.reloc("__DATA,__data", 0), img.reloc("__DATA,__data", 0) + 64))
    for _ in range(600):
        data = bytearray(sub_image)
        for _ in range(rng.randint(1, 4)):
            data[rng.choice(hot)] = rng.randrange(256)
        try:
            read_macho(bytes(data), "fuzz.o")
        except LinkError as e:
            assert str(e).startswith("fuzz.o: ")


# --- resource limits: absurd sizes and counts fail before anything is allocated ----------

ZEROFILL_SOURCE = """
  .zerofill __DATA,__bss,_buf,64,4
  .text
  .globl _touch
_touch:
  leaq _buf(%rip), %rax
  retq
"""


@pytest.fixture(scope="module")
def bss_image() -> bytes:
    return emit_asm(ZEROFILL_SOURCE)


def test_zerofill_of_2_to_the_60_is_rejected(bss_image):
    img = Image(bss_image)
    size = img.section_field("__DATA,__bss", "size")
    message = malformed(Image(bss_image).put("<Q", size, 1 << 60).bytes(), "section 2 (__DATA,__bss)")
    assert message == "bad.o: section 2 (__DATA,__bss) claims 0x1000000000000000 bytes of zero-fill (more than 0x1000000000)"


def test_zerofill_larger_than_the_reservation_names_the_section(bss_image):
    from rtdyld.errors import LayoutError
    from rtdyld.linker import Linker

    img = Image(bss_image)
    data = Image(bss_image).put("<Q", img.section_field("__DATA,__bss", "size"), 8 << 30).bytes()
    ln = Linker(run_initializers=False)
    before = ln.snapshot()
    ln.add_object(data, name="bss.o")
    with pytest.raises(LayoutError, match=r"^bss\.o: section '__DATA,__bss' needs 0x200000000 bytes aligned to 0x10, "
                                          r"more than the whole 0x40000000-byte memory reservation"):
        ln.finalize()
    assert ln.snapshot() == before


def test_billions_of_relocations_or_symbols(sub_image):
    img = Image(sub_image)
    nreloc = img.section_field("__DATA,__data", "nreloc")
    malformed(
        Image(sub_image).put("<I", nreloc, 3_000_000_000).bytes(),
        "section 2 (__DATA,__data) relocation table (offset 0x", ", 3000000000 entries) runs past the end of the file",
    )
    malformed(
        Image(sub_image).put("<I", img.symtab_cmd + 12, 4_000_000_000).bytes(),
        "symbol table (offset 0x", ", 4000000000 entries) runs past the end of the file",
    )
