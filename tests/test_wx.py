"""Write-xor-execute: no mapping is ever writable and executable at once.

The autouse guard in conftest.py checks after every test; these tests look
while linked code is running — from its constructor during finalize(), from
an ordinary call, and from its destructor during remove() — and check the
final protections of code, read-only data and writable data.
"""

from __future__ import annotations

import pytest
from cffi import FFI
from fixtures_build import C_FLAG_SETS

import rtdyld

ffi = FFI()

FLAG_SETS = ["O2-pie", "O0-pic", "O2-nopic", "O2-large"]


@pytest.mark.parametrize("flag_set", FLAG_SETS)
def test_no_wx_mapping_while_linked_code_runs(build, callback, wx_guard, flag_set):
    seen: dict[int, list[str]] = {}

    def inspect(stage: int) -> None:
        seen[stage] = [str(m) for m in wx_guard.violations()]

    ln = rtdyld.Linker()
    ln.define("inspect", callback("void(int)", inspect))
    ln.add_object(build.cc("wx_probe.c", *C_FLAG_SETS[flag_set]))
    handle = ln.finalize()
    assert list(seen) == [1]
    assert ln.function("run_probe", "int(void)")() == 7
    handle.remove()
    assert seen == {1: [], 2: [], 3: []}


@pytest.mark.parametrize("flag_set", FLAG_SETS)
def test_final_protections(build, maps, flag_set):
    flags = C_FLAG_SETS[flag_set]
    ln = rtdyld.Linker()
    for src in ("strings.c", "fptr.c", "bigbss.c"):
        ln.add_object(build.cc(src, *flags))
    ln.finalize()

    def perms(symbol: str) -> str:
        m = maps.mapping_of(ln.lookup(symbol))
        assert m is not None, f"{symbol} is not mapped"
        return m.perms

    for code in ("word", "apply_rw", "touch_big"):
        assert perms(code).startswith("r-x"), code
    assert perms("banner").startswith("r--")
    for data in ("ops_rw", "big_array"):
        assert perms(data).startswith("rw-"), data


def test_removed_code_is_no_longer_executable(build, maps):
    ln = rtdyld.Linker()
    ln.add_object(build.cc("fptr.c", *C_FLAG_SETS["O2-pie"]))
    handle = ln.finalize()
    code = ln.lookup("apply_ro")
    handle.remove()
    m = maps.mapping_of(code)
    assert m is None or "x" not in m.perms, str(m)


def test_failed_link_leaves_no_wx_mapping(build, wx_guard):
    ln = rtdyld.Linker()
    ln.add_object(build.cc("errors/undef_a.c", *C_FLAG_SETS["O2-pie"]))
    with pytest.raises(rtdyld.UndefinedSymbolError):
        ln.finalize()
    assert wx_guard.violations() == []
