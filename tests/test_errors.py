"""Every error a user can cause, from real inputs, with its message checked.

Each error names the object the way the user named it (the path given, or
``name=`` for bytes); where it applies, also the section, offset, relocation
type, symbol and value.  A failed batch leaves the linker as it was.
"""

from __future__ import annotations

import re
import struct

import pytest
from cffi import FFI
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from fixtures_build import C_FLAG_SETS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rtdyld

ffi = FFI()

PIE = C_FLAG_SETS["O2-pie"]
EM_AARCH64 = 183
R_X86_64_32 = 10


def test_errors_are_link_errors():
    for cls in (
        rtdyld.MalformedObjectError,
        rtdyld.UnsupportedRelocationError,
        rtdyld.UndefinedSymbolError,
        rtdyld.DuplicateSymbolError,
        rtdyld.RelocationOverflowError,
        rtdyld.LayoutError,
    ):
        assert issubclass(cls, rtdyld.LinkError)


def link_bytes(data: bytes, name: str) -> None:
    ln = rtdyld.Linker()
    ln.add_object(data, name=name)
    ln.finalize()


# --- malformed input -------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 3, 16, 63, 64, 200, "half", "all-but-one"])
def test_truncated_object(build, keep):
    data = build.cc_bytes("errors/ok.c", *PIE)
    n = {"half": len(data) // 2, "all-but-one": len(data) - 1}.get(keep, keep)
    with pytest.raises(rtdyld.MalformedObjectError) as exc:
        link_bytes(data[:n], "cut-short.o")
    assert "cut-short.o" in str(exc.value)


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=10**6))
def test_any_truncation_is_malformed(build, cut):
    data = build.cc_bytes("errors/ok.c", *PIE)
    # gcc writes the section header table last, so every proper prefix lacks part of it.
    with pytest.raises(rtdyld.MalformedObjectError):
        link_bytes(data[: cut % len(data)], "prefix.o")


def section_type_bytes(data: bytes) -> set[int]:
    """Positions of every section header's sh_type field."""
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    return {shoff + i * shentsize + k for i in range(shnum) for k in range(4)}


@settings(
    max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8))
def test_corrupted_object_fails_cleanly(build, edits):
    data = bytearray(build.cc_bytes("errors/ok.c", *PIE))
    # A section retyped as SHT_INIT_ARRAY would have the linker call garbage,
    # as any linker would; every other corruption must be caught or harmless.
    protected = section_type_bytes(data)
    for pos, value in edits:
        if pos % len(data) not in protected:
            data[pos % len(data)] = value
    ln = rtdyld.Linker()
    try:
        ln.add_object(bytes(data), name="corrupt.o")
        handle = ln.finalize()
    except rtdyld.LinkError as e:
        assert "corrupt.o" in str(e)
    else:
        handle.remove()


def test_not_an_object(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are not the bytes you are looking for\n" * 10)
    ln = rtdyld.Linker()
    with pytest.raises(rtdyld.MalformedObjectError) as exc:
        ln.add_object(path)
        ln.finalize()
    assert str(path) in str(exc.value)


def test_32_bit_object(build, tmp_path):
    if build.gcc_accepts("-m32"):
        path = build.cc("errors/ok.c", "-m32", "-O2")
    else:
        data = bytearray(build.cc_bytes("errors/ok.c", *PIE))
        data[4] = 1  # EI_CLASS = ELFCLASS32
        path = tmp_path / "ok32.o"
        path.write_bytes(data)
    ln = rtdyld.Linker()
    with pytest.raises(rtdyld.MalformedObjectError) as exc:
        ln.add_object(path)
        ln.finalize()
    assert str(path) in str(exc.value)


def test_wrong_machine(build):
    data = bytearray(build.cc_bytes("errors/ok.c", *PIE))
    assert struct.unpack_from("<H", data, 18)[0] == 62  # EM_X86_64
    struct.pack_into("<H", data, 18, EM_AARCH64)
    with pytest.raises(rtdyld.MalformedObjectError) as exc:
        link_bytes(bytes(data), "aarch64.o")
    assert "aarch64.o" in str(exc.value)


# --- symbols -----------------------------------------------------------------------


def test_undefined_symbols_are_all_listed_with_referrers(build):
    a = str(build.cc("errors/undef_a.c", *PIE))
    b = str(build.cc("errors/undef_b.c", *PIE))
    ln = rtdyld.Linker()
    ln.add_object(a)
    ln.add_object(b)
    with pytest.raises(rtdyld.UndefinedSymbolError) as exc:
        ln.finalize()

    err = exc.value
    assert set(err.missing) == {"missing_one", "missing_two", "missing_three"}

    def referrers(name: str) -> set[str]:
        return {path for path in (a, b) if any(path in r for r in err.missing[name])}

    assert referrers("missing_one") == {a}
    assert referrers("missing_two") == {a, b}
    assert referrers("missing_three") == {b}
    msg = str(err)
    for word in ("missing_one", "missing_two", "missing_three", a, b):
        assert word in msg


def test_failed_batch_publishes_nothing_and_linker_stays_usable(build):
    ln = rtdyld.Linker()
    ln.add_object(build.cc("errors/undef_a.c", *PIE))
    with pytest.raises(rtdyld.UndefinedSymbolError):
        ln.finalize()
    with pytest.raises(rtdyld.UndefinedSymbolError, match="uses_missing"):
        ln.lookup("uses_missing")

    ln.add_object(build.cc("errors/ok.c", *PIE))
    ln.finalize()
    assert ln.function("ok_func", "int(int)")(1) == 43


def test_lookup_of_unknown_symbol(build):
    ln = rtdyld.Linker()
    ln.add_object(build.cc("errors/ok.c", *PIE))
    ln.finalize()
    with pytest.raises(rtdyld.UndefinedSymbolError, match="no_such_symbol_here"):
        ln.lookup("no_such_symbol_here")
    with pytest.raises(rtdyld.UndefinedSymbolError, match="no_such_function_here"):
        ln.function("no_such_function_here", "int(void)")


def test_duplicate_strong_definitions_name_both_objects(build):
    a = str(build.cc("errors/dup_a.c", *PIE))
    b = str(build.cc("errors/dup_b.c", *PIE))
    ln = rtdyld.Linker()
    ln.add_object(a)
    ln.add_object(b)
    with pytest.raises(rtdyld.DuplicateSymbolError) as exc:
        ln.finalize()
    msg = str(exc.value)
    assert "dup_sym" in msg and a in msg and b in msg
    with pytest.raises(rtdyld.UndefinedSymbolError):
        ln.lookup("dup_sym")


def test_duplicate_definitions_from_bytes_use_given_names(build):
    ln = rtdyld.Linker()
    ln.add_object(build.cc_bytes("errors/dup_a.c", *PIE), name="first-dup")
    ln.add_object(build.cc_bytes("errors/dup_b.c", *PIE), name="second-dup")
    with pytest.raises(rtdyld.DuplicateSymbolError) as exc:
        ln.finalize()
    assert "first-dup" in str(exc.value) and "second-dup" in str(exc.value)


# --- relocations and layout --------------------------------------------------------


def text_reloc_offsets(path, rtype: int) -> list[int]:
    """Offsets in .text of an object's relocations of type ``rtype``."""
    with open(path, "rb") as f:
        rela = ELFFile(f).get_section_by_name(".rela.text")
        assert isinstance(rela, RelocationSection)
        return [r["r_offset"] for r in rela.iter_relocations() if r["r_info_type"] == rtype]


@pytest.mark.parametrize("opt", ["-O0", "-O2"])
def test_relocation_overflow_absolute_32(build, opt):
    path = build.cc("errors/abs32.c", opt, "-fno-pic")
    (offset,) = text_reloc_offsets(path, R_X86_64_32)
    buf = ffi.new("char[64]")
    addr = int(ffi.cast("uintptr_t", buf))
    assert addr >= 1 << 32, "the test needs a heap address above 4 GiB"

    ln = rtdyld.Linker()
    ln.define("ext_buf", addr)
    ln.add_object(path)
    with pytest.raises(rtdyld.RelocationOverflowError) as exc:
        ln.finalize()
    msg = str(exc.value)
    assert str(path) in msg
    assert ".text" in msg
    assert "R_X86_64_32" in msg and "R_X86_64_32S" not in msg
    assert "ext_buf" in msg
    assert re.search(rf"0x0*{offset:x}\b", msg, re.IGNORECASE), msg
    assert re.search(rf"0x0*{addr:x}\b", msg, re.IGNORECASE), msg
    with pytest.raises(rtdyld.UndefinedSymbolError):
        ln.lookup("get_ext")


def test_nopic_object_reading_host_data_cannot_be_placed(build):
    path = str(build.cc("errors/nopic_stdout.c", "-O2", "-fno-pic"))
    ln = rtdyld.Linker()
    ln.add_object(path)
    with pytest.raises(rtdyld.LayoutError) as exc:
        ln.finalize()
    msg = str(exc.value)
    assert "stdout" in msg
    assert path in msg


def test_tls_descriptors_are_unsupported(build):
    """Other TLS models link (tests/test_tls.py); TLS descriptors are refused by name."""
    path = str(build.cc("errors/tls.c", "-O2", "-fPIC", "-mtls-dialect=gnu2"))
    ln = rtdyld.Linker()
    with pytest.raises(rtdyld.UnsupportedRelocationError) as exc:
        ln.add_object(path)
        ln.finalize()
    msg = str(exc.value)
    for part in (path, "R_X86_64_GOTPC32_TLSDESC", "tls_counter", "-mtls-dialect=gnu"):
        assert part in msg
