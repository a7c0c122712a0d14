"""Mach-O objects linked and run: the IR fixtures, each relocation type, host
names, constructors, commons, weak definitions, archives, errors, the CLI.

llvmlite emits x86-64 Mach-O for the triple ``x86_64-apple-macosx10.15`` on
any host, and the code runs here once linked: the instruction set and the
calling convention are the same.  The IR fixtures must compute exactly what
their ELF build computes.

The assembly in fixtures/macho/*.s is assembled at test time.  Each file's
``# ARGS:`` line says how to link it, and its ``# rtdyld-check:`` lines are
verified by ``rtdyld check``; the same links are also checked here through
the Python API, byte by byte, with the instruction encodings written out.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import llvmlite.binding as llvm
import pytest
from archive_tools import write_bsd_archive
from cffi import FFI
from fixtures_build import FIXTURES, IR_CODE_MODELS, IR_RELOCS, REPO, target_machine
from test_link_ir import BLOB, CALLS, COEFFS, GREETING, SQUARES, STATEFUL_EXPECTED, WORDS, stateful_run

import rtdyld
from memmgr import VirtualMemory
from rtdyld import host
from rtdyld.asm import assemble
from rtdyld.objfile.macho import read_macho
from rtdyld.objfile.model import SymType
from rtdyld.symmap import BatchSymbols
from rtdyld.x86_64.edges import WIDTH

MACHO = "x86_64-apple-macosx10.15"
MACHO_DIR = FIXTURES / "macho"

COMBOS = [(reloc, cm) for reloc in IR_RELOCS for cm in IR_CODE_MODELS]
COMBO_IDS = [f"{reloc}-{cm}" for reloc, cm in COMBOS]

ffi = FFI()
ffi.cdef("int *__errno_location(void);")
libc = ffi.dlopen(None)


# --- building ---------------------------------------------------------------------


@functools.cache
def emit(ir: str, reloc: str = "pic", code_model: str = "small", triple: str = MACHO) -> bytes:
    """Object bytes of IR text, compiled by llvmlite for ``triple``."""
    module = llvm.parse_assembly(ir)
    module.triple = triple
    module.verify()
    return target_machine(reloc, code_model, triple).emit_object(module)


@functools.cache
def assemble_fixture(name: str) -> bytes:
    data, objname = assemble((MACHO_DIR / name).read_text(), name=name, triple=MACHO)
    assert objname == name.replace(".s", ".o")
    return data


def cstring(name: str, text: str) -> str:
    """An IR private string constant ``@name`` holding ``text`` and a NUL."""
    raw = text.encode() + b"\0"
    body = "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\{b:02X}" for b in raw)
    return f'@{name} = private unnamed_addr constant [{len(raw)} x i8] c"{body}"\n'


@pytest.fixture
def linker():
    """``linker(**kwargs)`` makes a Linker whose batches are removed after the test."""
    made: list[rtdyld.Linker] = []

    def make(**kwargs) -> rtdyld.Linker:
        ln = rtdyld.Linker(**kwargs)
        made.append(ln)
        return ln

    yield make
    for ln in made:
        ln.close()


def read_pointers(addr: int, n: int) -> list[int]:
    return list(struct.unpack(f"<{n}Q", ctypes.string_at(addr, 8 * n)))


# --- the IR fixtures, as Mach-O, against their ELF build -------------------------------


def link_ir_pair(make, build, reloc: str, code_model: str, triple: str | None) -> rtdyld.Linker:
    ln = make()
    fmt = "macho" if triple else "elf"
    for src in ("lib.ll", "user.ll"):
        obj = ln.add_object(build.ir(src, reloc=reloc, code_model=code_model, triple=triple), name=f"{src}[{fmt}]")
        assert obj.format == fmt
    ln.finalize()
    return ln


def call_all(ln: rtdyld.Linker) -> dict[tuple, object]:
    return {(name, args): ln.function(name, sig)(*args) for name, sig, args, _ in CALLS}


@pytest.mark.parametrize(("reloc", "code_model"), COMBOS, ids=COMBO_IDS)
def test_ir_fixtures_compute_what_the_elf_build_computes(linker, build, reloc, code_model):
    macho = link_ir_pair(linker, build, reloc, code_model, MACHO)
    elf = link_ir_pair(linker, build, reloc, code_model, None)
    expected = {(name, args): want for name, _, args, want in CALLS}
    assert call_all(macho) == call_all(elf) == expected
    words = [ln.function("word", "char *(int)") for ln in (macho, elf)]
    assert [ffi.string(words[0](i)) for i in range(4)] == [ffi.string(words[1](i)) for i in range(4)] == WORDS
    assert stateful_run(macho.function) == stateful_run(elf.function) == STATEFUL_EXPECTED


@pytest.mark.parametrize(("reloc", "code_model"), COMBOS, ids=COMBO_IDS)
def test_ir_fixture_data_matches_the_elf_build(linker, build, reloc, code_model):
    macho = link_ir_pair(linker, build, reloc, code_model, MACHO)
    elf = link_ir_pair(linker, build, reloc, code_model, None)
    for name, want in (("greeting", GREETING), ("blob", BLOB), ("coeffs", COEFFS), ("squares", SQUARES)):
        got = [ctypes.string_at(ln.lookup(name), len(want)) for ln in (macho, elf)]
        assert got == [want, want], name
    for ln in (macho, elf):
        sym = ln.lookup
        assert read_pointers(sym("ops"), 4) == [sym(n) for n in ("op_add", "op_sub", "op_mul", "op_xor")]
        assert read_pointers(sym("lib_refs"), 3) == [sym("counter"), sym("squares"), sym("greeting")]
        assert read_pointers(sym("user_fns"), 2) == [sym("classify"), sym("poly")]
        assert [ctypes.string_at(p) for p in read_pointers(sym("words"), 4)] == WORDS
    # The host's strlen is what user.ll's _strlen became.
    (strlen,) = [e for e in macho.handles[0].batch.externals if e.name == "_strlen"]
    assert strlen.address == host.process_symbol("strlen")


def test_add_module_with_the_macho_triple(linker, build):
    ln = linker()
    for src in ("lib.ll", "user.ll"):
        obj = ln.add_module(build.ir_text(src), name=src, triple=MACHO)
        assert obj.format == "macho" and obj.symbol_prefix == "_"
    ln.finalize()
    assert ln.function("user_classify_sum", "int(int)")(10) == 1623
    assert ln.function("user_strlens", "int64_t(void)")() == 1910


# --- names ---------------------------------------------------------------------------

ADD_IR = """
define i32 @add(i32 %a, i32 %b) {
  %r = add i32 %a, %b
  ret i32 %r
}

define i32 @main(i32 %argc, ptr %argv) {
  %r = call i32 @add(i32 %argc, i32 41)
  ret i32 %r
}
"""


def test_names_are_published_as_written_and_found_without_the_underscore(linker):
    ln = linker()
    ln.add_object(emit(ADD_IR), name="add.o")
    h = ln.finalize()
    assert {"_add", "_main"} <= set(h.symbols)
    assert not {"add", "main"} & set(h.symbols)
    assert ln.lookup("main") == ln.lookup("_main") == h.symbols["_main"].address
    assert ln.symbol("add").name == "_add"
    assert ln.function("add", "int(int, int)")(2, 40) == 42
    assert ln.function("_add", "int(int, int)")(-2, 2) == 0
    assert ln.function("main", "int(int, char **)")(1, ffi.NULL) == 42
    with pytest.raises(rtdyld.UndefinedSymbolError):
        ln.lookup("__main")


def test_duplicate_and_undefined_names_are_reported_as_written(linker):
    ln = linker()
    ln.add_object(emit(ADD_IR), name="first.o")
    ln.add_object(emit(ADD_IR), name="second.o")
    with pytest.raises(rtdyld.DuplicateSymbolError) as e:
        ln.finalize()
    for part in ("'_add'", "first.o", "second.o"):
        assert part in str(e.value)
    ln.add_object(emit(ARCHIVE_MEMBERS["unused.o"]), name="unused.o")
    with pytest.raises(rtdyld.UndefinedSymbolError) as e:
        ln.finalize()
    assert "'_nowhere', referenced by unused.o: __TEXT,__text+0x" in str(e.value)
    assert ln.handles == []


# --- constructors, commons, weak definitions -------------------------------------------

CTORS_IR = """
@trace = global i32 0
@llvm.global_ctors = appending global [2 x { i32, ptr, ptr }] [
  { i32, ptr, ptr } { i32 65535, ptr @first, ptr null },
  { i32, ptr, ptr } { i32 65535, ptr @second, ptr null }
]

define internal void @first() {
  %v = load i32, ptr @trace
  %m = mul i32 %v, 10
  %a = add i32 %m, 1
  store i32 %a, ptr @trace
  ret void
}

define internal void @second() {
  %v = load i32, ptr @trace
  %m = mul i32 %v, 10
  %a = add i32 %m, 2
  store i32 %a, ptr @trace
  ret void
}

define i32 @get_trace() {
  %v = load i32, ptr @trace
  ret i32 %v
}
"""


def init_func_order(obj) -> list[str]:
    """The functions an object's __mod_init_func lists, in section order."""
    index = [s.name for s in obj.sections].index("__DATA,__mod_init_func")
    relocs = obj.relocs[obj.relocs["section"] == index]
    return [obj.describe_symbol(int(r["sym"])) for r in sorted(relocs, key=lambda r: int(r["offset"]))]


@pytest.mark.parametrize("reloc", IR_RELOCS)
def test_global_ctors_run_from_mod_init_func(linker, reloc):
    ln = linker()
    obj = ln.add_object(emit(CTORS_IR, reloc=reloc), name="ctors.o")
    order = init_func_order(obj)
    assert sorted(order) == ["_first", "_second"]
    ln.finalize()
    # dyld runs __mod_init_func front to back, and so does rtdyld.  (LLVM
    # lists llvm.global_ctors backwards there unless the target machine is
    # told to use init arrays, which llvmlite's is not; the ELF build of the
    # same IR puts them backwards in .ctors, which runs back to front.)
    want = 0
    for name in order:
        want = want * 10 + {"_first": 1, "_second": 2}[name]
    assert ln.function("get_trace", "int(void)")() == want


INIT_TERM_ASM = """
    .text
    .globl _get_trace
_get_trace:
    movl _trace(%rip), %eax
    retq
_step1:
    movl $1, %edi
    jmp Lstep
_step2:
    movl $2, %edi
    jmp Lstep
_step3:
    movl $3, %edi
Lstep:
    imull $10, _trace(%rip), %eax
    addl %edi, %eax
    movl %eax, _trace(%rip)
    retq
_fini1:
    movl $1, %edi
    jmp _record
_fini2:
    movl $2, %edi
    jmp _record
    .mod_init_func
    .quad _step1
    .quad _step2
    .quad _step3
    .mod_term_func
    .quad _fini1
    .quad _fini2
    .data
_trace:
    .long 0
"""


def test_mod_init_and_term_func_order(linker, callback):
    recorded = []
    ln = linker()
    ln.define("record", callback("void(int)", recorded.append))
    data, _ = assemble(INIT_TERM_ASM, name="initterm.s", triple=MACHO)
    ln.add_object(data, name="initterm.o")
    h = ln.finalize()
    assert ln.function("get_trace", "int(void)")() == 123
    assert recorded == []
    h.remove()
    # Terminators run back to front, as dyld runs them.
    assert recorded == [2, 1]


def test_initializers_can_be_left_alone(linker):
    ln = linker(run_initializers=False)
    ln.add_object(emit(CTORS_IR), name="ctors.o")
    ln.finalize()
    assert ln.function("get_trace", "int(void)")() == 0


COMMON_SET_IR = """
@shared = common global i64 0, align 8
@mixed = common global i32 0, align 4

define void @set_shared(i64 %v) {
  store i64 %v, ptr @shared
  ret void
}

define i32 @get_mixed() {
  %v = load i32, ptr @mixed
  ret i32 %v
}
"""

COMMON_GET_IR = """
@shared = common global i64 0, align 8
@aligned = common global [3 x i64] zeroinitializer, align 64

define i64 @get_shared() {
  %v = load i64, ptr @shared
  ret i64 %v
}
"""

# A real definition outranks a tentative one.
MIXED_DEF_IR = "@mixed = global i32 77, align 4\n"


@pytest.mark.parametrize(("reloc", "code_model"), COMBOS, ids=COMBO_IDS)
def test_common_symbols(linker, reloc, code_model):
    ln = linker()
    for name, ir in (("set.o", COMMON_SET_IR), ("get.o", COMMON_GET_IR), ("mixed.o", MIXED_DEF_IR)):
        ln.add_object(emit(ir, reloc, code_model), name=name)
    ln.finalize()
    shared = ln.symbol("shared")
    assert (shared.name, shared.section, shared.size) == ("_shared", "COMMON", 8)
    assert shared.address % 8 == 0
    assert ln.function("get_shared", "int64_t(void)")() == 0
    ln.function("set_shared", "void(int64_t)")(-12345678901)
    assert ln.function("get_shared", "int64_t(void)")() == -12345678901
    assert ctypes.c_int64.from_address(shared.address).value == -12345678901
    aligned = ln.symbol("aligned")
    assert (aligned.section, aligned.size, aligned.address % 64) == ("COMMON", 24, 0)
    mixed = ln.symbol("mixed")
    assert (mixed.origin, mixed.section) == ("mixed.o", "__DATA,__data")
    assert ln.function("get_mixed", "int(void)")() == 77


def weak_module(tag: str, value: int, weak: bool) -> str:
    linkage = "weak " if weak else ""
    return f"""
@wval = {linkage}global i32 {value * 10}

define {linkage}i32 @pick() noinline {{
  ret i32 {value}
}}

define i32 @pick_from_{tag}() {{
  %r = call i32 @pick()
  ret i32 %r
}}

define i32 @wval_from_{tag}() {{
  %v = load i32, ptr @wval
  ret i32 %v
}}
"""


WEAK_CASES = [
    # (modules in link order as (tag, value, weak), the value every caller sees)
    ([("a", 1, True), ("b", 2, False)], 2),
    ([("b", 2, False), ("a", 1, True)], 2),
    ([("a", 1, True), ("c", 3, True)], 1),
    ([("c", 3, True), ("a", 1, True)], 3),
]


@pytest.mark.parametrize(
    ("modules", "winner"), WEAK_CASES, ids=["weak-strong", "strong-weak", "weak-weak", "weak-weak-reversed"]
)
@pytest.mark.parametrize("reloc", IR_RELOCS)
def test_weak_definitions(linker, reloc, modules, winner):
    ln = linker()
    for tag, value, weak in modules:
        ln.add_object(emit(weak_module(tag, value, weak), reloc), name=f"{tag}.o")
    ln.finalize()
    for tag, _, _ in modules:
        assert ln.function(f"pick_from_{tag}", "int(void)")() == winner
        assert ln.function(f"wval_from_{tag}", "int(void)")() == winner * 10
    assert ln.function("pick", "int(void)")() == winner
    winner_tag = next(tag for tag, value, _ in modules if value == winner)
    assert ln.symbol("pick").origin == ln.symbol("wval").origin == f"{winner_tag}.o"


WEAK_UNDEFINED_IR = """
@missing = extern_weak global i32
declare extern_weak i32 @missing_fn()

define ptr @get_missing() {
  ret ptr @missing
}

define i32 @call_if_present() {
  %present = icmp ne ptr @missing_fn, null
  br i1 %present, label %call, label %absent
call:
  %r = call i32 @missing_fn()
  ret i32 %r
absent:
  ret i32 -7
}
"""


@pytest.mark.parametrize(("reloc", "code_model"), COMBOS, ids=COMBO_IDS)
def test_weak_undefined_references_are_null(linker, reloc, code_model):
    ln = linker()
    obj = ln.add_object(emit(WEAK_UNDEFINED_IR, reloc, code_model), name="weakref.o")
    assert {"_missing", "_missing_fn"} <= set(obj.names)
    ln.finalize()
    assert ln.function("get_missing", "void *(void)")() == ffi.NULL
    assert ln.function("call_if_present", "int(void)")() == -7


# --- the host, user definitions and Python callbacks ---------------------------------------

HOST_IR = (
    cstring("msg", "puts from Mach-O")
    + cstring("fmt", "printf: %d %s %.3f %c\n")
    + cstring("word", "macho")
    + """
@exit_ptr = global ptr @_exit

declare i32 @puts(ptr)
declare i32 @printf(ptr, ...)
declare i64 @strlen(ptr)
declare ptr @__errno_location()
declare void @_exit(i32)

define i32 @main(i32 %argc, ptr %argv) {
  %p = call i32 @puts(ptr @msg)
  %n = call i64 @strlen(ptr @word)
  %n32 = trunc i64 %n to i32
  %q = call i32 (ptr, ...) @printf(ptr @fmt, i32 %n32, ptr @word, double 2.5, i32 33)
  %r = add i32 %n32, %argc
  ret i32 %r
}

define ptr @errno_addr() {
  %p = call ptr @__errno_location()
  ret ptr %p
}
"""
)


@pytest.mark.parametrize(("reloc", "code_model"), COMBOS, ids=COMBO_IDS)
def test_calls_to_the_host(linker, reloc, code_model, capfd):
    ln = linker()
    ln.add_object(emit(HOST_IR, reloc, code_model), name="host.o")
    h = ln.finalize()
    capfd.readouterr()
    assert ln.function("main", "int(int, char **)")(1, ffi.NULL) == 6
    host.flush_stdio()
    assert capfd.readouterr().out == "puts from Mach-O\nprintf: 5 macho 2.500 !\n"
    resolved = {e.name: e.address for e in h.batch.externals}
    # Exactly one underscore comes off: _puts is puts, ___errno_location is
    # __errno_location, and __exit is _exit, not exit.
    for macho_name, host_name in (("_puts", "puts"), ("_printf", "printf"), ("_strlen", "strlen"),
                                  ("___errno_location", "__errno_location"), ("__exit", "_exit")):
        assert resolved[macho_name] == host.process_symbol(host_name), macho_name
    assert host.process_symbol("_exit") != host.process_symbol("exit")
    assert read_pointers(ln.lookup("exit_ptr"), 1) == [host.process_symbol("_exit")]
    errno_addr = ln.function("errno_addr", "int *(void)")()
    assert int(ffi.cast("uintptr_t", errno_addr)) == int(ffi.cast("uintptr_t", libc.__errno_location()))


HOST_DATA_IR = """
@stdout = external global ptr
@puts_ptr = global ptr @puts

declare i32 @puts(ptr)

define ptr @stdout_addr() {
  ret ptr @stdout
}

define ptr @stdout_value() {
  %v = load ptr, ptr @stdout
  ret ptr %v
}

define ptr @puts_addr() {
  ret ptr @puts
}
"""


@pytest.mark.parametrize(("reloc", "code_model"), COMBOS, ids=COMBO_IDS)
def test_host_data_and_function_addresses(linker, reloc, code_model):
    ln = linker()
    ln.add_object(emit(HOST_DATA_IR, reloc, code_model), name="hostdata.o")
    ln.finalize()
    stdout, puts = host.process_symbol("stdout"), host.process_symbol("puts")

    def call(name: str) -> int:
        return int(ffi.cast("uintptr_t", ln.function(name, "void *(void)")()))

    assert call("stdout_addr") == stdout
    assert call("stdout_value") == ctypes.c_void_p.from_address(stdout).value
    # A function's address is the host's, never a stub's, from code and from data alike.
    assert call("puts_addr") == read_pointers(ln.lookup("puts_ptr"), 1)[0] == puts


UNDERSCORED_IR = """
declare i32 @_foo(i32)

define i32 @call_foo(i32 %x) {
  %r = call i32 @_foo(i32 %x)
  ret i32 %r
}
"""


def test_user_definitions_lose_exactly_one_underscore(linker, callback):
    ln = linker()
    # The Mach-O name is __foo: it is "_foo" in C terms, never "foo".
    ln.define("foo", callback("int(int)", lambda x: -1))
    ln.define("_foo", callback("int(int)", lambda x: x + 100))
    ln.add_object(emit(UNDERSCORED_IR), name="underscored.o")
    h = ln.finalize()
    assert ln.function("call_foo", "int(int)")(5) == 105
    (ext,) = [e for e in h.batch.externals if e.name == "__foo"]
    assert ext.source == "user definition"


def test_one_underscore_too_many_is_undefined(linker, callback):
    ln = linker()
    ln.define("foo", callback("int(int)", lambda x: -1))
    ln.add_object(emit(UNDERSCORED_IR), name="underscored.o")
    with pytest.raises(rtdyld.UndefinedSymbolError) as e:
        ln.finalize()
    assert "'__foo'" in str(e.value) and "underscored.o" in str(e.value)


CALLBACK_IR = """
declare i32 @cb(i32)

define i32 @twice_cb(i32 %x) {
  %a = call i32 @cb(i32 %x)
  %b = call i32 @cb(i32 %a)
  ret i32 %b
}
"""


@pytest.mark.parametrize(("reloc", "code_model"), COMBOS, ids=COMBO_IDS)
def test_python_callback_called_as_underscore_cb(linker, callback, reloc, code_model):
    seen = []

    def cb(x):
        seen.append(x)
        return 3 * x + 1

    ln = linker()
    ln.define("cb", callback("int(int)", cb))
    ln.add_object(emit(CALLBACK_IR, reloc, code_model), name="cb.o")
    ln.finalize()
    assert ln.function("twice_cb", "int(int)")(2) == 22
    assert seen == [2, 7]


# --- relocations, one by one, through the Python API ------------------------------------------


def fixture_args(name: str) -> list[str]:
    """The fixture's ``# ARGS:`` line, split like a shell would."""
    for line in (MACHO_DIR / name).read_text().splitlines():
        if line.startswith("# ARGS:"):
            return shlex.split(line[len("# ARGS:") :])
    return []


class Linked:
    """A fixture linked on paper as its ARGS line says; reads back what was written."""

    def __init__(self, make, name: str):
        args = fixture_args(name)
        base = int(args[args.index("--target-addr") + 1], 0)
        self.ln = make(memory=VirtualMemory(base=base))
        self.defined = {}
        for i, arg in enumerate(args):
            if arg == "--define-abs":
                sym, _, addr = args[i + 1].partition("=")
                self.defined[sym] = int(addr, 0)
                self.ln.define(sym, int(addr, 0))
        self.obj = self.ln.add_object(assemble_fixture(name), name=name.replace(".s", ".o"))
        self.handle = self.ln.finalize()
        self.batch = self.handle.batch
        self.view = BatchSymbols(self.batch)

    def __call__(self, name: str) -> int:
        return self.view.symbol_address(name)

    def read(self, addr: int, n: int) -> bytes:
        alloc = self.batch.allocation
        offset = addr - alloc.target_base
        assert 0 <= offset and offset + n <= alloc.size, f"{addr:#x} is not in the batch"
        return bytes(alloc.memory[offset : offset + n])

    def i32(self, addr: int) -> int:
        return struct.unpack("<i", self.read(addr, 4))[0]

    def u32(self, addr: int) -> int:
        return struct.unpack("<I", self.read(addr, 4))[0]

    def u64(self, addr: int) -> int:
        return struct.unpack("<Q", self.read(addr, 8))[0]

    def slot(self, name: str) -> int | None:
        return next((self.batch.got[t] for t in self.view.targets_named(name) if t in self.batch.got), None)

    def stub(self, name: str) -> int | None:
        return next((self.batch.stubs[t] for t in self.view.targets_named(name) if t in self.batch.stubs), None)

    def disp(self, label: str, at: int, length: int) -> tuple[int, int]:
        """The rel32 at ``label + at`` and what it points at, for an instruction of ``length`` bytes."""
        d = self.i32(self(label) + at)
        return d, self(label) + length + d

    def relocation_kinds(self) -> set[tuple[str, bool, int]]:
        return relocation_kinds(self.obj)


def relocation_kinds(obj) -> set[tuple[str, bool, int]]:
    """(type without X86_64_RELOC_, against a symbol?, field width) of every relocation."""
    out = set()
    for r in obj.relocs:
        name = obj.reloc_type_name(int(r["rtype"])).replace("X86_64_RELOC_", "")
        extern = int(obj.symbols["type"][r["sym"]]) != SymType.SECTION
        out.add((name, extern, int(WIDTH[r["kind"]])))
    return out


def test_unsigned(linker):
    L = Linked(linker, "unsigned.s")
    assert {("UNSIGNED", True, 8), ("UNSIGNED", False, 8), ("UNSIGNED", True, 4), ("UNSIGNED", False, 4)} <= (
        L.relocation_kinds()
    )
    ext, tgt = L.defined["ext"], L("tgt_end") - 16
    assert L("_ext") == ext
    quads = {
        "q_ext": ext,
        "q_ext_plus": ext + 24,
        "q_ext_minus": ext - 16,
        "q_value": L("_value") + 4,
        "q_sect": tgt,
        "q_sect_plus": tgt + 8,
        "q_code": L("_main") - 1,
    }
    assert {label: L.u64(L(label)) for label in quads} == quads
    longs = {"l_ext": ext, "l_ext_plus": ext + 100, "l_sect": tgt + 4, "l_value": L("_value")}
    assert {label: L.u32(L(label)) for label in longs} == longs
    # The sections really moved: nothing may rely on the object's own layout.
    assert L("_value") != L.obj.symbols["value"][L.obj.names.index("_value")]


# (label, offset of the rel32 in the instruction, instruction length, target)
SIGNED_FIELDS = [
    ("load_ext", 3, 7, "_ext"),
    ("load_ext_plus", 3, 7, ("_ext", 8)),
    ("lea_var", 3, 7, "_var"),
    ("lea_sect", 3, 7, ("tgt_end", -2)),
    ("store1_ext", 2, 7, "_ext"),
    ("store2_ext", 3, 9, "_ext"),
    ("store4_ext", 2, 10, "_ext"),
    ("store1_var", 2, 7, "_var"),
    ("store2_var", 3, 9, "_var"),
    ("store4_var", 2, 10, "_var"),
    ("store4_var2", 2, 10, ("_var", 2)),
    ("store1_ext3", 2, 7, ("_ext", 3)),
    ("store1_sect", 2, 7, ("tgt_end", -4)),
    ("store2_sect", 3, 9, ("tgt_end", -4)),
    ("store4_sect", 2, 10, ("tgt_end", -4)),
]


def test_signed(linker):
    L = Linked(linker, "signed.s")
    kinds = L.relocation_kinds()
    for rtype in ("SIGNED", "SIGNED_1", "SIGNED_2", "SIGNED_4"):
        assert {(rtype, True, 4), (rtype, False, 4)} <= kinds, rtype
    got, want = {}, {}
    for label, at, length, target in SIGNED_FIELDS:
        name, delta = (target, 0) if isinstance(target, str) else target
        got[label] = L.disp(label, at, length)[1]
        want[label] = L(name) + delta
    assert got == want


def test_signed_executes_in_process(linker):
    source = """
    .text
    .globl _stores
_stores:
    movb $0x11, _buf(%rip)
    movw $0x2222, _buf+2(%rip)
    movl $0x33333333, _buf+4(%rip)
    movb $0x44, Lt(%rip)
    movw $0x5555, Lt+1(%rip)
    movl $0x66666666, Lt+3(%rip)
    leaq Lt(%rip), %rax
    retq
    .data
    .globl _buf
_buf:
    .quad 0
    .section __DATA,__targets
    .quad 0
Lt:
    .quad 0
    .globl _t_end
_t_end:
    .quad 0
"""
    data, _ = assemble(source, name="stores.s", triple=MACHO)
    ln = linker()
    ln.add_object(data, name="stores.o")
    ln.finalize()
    lt = int(ffi.cast("uintptr_t", ln.function("stores", "void *(void)")()))
    assert lt == ln.lookup("t_end") - 8
    assert ctypes.string_at(ln.lookup("buf"), 8) == bytes.fromhex("1100222233333333")
    assert ctypes.string_at(lt - 8, 24) == bytes(8) + bytes.fromhex("4455556666666600") + bytes(8)


def test_branch(linker):
    L = Linked(linker, "branch.s")
    assert L.relocation_kinds() == {("BRANCH", True, 4)}
    far, near = L.defined["far"], L.defined["near"]
    stub = L.stub("_far")
    assert stub is not None and L.stub("_near") is None and L.stub("_helper") is None
    assert len(L.batch.stubs) == 1
    want = {"call_local": L("_helper"), "call_near": near, "call_far": stub, "jmp_far": stub, "jmp_near": near}
    # call and jmp rel32 are 5 bytes, the field at byte 1.
    assert {label: L.disp(label, 1, 5)[1] for label in want} == want
    # The stub is jmp *slot(%rip), and the slot holds the far target.
    assert L.read(stub, 2) == b"\xff\x25"
    slot = stub + 6 + L.i32(stub + 2)
    assert slot == L.slot("_far")
    assert L.u64(slot) == far


def test_got_load_is_relaxed_only_in_reach(linker):
    L = Linked(linker, "got_load.s")
    assert L.relocation_kinds() == {("GOT_LOAD", True, 4)}
    assert L.read(L("mov_near"), 3) == b"\x48\x8d\x05"  # leaq _near(%rip), %rax
    assert L.read(L("mov_local"), 3) == b"\x48\x8d\x0d"  # leaq _var(%rip), %rcx
    assert L.read(L("mov_far"), 3) == b"\x48\x8b\x15"  # still movq slot(%rip), %rdx
    assert L.disp("mov_near", 3, 7)[1] == L.defined["near"]
    assert L.disp("mov_local", 3, 7)[1] == L("_var")
    slot = L.disp("mov_far", 3, 7)[1]
    assert slot == L.slot("_far") and L.u64(slot) == L.defined["far"]
    assert L.slot("_near") is None and L.slot("_var") is None
    assert len(L.batch.got) == 1


def test_got(linker):
    L = Linked(linker, "got.s")
    assert L.relocation_kinds() == {("GOT", True, 4)}
    slots = {name: L.slot(name) for name in ("_near", "_far", "_var")}
    assert None not in slots.values() and len(set(slots.values())) == 3
    assert {name: L.u64(s) for name, s in slots.items()} == {
        "_near": L.defined["near"],
        "_far": L.defined["far"],
        "_var": L("_var"),
    }
    # pushq and call * keep their opcodes: only a movq load may be relaxed.
    assert L.read(L("push_near"), 2) == b"\xff\x35"
    assert L.read(L("call_far"), 2) == b"\xff\x15"
    assert L.disp("push_near", 2, 6)[1] == slots["_near"]
    assert L.disp("call_far", 2, 6)[1] == slots["_far"]
    assert L.disp("push_local", 2, 6)[1] == slots["_var"]
    assert L.i32(L("d_got")) == slots["_near"] - L("d_got")
    assert L.i32(L("d_got_end")) == slots["_near"] - (L("d_got_end") + 4)


def test_subtractor(linker):
    L = Linked(linker, "subtractor.s")
    assert L.relocation_kinds() == {("SUBTRACTOR+UNSIGNED", True, 8), ("SUBTRACTOR+UNSIGNED", True, 4),
                                    ("SUBTRACTOR+UNSIGNED", False, 8), ("SUBTRACTOR+UNSIGNED", False, 4)}
    fn, d, far = L("_fn"), L("_d"), L("far_end") - 1
    segments = {L.view.section_name(p): p.segment for p in L.batch.sections}
    assert segments["__TEXT,__mystuff"] != segments["__DATA,__data"]
    quads = {
        "q_d_fn": d - fn,
        "q_fn_d": fn - d + 5,
        "q_fn_here": fn - L("q_fn_here"),
        "q_far_fn": far - fn,
        "q_fn_far": fn - far,
    }
    assert {label: struct.unpack("<q", L.read(L(label), 8))[0] for label in quads} == quads
    longs = {"l_d_fn": d - fn, "l_fn_d": fn - d - 3, "l_far_here": far - L("l_far_here")}
    assert {label: L.i32(L(label)) for label in longs} == longs


def test_subtractor_pairs_with_the_subtrahend_on_either_side():
    # The reader's pairs name S (UNSIGNED's target) and S2 (SUBTRACTOR's).
    obj = read_macho(assemble_fixture("subtractor.s"), "subtractor.o")
    pairs = [(obj.describe_symbol(int(r["sym"])), obj.describe_symbol(int(r["sym2"]))) for r in obj.relocs]
    assert ("_d", "_fn") in pairs and ("_fn", "_d") in pairs
    assert ("__TEXT,__mystuff", "_fn") in pairs and ("_fn", "__TEXT,__mystuff") in pairs


def test_unsigned32_overflow_is_an_error(linker):
    ln = linker(memory=VirtualMemory(base=0x10000))
    ln.define("far", 0x1_0001_0000)
    ln.add_object(assemble_fixture("overflow_unsigned32.s"), name="overflow_unsigned32.o")
    with pytest.raises(rtdyld.RelocationOverflowError) as e:
        ln.finalize()
    for part in ("overflow_unsigned32.o", "__DATA,__data", "X86_64_RELOC_UNSIGNED", "'_far'", "32 bits"):
        assert part in str(e.value)


def test_signed_out_of_reach_is_an_error(linker):
    data, _ = assemble(".text\n.globl _f\n_f:\n  movq _far(%rip), %rax\n  retq\n", name="farload.s", triple=MACHO)
    ln = linker(memory=VirtualMemory(base=0x10000))
    ln.define("far", 0x1_0001_0000)
    ln.add_object(data, name="farload.o")
    with pytest.raises(rtdyld.LayoutError) as e:
        ln.finalize()
    for part in ("farload.o", "X86_64_RELOC_SIGNED", "'_far'", "0x100010000"):
        assert part in str(e.value)


def test_tlv_is_unsupported(linker):
    ln = linker()
    with pytest.raises(rtdyld.UnsupportedRelocationError) as e:
        ln.add_object(assemble_fixture("tlv.s"), name="tlv.o")
    for part in ("tlv.o", "__TEXT,__text", "X86_64_RELOC_TLV", "'_tv'"):
        assert part in str(e.value)
    assert ln.pending == []


def test_tlv_from_ir_is_unsupported(linker):
    ir = "@t = thread_local global i32 5\ndefine i32 @get() {\n  %v = load i32, ptr @t\n  ret i32 %v\n}\n"
    ln = linker()
    with pytest.raises(rtdyld.UnsupportedRelocationError, match="X86_64_RELOC_TLV"):
        ln.add_module(ir, name="tls.ll", triple=MACHO)


# --- rtdyld check on the fixtures -------------------------------------------------------------

CHECKED = sorted(p.name for p in MACHO_DIR.glob("*.s") if "# rtdyld-check:" in p.read_text())


def rtdyld_cli(*args: str | Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "rtdyld", *map(str, args)],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_relocation_type_has_a_checked_fixture():
    assert CHECKED == ["branch.s", "got.s", "got_load.s", "signed.s", "subtractor.s", "unsigned.s"]
    kinds = set().union(*(relocation_kinds(read_macho(assemble_fixture(name), name)) for name in CHECKED))
    types = {rtype for rtype, _, _ in kinds}
    assert types == {"UNSIGNED", "SIGNED", "SIGNED_1", "SIGNED_2", "SIGNED_4", "BRANCH", "GOT_LOAD", "GOT",
                     "SUBTRACTOR+UNSIGNED"}
    for rtype in ("UNSIGNED", "SUBTRACTOR+UNSIGNED"):
        assert {(rtype, extern, width) for extern in (True, False) for width in (4, 8)} <= kinds, rtype
    for rtype in ("SIGNED", "SIGNED_1", "SIGNED_2", "SIGNED_4"):
        assert {(rtype, True, 4), (rtype, False, 4)} <= kinds, rtype


@pytest.mark.parametrize("name", CHECKED)
def test_rtdyld_check(name):
    proc = rtdyld_cli("check", "--triple", MACHO, *fixture_args(name), MACHO_DIR / name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = (MACHO_DIR / name).read_text().count("# rtdyld-check:")
    assert f"{n} passed, 0 failed" in proc.stdout, proc.stdout


def test_rtdyld_check_fails_a_wrong_macho_check(tmp_path):
    checks = tmp_path / "wrong.txt"
    checks.write_text(
        "# rtdyld-check: decode_operand(call_near, 0) = _near - next_pc(call_near)\n"
        "# rtdyld-check: decode_operand(call_far, 0) = _far - next_pc(call_far)\n"
    )
    name = "branch.s"
    proc = rtdyld_cli("check", "--triple", MACHO, *fixture_args(name), "--check", checks, MACHO_DIR / name)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "wrong.txt:2" in proc.stdout + proc.stderr
    assert "wrong.txt:1" not in proc.stdout + proc.stderr


def test_rtdyld_check_reports_tlv():
    proc = rtdyld_cli("check", "--triple", MACHO, "--target-addr", "0x10000", MACHO_DIR / "tlv.s")
    assert proc.returncode == 1
    assert "X86_64_RELOC_TLV" in proc.stderr and "Traceback" not in proc.stderr


# --- malformed objects ---------------------------------------------------------------------


class MachOImage:
    """Offsets of the header fields a test corrupts, found without rtdyld's reader."""

    def __init__(self, data: bytes):
        self.data = bytearray(data)
        ncmds = struct.unpack_from("<I", data, 16)[0]
        self.commands: list[tuple[int, int, int]] = []  # (offset, cmd, cmdsize)
        self.sections: dict[str, int] = {}  # "seg,sect" -> offset of its section_64
        off = 32
        for _ in range(ncmds):
            cmd, size = struct.unpack_from("<II", data, off)
            self.commands.append((off, cmd, size))
            if cmd == 0x19:  # LC_SEGMENT_64
                for k in range(struct.unpack_from("<I", data, off + 64)[0]):
                    h = off + 72 + 80 * k
                    sect, seg = (data[h + i : h + i + 16].rstrip(b"\0").decode() for i in (0, 16))
                    self.sections[f"{seg},{sect}"] = h
            elif cmd == 0x2:  # LC_SYMTAB
                self.symoff, self.nsyms, self.stroff = struct.unpack_from("<III", data, off + 8)
            off += size

    def section(self, name: str) -> dict[str, int]:
        h = self.sections[name]
        size, offset, _, reloff, nreloc = struct.unpack_from("<QIIII", self.data, h + 40)
        return {"size": size, "offset": offset, "reloff": reloff, "nreloc": nreloc}

    def nlist(self, name: str) -> int:
        for k in range(self.nsyms):
            off = self.symoff + 16 * k
            strx = struct.unpack_from("<I", self.data, off)[0]
            start = self.stroff + strx
            if bytes(self.data[start : self.data.index(b"\0", start)]) == name.encode():
                return off
        raise KeyError(name)

    def patched(self, fmt: str, off: int, value: int) -> bytes:
        out = bytearray(self.data)
        struct.pack_into(fmt, out, off, value)
        return bytes(out)


def rejected(make, data: bytes, *parts: str) -> str:
    ln = make()
    with pytest.raises(rtdyld.MalformedObjectError) as e:
        ln.add_object(data, name="bad.o")
    message = str(e.value)
    assert message.startswith("bad.o: "), message
    for part in parts:
        assert part in message, message
    assert ln.pending == []
    return message


@pytest.fixture(scope="module")
def image() -> MachOImage:
    return MachOImage(emit(HOST_IR))


def test_good_image_is_accepted(linker, image):
    ln = linker()
    ln.add_object(bytes(image.data), name="good.o")
    ln.finalize()
    assert ln.lookup("main")


def test_truncated_load_command(linker, image):
    off, cmd, _ = image.commands[0]
    assert cmd == 0x19
    # cmdsize too small for the segment's section headers.
    rejected(linker, image.patched("<I", off + 4, 72), "load command 0", "LC_SEGMENT_64", "truncated")
    number, (symtab, _, _) = next((i, c) for i, c in enumerate(image.commands) if c[1] == 0x2)
    rejected(
        linker, image.patched("<I", symtab + 4, 8), f"load command {number} (LC_SYMTAB)", "truncated", "cmdsize 8 < 24"
    )
    # The file ends in the middle of the load commands.
    rejected(linker, bytes(image.data[: off + 40]), "load commands", "past the end of the file")


def test_relocation_past_its_section(linker, image):
    text = image.section("__TEXT,__text")
    assert text["nreloc"] > 0
    first = text["reloff"]
    rejected(
        linker,
        image.patched("<i", first, text["size"] - 2),
        "__TEXT,__text",
        f"offset {text['size'] - 2:#x}: X86_64_RELOC_",
        "4-byte field runs past the end of the section",
    )


def test_symbol_with_a_bad_section_number(linker, image):
    main = image.nlist("_main")
    rejected(linker, image.patched("<B", main + 5, 200), "'_main'", "section number 200")
    rejected(linker, image.patched("<B", main + 5, 0), "'_main'", "section number 0")


# --- archives of Mach-O objects ------------------------------------------------------------

ARCHIVE_PROG_IR = """
declare i32 @add(i32, i32)

define i32 @main(i32 %argc, ptr %argv) {
  %r = call i32 @add(i32 %argc, i32 10)
  ret i32 %r
}
"""

ARCHIVE_MEMBERS = {
    "add.o": """
declare i32 @helper(i32)
define i32 @add(i32 %a, i32 %b) {
  %s = add i32 %a, %b
  %r = call i32 @helper(i32 %s)
  ret i32 %r
}
""",
    "helper.o": """
@bias = global i32 1000
define i32 @helper(i32 %x) {
  %b = load i32, ptr @bias
  %r = add i32 %x, %b
  ret i32 %r
}
""",
    "mul.o": """
define i32 @mul(i32 %a, i32 %b) {
  %r = mul i32 %a, %b
  ret i32 %r
}
""",
    # Never needed: loading it would fail on its undefined _nowhere.
    "unused.o": """
declare i32 @nowhere()
define i32 @unused() {
  %r = call i32 @nowhere()
  ret i32 %r
}
""",
}

ARCHIVE_BOTH_IR = """
declare i32 @add(i32, i32)
declare i32 @mul(i32, i32)

define i32 @both(i32 %x) {
  %a = call i32 @add(i32 %x, i32 %x)
  %m = call i32 @mul(i32 %a, i32 3)
  ret i32 %m
}
"""

ARCHIVE_SYMDEF = [("_add", 0), ("_helper", 1), ("_bias", 1), ("_mul", 2), ("_unused", 3)]


@pytest.mark.parametrize(
    ("symdef", "layout"),
    [
        (ARCHIVE_SYMDEF, {}),
        (ARCHIVE_SYMDEF, {"sorted": True, "use_64": True, "long_names": True}),
        # No __.SYMDEF: the members themselves say what they define.
        (None, {}),
    ],
    ids=["symdef", "symdef64-sorted-longnames", "no-index"],
)
@pytest.mark.parametrize("reloc", IR_RELOCS)
def test_bsd_archive_of_macho_members(linker, tmp_path, reloc, symdef, layout):
    members = [(name, emit(ir, reloc)) for name, ir in ARCHIVE_MEMBERS.items()]
    lib = write_bsd_archive(tmp_path / "libmacho.a", members, symdef, **layout)
    ln = linker()
    ln.add_archive(lib)
    ln.add_object(emit(ARCHIVE_PROG_IR, reloc), name="prog.o")
    first = ln.finalize()
    assert first.objects == ["prog.o", "libmacho.a(add.o)", "libmacho.a(helper.o)"]
    assert ln.function("main", "int(int, char **)")(5, ffi.NULL) == 1015
    assert ln.symbol("helper").origin == "libmacho.a(helper.o)"
    # A later batch pulls what it needs and no more; add.o is already loaded.
    ln.add_object(emit(ARCHIVE_BOTH_IR, reloc), name="both.o")
    second = ln.finalize()
    assert second.objects == ["both.o", "libmacho.a(mul.o)"]
    assert ln.function("both", "int(int)")(1) == 3 * 1002


# --- the command line ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def host_object(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("macho") / "prog.o"
    path.write_bytes(emit(HOST_IR))
    return path


def test_rtdyld_run_macho_object(host_object):
    proc = rtdyld_cli("run", host_object, "--", "a", "b")
    assert proc.stdout == "puts from Mach-O\nprintf: 5 macho 2.500 !\n", proc.stderr
    assert proc.stderr == ""
    assert proc.returncode == 5 + 3


def test_rtdyld_run_ir_with_the_macho_triple(tmp_path):
    src = tmp_path / "host.ll"
    src.write_text(HOST_IR)
    proc = rtdyld_cli("run", "--triple", MACHO, src)
    assert proc.stdout == "puts from Mach-O\nprintf: 5 macho 2.500 !\n", proc.stderr
    assert proc.returncode == 6


def test_rtdyld_symbols_shows_names_as_written(host_object):
    proc = rtdyld_cli("symbols", host_object)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    by_name = {row[5]: row for row in rows if len(row) >= 7}
    assert {"_main", "_errno_addr", "_exit_ptr"} <= set(by_name)
    assert not {"main", "errno_addr"} & set(by_name)
    assert by_name["_main"][6] == f"{host_object}(__TEXT,__text)"
    assert by_name["_main"][2:4] == ["FUNC", "GLOBAL"]
    for name in ("_puts", "_printf", "_strlen", "__exit", "___errno_location"):
        assert by_name[name][3] == "EXTERNAL" and "libc" in by_name[name][6], name
