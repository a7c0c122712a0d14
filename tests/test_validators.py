"""Validation hooks: they see the final bytes of a batch before anything runs.

A validator gets a view of every section of the batch — object, name, target
address, bytes after every fixup, and the relocations applied to it — after
the fixups and before the memory is made executable or any symbol is
published.  Rejecting (raising anything) abandons the batch without a trace.
"""

from __future__ import annotations

import pytest
from cffi import FFI
from fixtures_build import FIXTURES

import rtdyld
from rtdyld.validators import forbid_instructions

ffi = FFI()

LIFECYCLE = FIXTURES / "lifecycle"
R_X86_64_PLT32 = 4
SYSCALL = b"\x0f\x05"
INT3 = b"\xcc"


def ir(name: str) -> str:
    return (LIFECYCLE / name).read_text()


def read(address: int, size: int) -> bytes:
    return bytes(ffi.buffer(ffi.cast("char *", address), size))


def text_offset(obj, pattern: bytes) -> int:
    """The only offset of ``pattern`` in the object's .text."""
    (text,) = [s for s in obj.sections if s.name == ".text"]
    data = bytes(text.data)
    at = data.find(pattern)
    assert at >= 0 and data.find(pattern, at + 1) < 0, data.hex()
    return at


# --- forbid_instructions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "mnemonic", "encoding"),
    [("syscall.ll", "syscall", SYSCALL), ("int3.ll", "int3", INT3)],
)
def test_forbidden_instruction_is_rejected(ln, source, mnemonic, encoding):
    ln.add_validator(forbid_instructions({"syscall", "int3"}))
    ln.add_module(ir("cycle.ll"), name="cycle.ll")
    ln.finalize()
    before = ln.snapshot()
    ln.add_module(ir("clean.ll"), name="clean_neighbour")
    obj = ln.add_module(ir(source), name=f"sandboxed/{source}")
    offset = text_offset(obj, encoding)
    with pytest.raises(rtdyld.ValidationError) as exc:
        ln.finalize()
    msg = str(exc.value)
    assert f"sandboxed/{source}" in msg
    assert f".text+{offset:#x}" in msg
    assert f"'{mnemonic}'" in msg
    assert encoding.hex(" ") in msg
    assert "clean_neighbour" not in msg
    assert ln.snapshot() == before
    with pytest.raises(rtdyld.UndefinedSymbolError):
        ln.lookup("clean_sum")


def test_clean_module_passes(ln):
    ln.add_validator(forbid_instructions({"syscall", "int3"}))
    ln.add_module(ir("clean.ll"), name="clean")
    ln.finalize()
    assert ln.function("clean_sum", "int64_t(int64_t, int64_t)")(40, 2) == 40 + 2 + 3
    data = ln.function("clean_bytes", "unsigned char *(void)")()
    assert bytes(data[0:4]) == SYSCALL + INT3 * 2


def test_rejection_leaves_the_session_usable(ln):
    ln.add_validator(forbid_instructions(["SYSCALL"]))
    ln.add_module(ir("syscall.ll"), name="syscall.ll")
    with pytest.raises(rtdyld.ValidationError, match="syscall"):
        ln.finalize()
    # Only the mnemonics asked for are refused.
    ln.add_module(ir("int3.ll"), name="int3.ll")
    ln.add_module(ir("clean.ll"), name="clean")
    handle = ln.finalize()
    assert set(handle.symbols) >= {"trap_then_seven", "clean_sum"}
    with pytest.raises(rtdyld.UndefinedSymbolError):
        ln.lookup("raw_getpid")


# --- what a validator sees ----------------------------------------------------------


def test_validator_sees_final_bytes_addresses_and_relocations(ln, maps):
    seen = []

    def record(view) -> None:
        # Nothing is published or executable while validators run.
        with pytest.raises(rtdyld.UndefinedSymbolError):
            ln.lookup("triple_plus_one")
        for s in view.sections:
            if s.data:
                m = maps.mapping_of(s.address)
                assert m is not None and m.perms == "rw-p", (s.name, m)
        seen.append(view)

    ln.add_validator(record)
    ln.add_module(ir("caller.ll"), name="caller.ll")
    ln.add_module(ir("callee.ll"), name="callee.ll")
    ln.finalize()
    assert ln.function("triple_plus_one", "int(int)")(14) == 43

    (view,) = seen
    by_name = {(s.object, s.name): s for s in view.sections}
    caller = by_name[("caller.ll", ".text")]
    callee = by_name[("callee.ll", ".text")]
    assert caller.executable and callee.executable
    assert caller.address == ln.lookup("triple_plus_one")
    assert callee.address == ln.lookup("triple")

    (row,) = caller.relocations
    assert int(row["rtype"]) == R_X86_64_PLT32
    off = int(row["offset"])
    assert caller.data[off - 1] == 0xE8  # call rel32
    displacement = int.from_bytes(caller.data[off : off + 4], "little", signed=True)
    next_pc = caller.address + off + 4
    assert displacement == ln.lookup("triple") - next_pc
    assert len(callee.relocations) == 0

    # What the validator saw is what runs.
    for s in (caller, callee):
        assert read(s.address, len(s.data)) == s.data


def test_validator_sees_data_sections_and_zero_fill(ln):
    seen = []
    ln.add_validator(seen.append)
    ln.add_module(ir("cycle.ll"), name="cycle.ll")
    ln.finalize()
    (view,) = seen
    sections = {s.name: s for s in view.sections}
    data = sections[".data"]
    assert not data.executable
    assert data.address == ln.lookup("cycle_bias")
    assert data.data[:8] == (7).to_bytes(8, "little")
    bss = sections[".bss"]
    assert bss.address == ln.lookup("cycle_count")
    assert bss.data == b""
    assert all(s.object == "cycle.ll" for s in view.sections)


# --- validators that fail -------------------------------------------------------------


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyError, ZeroDivisionError])
def test_any_exception_rejects_the_batch(ln, exc_type):
    ln.add_module(ir("cycle.ll"), name="cycle.ll")
    ln.finalize()
    before = ln.snapshot()

    def picky_validator(view) -> None:
        raise exc_type("not today")

    ln.add_validator(picky_validator)
    ln.add_module(ir("provider_one.ll"), name="provider_one")
    with pytest.raises(rtdyld.ValidationError) as exc:
        ln.finalize()
    assert "picky_validator" in str(exc.value)
    assert "not today" in str(exc.value)
    assert isinstance(exc.value.__cause__, exc_type)
    assert ln.snapshot() == before
    with pytest.raises(rtdyld.UndefinedSymbolError):
        ln.lookup("answer")
    assert ln.function("cycle_step", "int64_t(int64_t)")(0) == 12


def test_validation_error_passes_through_unchanged(ln):
    error = rtdyld.ValidationError("provider_one: .text: refused by policy")

    def policy(view) -> None:
        raise error

    ln.add_validator(policy)
    ln.add_module(ir("provider_one.ll"), name="provider_one")
    with pytest.raises(rtdyld.ValidationError) as exc:
        ln.finalize()
    assert exc.value is error


def test_every_validator_must_accept(ln):
    calls = []
    ln.add_validator(lambda view: calls.append("first"))
    ln.add_validator(forbid_instructions({"syscall"}))
    ln.add_validator(lambda view: calls.append("third"))
    ln.add_module(ir("syscall.ll"), name="syscall.ll")
    with pytest.raises(rtdyld.ValidationError):
        ln.finalize()
    assert calls == ["first"]
    ln.add_module(ir("clean.ll"), name="clean")
    ln.finalize()
    assert calls == ["first", "first", "third"]
