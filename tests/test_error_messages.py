"""One test per error class a user can cause, pinning the whole message.

Each message names the object (``lib.a(member.o)`` for archive members), and
where they apply the section, offset, relocation type and symbol, and ends
with the fix when there is an obvious one.  Offsets and addresses come from
the inputs themselves (pyelftools, the process), never from the linker.
"""

from __future__ import annotations

import re
import shutil
import struct

import pytest
from archive_tools import build_gnu_archive
from cffi import FFI
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from fixtures_build import C_FLAG_SETS

import rtdyld
from memmgr import PAGE_SIZE, MemoryManager
from rtdyld import host

PIE = C_FLAG_SETS["O2-pie"]
NOPIC = ("-O2", "-fno-pic")
ffi = FFI()

R_X86_64_PC32 = 2
R_X86_64_PLT32 = 4
R_X86_64_32 = 10
R_X86_64_GOTPC32_TLSDESC = 34


def reloc_offset(path, rtype: int, section: str = ".text") -> int:
    """Offset in ``section`` of the object's first relocation of type ``rtype``."""
    with open(path, "rb") as f:
        rela = ELFFile(f).get_section_by_name(f".rela{section}")
        assert isinstance(rela, RelocationSection)
        return min(r["r_offset"] for r in rela.iter_relocations() if r["r_info_type"] == rtype)


def named_copy(path, directory, name: str):
    """``path`` copied to ``directory/name``, so that an archive member gets that name."""
    out = directory / name
    shutil.copyfile(path, out)
    return out


def error_of(ln: rtdyld.Linker, cls: type[rtdyld.LinkError]) -> str:
    with pytest.raises(cls) as exc:
        ln.finalize()
    assert type(exc.value) is cls
    return str(exc.value)


def test_malformed_object_names_the_archive_member(build, tmp_path):
    data = build.cc_bytes("errors/ok.c", *PIE)
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    (shnum,) = struct.unpack_from("<H", data, 0x3C)
    (tmp_path / "cut.o").write_bytes(data[:100])
    lib = build_gnu_archive(tmp_path / "libcut.a", [tmp_path / "cut.o"], index=False)
    with pytest.raises(rtdyld.MalformedObjectError) as exc:
        rtdyld.Linker().add_archive(lib, whole=True)
    assert str(exc.value) == (
        f"libcut.a(cut.o): bad section headers: the table at offset {shoff:#x} ({shnum} entries of "
        "64 bytes) runs past the end of the file (100 bytes)"
    )


def test_unsupported_relocation_is_named_with_its_place_and_symbol(build):
    path = build.cc("errors/tls.c", "-O2", "-fPIC", "-mtls-dialect=gnu2")
    offset = reloc_offset(path, R_X86_64_GOTPC32_TLSDESC)
    ln = rtdyld.Linker()
    with pytest.raises(rtdyld.UnsupportedRelocationError) as exc:
        ln.add_object(path)
    assert str(exc.value) == (
        f"{path}: .text+{offset:#x}: R_X86_64_GOTPC32_TLSDESC against 'tls_counter': "
        "this thread-local storage relocation is not supported (TLS descriptors: build with -mtls-dialect=gnu)"
    )


def test_unknown_relocation_type_is_named_by_number(build):
    path = build.cc("errors/abs32.c", *NOPIC)
    data = bytearray(path.read_bytes())
    with open(path, "rb") as f:
        rela = ELFFile(f).get_section_by_name(".rela.text")
        (index,) = [i for i, r in enumerate(rela.iter_relocations()) if r["r_info_type"] == R_X86_64_32]
        entry = rela["sh_offset"] + index * rela["sh_entsize"]
        offset = rela.get_relocation(index)["r_offset"]
    struct.pack_into("<I", data, entry + 8, 200)  # the type half of r_info
    with pytest.raises(rtdyld.UnsupportedRelocationError) as exc:
        rtdyld.Linker().add_object(bytes(data), name="retyped.o")
    assert str(exc.value) == (
        f"retyped.o: .text+{offset:#x}: relocation type 200 against 'ext_buf': "
        "this relocation type is not supported"
    )


def test_undefined_symbol_in_a_system_library_suggests_linking_it(build):
    path = build.cc("errors/needs_bz2.c", *PIE)
    assert host.process_symbol("BZ2_bzlibVersion") == 0, "the test needs libbz2 not loaded globally"
    offset = reloc_offset(path, R_X86_64_PLT32)
    ln = rtdyld.Linker()
    ln.add_object(path)
    assert error_of(ln, rtdyld.UndefinedSymbolError) == (
        "undefined symbol: BZ2_bzlibVersion\n"
        f"  'BZ2_bzlibVersion', referenced by {path}: .text+{offset:#x}\n"
        "  hint: link with -l bz2 (Linker.load_library('bz2')): libbz2.so.1.0 provides 'BZ2_bzlibVersion'"
    )
    # The suggestion works, and looking it up made nothing visible to the process.
    assert host.process_symbol("BZ2_bzlibVersion") == 0
    ln.load_library("bz2")
    ln.add_object(path)
    ln.finalize()
    version = ffi.string(ffi.cast("const char *", ln.function("bz2_version", "const char *(void)")()))
    assert version.startswith(b"1.")


def test_undefined_symbol_of_an_archive_member_names_the_member(build, tmp_path):
    member = named_copy(
        build.cc_text("int absent(int);\nint pulled(int x) { return absent(x) + 1; }\n", *PIE), tmp_path, "uses.o"
    )
    offset = reloc_offset(member, R_X86_64_PLT32)
    user = build.cc_text("int pulled(int);\nint user(int x) { return pulled(x); }\n", *PIE)
    ln = rtdyld.Linker()
    ln.add_object(user)
    ln.add_archive(build_gnu_archive(tmp_path / "libpull.a", [member]))
    assert error_of(ln, rtdyld.UndefinedSymbolError) == (
        "undefined symbol: absent\n"
        f"  'absent', referenced by libpull.a(uses.o): .text+{offset:#x}\n"
        "  hint: define 'absent' with Linker.define(name, address_or_callback) "
        "or add an object or archive that defines it"
    )


def test_duplicate_between_an_object_and_an_archive_member(build, tmp_path):
    obj = build.cc("errors/dup_a.c", *PIE)
    member = named_copy(
        build.cc_text("int dup_sym(void) { return 2; }\nint also(void) { return 3; }\n", *PIE), tmp_path, "dup.o"
    )
    user = build.cc_text("int also(void);\nint wants_also(void) { return also(); }\n", *PIE)
    ln = rtdyld.Linker()
    ln.add_object(obj)
    ln.add_object(user)
    ln.add_archive(build_gnu_archive(tmp_path / "libdup.a", [member]))
    assert error_of(ln, rtdyld.DuplicateSymbolError) == (
        f"duplicate symbol 'dup_sym': defined in {obj} (.text) and in libdup.a(dup.o) (.text)\n"
        "  hint: keep one definition of 'dup_sym': drop the other, make it static, "
        "or mark one __attribute__((weak))"
    )


def test_duplicate_of_an_earlier_batch_says_which_batch(build):
    a = build.cc("errors/dup_a.c", *PIE)
    b = build.cc("errors/dup_b.c", *PIE)
    ln = rtdyld.Linker()
    ln.add_object(a)
    first = ln.finalize()
    ln.add_object(b)
    assert error_of(ln, rtdyld.DuplicateSymbolError) == (
        f"duplicate symbol 'dup_sym': defined in {b} (.text) and already loaded from {a} (batch #1)\n"
        "  hint: remove batch #1 first (Handle.remove), link this batch into another dylib "
        "(Linker.create_dylib), or drop one definition of 'dup_sym'"
    )
    first.remove()
    ln.add_object(b)
    ln.finalize()


def test_relocation_overflow_names_everything_and_the_fix(build):
    path = build.cc("errors/abs32.c", *NOPIC)
    offset = reloc_offset(path, R_X86_64_32)
    buf = ffi.new("char[64]")
    addr = int(ffi.cast("uintptr_t", buf))
    assert addr >= 1 << 32, "the test needs a heap address above 4 GiB"
    ln = rtdyld.Linker()
    ln.define("ext_buf", addr)
    ln.add_object(path)
    assert error_of(ln, rtdyld.RelocationOverflowError) == (
        "relocation overflow:\n"
        f"  {path}: .text+{offset:#x}: R_X86_64_32 against 'ext_buf': value {addr:#x} "
        f"(S={addr:#x}, A=0x0) does not fit in 32 bits\n"
        "  hint: absolute 32-bit relocations need their targets below 4 GiB (below 2 GiB when "
        "sign-extended); rebuild with -fPIC or -fPIE, or place the target below 2 GiB"
    )


def test_layout_error_names_both_constraints(build):
    path = build.cc("errors/nopic_stdout.c", *NOPIC)
    pc32 = reloc_offset(path, R_X86_64_PC32)
    abs32 = reloc_offset(path, R_X86_64_32)
    stdout = host.process_symbol("stdout")
    ln = rtdyld.Linker()
    lo, hi = ln.memory.reach_range(low=True)
    ln.add_object(path)
    assert error_of(ln, rtdyld.LayoutError) == (
        f"{path}: .text+{pc32:#x}: R_X86_64_PC32 against 'stdout' (at {stdout:#x} in "
        f"{host.describe_address(stdout)}) needs the code within ±2 GiB of it, but the batch is placed at "
        f"{lo:#x}-{hi:#x}, below 2 GiB, because {path}: .text+{abs32:#x} stores an absolute 32-bit address "
        "(R_X86_64_32 against '.bss') as code built without PIC does. Both constraints cannot be met at "
        "once: rebuild with -fPIC or -fPIE"
    )


def test_validation_error_names_the_validator_and_the_batch(build):
    path = build.cc("errors/ok.c", *PIE)

    def no_data(view):
        raise ValueError("writable data is not allowed here")

    ln = rtdyld.Linker()
    ln.add_validator(no_data)
    ln.add_object(path)
    assert error_of(ln, rtdyld.ValidationError) == (
        f"validator no_data rejected the batch of {path}: writable data is not allowed here"
    )


def test_usage_error_says_what_to_remove_first(build):
    a = build.cc("errors/ok.c", *PIE)
    user = build.cc_text("int ok_func(int);\nint twice(int x) { return 2 * ok_func(x); }\n", *PIE)
    ln = rtdyld.Linker()
    ln.add_object(a)
    first = ln.finalize()
    ln.add_object(user)
    ln.finalize()
    with pytest.raises(rtdyld.UsageError) as exc:
        first.remove()
    assert str(exc.value) == (
        f"cannot remove batch #1 ({a}): still referenced by #2 ({user}); remove those first or pass force=True"
    )
    ln.close()


def test_library_not_found_lists_where_it_looked():
    with pytest.raises(rtdyld.LibraryNotFoundError) as exc:
        rtdyld.Linker().load_library("rtdyld_no_such_library")
    assert str(exc.value) == (
        "cannot find library 'rtdyld_no_such_library' (librtdyld_no_such_library.so) in "
        + ", ".join(host.SYSTEM_LIB_DIRS)
    )


def test_batch_that_does_not_fit_says_how_to_make_room(build):
    first = build.cc_text("int first[4096] = {1};\n", *PIE, stem="first")  # 4 pages of .data
    path = build.cc_text("int table[5120] = {1};\n", *PIE, stem="table5")  # 5 pages of .data
    with MemoryManager(reserve_size=8 * PAGE_SIZE, low_reserve_size=PAGE_SIZE) as mm:
        ln = rtdyld.Linker(memory=mm)
        base, size = mm.reservations()[0]
        ln.add_object(first)
        ln.finalize()
        free = sum(n for _, n in mm.free_blocks())
        largest = max(n for _, n in mm.free_blocks())
        ln.add_object(path)
        message = error_of(ln, rtdyld.LayoutError)
        (need,) = re.match(r"no room for the batch of \S+ \((\d+) bytes\)", message).groups()
        assert free < int(need) <= size  # it fits the reservation, not what is left of it
        assert message == (
            f"no room for the batch of {path} ({need} bytes): cannot allocate {need} bytes ({int(need) // PAGE_SIZE} "
            f"pages) in the main reservation [{base:#x}, {base + size:#x}) of {size} bytes: {free} bytes free, "
            f"largest free block {largest} bytes\n"
            "  hint: remove batches no longer needed, or give the Linker a MemoryManager(reserve_size=...) "
            "with more room"
        )


def test_section_larger_than_the_reservation_is_named_before_allocating(build):
    path = build.cc_text("int table[4096] = {1};\n", *PIE, stem="table")  # exactly 4 pages of .data
    with MemoryManager(reserve_size=PAGE_SIZE, low_reserve_size=PAGE_SIZE) as mm:
        ln = rtdyld.Linker(memory=mm)
        ln.add_object(path)
        assert error_of(ln, rtdyld.LayoutError) == (
            f"{path}: section '.data' needs 0x4000 bytes aligned to 0x20, more than the whole "
            f"{PAGE_SIZE:#x}-byte memory reservation the batch is placed in"
        )


def test_lookup_of_a_missing_symbol_points_at_the_likely_one(build):
    ln = rtdyld.Linker()
    side = ln.create_dylib("side")
    ln.add_object(build.cc("errors/ok.c", *PIE))
    ln.add_object(build.cc_text("int only_on_the_side(void) { return 7; }\n", *PIE, stem="side"), dylib=side)
    ln.finalize()
    with pytest.raises(rtdyld.UndefinedSymbolError) as exc:
        ln.function("ok_fnuc", "int(int)")
    assert str(exc.value) == "symbol 'ok_fnuc' is not defined by any finalized batch; did you mean 'ok_func'?"
    with pytest.raises(rtdyld.UndefinedSymbolError) as exc:
        ln.lookup("only_on_the_side")
    assert str(exc.value) == (
        "symbol 'only_on_the_side' is not defined by any finalized batch; dylib 'side' publishes it: "
        "pass dylib=linker.dylibs['side']"
    )
    assert ln.function("only_on_the_side", "int(void)", dylib=ln.dylibs["side"])() == 7
    with pytest.raises(rtdyld.UndefinedSymbolError) as exc:
        ln.lookup("nothing_like_it")
    assert str(exc.value) == "symbol 'nothing_like_it' is not defined by any finalized batch"
