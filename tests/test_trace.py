"""`rtdyld trace`: the relocation table, its JSON form, and its filters.

Links run with --target-addr, so every address is deterministic and nothing
is mapped executable.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from cli_helpers import fixture_args, rtdyld
from fixtures_build import FIXTURES, REPO

ASM = FIXTURES / "asm"
DEMO = ASM / "trace_demo.s"
GOLDEN = REPO / "tests" / "golden" / "trace_demo.txt"


def trace_json(capsys, *args) -> list[dict]:
    code, out, err = rtdyld(capsys, "trace", "--format", "json", *args)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def demo_args() -> list[str]:
    return [*fixture_args(DEMO), str(DEMO)]


def test_golden_table(capsys, demo_args):
    code, out, err = rtdyld(capsys, "trace", *demo_args)
    assert code == 0, err
    assert err == ""
    assert out == GOLDEN.read_text()


def _fixup_rows(table: str) -> list[list[str]]:
    """The nine cells of each fixup row, and the detail lines under it."""
    rows = []
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("OBJECT "))
    for line in lines[start + 1 :]:
        if not line:
            break
        if line.startswith("    "):
            rows[-1].append(line.strip())
        else:
            rows.append([line.split()])
    return rows


def _signed_hex(v: int) -> str:
    return f"-{-v:#x}" if v < 0 else f"{v:#x}"


def test_json_round_trip(capsys, demo_args):
    records = trace_json(capsys, *demo_args)
    code, table, _ = rtdyld(capsys, "trace", *demo_args)
    assert code == 0
    fixups = [r for r in records if r["record"] == "fixup"]
    rows = _fixup_rows(table)
    assert len(fixups) == len(rows) == 7
    for f, (cells, *details) in zip(fixups, rows):
        assert cells == [
            f["object"],
            f["section"],
            hex(f["offset"]),
            hex(f["P"]),
            f["type"],
            f["symbol"],
            hex(f["S"]),
            _signed_hex(f["A"]),
            f"{f['value']:#0{2 + 2 * f['width']}x}",
        ]
        assert details[0] == f"bytes   {f['bytes_at']:#x}: {f['bytes_before']} -> {f['bytes_after']}"
        if f["insn_after"]:
            assert details[1] == f"before  {f['insn_before']}"
            assert details[2] == f"after   {f['insn_after']}"
    kinds = [r["record"] for r in records]
    assert kinds.count("got") == 1 and kinds.count("stub") == 1 and kinds.count("external") == 2
    got = next(r for r in records if r["record"] == "got")
    stub = next(r for r in records if r["record"] == "stub")
    assert (got["symbol"], got["value"], got["source"]) == ("far", 0x100010000, "user definition")
    assert (stub["symbol"], stub["got"]) == ("far", got["address"])
    assert f"{stub['address']:#x}  far     {got['address']:#x}" in table


def test_bytes_are_the_values_written(capsys, demo_args):
    for f in trace_json(capsys, *demo_args):
        if f["record"] != "fixup":
            continue
        written = bytes.fromhex(f["bytes_after"])
        if not f["relax"]:
            assert written == f["value"].to_bytes(f["width"], "little")
        assert f["P"] - f["bytes_at"] in (0, 1, 2)


def test_stub_relaxation_and_got_rows(capsys, demo_args):
    rows = {(f["symbol"], f["type"]): f for f in trace_json(capsys, *demo_args) if f["record"] == "fixup"}
    far_call = rows[("far", "R_X86_64_PLT32")]
    assert far_call["stub"] == far_call["S"] and far_call["target"] == 0x100010000
    assert far_call["value"] == far_call["stub"] - 4 - far_call["P"]
    near_load = rows[("near", "R_X86_64_REX_GOTPCRELX")]
    assert near_load["relax"] == "mov *GOT -> lea" and near_load["got"] is None
    assert near_load["bytes_before"].startswith("8b 05") and near_load["bytes_after"].startswith("8d 05")
    assert "leaq" in near_load["insn_after"] and "movq" in near_load["insn_before"]
    far_load = rows[("far", "R_X86_64_REX_GOTPCRELX")]
    assert far_load["relax"] == "" and far_load["got"] is not None
    assert far_load["value"] == far_load["got"] - 4 - far_load["P"]
    assert "<GOT[far]>" in far_load["insn_after"]


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--symbol", "far"], {("far", "R_X86_64_PLT32"), ("far", "R_X86_64_REX_GOTPCRELX"), ("far", "R_X86_64_64")}),
        (["--symbol", "n*"], {("near", "R_X86_64_PLT32"), ("near", "R_X86_64_REX_GOTPCRELX")}),
        (["--type", "PLT32"], {("near", "R_X86_64_PLT32"), ("far", "R_X86_64_PLT32")}),
        (["--type", "R_X86_64_64"], {("main", "R_X86_64_64"), ("far", "R_X86_64_64")}),
        (["--section", ".data"], {("main", "R_X86_64_64"), ("far", "R_X86_64_64")}),
        (["--section", ".text", "--symbol", "far"], {("far", "R_X86_64_PLT32"), ("far", "R_X86_64_REX_GOTPCRELX")}),
        (["--object", "trace_demo.o", "--type", "PC32"], {("counter", "R_X86_64_PC32")}),
        (["--object", "other.o"], set()),
    ],
)
def test_filters(capsys, demo_args, options, expected):
    records = trace_json(capsys, *options, *demo_args)
    assert {(f["symbol"], f["type"]) for f in records if f["record"] == "fixup"} == expected
    # GOT slots, stubs and externals follow the fixups shown.
    symbols = {f["symbol"] for f in records if f["record"] == "fixup"}
    assert all(r["symbol"] in symbols for r in records if r["record"] in ("got", "stub", "external"))
    code, table, _ = rtdyld(capsys, "trace", *options, *demo_args)
    assert code == 0
    assert table.startswith(f"{len(expected)} relocation{'s' if len(expected) != 1 else ''} applied\n")


def test_no_disasm(capsys, demo_args):
    code, out, _ = rtdyld(capsys, "trace", "--no-disasm", *demo_args)
    assert code == 0
    assert "before  " not in out and "callq" not in out
    assert "bytes   0x10001: 00 00 00 00 -> fb ff fe 1f" in out


def test_in_process_trace_is_not_run(capsys, tmp_path):
    src = tmp_path / "boom.s"
    src.write_text(
        "  .text\n  .globl main\nmain:\n  ud2\n"
        '  .section .init_array,"aw"\n  .quad main\n'
    )
    code, out, err = rtdyld(capsys, "trace", src)
    assert code == 0, err
    assert "boom.o  .init_array" in out
    assert "R_X86_64_64" in out


def test_archive_members_are_named_and_listed(capsys, tmp_path):
    from rtdyld.asm import assemble

    helper, _ = assemble("  .text\n  .globl helper\nhelper:\n  ret\n", "helper.s")
    (tmp_path / "helper.o").write_bytes(helper)
    subprocess.run(["ar", "rcs", str(tmp_path / "libdemo.a"), str(tmp_path / "helper.o")], check=True)
    user = tmp_path / "user.s"
    user.write_text("  .text\n  .globl main\nmain:\n  call helper\n  ret\n")
    records = trace_json(capsys, "--target-addr", "0x10000", user, tmp_path / "libdemo.a")
    pull = next(r for r in records if r["record"] == "pull")
    assert pull == {"record": "pull", "member": "libdemo.a(helper.o)", "symbol": "helper", "referrer": "user.o"}
    call = next(r for r in records if r["record"] == "fixup")
    assert (call["object"], call["symbol"], call["source"]) == ("user.o", "helper", "libdemo.a(helper.o)")
    code, out, _ = rtdyld(capsys, "trace", "--target-addr", "0x10000", user, tmp_path / "libdemo.a")
    assert code == 0
    assert "libdemo.a(helper.o)  helper  user.o" in out
