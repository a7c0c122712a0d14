"""Linking against static archives: lazy extraction, archive kinds, sessions, errors.

The small archives are built once per session with gcc and ``ar`` from
fixtures/archive_link (BSD ones byte by byte, as no tool here writes them).
Debian's libz.a and libbz2.a are archives nobody here wrote: a driver links
against them, and what it compresses must equal, byte for byte, what
Python's zlib and bz2 modules make; GNU ld says which members a link needs.
"""

from __future__ import annotations

import bz2
import functools
import os
import random
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import cffi
import pytest
from archive_tools import append_to_archive, build_gnu_archive, compile_c, elf_definitions, write_bsd_archive
from fixtures_build import FIXTURES, REPO

from rtdyld import DuplicateSymbolError, Linker, MalformedObjectError, UndefinedSymbolError
from rtdyld.objfile.archive import read_archive

SRC = FIXTURES / "archive_link"
CFLAGS = ("-O2", "-fPIE")
SYSTEM_LIBS = Path("/usr/lib/x86_64-linux-gnu")
LIBZ = SYSTEM_LIBS / "libz.a"
LIBBZ2 = SYSTEM_LIBS / "libbz2.a"
CHAIN = ["mid.o", "leaf.o", "unused.o"]  # libchain.a, in archive order
EXTRA_FLAGS = {"tentative.c": ("-fcommon",)}

HAVE_SYSTEM_ARCHIVES = LIBZ.exists() and LIBBZ2.exists()
USES_SYSTEM_ARCHIVES = {"zdriver.c", "bzdriver.c", "zmain.c"}  # need zlib.h and bzlib.h too

ffi = cffi.FFI()

needs_system_archives = pytest.mark.skipif(
    not HAVE_SYSTEM_ARCHIVES, reason="libz.a and libbz2.a are missing: run sh .ci/test-deps.sh"
)


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def objs(tmp_path_factory) -> SimpleNamespace:
    """Every fixture C file compiled once, as ``objs.<stem>`` (objs/<stem>.o), plus
    the two different ``dup.o`` (``objs.dup_first``, ``objs.dup_second``)."""
    d = tmp_path_factory.mktemp("archive_link_objs")
    out = {
        src.stem: compile_c(src, d / f"{src.stem}.o", *CFLAGS, *EXTRA_FLAGS.get(src.name, ()))
        for src in sorted(SRC.glob("*.c"))
        if HAVE_SYSTEM_ARCHIVES or src.name not in USES_SYSTEM_ARCHIVES
    }
    for stem in ("dup_first", "dup_second"):
        (d / stem).mkdir()
        out[stem] = compile_c(SRC / f"{stem}.c", d / stem / "dup.o", *CFLAGS)
    return SimpleNamespace(dir=d, **out)


def _bsd_members(objs: SimpleNamespace, names: list[str]) -> tuple[list[tuple[str, bytes]], list[tuple[str, int]]]:
    members = [(n, (objs.dir / n).read_bytes()) for n in names]
    symdef = [(s, i) for i, (n, data) in enumerate(members) for s in elf_definitions(memoryview(data), n)]
    return members, symdef


@pytest.fixture(scope="session")
def libs(objs, tmp_path_factory) -> SimpleNamespace:
    """The test archives, built once.  ``libs.kinds`` maps an archive kind to a
    libchain-like archive (mid.o, leaf.o, unused.o) of that kind."""
    d = tmp_path_factory.mktemp("archive_link_libs")
    chain = [objs.dir / n for n in CHAIN]
    kinds = {
        "gnu": build_gnu_archive(d / "libgnu.a", chain),
        "indexless": build_gnu_archive(d / "libnoidx.a", chain, index=False),
    }
    # Thin members are named relative to the archive's directory, as ar stores them.
    for kind, ops in (("thin", "rcsT"), ("thin-indexless", "rcST")):
        lib = objs.dir / f"lib{kind.replace('-', '')}.a"
        subprocess.run(["ar", ops, lib.name, *CHAIN], cwd=objs.dir, check=True, capture_output=True)
        kinds[kind] = lib
    members, symdef = _bsd_members(objs, CHAIN)
    kinds["bsd"] = write_bsd_archive(d / "libbsd.a", members, symdef)
    kinds["bsd-sorted"] = write_bsd_archive(d / "libbsdsorted.a", members, symdef, sorted=True)
    kinds["bsd-sorted-long-names"] = write_bsd_archive(d / "libbsdlong.a", members, symdef, sorted=True,
                                                       long_names=True)

    dup = build_gnu_archive(d / "libdup.a", [objs.dup_first])
    append_to_archive(dup, [objs.dup_second])

    only = d / "archive_only"
    only.mkdir()
    return SimpleNamespace(
        dir=d,
        kinds=kinds,
        chain=build_gnu_archive(d / "libchain.a", chain),
        whole=build_gnu_archive(d / "libwhole.a", [objs.mid, objs.leaf, objs.extra]),
        dup=dup,
        absent=build_gnu_archive(d / "libabsent.a", [objs.needs_absent, objs.leaf]),
        cycle_a=build_gnu_archive(d / "libcyclea.a", [objs.cycle_a, objs.cycle_end]),
        cycle_b=build_gnu_archive(d / "libcycleb.a", [objs.cycle_b]),
        tentative=build_gnu_archive(d / "libtentative.a", [objs.tentative]),
        tentative_indexless=build_gnu_archive(d / "libtentnoidx.a", [objs.tentative], index=False),
        archive_only=only,
        only_chain=build_gnu_archive(only / "libchain.a", chain),
    )


def _pulled(handle) -> dict[str, tuple[str, str]]:
    """Each pulled member's display name -> (symbol, referrer) that pulled it."""
    return {o.name: (p.symbol, p.referrer) for o in handle.batch.objects if (p := handle.batch.pulls.get(id(o)))}


def _referring_objects(error: UndefinedSymbolError) -> dict[str, set[str]]:
    """Each missing name -> the objects that refer to it (referrers read ``object: section+offset``)."""
    return {name: {r.partition(": ")[0] for r in refs} for name, refs in error.missing.items()}


def _int_fn(ln: Linker, name: str):
    return ln.function(name, "int(void)")


# --- lazy extraction ------------------------------------------------------------------


def test_transitive_member_is_pulled_and_nothing_else(ln, objs, libs):
    ln.add_object(objs.chain_prog)
    ln.add_archive(libs.chain)
    h = ln.finalize()
    assert h.objects == [str(objs.chain_prog), "libchain.a(mid.o)", "libchain.a(leaf.o)"]
    assert _int_fn(ln, "chain_entry")() == (20 + 1) * 2
    pulled = _pulled(h)
    assert pulled["libchain.a(mid.o)"] == ("mid_value", str(objs.chain_prog))
    symbol, referrer = pulled["libchain.a(leaf.o)"]
    assert symbol in ("leaf_value", "leaf_counter") and referrer == "libchain.a(mid.o)"
    members = {p.member.name: p.member for p in h.batch.pulls.values()}
    assert [m.index for m in (members["mid.o"], members["leaf.o"])] == [0, 1]


def test_unneeded_member_with_a_missing_reference_does_not_matter(ln, objs, libs):
    ln.add_object(objs.chain_prog)
    ln.add_archive(libs.chain)
    h = ln.finalize()
    assert "libchain.a(unused.o)" not in h.objects
    assert "unused_entry" not in h.symbols
    with pytest.raises(UndefinedSymbolError, match="unused_entry"):
        ln.lookup("unused_entry")


def test_archive_added_before_the_program(ln, objs, libs):
    ln.add_archive(libs.chain)
    ln.add_object(objs.chain_prog)
    h = ln.finalize()
    assert h.objects == [str(objs.chain_prog), "libchain.a(mid.o)", "libchain.a(leaf.o)"]
    assert _int_fn(ln, "chain_entry")() == 42


def test_program_definition_outranks_the_archive(ln, objs, libs):
    ln.add_object(objs.own_leaf_prog)
    ln.add_archive(libs.chain)
    h = ln.finalize()
    assert h.objects == [str(objs.own_leaf_prog), "libchain.a(mid.o)"]
    assert _int_fn(ln, "own_leaf_entry")() == 99 + 1


def test_names_by_role_alike_for_small_and_large_tables(objs, monkeypatch):
    # Small symbol tables are read in one plain pass, large ones through
    # numpy first: the same names either way.
    from rtdyld import archives
    from rtdyld.inputs import parse_object

    seen = 0
    for path in sorted(objs.dir.glob("*.o")):
        obj = parse_object(path.read_bytes(), path.name)
        monkeypatch.setattr(archives, "SMALL_TABLE", 1 << 30)
        small = archives.names_by_role(obj)
        monkeypatch.setattr(archives, "SMALL_TABLE", 0)
        assert archives.names_by_role(obj) == small
        seen += bool(small[0]) and bool(small[1])
    assert seen


def test_weak_reference_pulls_nothing(ln, objs, libs):
    ln.add_object(objs.weak_prog)
    ln.add_archive(libs.chain)
    h = ln.finalize()
    assert h.objects == [str(objs.weak_prog)]
    assert _int_fn(ln, "weak_entry")() == -1


def test_members_with_the_same_name_are_both_usable(ln, objs, libs):
    ln.add_object(objs.dup_prog)
    ln.add_archive(libs.dup)
    h = ln.finalize()
    assert h.objects == [str(objs.dup_prog), "libdup.a(dup.o)", "libdup.a(dup.o)"]
    assert sorted(p.member.index for p in h.batch.pulls.values()) == [0, 1]
    assert {p.symbol for p in h.batch.pulls.values()} == {"dup_first", "dup_second"}
    assert _int_fn(ln, "dup_entry")() == 101 * 1000 + 202


def test_archives_need_no_group_to_resolve_a_cycle(ln, objs, libs):
    # GNU ld reads each archive once, in order, and would need --start-group here.
    ln.add_object(objs.cycle_prog)
    ln.add_archive(libs.cycle_a)
    ln.add_archive(libs.cycle_b)
    h = ln.finalize()
    assert h.objects == [
        str(objs.cycle_prog), "libcyclea.a(cycle_a.o)", "libcycleb.a(cycle_b.o)", "libcyclea.a(cycle_end.o)"
    ]
    assert _pulled(h)["libcyclea.a(cycle_end.o)"] == ("cycle_end", "libcycleb.a(cycle_b.o)")
    assert _int_fn(ln, "cycle_entry")() == 1000 + 100 + 3


@pytest.mark.parametrize(
    "indexed",
    [
        True,
        pytest.param(False),
    ],
)
def test_member_defining_a_common_symbol_is_pulled(ln, objs, libs, indexed):
    lib = libs.tentative if indexed else libs.tentative_indexless
    ln.add_object(objs.tentative_prog)
    ln.add_archive(lib)
    h = ln.finalize()
    assert h.objects == [str(objs.tentative_prog), f"{lib.name}(tentative.o)"]
    address = int(ffi.cast("uintptr_t", ln.function("tentative_address", "int *(void)")()))
    assert address == ln.lookup("tentative_count")
    assert _int_fn(ln, "tentative_bump")() == 1
    assert ffi.cast("int *", address)[0] == 1


@pytest.mark.parametrize(
    "kind", ["gnu", "indexless", "thin", "thin-indexless", "bsd", "bsd-sorted", "bsd-sorted-long-names"]
)
def test_archive_kinds(ln, objs, libs, kind):
    lib = libs.kinds[kind]
    assert read_archive(lib).has_index == ("indexless" not in kind)
    if kind.startswith("bsd"):
        head = lib.read_bytes()[:100]
        assert b"__.SYMDEF" in head and (b"__.SYMDEF SORTED" in head) == ("sorted" in kind)
    ln.add_object(objs.chain_prog)
    ln.add_archive(lib)
    h = ln.finalize()
    assert h.objects == [str(objs.chain_prog), f"{lib.name}(mid.o)", f"{lib.name}(leaf.o)"]
    assert _int_fn(ln, "chain_entry")() == 42
    assert ln.function("leaf_bump", "int(void)")() == 1


def test_add_file_recognises_archives(ln, objs, libs):
    ln.add_file(objs.chain_prog)
    ln.add_file(libs.kinds["thin"])
    h = ln.finalize()
    assert h.objects == [str(objs.chain_prog), "libthin.a(mid.o)", "libthin.a(leaf.o)"]
    assert _int_fn(ln, "chain_entry")() == 42


def test_link_library_uses_the_archive_when_it_is_all_there_is(ln, objs, libs):
    ln.library_dirs.append(str(libs.archive_only))
    assert ln.link_library("chain") == str(libs.only_chain)
    ln.add_object(objs.chain_prog)
    h = ln.finalize()
    assert h.objects == [str(objs.chain_prog), "libchain.a(mid.o)", "libchain.a(leaf.o)"]
    assert _int_fn(ln, "chain_entry")() == 42


@needs_system_archives
def test_link_library_static_prefers_the_archive(ln):
    path = ln.link_library("z", static=True)
    assert Path(path).name == "libz.a"
    h = ln.finalize()
    assert h.objects == []  # registering an archive loads nothing by itself


# --- whole archives ---------------------------------------------------------------------


def test_whole_archive_loads_every_member(ln, libs):
    ln.add_archive(libs.whole, whole=True)
    h = ln.finalize()
    assert h.objects == ["libwhole.a(mid.o)", "libwhole.a(leaf.o)", "libwhole.a(extra.o)"]
    assert {p.referrer for p in h.batch.pulls.values()} == {"--whole-archive"}
    assert _int_fn(ln, "extra_value")() == 7
    assert _int_fn(ln, "mid_value")() == 21


def test_whole_archive_loads_even_a_member_nobody_needs(ln, libs):
    ln.add_archive(libs.chain, whole=True)
    with pytest.raises(UndefinedSymbolError) as e:
        ln.finalize()
    assert "nowhere_defined" in str(e.value) and "libchain.a(unused.o)" in str(e.value)
    assert _referring_objects(e.value) == {"nowhere_defined": {"libchain.a(unused.o)"}}


def test_whole_archive_skips_members_an_earlier_batch_loaded(ln, objs, libs):
    ln.add_object(objs.leaf_user)
    ln.add_archive(libs.whole)
    first = ln.finalize()
    assert first.objects == [str(objs.leaf_user), "libwhole.a(leaf.o)"]
    ln.add_archive(libs.whole, whole=True)
    second = ln.finalize()
    assert second.objects == ["libwhole.a(mid.o)", "libwhole.a(extra.o)"]
    counter = ln.function("mid_counter", "int *(void)")()
    assert int(ffi.cast("uintptr_t", counter)) == first.symbols["leaf_counter"].address


# --- sessions: later batches, removal, failure -------------------------------------------


def test_later_batch_pulls_then_and_reuses_what_is_loaded(ln, objs, libs):
    ln.add_object(objs.leaf_user)
    ln.add_archive(libs.chain)
    first = ln.finalize()
    assert first.objects == [str(objs.leaf_user), "libchain.a(leaf.o)"]
    leaf = first.symbols["leaf_value"].address

    ln.add_object(objs.mid_user)  # the archive stays registered
    second = ln.finalize()
    assert second.objects == [str(objs.mid_user), "libchain.a(mid.o)"]
    assert "leaf_value" not in second.symbols
    assert _pulled(second) == {"libchain.a(mid.o)": ("mid_value", str(objs.mid_user))}
    assert first in {d.batch for d in (ln.symbol("leaf_value"), ln.symbol("leaf_counter"))}

    def address(name: str) -> int:
        return int(ffi.cast("uintptr_t", ln.function(name, "void *(void)")()))

    assert address("leaf_user_target") == address("mid_user_leaf") == leaf
    assert address("mid_user_counter") == first.symbols["leaf_counter"].address
    assert [ln.function("leaf_user_bump", "int(void)")() for _ in range(2)] == [1, 2]
    assert ffi.cast("int *", address("mid_user_counter"))[0] == 2
    assert _int_fn(ln, "mid_user_value")() == 21

    ln.add_archive(libs.chain)  # registering it again changes nothing
    ln.add_object(objs.chain_prog)
    third = ln.finalize()
    assert third.objects == [str(objs.chain_prog)]
    assert _int_fn(ln, "chain_entry")() == 42


def test_member_is_pulled_again_after_its_batch_is_removed(ln, objs, libs):
    ln.add_object(objs.leaf_user)
    ln.add_archive(libs.chain)
    first = ln.finalize()
    assert ln.function("leaf_user_bump", "int(void)")() == 1
    first.remove()
    with pytest.raises(UndefinedSymbolError):
        ln.lookup("leaf_value")

    ln.add_object(objs.leaf_user)
    again = ln.finalize()
    assert again.objects == [str(objs.leaf_user), "libchain.a(leaf.o)"]
    assert ln.function("leaf_user_bump", "int(void)")() == 1  # a fresh copy, its counter zero again
    assert ln.symbol("leaf_value").batch is again


def test_failed_batch_leaves_its_members_available(ln, objs, libs, callback):
    ln.add_object(objs.leaf_user)
    ln.add_archive(libs.absent)
    ln.finalize()
    before = ln.snapshot()

    ln.add_object(objs.absent_prog)
    with pytest.raises(UndefinedSymbolError) as e:
        ln.finalize()
    message = str(e.value)
    assert "absent_symbol" in message and "libabsent.a(needs_absent.o)" in message
    assert _referring_objects(e.value) == {"absent_symbol": {"libabsent.a(needs_absent.o)"}}
    assert ln.snapshot() == before

    ln.define("absent_symbol", callback("int(void)", lambda: 41))
    ln.add_object(objs.absent_prog)
    h = ln.finalize()
    assert h.objects == [str(objs.absent_prog), "libabsent.a(needs_absent.o)"]
    assert _int_fn(ln, "absent_entry")() == 42


def test_abort_forgets_the_archives_of_the_batch(ln, objs, libs):
    ln.add_archive(libs.chain)
    ln.abort()
    ln.add_object(objs.chain_prog)
    with pytest.raises(UndefinedSymbolError, match="mid_value"):
        ln.finalize()


def test_failed_batch_forgets_its_archives(ln, objs, libs):
    ln.add_object(objs.absent_prog)
    ln.add_archive(libs.chain)
    with pytest.raises(UndefinedSymbolError, match="needs_absent"):
        ln.finalize()
    ln.add_object(objs.chain_prog)
    with pytest.raises(UndefinedSymbolError, match="mid_value"):
        ln.finalize()


def test_thin_archive_members_are_found_after_a_change_of_directory(ln, objs, libs, monkeypatch, tmp_path):
    monkeypatch.chdir(objs.dir)
    ln.add_object(objs.leaf_user)
    ln.add_archive("libthin.a")
    first = ln.finalize()
    assert first.objects == [str(objs.leaf_user), "libthin.a(leaf.o)"]
    monkeypatch.chdir(tmp_path)
    ln.add_object(objs.mid_user)
    second = ln.finalize()
    assert second.objects == [str(objs.mid_user), "libthin.a(mid.o)"]
    assert _int_fn(ln, "mid_user_value")() == 21


# --- errors name the member ------------------------------------------------------------------


def test_undefined_symbol_in_a_pulled_member(ln, objs, libs):
    ln.add_object(objs.absent_prog)
    ln.add_archive(libs.absent)
    with pytest.raises(UndefinedSymbolError) as e:
        ln.finalize()
    assert "libabsent.a(needs_absent.o)" in str(e.value)
    assert "absent_symbol" in str(e.value)
    assert "libabsent.a(leaf.o)" not in str(e.value)


def test_pulled_member_clashing_with_the_program(ln, objs, libs):
    ln.add_object(objs.clash_prog)
    ln.add_archive(libs.chain)
    with pytest.raises(DuplicateSymbolError) as e:
        ln.finalize()
    message = str(e.value)
    assert "leaf_value" in message
    assert "libchain.a(leaf.o)" in message and str(objs.clash_prog) in message


SHT_SYMTAB, SHT_RELA = 2, 4
EM_ARM = 40


def _elf_section_header(data: bytes, index: int) -> int:
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    return shoff + 64 * index


def _section_index(data: bytes, sh_type: int) -> int:
    (shnum,) = struct.unpack_from("<H", data, 0x3C)
    for i in range(shnum):
        if struct.unpack_from("<I", data, _elf_section_header(data, i) + 4)[0] == sh_type:
            return i
    raise AssertionError(f"no section of type {sh_type}")


def _headers_past_the_end(data: bytearray) -> None:
    struct.pack_into("<Q", data, 0x28, len(data) - 16)


def _symtab_in_the_next_member(data: bytearray) -> None:
    struct.pack_into("<Q", data, _elf_section_header(data, _section_index(data, SHT_SYMTAB)) + 0x18, len(data) + 64)


def _relocation_symbol_out_of_range(data: bytearray) -> None:
    (offset,) = struct.unpack_from("<Q", data, _elf_section_header(data, _section_index(data, SHT_RELA)) + 0x18)
    (info,) = struct.unpack_from("<Q", data, offset + 8)
    struct.pack_into("<Q", data, offset + 8, (0xFFFF << 32) | (info & 0xFFFFFFFF))


def _wrong_machine(data: bytearray) -> None:
    struct.pack_into("<H", data, 0x12, EM_ARM)


CORRUPTIONS = {
    "section headers past the end": _headers_past_the_end,
    "symbol table in the next member": _symtab_in_the_next_member,
    "relocation symbol out of range": _relocation_symbol_out_of_range,
    "wrong machine": _wrong_machine,
}


@pytest.fixture(scope="session")
def bad_libs(objs, libs) -> dict[str, Path]:
    """libbad<N>.a: mid.o then leaf.o, with mid.o's bytes corrupted in place
    after ``ar`` wrote the archive, so its index and member headers stay valid."""
    out = {}
    for i, (what, corrupt) in enumerate(CORRUPTIONS.items()):
        lib = build_gnu_archive(libs.dir / f"libbad{i}.a", [objs.mid, objs.leaf])
        raw = bytearray(lib.read_bytes())
        (mid,) = read_archive(bytes(raw)).definers("mid_value")
        start = mid.header_offset + 60
        member = bytearray(raw[start : start + mid.size])
        assert member[:4] == b"\x7fELF"
        corrupt(member)
        raw[start : start + mid.size] = member
        lib.write_bytes(raw)
        out[what] = lib
    return out


@pytest.mark.parametrize("what", CORRUPTIONS)
def test_malformed_member_is_named(ln, objs, bad_libs, what):
    lib = bad_libs[what]
    before = ln.snapshot()
    ln.add_object(objs.chain_prog)
    ln.add_archive(lib)
    with pytest.raises(MalformedObjectError, match=re.escape(f"{lib.name}(mid.o)")):
        ln.finalize()
    assert ln.snapshot() == before


@pytest.mark.parametrize("what", CORRUPTIONS)
def test_malformed_member_nobody_needs_is_never_read(ln, objs, bad_libs, what):
    lib = bad_libs[what]
    ln.add_object(objs.leaf_user)
    ln.add_archive(lib)
    h = ln.finalize()
    assert h.objects == [str(objs.leaf_user), f"{lib.name}(leaf.o)"]
    assert ln.function("leaf_user_bump", "int(void)")() == 1


# --- Debian's libz.a and libbz2.a ----------------------------------------------------------------


def gnu_ld_members(objects: list[Path], archives: list[Path], tmp: Path) -> set[str]:
    """The members GNU ld extracts for a relocatable link of ``objects``, as ``libz.a(deflate.o)``."""
    run = subprocess.run(
        ["ld", "-r", "-t", "-t", "-o", str(tmp / "ld-r.o"), *map(str, objects), *map(str, archives)],
        check=True, capture_output=True, text=True,
    )
    found = (re.fullmatch(r"\((.+)\)(.+)", line.strip()) for line in run.stdout.splitlines())
    return {f"{Path(m[1]).name}({m[2]})" for m in found if m}


@functools.cache
def _text(size: int) -> bytes:
    rng = random.Random(1951)
    words = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "archive", "member", "symbol",
             "index", "linker", "relocation", "section", "deflate", "inflate", "huffman", "block", "stream")
    lines, n = [], 0
    while n < size:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(1, 14))) + ".\n"
        lines.append(line)
        n += len(line)
    return "".join(lines).encode()[:size]


INPUTS = {
    "empty": lambda: b"",
    "one byte": lambda: b"x",
    "random 64 KiB": lambda: random.Random(5).randbytes(1 << 16),
    "zeros 300 KB": lambda: bytes(300_000),
    "text 1 MiB": lambda: _text(1 << 20),
}
ZLIB_LEVELS = (1, 6, 9, -1)


def _cap(n: int) -> int:
    return n + n // 100 + 1024


@pytest.fixture(scope="module")
def compressors(objs, tmp_path_factory):
    """One batch: both drivers, libz.a and libbz2.a (each has a compress.o)."""
    if not HAVE_SYSTEM_ARCHIVES:
        pytest.skip("libz.a and libbz2.a are missing: run sh .ci/test-deps.sh")
    ln = Linker()
    ln.add_object(objs.zdriver)
    ln.add_object(objs.bzdriver)
    ln.add_archive(LIBZ)
    ln.add_archive(LIBBZ2)
    h = ln.finalize()
    u8 = "unsigned char *"
    fns = SimpleNamespace(
        handle=h,
        ld_members=gnu_ld_members([objs.zdriver, objs.bzdriver], [LIBZ, LIBBZ2], tmp_path_factory.mktemp("ld")),
        compress=ln.function("zd_compress", f"long({u8}, unsigned long, {u8}, unsigned long, int)"),
        uncompress=ln.function("zd_uncompress", f"long({u8}, unsigned long, {u8}, unsigned long)"),
        deflate=ln.function("zd_deflate", f"long({u8}, unsigned long, {u8}, unsigned long, int, unsigned long)"),
        inflate=ln.function("zd_inflate", f"long({u8}, unsigned long, {u8}, unsigned long, unsigned long)"),
        crc32=ln.function("zd_crc32", f"unsigned long({u8}, unsigned long)"),
        adler32=ln.function("zd_adler32", f"unsigned long({u8}, unsigned long)"),
        zversion=ln.function("zd_version", "char *(void)"),
        bz_compress=ln.function("bzd_compress", "long(char *, unsigned int, char *, unsigned int, int)"),
        bz_decompress=ln.function("bzd_decompress", "long(char *, unsigned int, char *, unsigned int)"),
        bz_version=ln.function("bzd_version", "char *(void)"),
    )
    yield fns
    ln.close()


def _call(fn, data: bytes, cap: int, *args, ctype: str = "unsigned char[]") -> bytes:
    """Run a driver function from ``data`` into a ``cap``-byte buffer; its bytes."""
    out = bytearray(cap)
    n = fn(ffi.from_buffer(ctype, out), cap, ffi.from_buffer(ctype, data), len(data), *args)
    assert n >= 0, f"the driver returned error {n}"
    return bytes(out[:n])


def test_libz_and_libbz2_pull_what_gnu_ld_pulls(compressors):
    objects = compressors.handle.objects
    pulled = [name for name in objects if name.startswith(("libz.a(", "libbz2.a("))]
    assert len(pulled) == len(set(pulled)) == len(objects) - 2
    assert set(pulled) == compressors.ld_members
    assert {"libz.a(compress.o)", "libbz2.a(compress.o)", "libz.a(deflate.o)"} <= set(pulled)
    for unused in ("gzwrite.o", "gzread.o", "gzlib.o", "gzclose.o", "infback.o"):
        assert f"libz.a({unused})" not in objects


def test_libz_versions(compressors):
    assert ffi.string(ffi.cast("char *", compressors.zversion())).decode() == zlib.ZLIB_RUNTIME_VERSION
    assert ffi.string(ffi.cast("char *", compressors.bz_version())).decode().startswith("1.0.")


@pytest.mark.parametrize("level", ZLIB_LEVELS)
@pytest.mark.parametrize("name", INPUTS)
def test_libz_compress2_matches_python(compressors, name, level):
    data = INPUTS[name]()
    packed = _call(compressors.compress, data, _cap(len(data)), level)
    assert packed == zlib.compress(data, level)
    assert _call(compressors.uncompress, packed, len(data) + 64) == data


@pytest.mark.parametrize("chunk", [1000, 1 << 16])
@pytest.mark.parametrize("level", ZLIB_LEVELS)
@pytest.mark.parametrize("name", INPUTS)
def test_libz_streaming_matches_python(compressors, name, level, chunk):
    data = INPUTS[name]()
    packed = _call(compressors.deflate, data, _cap(len(data)), level, chunk)
    assert packed == zlib.compress(data, level)
    assert _call(compressors.inflate, packed, len(data) + 64, chunk) == data


@pytest.mark.parametrize("name", INPUTS)
def test_libz_stored_blocks_round_trip(compressors, name):
    # Level 0's block boundaries follow the output buffer, so only the content must agree.
    data = INPUTS[name]()
    for packed in (_call(compressors.compress, data, _cap(len(data)), 0),
                   _call(compressors.deflate, data, _cap(len(data)), 0, 1000)):
        assert zlib.decompress(packed) == data
        assert _call(compressors.uncompress, packed, len(data) + 64) == data


@pytest.mark.parametrize("name", INPUTS)
def test_libz_checksums_match_python(compressors, name):
    data = INPUTS[name]()
    buf = ffi.from_buffer("unsigned char[]", data)
    assert compressors.crc32(buf, len(data)) == zlib.crc32(data)
    assert compressors.adler32(buf, len(data)) == zlib.adler32(data)


@pytest.mark.parametrize("name", INPUTS)
def test_libz_inflates_what_python_deflates(compressors, name):
    data = INPUTS[name]()
    for level in (0, 9):
        packed = zlib.compress(data, level)
        assert _call(compressors.uncompress, packed, len(data) + 64) == data
        assert _call(compressors.inflate, packed, len(data) + 64, 4096) == data


@pytest.mark.parametrize("block_size", [9, 1])
@pytest.mark.parametrize("name", INPUTS)
def test_libbz2_matches_python(compressors, name, block_size):
    data = INPUTS[name]()
    packed = _call(compressors.bz_compress, data, _cap(len(data)), block_size, ctype="char[]")
    assert packed == bz2.compress(data, block_size)
    assert _call(compressors.bz_decompress, packed, len(data) + 64, ctype="char[]") == data


# --- the command line ---------------------------------------------------------------------------


def rtdyld_run(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "rtdyld", "run", *map(str, args)],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def test_cli_archive_as_an_input(objs, libs):
    proc = rtdyld_run(objs.cli_main, libs.chain)
    assert proc.stdout == "mid_value=21\n", proc.stderr
    assert proc.returncode == 21


def test_cli_l_finds_an_archive_only_directory(objs, libs):
    assert sorted(p.name for p in libs.archive_only.iterdir()) == ["libchain.a"]
    proc = rtdyld_run("-L", libs.archive_only, "-l", "chain", objs.cli_main)
    assert proc.stdout == "mid_value=21\n", proc.stderr
    assert proc.returncode == 21


def test_cli_error_names_the_member(objs, libs):
    proc = rtdyld_run(objs.absent_prog, libs.absent, "--entry", "absent_entry")
    assert proc.returncode == 1
    assert proc.stderr.startswith("rtdyld: error: ") and "Traceback" not in proc.stderr
    assert "absent_symbol" in proc.stderr and "libabsent.a(needs_absent.o)" in proc.stderr


def _zmain_line(text: str, source: str) -> str:
    return f"{text} crc32={zlib.crc32(text.encode()):08x} compress2 from {source}\n"


@needs_system_archives
def test_cli_l_static_links_libz_a(objs):
    text = "static archives, linked at run time"
    proc = rtdyld_run("-l", "z", "--static", objs.zmain, "--", text)
    assert proc.stdout == _zmain_line(text, "an archive"), proc.stderr
    assert proc.returncode == 0


@needs_system_archives
@pytest.mark.skipif(not (SYSTEM_LIBS / "libz.so").exists(), reason="no libz.so to contrast with")
def test_cli_l_without_static_loads_the_shared_library(objs):
    text = "shared, for contrast"
    proc = rtdyld_run("-l", "z", objs.zmain, "--", text)
    assert proc.stdout == _zmain_line(text, "a shared library"), proc.stderr
    assert proc.returncode == 0
