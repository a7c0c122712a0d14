"""The debugging commands: `rtdyld symbols`, `rtdyld map`, help, errors."""

from __future__ import annotations

import ctypes
import json
import subprocess

import pytest
from cli_helpers import fixture_args, rtdyld, rtdyld_subprocess
from fixtures_build import FIXTURES

ASM = FIXTURES / "asm"
MAP_DEMO = ASM / "map_demo.s"
COMMANDS = ("run", "trace", "symbols", "map", "check")


def assert_error_line(code: int, out: str, err: str, *words: str) -> None:
    assert code == 1, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rtdyld: error: "), lines[0]
    for word in words:
        assert word in lines[0]
    assert out == ""


@pytest.fixture(scope="module")
def demo() -> list[str]:
    return [*fixture_args(MAP_DEMO), str(MAP_DEMO)]


# --- symbols -------------------------------------------------------------------------


def test_symbols_table(capsys, demo):
    code, out, err = rtdyld(capsys, "symbols", *demo)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ADDRESS", "SIZE", "TYPE", "BIND", "VIS", "NAME", "DEFINED", "IN"]
    rows = {line.split()[5]: line.split() for line in lines[1:]}
    assert rows["main"] == ["0x0000000000010000", "0x14", "FUNC", "GLOBAL", "DEFAULT", "main", "map_demo.o(.text)"]
    assert rows["counter"] == ["0x0000000000012000", "0x8", "OBJECT", "GLOBAL", "DEFAULT", "counter",
                               "map_demo.o(.data)"]
    assert rows["buffer"][:2] == ["0x0000000000013000", "0x40"]
    assert rows["shared"] == ["0x0000000000013040", "0x64", "OBJECT", "GLOBAL", "DEFAULT", "shared",
                              "map_demo.o(COMMON)"]
    assert rows["far"] == ["0x0000000100010000", "0x0", "-", "EXTERNAL", "-", "far", "user", "definition"]
    assert "message" not in rows and "call_far" not in rows
    addresses = [int(line.split()[0], 16) for line in lines[1:]]
    assert addresses == sorted(addresses)


def test_symbols_locals_and_json(capsys, demo):
    code, out, err = rtdyld(capsys, "symbols", "--locals", "--format", "json", *demo)
    assert code == 0, err
    rows = {r["name"]: r for r in map(json.loads, out.splitlines())}
    assert rows["message"] == {
        "name": "message", "address": 0x11000, "size": 6, "type": "OBJECT", "bind": "LOCAL",
        "vis": "DEFAULT", "origin": "map_demo.o", "section": ".rodata",
    }
    assert rows["load_far"]["address"] == 0x10005
    assert rows["far"]["bind"] == "EXTERNAL" and rows["far"]["origin"] == "user definition"


def test_symbols_of_host_externals(capsys, tmp_path):
    src = tmp_path / "host.s"
    src.write_text("  .text\n  .globl main\nmain:\n  jmp puts@PLT\n")
    code, out, err = rtdyld(capsys, "symbols", "--format", "json", src)
    assert code == 0, err
    (puts,) = [r for r in map(json.loads, out.splitlines()) if r["name"] == "puts"]
    assert puts["bind"] == "EXTERNAL"
    assert "libc" in puts["origin"]
    assert puts["address"] == ctypes.cast(ctypes.CDLL(None).puts, ctypes.c_void_p).value


UNDEFINED_SRC = """\
  .text
  .globl main
main:
  call puts@PLT
  call nowhere_to_be_found@PLT
  call cos@PLT
  call given@PLT
  movq maybe@GOTPCREL(%rip), %rax
  ret
  .weak maybe
"""


def test_symbols_undefined(capsys, tmp_path):
    src = tmp_path / "needs.s"
    src.write_text(UNDEFINED_SRC)
    code, out, err = rtdyld(capsys, "symbols", "--undefined", "-l", "m", "--define-abs", "given=0x1234", src)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ADDRESS", "FROM", "REFERENCED", "BY"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert set(rows) == {"cos", "given", "maybe", "nowhere_to_be_found", "puts"}
    assert rows["nowhere_to_be_found"].split()[1:] == ["-", "MISSING", "needs.o"]
    assert rows["given"].split()[1:] == ["0x1234", "user", "definition", "needs.o"]
    assert "libm" in rows["cos"]
    assert "weak undefined" in rows["maybe"]
    assert lines[-1] == "5 undefined names, 1 missing"


def test_symbols_undefined_json(capsys, tmp_path):
    src = tmp_path / "needs.s"
    src.write_text(UNDEFINED_SRC)
    code, out, err = rtdyld(capsys, "symbols", "--undefined", "--format", "json", src)
    assert code == 0, err
    rows = {r["name"]: r for r in map(json.loads, out.splitlines())}
    assert rows["nowhere_to_be_found"] == {
        "name": "nowhere_to_be_found", "status": "MISSING", "missing": True, "address": None,
        "referrers": ["needs.o"],
    }
    assert rows["given"]["missing"]  # no --define-abs this time
    assert not rows["maybe"]["missing"] and not rows["puts"]["missing"]


def test_symbols_undefined_follows_archive_members(capsys, tmp_path):
    from rtdyld.asm import assemble

    helper, _ = assemble("  .text\n  .globl helper\nhelper:\n  jmp deep_missing@PLT\n", "helper.s")
    (tmp_path / "helper.o").write_bytes(helper)
    subprocess.run(["ar", "rcs", str(tmp_path / "libh.a"), str(tmp_path / "helper.o")], check=True)
    user = tmp_path / "user.s"
    user.write_text("  .text\n  .globl main\nmain:\n  call helper\n  ret\n")
    code, out, err = rtdyld(capsys, "symbols", "--undefined", "-L", tmp_path, "-l", "h", user)
    assert code == 0, err
    assert [line.split() for line in out.splitlines()] == [
        ["NAME", "ADDRESS", "FROM", "REFERENCED", "BY"],
        ["deep_missing", "-", "MISSING", "libh.a(helper.o)"],
        ["1", "undefined", "name,", "1", "missing"],
    ]


def test_symbols_says_which_member_defined_what_and_why_it_was_pulled(capsys, tmp_path):
    from rtdyld.asm import assemble

    helper, _ = assemble("  .text\n  .globl helper\nhelper:\n  jmp leaf@PLT\n", "helper.s")
    leaf, _ = assemble("  .text\n  .globl leaf\nleaf:\n  ret\n", "leaf.s")
    unused, _ = assemble("  .text\n  .globl unused\nunused:\n  jmp nowhere@PLT\n", "unused.s")
    for name, data in (("helper.o", helper), ("leaf.o", leaf), ("unused.o", unused)):
        (tmp_path / name).write_bytes(data)
    subprocess.run(["ar", "rcs", str(tmp_path / "libh.a"), *(str(tmp_path / n) for n in
                    ("helper.o", "leaf.o", "unused.o"))], check=True)
    user = tmp_path / "user.s"
    user.write_text("  .text\n  .globl main\nmain:\n  call helper\n  ret\n")
    code, out, err = rtdyld(capsys, "symbols", user, tmp_path / "libh.a")
    assert code == 0, err
    table, pulls = out.split("archive members loaded:")
    defined_in = {line.split()[5]: line.split()[6] for line in table.splitlines()[1:] if line.strip()}
    assert defined_in["helper"] == "libh.a(helper.o)(.text)"
    assert defined_in["leaf"] == "libh.a(leaf.o)(.text)"
    assert [line.split() for line in pulls.strip().splitlines()] == [
        ["MEMBER", "FOR", "SYMBOL", "REFERENCED", "BY"],
        ["libh.a(helper.o)", "helper", "user.o"],
        ["libh.a(leaf.o)", "leaf", "libh.a(helper.o)"],
    ]


def test_symbols_without_undefined_fails_on_missing(capsys, tmp_path):
    src = tmp_path / "needs.s"
    src.write_text(UNDEFINED_SRC)
    assert_error_line(*rtdyld(capsys, "symbols", "-l", "m", src), "nowhere_to_be_found", "given", "needs.o")


# --- map -------------------------------------------------------------------------------


def test_map(capsys, demo):
    code, out, err = rtdyld(capsys, "map", *demo)
    assert code == 0, err
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert lines[0] == "Memory map: 0x10000-0x14000, 0x4000 bytes in 4 pages of 0x1000"
    expected = [
        "segment text r-x: 0x10000-0x11000, 0x20 bytes used of 0x1000",
        "0x10000 0x14 .text map_demo.o align 16",
        "0x10014 0x4 *fill*",
        "0x10018 0x8 *stubs* 1 stub",
        "0x10020 0xfe0 *fill* to the end of the page",
        "segment rodata r--: 0x11000-0x12000, 0x10 bytes used of 0x1000",
        "0x11000 0x6 .rodata map_demo.o align 1",
        "0x11008 0x8 *GOT* 1 slot",
        "segment data rw-: 0x12000-0x13000, 0x8 bytes used of 0x1000",
        "0x12000 0x8 .data map_demo.o align 8",
        "segment bss rw-, zero-fill: 0x13000-0x14000, 0xa4 bytes used of 0x1000",
        "0x13000 0x40 .bss map_demo.o align 32",
        "0x13040 0x64 shared map_demo.o tentative definition",
        "0x130a4 0xf5c *fill* to the end of the page",
    ]
    for line in expected:
        assert line in lines
    assert lines.index(expected[0]) < lines.index(expected[5]) < lines.index(expected[8]) < lines.index(expected[10])


def test_map_json_covers_every_byte(capsys, demo):
    code, out, err = rtdyld(capsys, "map", "--format", "json", *demo)
    assert code == 0, err
    m = json.loads(out)
    assert m["base"] == 0x10000 and m["size"] == 0x4000
    for seg in m["segments"]:
        cursor = seg["address"]
        for item in seg["items"]:
            assert item["address"] == cursor
            cursor += item["size"]
        assert cursor == seg["address"] + seg["span"]
    assert [s["prot"] for s in m["segments"]] == ["r-x", "r--", "rw-", "rw-"]


def test_map_section_pins_a_section(capsys, demo):
    *args, path = demo
    pinned = ["--map-section", "map_demo.o,.data=0x500000"]
    code, out, err = rtdyld(capsys, "map", *pinned, *args, path)
    assert code == 0, err
    assert "pinned sections:" in out
    assert " ".join(out.split("pinned sections:")[1].split()) == (
        "0x500000 0x8 .data map_demo.o align 8, pinned; working copy in data at 0x12000"
    )
    code, out, err = rtdyld(capsys, "symbols", "--format", "json", *pinned, *args, path)
    assert code == 0, err
    rows = {r["name"]: r for r in map(json.loads, out.splitlines())}
    assert rows["counter"]["address"] == 0x500000


def test_map_of_a_batch_whose_record_disagrees_with_its_memory():
    """An item the batch's record places outside its memory (as a damaged
    link-cache entry could) is a LayoutError naming it, not a bare ValueError
    or a map that leaves it out."""
    from rtdyld import Linker, mapfile
    from rtdyld.asm import assemble
    from rtdyld.errors import LayoutError

    data, name = assemble(MAP_DEMO.read_text(), name="map_demo.s")
    ln = Linker()
    try:
        ln.define("far", 0x100010000)
        ln.add_object(data, name=name)
        batch = ln.finalize().batch
        assert "*GOT*" in mapfile.format_map(mapfile.memory_map(batch))
        base, size = batch.allocation.target_base, batch.allocation.size
        batch.got_base = base + size
        with pytest.raises(LayoutError) as e:
            mapfile.memory_map(batch)
        assert str(e.value) == (f"memory map: *GOT* at {base + size:#x} is outside the batch's memory "
                                f"({base:#x}-{base + size:#x})")
    finally:
        ln.close()


@pytest.mark.parametrize(
    "pin, words",
    [
        ("map_demo.o,.nosuch=0x500000", ["no loaded section '.nosuch'", "map_demo.o"]),
        ("other.o,.data=0x500000", ["no object 'other.o'"]),
        ("map_demo.o=0x500000", ["FILE,SECTION=ADDR"]),
        ("map_demo.o,.data=zero", ["bad address 'zero'"]),
    ],
)
def test_map_section_errors(capsys, demo, pin, words):
    assert_error_line(*rtdyld(capsys, "map", "--map-section", pin, *demo), *words)


# --- help and errors ---------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_help(capsys, command):
    code, out, err = rtdyld(capsys, command, "--help")
    assert code == 0 and err == ""
    assert out.startswith(f"usage: rtdyld {command} ")
    for option in ("--debug", "-l NAME", "-L DIR", "--triple", "--define-abs"):
        assert option in out
    if command != "run":
        assert "--target-addr" in out and "--map-section" in out


def test_top_level_help(capsys):
    code, out, _ = rtdyld(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert f"\n  {command} " in out
    code, out, _ = rtdyld(capsys)
    assert code == 1 and "subcommands:" in out


def test_trace_help_names_its_filters(capsys):
    _, out, _ = rtdyld(capsys, "trace", "--help")
    for option in ("--symbol", "--section", "--object", "--type", "--format", "--noexec", "--run"):
        assert option in out


def test_error_missing_input(capsys, tmp_path):
    missing = tmp_path / "nothing.o"
    assert_error_line(*rtdyld(capsys, "map", missing), str(missing))


def test_error_assembly(capsys, tmp_path):
    bad = tmp_path / "bad.s"
    bad.write_text("  .text\n  movq %rax\n")
    assert_error_line(*rtdyld(capsys, "symbols", bad), "bad.s:2")


def test_error_usage(capsys, demo):
    assert_error_line(*rtdyld(capsys, "map", "--target-addr", "0x10001", *demo[-1:]), "page aligned")
    assert_error_line(*rtdyld(capsys, "map", "--no-such-option", *demo[-1:]), "--no-such-option")
    assert_error_line(*rtdyld(capsys, "trace"), "INPUT", "rtdyld trace --help")
    assert_error_line(*rtdyld(capsys, "trace", "--run", "--noexec", *demo[-1:]), "--run")
    assert_error_line(*rtdyld(capsys, "map", *demo, "--", "x"), "after --")


def test_error_overflow_is_one_line(capsys):
    path = ASM / "overflow_abs32.s"
    assert_error_line(
        *rtdyld(capsys, "map", *fixture_args(path), path),
        "relocation overflow: overflow_abs32.o: .text+0x1: R_X86_64_32 against 'high'",
    )


def test_debug_shows_traceback(tmp_path):
    src = tmp_path / "needs.s"
    src.write_text(UNDEFINED_SRC)
    plain = rtdyld_subprocess("symbols", str(src))
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.startswith("rtdyld: error: undefined symbols:")
    debug = rtdyld_subprocess("symbols", "--debug", str(src))
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "UndefinedSymbolError" in debug.stderr
    assert "nowhere_to_be_found" in debug.stderr
