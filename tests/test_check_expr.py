"""The check language on its own: extraction, parsing, evaluation against a
fake link, decode_operand's operand numbering, and assembly input.

The operand layouts below were checked against LLVM's disassembler
(``llvm-mc --disassemble -show-inst``); the tests themselves need no LLVM
tools.
"""

from __future__ import annotations

import struct

import pytest

from rtdyld.asm import assemble, object_name
from rtdyld.check import (
    Check,
    CheckError,
    CheckResult,
    decode,
    evaluate,
    extract_checks,
    parse,
)
from rtdyld.errors import LinkError, MalformedObjectError

BASE = 0x10000
GOT = 0x20000
STUB = 0x30000
SECTION = 0x40000


class FakeEnv:
    """A linked image: symbols, one block of memory at BASE, canned GOT,
    stub and section addresses; records what the evaluator asked for."""

    def __init__(self, symbols: dict[str, int] | None = None, memory: bytes = b""):
        self.symbols = dict(symbols or {})
        self.memory = bytearray(memory)
        self.calls: list[tuple] = []

    def place(self, name: str, addr: int, data: bytes) -> None:
        self.symbols[name] = addr
        end = addr - BASE + len(data)
        if len(self.memory) < end:
            self.memory.extend(bytes(end - len(self.memory)))
        self.memory[addr - BASE : end] = data

    def symbol_address(self, name: str) -> int:
        if name not in self.symbols:
            raise CheckError(f"unknown symbol '{name}'")
        return self.symbols[name]

    def read_memory(self, addr: int, size: int) -> bytes:
        if not BASE <= addr < BASE + len(self.memory):
            raise CheckError(f"address {addr:#x} is not in linked memory")
        return bytes(self.memory[addr - BASE : addr - BASE + size])

    def section_address(self, file: str, section: str) -> int:
        self.calls.append(("section", file, section))
        if file != "test.o":
            raise CheckError(f"no object named '{file}'")
        return SECTION

    def got_address(self, file: str, symbol: str) -> int:
        self.calls.append(("got", file, symbol))
        return GOT

    def stub_address(self, file: str, section: str | None, symbol: str) -> int:
        self.calls.append(("stub", file, section, symbol))
        return STUB + (0x10 if section else 0)


def check(text: str, source: str = "t.s", line: int = 7) -> Check:
    return Check(source, line, " " + text, column=17)


def value_of(expr: str, env: FakeEnv | None = None) -> int:
    """The value of ``expr`` (as the left side of a check)."""
    return evaluate(check(f"{expr} = 0"), env or FakeEnv()).lhs


def holds(text: str, env: FakeEnv | None = None) -> bool:
    return evaluate(check(text), env or FakeEnv()).passed


def error_of(text: str, env: FakeEnv | None = None) -> CheckError:
    with pytest.raises(CheckError) as info:
        evaluate(check(text), env or FakeEnv())
    return info.value


# -- evaluation order and arithmetic -------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("1 + 2 << 3", 24),
        ("2 << 3 + 1", 17),
        ("1+2<<3", 24),
        ("10 - 2 - 3", 5),
        ("6 & 3 | 8", 10),
        ("6 | 1 & 3", 3),
        ("0xf0 >> 4 + 1", 16),
        ("2 << (3 + 1)", 32),
        ("(1 + 2) << (1 + 1)", 12),
        ("((7))", 7),
    ],
)
def test_binary_operators_run_left_to_right_without_precedence(expr, expected):
    assert value_of(expr) == expected


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("0x10", 16),
        ("0xABCdef", 0xABCDEF),
        ("42", 42),
        ("0", 0),
        ("010", 8),  # a leading 0 is octal, as in LLVM
        ("0xffffffffffffffff", 2**64 - 1),
        ("18446744073709551615", 2**64 - 1),
    ],
)
def test_numbers(expr, expected):
    assert value_of(expr) == expected


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("0 - 1", 2**64 - 1),
        ("0xffffffffffffffff + 2", 1),
        ("1 << 63 >> 63", 1),
        ("1 << 64", 0),
        ("3 << 0xffffffffffffffff", 0),
        ("0xffffffffffffffff >> 64", 0),
        ("0x8000000000000000 + 0x8000000000000000", 0),
    ],
)
def test_values_wrap_modulo_2_to_the_64(expr, expected):
    assert value_of(expr) == expected


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("0x1234[11:4]", 0x23),
        ("0x1234[0xb:0x4]", 0x23),
        ("0x1234[15:0]", 0x1234),
        ("0x8000000000000000[63:63]", 1),
        ("0xffffffffffffffff[63:0]", 2**64 - 1),
        ("(0x1200 + 0x34)[7:0]", 0x34),
        ("0x100 + 0x1234[3:0]", 0x104),
        ("0x1234 [ 7 : 4 ]", 3),
    ],
)
def test_slices_take_bits_high_to_low_shifted_down(expr, expected):
    assert value_of(expr) == expected


# -- loads ---------------------------------------------------------------

DATA = bytes(range(1, 17))


def data_env() -> FakeEnv:
    env = FakeEnv()
    env.place("data", BASE + 0x100, DATA)
    env.place("ptr", BASE + 0x200, struct.pack("<Q", BASE + 0x100))
    return env


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("*{1}data", 0x01),
        ("*{2}data", 0x0201),
        ("*{4}data", 0x04030201),
        ("*{8}data", 0x0807060504030201),
        ("*{3}data", 0x030201),
        ("*{8}(data + 8)", 0x100F0E0D0C0B0A09),
        ("*{8}ptr", BASE + 0x100),
        ("*{1}(*{8}ptr)", 0x01),
        ("(*{4}data)[15:8]", 0x02),
    ],
)
def test_loads_read_little_endian(expr, expected):
    assert value_of(expr, data_env()) == expected


def test_a_load_address_is_the_whole_expression_after_it():
    # As in LLVM, '*{1}data + 1' reads the byte at data + 1.
    env = data_env()
    assert value_of("*{1}data + 1", env) == 0x02
    assert value_of("(*{1}data) + 1", env) == 0x02
    assert value_of("(*{1}data) + 4", env) == 0x05
    assert value_of("*{1}data + 4", env) == 0x05
    assert value_of("1 + *{1}data + 2", env) == 1 + 0x03


def test_a_load_outside_linked_memory_is_an_error_at_the_load():
    err = error_of("*{4}0x99 = 0", data_env())
    assert "0x99 is not in linked memory" in str(err)
    assert (err.source, err.line, err.column) == ("t.s", 7, 18)


def test_a_load_past_the_end_of_memory_is_an_error():
    env = data_env()
    end = BASE + len(env.memory)
    err = error_of(f"*{{8}}{end - 4:#x} = 0", env)
    assert "cannot load 8 bytes" in str(err)
    assert "only 4" in str(err)


# -- symbols and builtins ------------------------------------------------


def test_symbols_evaluate_to_their_addresses():
    env = FakeEnv({"foo": 0x1000, "_main": 0x2000, "a.b$c": 3, "x:y": 4, "L_x": 5})
    assert holds("foo + 0x10 = 0x1010", env)
    assert holds("_main - foo = 0x1000", env)
    assert holds("a.b$c + x:y + L_x = 12", env)


def test_an_unknown_symbol_is_an_error_naming_it_and_where():
    err = error_of("foo + nosuch = 1", FakeEnv({"foo": 1}))
    assert isinstance(err, LinkError)
    assert str(err).startswith("t.s:7:24: unknown symbol 'nosuch'")


def test_section_addr_passes_file_and_section_names_as_written():
    env = FakeEnv()
    assert holds("section_addr(test.o, .text) = 0x40000", env)
    assert holds("section_addr( test.o , __TEXT,__text ) + 8 = 0x40008", env)
    assert env.calls == [("section", "test.o", ".text"), ("section", "test.o", "__TEXT,__text")]


def test_section_addr_errors_come_from_the_environment_with_a_location():
    err = error_of("section_addr(other.o, .text) = 0")
    assert "no object named 'other.o'" in str(err)
    assert err.column == 18


def test_got_and_stub_addresses():
    env = FakeEnv()
    assert holds("got_addr(test.o, foo) = 0x20000", env)
    assert holds("stub_addr(test.o, _foo) = 0x30000", env)
    assert holds("stub_addr(test.o/.text, foo) = 0x30010", env)
    assert holds("stub_addr(test.o/__text, foo) - stub_addr(test.o, foo) = 0x10", env)
    assert env.calls == [
        ("got", "test.o", "foo"),
        ("stub", "test.o", None, "_foo"),
        ("stub", "test.o", ".text", "foo"),
        ("stub", "test.o", "__text", "foo"),
        ("stub", "test.o", None, "foo"),
    ]


def test_loading_a_got_entry():
    env = FakeEnv({"foo": BASE + 0x40})
    env.memory = bytearray(0x20)
    env.got_address = lambda file, symbol: BASE + 8
    env.memory[8:16] = struct.pack("<Q", BASE + 0x40)
    assert holds("*{8}(got_addr(test.o, foo)) = foo", env)
    assert holds("*{8}got_addr(test.o, foo) = foo", env)


# -- decode_operand and next_pc ------------------------------------------


def place_code(env: FakeEnv, label: str, addr: int, code: bytes) -> None:
    env.place(label, addr, code)


def rel32(source: int, size: int, target: int) -> bytes:
    return struct.pack("<i", target - (source + size))


def test_decode_operand_of_a_rip_relative_load_is_the_displacement():
    env = FakeEnv()
    insn = BASE + 0x10
    foo = BASE + 0x800
    place_code(env, "insn", insn, b"\x48\x8b\x05" + rel32(insn, 7, foo))  # movq foo(%rip), %rax
    env.symbols["foo"] = foo
    assert holds("decode_operand(insn, 4) = foo - next_pc(insn)", env)
    assert holds("next_pc(insn) = insn + 7", env)
    assert holds("decode_operand(insn, 2) = 1", env)  # scale


def test_decode_operand_of_call_jmp_and_jcc_is_the_encoded_displacement():
    env = FakeEnv({"target": BASE + 0x400, "back": BASE})
    call, jmp, jne, jmp8 = BASE + 0x100, BASE + 0x105, BASE + 0x10A, BASE + 0x110
    place_code(env, "call", call, b"\xe8" + rel32(call, 5, BASE + 0x400))
    place_code(env, "jmp", jmp, b"\xe9" + rel32(jmp, 5, BASE + 0x400))
    place_code(env, "jne", jne, b"\x0f\x85" + rel32(jne, 6, BASE))
    place_code(env, "jmp8", jmp8, b"\xeb\xfe")
    assert holds("decode_operand(call, 0) = target - next_pc(call)", env)
    assert holds("decode_operand(jmp, 0) = target - next_pc(jmp)", env)
    assert holds("decode_operand(jne, 0) = back - next_pc(jne)", env)
    assert holds("decode_operand(jne, 1) = 5", env)  # X86::COND_NE
    assert holds("decode_operand(jmp8, 0) = 0 - 2", env)


def test_decode_operand_with_a_label_offset():
    env = FakeEnv()
    place_code(env, "pair", BASE, bytes.fromhex("9048b88877665544332211"))  # nop; movabs
    assert holds("decode_operand(pair + 1, 1) = 0x1122334455667788", env)


def test_decode_operand_errors():
    env = FakeEnv()
    place_code(env, "insn", BASE, bytes.fromhex("488b0500100000"))
    place_code(env, "bad", BASE + 0x20, b"\x06")  # push %es: invalid in 64-bit mode
    err = error_of("decode_operand(insn, 0) = 0", env)
    assert "operand 0 of instruction 'insn' (movq 0x1000(%rip), %rax) is not an immediate" in str(err)
    err = error_of("decode_operand(insn, 6) = 0", env)
    assert "invalid operand index 6" in str(err) and "only 6 operands" in str(err)
    err = error_of("decode_operand(bad, 0) = 0", env)
    assert "'bad': cannot decode an instruction at 0x10020" in str(err)
    err = error_of("next_pc(nosuch) = 0", env)
    assert "unknown symbol 'nosuch'" in str(err)


# LLVM MCInst operands: an int is an immediate, a str a register ("" = none).
# Every layout was checked against LLVM 14's disassembler.
OPERANDS = [
    ("e8fb000000", "CALL64pcrel32", [0xFB]),
    ("ebfe", "JMP_1", [-2]),
    ("e900010000", "JMP_4", [0x100]),
    ("75f9", "JCC_1", [-7, 5]),
    ("0f8e10000000", "JCC_4", [0x10, 14]),
    ("488b0578563412", "MOV64rm", ["rax", "rip", 1, "", 0x12345678, ""]),
    ("48890df0ffffff", "MOV64mr", ["rip", 1, "", -0x10, "", "rcx"]),
    ("8b548df8", "MOV32rm", ["edx", "rbp", 4, "rcx", -8, ""]),
    ("488d3d00100000", "LEA64r", ["rdi", "rip", 1, "", 0x1000, ""]),
    ("48b88877665544332211", "MOV64ri", ["rax", 0x1122334455667788]),
    ("b800000080", "MOV32ri", ["eax", 0x80000000]),
    ("48c7c0ffffffff", "MOV64ri32", ["rax", -1]),
    ("b0ff", "MOV8ri", ["al", -1]),
    ("48c70500100000feffffff", "MOV64mi32", ["rip", 1, "", 0x1000, "", -2]),
    ("c7050010000000000080", "MOV32mi", ["rip", 1, "", 0x1000, "", 0x80000000]),
    ("f20f100500100000", "MOVSDrm", ["xmm0", "rip", 1, "", 0x1000, ""]),
    ("f30f100d00100000", "MOVSSrm", ["xmm1", "rip", 1, "", 0x1000, ""]),
    ("0f281500100000", "MOVAPSrm", ["xmm2", "rip", 1, "", 0x1000, ""]),
    ("f20f111d00100000", "MOVSDmr", ["rip", 1, "", 0x1000, "", "xmm3"]),
    ("c5fb100500100000", "VMOVSDrm", ["xmm0", "rip", 1, "", 0x1000, ""]),
    ("48030500100000", "ADD64rm", ["rax", "rax", "rip", 1, "", 0x1000, ""]),
    ("48010500100000", "ADD64mr", ["rip", 1, "", 0x1000, "", "rax"]),
    ("2b0d00100000", "SUB32rm", ["ecx", "ecx", "rip", 1, "", 0x1000, ""]),
    ("483b0500100000", "CMP64rm", ["rax", "rip", 1, "", 0x1000, ""]),
    ("833d0010000007", "CMP32mi8", ["rip", 1, "", 0x1000, "", 7]),
    ("f20f580500100000", "ADDSDrm_Int", ["xmm0", "xmm0", "rip", 1, "", 0x1000, ""]),
    ("f2480f2a0500100000", "CVTSI642SDrm_Int", ["xmm0", "xmm0", "rip", 1, "", 0x1000, ""]),
    ("480500100000", "ADD64i32", [0x1000]),
    ("48c1e090", "SHL64ri", ["rax", "rax", 0x90]),
    ("48d3e0", "SHL64rCL", ["rax", "rax"]),
    ("480f450500100000", "CMOV64rm", ["rax", "rax", "rip", 1, "", 0x1000, "", 5]),
    ("0f94c0", "SETCCr", ["al", 4]),
    ("486b050010000064", "IMUL64rmi8", ["rax", "rip", 1, "", 0x1000, "", 100]),
    ("ff1500100000", "CALL64m", ["rip", 1, "", 0x1000, ""]),
    ("ff2500100000", "JMP64m", ["rip", 1, "", 0x1000, ""]),
    ("64488b042528000000", "MOV64rm", ["rax", "", 1, "", 0x28, "fs"]),
    ("48a18877665544332211", "MOV64ao64", [0x1122334455667788, ""]),
    ("f3a4", "MOVSB", ["rdi", "rsi", ""]),
]


@pytest.mark.parametrize(("code", "opcode", "expected"), OPERANDS, ids=[f"{o[1]}-{o[0]}" for o in OPERANDS])
def test_operand_numbering_matches_llvm(code, opcode, expected):
    insn = decode(bytes.fromhex(code) + b"\xcc" * 8, 0x1000)
    assert insn.size == len(code) // 2
    got = [op.value if op.kind == "imm" else op.register for op in insn.operands]
    assert got == expected


def test_a_lock_prefix_decodes_as_an_instruction_of_its_own():
    insn = decode(bytes.fromhex("f048ff0500100000"), 0x1000)
    assert (insn.size, insn.operands, insn.next_pc) == (1, (), 0x1001)


def test_decode_operand_values_are_unsigned_64_bit():
    env = FakeEnv()
    place_code(env, "store", BASE, bytes.fromhex("48890df0ffffff"))  # movq %rcx, -0x10(%rip)
    assert holds("decode_operand(store, 3) = 0xfffffffffffffff0", env)
    assert holds("decode_operand(store, 3) = 0 - 0x10", env)


def test_checks_on_assembled_code():
    elftools = pytest.importorskip("elftools.elf.elffile")
    source = """\
        .text
insn_load:
        movq foo(%rip), %rax
insn_add:
        addq foo(%rip), %rcx
insn_sse:
        movsd foo(%rip), %xmm0
insn_call:
        callq bar
insn_abs:
        movabsq $0x1122334455667788, %rdx
bar:
        retq
        .p2align 3
foo:
        .quad 0x0123456789abcdef
# rtdyld-check: decode_operand(insn_load, 4) = foo - next_pc(insn_load)
# rtdyld-check: decode_operand(insn_add, 5) = foo - next_pc(insn_add)
# rtdyld-check: decode_operand(insn_sse, 4) = foo - next_pc(insn_sse)
# rtdyld-check: decode_operand(insn_call, 0) = bar - next_pc(insn_call)
# rtdyld-check: decode_operand(insn_abs, 1) = 0x1122334455667788
# rtdyld-check: *{8}foo = 0x0123456789abcdef
# rtdyld-check: (*{8}foo)[63:56] = 0x01
"""
    import io

    obj, name = assemble(source, "sample.s", "x86_64-unknown-linux-gnu")
    assert name == "sample.o"
    elf = elftools.ELFFile(io.BytesIO(obj))
    text = elf.get_section_by_name(".text").data()
    env = FakeEnv(memory=text)
    for sym in elf.get_section_by_name(".symtab").iter_symbols():
        if sym.name:
            env.symbols[sym.name] = BASE + sym["st_value"]
    checks = extract_checks(source, source="sample.s")
    assert len(checks) == 7
    for c in checks:
        result = evaluate(c, env)
        assert result.passed, result.message


# -- results and messages ------------------------------------------------


def test_result_message_names_file_line_expression_and_values():
    env = FakeEnv({"foo": 0x1238})
    result = evaluate(Check("file.s", 12, "  foo  -  4 =   foo"), env)
    assert isinstance(result, CheckResult)
    assert (result.lhs, result.rhs, result.passed) == (0x1234, 0x1238, False)
    assert result.message == "file.s:12: check failed: foo - 4 = foo: 0x1234 != 0x1238"
    ok = evaluate(Check("file.s", 13, " foo = 0x1238"), env)
    assert ok.passed
    assert ok.message == "file.s:13: check passed: foo = 0x1238: 0x1238 == 0x1238"


# -- syntax errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("1 + = 2", 22, "unexpected end of expression"),
        ("(1 + 2 = 3", 25, "expected ')' to close '('"),
        ("foo bar = 1", 22, "unexpected 'bar'"),
        ("1 = 2 3", 24, "unexpected '3'"),
        ("x", 19, "expected '='"),
        ("= 1", 18, "expected an expression before '='"),
        ("1 =", 21, "expected an expression after '='"),
        ("*{9}foo = 1", 20, "invalid load size 9"),
        ("*foo = 1", 19, "expected '{' after '*'"),
        ("*{4 foo = 1", 22, "expected '}' after the load size"),
        ("0x10[3:4] = 1", 22, "invalid slice [3:4]"),
        ("0x10[64:0] = 1", 22, "invalid slice [64:0]"),
        ("0x10[3 4] = 1", 25, "expected ':' in a slice"),
        ("08 = 1", 18, "invalid octal number '08'"),
        ("0x = 1", 20, "expected hex digits after '0x'"),
        ("0x10000000000000000 = 1", 18, "does not fit in 64 bits"),
        ("foo ^ 2 = 1", 22, "unexpected '^'"),
        ("@foo = 1", 18, "unexpected '@'"),
        (".Lfoo = 1", 18, "unexpected '.Lfoo'"),
        ("next_pc = 1", 26, "expected '(' after 'next_pc'"),
        ("next_pc(insn = 1", 31, "expected ')' to close 'next_pc('"),
        ("decode_operand(insn - 1, 0) = 1", 38, "expected '+' for an offset or ','"),
        ("decode_operand(insn, x) = 1", 39, "expected an operand index"),
        ("decode_operand(3, 0) = 1", 33, "expected an instruction label"),
        ("got_addr(test.o foo) = 1", 27, "expected ',' after a file name"),
        ("stub_addr(test.o, foo, kind) = 1", 39, "stub kind filters are not supported"),
        ("section_addr(test.o, ) = 1", 39, "expected a section name"),
        ("section_addr(, .text) = 1", 31, "expected a file name"),
    ],
)
def test_syntax_errors_name_file_line_and_column(text, column, fragment):
    with pytest.raises(CheckError) as info:
        parse(check(text))
    err = info.value
    assert fragment in str(err)
    assert (err.source, err.line, err.column) == ("t.s", 7, column)
    assert str(err).startswith(f"t.s:7:{column}: ")


def test_syntax_error_hint_has_a_caret_under_the_token():
    with pytest.raises(CheckError) as info:
        parse(Check("f.s", 3, " foo + (bar = 1", column=16))
    lines = str(info.value).splitlines()
    assert lines[0] == "f.s:3:28: expected ')' to close '(', found end of expression"
    assert lines[1] == "  foo + (bar = 1"
    assert lines[2] == "             ^"


def test_syntax_errors_are_found_before_anything_is_evaluated():
    # The environment knows no symbol; the syntax error is reported first.
    err = error_of("nosuch + (1 = 2")
    assert "expected ')'" in str(err)


def test_an_empty_check_is_an_error():
    with pytest.raises(CheckError, match="empty check"):
        parse(Check("f.s", 1, "   "))


# -- extraction ----------------------------------------------------------

SOURCE = """\
        .text
# rtdyld-check: foo = 1
foo:    retq          # rtdyld-check: not = extracted
  // jitlink-check: bar = 2
;rtdyld-check:baz=3
# CHECK: not = a check
#rtdyld-check:
# rtdyld-check: decode_operand(insn, 4) = \\
# rtdyld-check:    foo - next_pc(insn)
"""


def test_extract_checks_finds_prefixed_comment_lines():
    checks = extract_checks(SOURCE, source="x.s")
    assert [(c.line, c.text) for c in checks] == [
        (2, " foo = 1"),
        (4, " bar = 2"),
        (5, "baz=3"),
        (8, " decode_operand(insn, 4) =     foo - next_pc(insn)"),
    ]
    assert all(c.source == "x.s" for c in checks)
    assert [c.column for c in checks] == [16, 20, 15, 16]


def test_extract_checks_with_other_prefixes():
    checks = extract_checks(SOURCE, prefixes=("jitlink-check",))
    assert [c.text for c in checks] == [" bar = 2"]
    checks = extract_checks("# CHECK-FOO: 1 = 1\n# CHECK: 2 = 2\n", prefixes=["CHECK-FOO"])
    assert [c.text for c in checks] == [" 1 = 1"]


def test_continuation_lines_are_joined_as_llvm_joins_them():
    text = "# rtdyld-check: foo\\\n# rtdyld-check:+2 = 3\n"
    (c,) = extract_checks(text)
    assert c.text == " foo+2 = 3"  # nothing is inserted between the pieces
    assert c.pieces == ((0, 1, 16), (4, 2, 16))
    assert holds(c.text, FakeEnv({"foo": 1}))


def test_continuation_may_be_a_plain_comment_after_blank_lines():
    text = "# rtdyld-check: 1 + \\  \n\n#   2 + \\\n// 3 = 6\nnop\n"
    (c,) = extract_checks(text)
    assert (c.line, c.text) == (1, " 1 +    2 +  3 = 6")
    assert evaluate(c, FakeEnv()).passed


def test_a_non_comment_line_ends_a_continued_check():
    text = "# rtdyld-check: 1 = \\\n  nop\n# rtdyld-check: 2 = 2\n"
    checks = extract_checks(text)
    assert [(c.line, c.text) for c in checks] == [(1, " 1 = "), (3, " 2 = 2")]


def test_errors_in_continued_checks_point_at_the_right_line():
    text = "nop\n# rtdyld-check: foo + \\\n# rtdyld-check:   (bar = 1\n"
    (c,) = extract_checks(text, source="cont.s")
    with pytest.raises(CheckError) as info:
        parse(c)
    err = info.value
    assert (err.line, err.column) == (3, 24)


def test_crlf_line_endings():
    checks = extract_checks("nop\r\n# rtdyld-check: 1 = 1\r\n# rtdyld-check: 2 = 2\r\n")
    assert [(c.line, c.text) for c in checks] == [(2, " 1 = 1"), (3, " 2 = 2")]


# -- assembly input ------------------------------------------------------


def test_assemble_elf():
    obj, name = assemble("foo:\n  movq $1, %rax\n  ret\n", "dir/foo.s", "x86_64-unknown-linux-gnu")
    assert obj[:4] == b"\x7fELF"
    assert obj[4] == 2  # ELFCLASS64
    assert struct.unpack_from("<H", obj, 18)[0] == 62  # EM_X86_64
    assert name == "foo.o"


def test_assemble_macho():
    obj, name = assemble("_foo:\n  callq _bar\n  retq\n", "foo.s", "x86_64-apple-macosx10.15")
    assert obj[:4] == b"\xcf\xfa\xed\xfe"  # MH_MAGIC_64, little-endian
    assert struct.unpack_from("<I", obj, 4)[0] == 0x01000007  # CPU_TYPE_X86_64
    assert name == "foo.o"


def test_assemble_defaults_to_the_host_triple():
    obj, name = assemble("ret\n")
    assert name == "input.o"
    assert obj[:4] in (b"\x7fELF", b"\xcf\xfa\xed\xfe")


def test_assemble_keeps_quotes_backslashes_and_non_ascii_text():
    source = '.section .rodata\ns: .asciz "a\\"b\\\\c \u00e9"\n'
    obj, _ = assemble(source, "s.s", "x86_64-unknown-linux-gnu")
    assert 'a"b\\c \u00e9\0'.encode() in obj


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("foo:\n  bogus %rax\n", "bad.s:2:3: invalid instruction mnemonic 'bogus'"),
        ("  movq $1, %zz\n", "bad.s:1:"),
    ],
)
def test_assembly_errors_are_malformed_object_errors(source, fragment):
    with pytest.raises(MalformedObjectError) as info:
        assemble(source, "bad.s", "x86_64-unknown-linux-gnu")
    assert fragment in str(info.value)


def test_an_unknown_triple_is_a_malformed_object_error():
    with pytest.raises(MalformedObjectError, match="bad.s: .*no-such-arch"):
        assemble("ret\n", "bad.s", "no-such-arch-unknown-linux")


@pytest.mark.parametrize(
    ("name", "expected"),
    [("foo.s", "foo.o"), ("dir/sub/foo.S", "foo.o"), ("foo", "foo.o"), ("a.b.s", "a.b.o")],
)
def test_object_name(name, expected):
    assert object_name(name) == expected
