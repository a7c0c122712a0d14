"""Every relocation type the core applies, proven by `rtdyld check`.

Each fixture in fixtures/asm/ is assembled at test time, linked at a fixed
target address (its ``# ARGS:`` line) and its ``# rtdyld-check:`` lines are
evaluated against the linked memory.  The trace of the same link confirms
the fixture really exercises the relocation type it is named for.
"""

from __future__ import annotations

import json
import re

import pytest
from cli_helpers import fixture_args, rtdyld
from fixtures_build import FIXTURES

ASM = FIXTURES / "asm"

# Relocation type -> the fixture whose checks prove its value.
FIXTURE_OF = {
    "R_X86_64_64": "abs64.s",
    "R_X86_64_PC64": "pc64.s",
    "R_X86_64_PC32": "pc32.s",
    "R_X86_64_PLT32": "plt32.s",
    "R_X86_64_32": "abs32.s",
    "R_X86_64_32S": "abs32s.s",
    "R_X86_64_16": "abs16.s",
    "R_X86_64_PC16": "pc16.s",
    "R_X86_64_8": "abs8.s",
    "R_X86_64_PC8": "pc8.s",
    "R_X86_64_GOTPCREL": "gotpcrel.s",
    "R_X86_64_GOTPCRELX": "gotpcrelx.s",
    "R_X86_64_REX_GOTPCRELX": "rex_gotpcrelx.s",
    "R_X86_64_GOT64": "got64.s",
    "R_X86_64_GOTPCREL64": "gotpcrel64.s",
    "R_X86_64_GOTOFF64": "gotoff64.s",
    "R_X86_64_GOTPC32": "gotpc32.s",
    "R_X86_64_GOTPC64": "gotpc64.s",
    "R_X86_64_PLTOFF64": "pltoff64.s",
    "R_X86_64_SIZE32": "size32.s",
    "R_X86_64_SIZE64": "size64.s",
}
CHECK_LINE = re.compile(r"^\s*#\s*(rtdyld|jitlink)-check:", re.MULTILINE)






def check_fixture(capsys, name: str, *extra: str) -> str:
    path = ASM / name
    code, out, err = rtdyld(capsys, "check", *fixture_args(path), *extra, path)
    n = len(CHECK_LINE.findall(path.read_text()))
    assert n > 0
    assert err == ""
    assert out.splitlines()[-1] == f"{n} check{'s' if n != 1 else ''} in 1 file: {n} passed, 0 failed", out
    assert code == 0
    return out


def fixups(capsys, name: str, *extra: str) -> list[dict]:
    path = ASM / name
    code, out, err = rtdyld(capsys, "trace", "--format", "json", "--no-disasm", *fixture_args(path), *extra, path)
    assert code == 0, err
    return [r for r in map(json.loads, out.splitlines()) if r["record"] == "fixup"]


@pytest.mark.parametrize("rtype", sorted(FIXTURE_OF))
def test_relocation_type(capsys, rtype):
    name = FIXTURE_OF[rtype]
    check_fixture(capsys, name)
    assert rtype in {f["type"] for f in fixups(capsys, name)}


def test_every_fixture_with_checks_passes(capsys):
    covered = set(FIXTURE_OF.values())
    for path in sorted(ASM.glob("*.s")):
        if path.name in covered or path.name.startswith("overflow_"):
            continue
        check_fixture(capsys, path.name)


# --- out of reach: stubs and relaxation --------------------------------------------------


def test_stub_for_a_call_4gib_away(capsys):
    check_fixture(capsys, "stub_plt32.s")
    rows = {f["symbol"]: f for f in fixups(capsys, "stub_plt32.s")}
    assert rows["far"]["stub"] is not None and rows["far"]["S"] == rows["far"]["stub"]
    assert rows["far"]["target"] == 0x100010000
    assert rows["near"]["stub"] is None and rows["near"]["S"] == 0x20000000


def test_same_call_in_reach_needs_no_stub(capsys):
    rows = fixups(capsys, "stub_plt32.s", "--define-abs", "far=0x30000000")
    assert all(f["stub"] is None for f in rows)
    code, out, _ = rtdyld(capsys, "check", *fixture_args(ASM / "stub_plt32.s"), "--define-abs", "far=0x30000000",
                          ASM / "stub_plt32.s")
    assert code == 1
    assert "no stub for 'far' in stub_plt32.o: every reference to it is in reach" in out


@pytest.mark.parametrize(
    "name, relaxed",
    [
        ("gotpcrelx.s", ["call *GOT -> addr32 call", "mov *GOT -> lea", "jmp *GOT -> jmp; nop"]),
        ("rex_gotpcrelx.s", ["mov *GOT -> lea", ""]),
        ("relax_far.s", ["", "", ""]),
        ("gotpcrel.s", ["", ""]),
    ],
)
def test_relaxation_only_in_reach(capsys, name, relaxed):
    check_fixture(capsys, name)
    rows = fixups(capsys, name)
    assert [f["relax"] for f in rows] == relaxed
    for f in rows:
        assert (f["got"] is None) == bool(f["relax"])


def test_far_relaxation_fixture_relaxes_when_brought_near(capsys):
    rows = fixups(capsys, "relax_far.s", "--define-abs", "far=0x20000000")
    assert [f["relax"] for f in rows] == ["mov *GOT -> lea", "call *GOT -> addr32 call", "jmp *GOT -> jmp; nop"]
    assert [f["bytes_after"][:2] for f in rows] == ["8d", "67", "e9"]


# --- overflow ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, words",
    [
        ("overflow_abs32.s", ["relocation overflow: overflow_abs32.o: .text+0x1: R_X86_64_32 against 'high': ",
                              "value 0x100000000 (S=0x100000000, A=0x0) does not fit in 32 bits"]),
        ("overflow_pc8.s", ["relocation overflow: overflow_pc8.o: .data.refs+0x0: R_X86_64_PC8 against 'ahead': ",
                            "value 0x202 (S=0x11202, A=0x0) does not fit in 8 bits"]),
    ],
)
def test_overflow(capsys, name, words):
    path = ASM / name
    code, out, err = rtdyld(capsys, "check", *fixture_args(path), path)
    assert code == 1 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("rtdyld: error: ")
    for word in words:
        assert word in line


def test_overflow_api_error():
    from memmgr import VirtualMemory
    from rtdyld import Linker, RelocationOverflowError

    ln = Linker(memory=VirtualMemory(base=0x10000))
    ln.define("high", 0x100000000)
    ln.add_file(str(ASM / "overflow_abs32.s"))
    with pytest.raises(RelocationOverflowError, match=r"R_X86_64_32 against 'high'.*does not fit in 32 bits"):
        ln.finalize()
    assert ln.handles == [] and ln.memory.live_allocations() == []


def test_pc32_data_reference_out_of_reach_is_an_error(capsys):
    path = ASM / "pc32.s"
    code, _, err = rtdyld(capsys, "check", "--target-addr", "0x10000", "--define-abs", "ext=0x100010000", path)
    assert code == 1
    assert "pc32.o: .text+0x3: R_X86_64_PC32 against 'ext' (at 0x100010000 in user definition)" in err


# --- the check command itself --------------------------------------------------------------


def test_failing_check_prints_both_sides(capsys, tmp_path):
    src = tmp_path / "wrong.s"
    src.write_text(
        "  .data\nptr:\n  .quad ext + 8\n"
        "# rtdyld-check: *{8}ptr = ext + 8\n"
        "# rtdyld-check: *{8}ptr = ext + 9\n"
        "# rtdyld-check: *{8}ptr = no_such_symbol\n"
    )
    code, out, _ = rtdyld(capsys, "check", "--target-addr", "0x10000", "--define-abs", "ext=0x1000", src)
    assert code == 1
    lines = out.splitlines()
    assert f"{src}:5: check failed: *{{8}}ptr = ext + 9: 0x1008 != 0x1009" in lines
    assert any(line.startswith(f"{src}:6:") and "unknown symbol 'no_such_symbol'" in line for line in lines)
    assert lines[-1] == "3 checks in 1 file: 1 passed, 2 failed"


def test_verbose_prints_passing_checks(capsys):
    out = check_fixture(capsys, "abs64.s", "-v")
    assert "abs64.s:11: check passed: *{8}ptr_ext = ext + 8: 0x123456789ac4 == 0x123456789ac4" in out


def test_file_without_checks_fails(capsys, tmp_path):
    src = tmp_path / "plain.s"
    src.write_text("  .text\n  .globl main\nmain:\n  ret\n")
    code, out, _ = rtdyld(capsys, "check", "--target-addr", "0x10000", src)
    assert code == 1
    assert out.splitlines() == [
        f"{src}: error: no checks (no line with rtdyld-check: or jitlink-check:)",
        "0 checks in 1 file: 0 passed, 0 failed; 1 file without checks",
    ]


def test_check_file_and_prefix(capsys, tmp_path):
    src = tmp_path / "code.s"
    src.write_text("  .data\n  .globl ptr\nptr:\n  .quad ext\n")
    checks = tmp_path / "code.checks"
    checks.write_text("# mine: *{8}ptr = ext\n# rtdyld-check: *{8}ptr = 0\n")
    args = ["check", "--target-addr", "0x10000", "--define-abs", "ext=0x4242", "--check", checks]
    code, out, _ = rtdyld(capsys, *args, "--check-prefix", "mine", src)
    assert (code, out) == (0, "1 check in 1 file: 1 passed, 0 failed\n")
    code, out, _ = rtdyld(capsys, *args, src)
    assert code == 1 and "check failed: *{8}ptr = 0: 0x4242 != 0x0" in out


def test_no_assembly_input_needs_check_file(capsys, tmp_path):
    from rtdyld.asm import assemble

    obj = tmp_path / "x.o"
    obj.write_bytes(assemble("  .text\nmain:\n  ret\n", "x.s")[0])
    code, out, err = rtdyld(capsys, "check", obj)
    assert code == 1 and out == ""
    assert err == "rtdyld: error: check: no .s input holds checks; name the file with --check FILE\n"


def test_mach_o_assembly(capsys, tmp_path):
    src = tmp_path / "mo.s"
    src.write_text(
        "  .section __TEXT,__text\n  .globl _main\n_main:\ncall_ext:\n  callq _ext\n"
        "# rtdyld-check: decode_operand(call_ext, 0) = _ext - next_pc(call_ext)\n"
        "load_ext:\n  movq _ext@GOTPCREL(%rip), %rax\n"
        "# rtdyld-check: decode_operand(load_ext, 4) = _ext - next_pc(load_ext)\n"
        "  retq\n  .section __DATA,__data\nptr:\n  .quad _main\n"
        "# rtdyld-check: *{8}ptr = section_addr(mo.o, __TEXT,__text)\n"
    )
    code, out, _ = rtdyld(capsys, "check", "--triple", "x86_64-apple-macosx10.15", "--target-addr", "0x10000",
                          "--define-abs", "_ext=0x20000000", src)
    assert (code, out) == (0, "3 checks in 1 file: 3 passed, 0 failed\n")


def test_map_section_moves_a_section_for_the_checks(capsys):
    out = check_fixture(capsys, "abs64.s", "--map-section", "abs64.o,.text=0x7000000")
    assert out.endswith("passed, 0 failed\n")
    rows = fixups(capsys, "abs64.s", "--map-section", "abs64.o,.text=0x7000000")
    assert {f["symbol"]: f["S"] for f in rows}["main"] == 0x7000000
