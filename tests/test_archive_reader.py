"""The archive reader: GNU, BSD and thin archives, indexed or not, and bad ones.

Archives are built at test time: GNU and thin ones with gcc and the system
``ar``, BSD and ``/SYM64/`` ones byte by byte (no tool here writes them).
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import struct
import subprocess
import weakref
from pathlib import Path

import numpy as np
import pytest
from archive_tools import (
    append_to_archive,
    ar_header,
    bsd_archive_bytes,
    build_gnu_archive,
    compile_c,
    elf_definitions,
    gnu_archive_bytes,
    write_bsd_archive,
    write_gnu_archive,
)

import rtdyld.objfile.archive as archive_module
from rtdyld.errors import MalformedObjectError, UsageError
from rtdyld.objfile.archive import ArchiveCache, is_archive, read_archive
from rtdyld.objfile.archive_index import SMALL_INDEX

LIBZ = Path("/usr/lib/x86_64-linux-gnu/libz.a")

SOURCES = {
    "alpha.c": "int alpha(void) { return 1; }\nint alpha_data = 5;\n",
    "beta.c": "int beta(void) { return 2; }\nstatic int hidden(void) { return 3; }\n",
    "a_rather_long_member_name.c": "int long_one(void) { return 4; }\n",
}


@pytest.fixture(scope="module")
def objs(tmp_path_factory) -> dict[str, Path]:
    """The objects every test archives, keyed by object file name."""
    d = tmp_path_factory.mktemp("objs")
    out = {}
    for name, text in SOURCES.items():
        obj = name[:-2] + ".o"
        out[obj] = compile_c(text, d / obj)
    return out


def _ar_names(path: Path) -> list[str]:
    run = subprocess.run(["ar", "t", str(path)], check=True, capture_output=True, text=True)
    return run.stdout.splitlines()


def _nm_index(path: Path) -> list[tuple[str, str]]:
    """(symbol, member) pairs of ``nm -s``'s "Archive index" section."""
    run = subprocess.run(["nm", "-s", str(path)], check=True, capture_output=True, text=True)
    block = run.stdout.split("Archive index:\n", 1)[1].split("\n\n", 1)[0]
    return [tuple(line.split(" in ", 1)) for line in block.splitlines()]


def _index_pairs(ar) -> list[tuple[str, str]]:
    return [(s, m.name) for s in ar.symbols() for m in ar.definers(s)]


class CountingDefinitions:
    """A list_definitions that records which members it was shown."""

    def __init__(self):
        self.seen: list[str] = []

    def __call__(self, data: memoryview, display_name: str) -> list[str]:
        self.seen.append(display_name)
        return elf_definitions(data, display_name)


# --- recognising archives ----------------------------------------------------


def test_is_archive():
    assert is_archive(b"!<arch>\nrest")
    assert is_archive(memoryview(b"!<thin>\n"))
    assert not is_archive(b"\x7fELF\x02\x01\x01")
    assert not is_archive(b"!<arch>")
    assert not is_archive(b"")


# --- GNU ---------------------------------------------------------------------


def test_gnu_indexed(objs, tmp_path):
    lib = build_gnu_archive(tmp_path / "libgnu.a", objs.values())
    ar = read_archive(lib)
    assert ar.kind == "gnu" and ar.has_index
    assert ar.name == str(lib)
    assert [m.name for m in ar.members] == _ar_names(lib)
    assert [m.index for m in ar.members] == [0, 1, 2]
    assert sorted(_index_pairs(ar)) == sorted(_nm_index(lib))

    (alpha,) = ar.definers("alpha")
    assert alpha is ar.members[0] and ar.definers("alpha_data") == [alpha]
    assert alpha.display_name == "libgnu.a(alpha.o)"
    assert bytes(alpha.data) == objs["alpha.o"].read_bytes()
    assert alpha.size == objs["alpha.o"].stat().st_size
    raw = lib.read_bytes()
    assert raw[alpha.header_offset : alpha.header_offset + 8] == b"alpha.o/"
    assert ar.definers("hidden") == [] and ar.definers("nope") == []


def test_gnu_long_member_names(objs, tmp_path):
    lib = build_gnu_archive(tmp_path / "liblong.a", objs.values())
    ar = read_archive(lib)
    (member,) = ar.definers("long_one")
    assert member.name == "a_rather_long_member_name.o"
    assert bytes(member.data) == objs["a_rather_long_member_name.o"].read_bytes()
    assert b"//" in lib.read_bytes()[:200]


def test_same_name_members_are_distinct(objs, tmp_path):
    first = compile_c("int dup_first(void) { return 1; }\n", tmp_path / "dup.o")
    lib = build_gnu_archive(tmp_path / "libdup.a", [objs["alpha.o"], first])
    other = tmp_path / "other"
    other.mkdir()
    second = compile_c("int dup_second(void) { return 2; }\n", other / "dup.o")
    append_to_archive(lib, [second])

    ar = read_archive(lib)
    assert [m.name for m in ar.members] == ["alpha.o", "dup.o", "dup.o"]
    (a,) = ar.definers("dup_first")
    (b,) = ar.definers("dup_second")
    assert (a.index, b.index) == (1, 2) and a is not b
    assert a.header_offset != b.header_offset
    assert bytes(a.data) == first.read_bytes()
    assert bytes(b.data) == second.read_bytes()
    assert sorted(_index_pairs(ar)) == sorted(_nm_index(lib))


def test_member_data_is_a_view_not_a_copy(objs, tmp_path):
    lib = build_gnu_archive(tmp_path / "libview.a", objs.values())
    data = read_archive(lib.read_bytes(), name="libview.a").members[1].data
    assert isinstance(data, memoryview) and data.obj is not None
    assert isinstance(data.obj, bytes) and len(data.obj) == lib.stat().st_size


def test_sym64_index(objs, tmp_path):
    members = [(p.name, p.read_bytes()) for p in objs.values()]
    symbols = [("alpha", 0), ("alpha_data", 0), ("beta", 1), ("long_one", 2)]
    lib = write_gnu_archive(tmp_path / "lib64.a", members, symbols, sym64=True)
    assert lib.read_bytes()[8:15] == b"/SYM64/"
    ar = read_archive(lib)
    assert ar.kind == "gnu" and ar.has_index
    assert [m.name for m in ar.members] == [n for n, _ in members]
    assert [m.name for s in ar.symbols() for m in ar.definers(s)] == [members[i][0] for _, i in symbols]
    assert bytes(ar.definers("long_one")[0].data) == members[2][1]
    # GNU binutils agrees on the crafted index.
    assert sorted(_nm_index(lib)) == sorted(_index_pairs(ar))


def test_python_gnu_writer_matches_ar(objs, tmp_path):
    lib = build_gnu_archive(tmp_path / "libref.a", objs.values())
    members = [(p.name, p.read_bytes()) for p in objs.values()]
    symbols = [(s, i) for i, (n, _) in enumerate(members) for s, m in _nm_index(lib) if m == n]
    ours = read_archive(gnu_archive_bytes(members, symbols), name="ours.a")
    theirs = read_archive(lib)
    assert _index_pairs(ours) == _index_pairs(theirs)
    assert [m.header_offset for m in ours.members] == [m.header_offset for m in theirs.members]


# --- no index ----------------------------------------------------------------


def test_indexless_archive_asks_the_callback_once_and_only_when_needed(objs, tmp_path):
    lib = build_gnu_archive(tmp_path / "libnoidx.a", objs.values(), index=False)
    calls = CountingDefinitions()
    ar = read_archive(lib, list_definitions=calls)
    assert not ar.has_index and ar.kind == "gnu"
    assert calls.seen == []
    assert ar.definers("beta") == [ar.members[1]]
    assert calls.seen == [m.display_name for m in ar.members]
    assert set(ar.symbols()) == {"alpha", "alpha_data", "beta", "long_one"}
    assert ar.definers("long_one") == [ar.members[2]]
    assert len(calls.seen) == len(ar.members)


def test_indexless_archive_without_callback_is_a_usage_error(objs, tmp_path):
    lib = build_gnu_archive(tmp_path / "libnoidx.a", objs.values(), index=False)
    ar = read_archive(lib)
    assert len(ar.members) == 3
    with pytest.raises(UsageError, match=r"libnoidx\.a: .*no symbol index"):
        ar.definers("alpha")


def test_indexed_archive_never_calls_the_callback(objs, tmp_path):
    lib = build_gnu_archive(tmp_path / "libidx.a", objs.values())
    calls = CountingDefinitions()
    ar = read_archive(lib, list_definitions=calls)
    assert ar.definers("alpha") == [ar.members[0]]
    assert calls.seen == []


# --- thin --------------------------------------------------------------------


def _thin_setup(objs, tmp_path, monkeypatch):
    """A thin lib/libthin.a whose members are ../objs/*.o, as ``ar`` stores them."""
    (tmp_path / "objs").mkdir()
    (tmp_path / "lib").mkdir()
    for p in objs.values():
        shutil.copy(p, tmp_path / "objs" / p.name)
    monkeypatch.chdir(tmp_path)
    rel = [Path("objs", p.name) for p in objs.values()]
    build_gnu_archive("lib/libthin.a", rel, thin=True)
    return tmp_path / "lib" / "libthin.a", [tmp_path / p for p in rel]


def test_thin_archive(objs, tmp_path, monkeypatch):
    lib, paths = _thin_setup(objs, tmp_path, monkeypatch)
    ar = read_archive(lib)
    assert ar.kind == "thin" and ar.has_index
    assert [m.name for m in ar.members] == [os.path.relpath(p, lib.parent) for p in paths]
    assert sorted(_index_pairs(ar)) == sorted((s, os.path.relpath(m, lib.parent)) for s, m in _nm_index(lib))
    (member,) = ar.definers("long_one")
    assert member.display_name == "libthin.a(../objs/a_rather_long_member_name.o)"
    assert bytes(member.data) == paths[2].read_bytes()
    assert member.size == paths[2].stat().st_size
    # The archive holds headers only; the member bytes are on disk.
    assert lib.stat().st_size < sum(p.stat().st_size for p in paths)


def test_thin_members_are_not_read_until_asked(objs, tmp_path, monkeypatch):
    lib, paths = _thin_setup(objs, tmp_path, monkeypatch)
    paths[0].unlink()
    ar = read_archive(lib)
    assert ar.definers("beta") == [ar.members[1]]
    assert bytes(ar.members[1].data) == paths[1].read_bytes()
    with pytest.raises(MalformedObjectError, match=r"libthin\.a\(\.\./objs/alpha\.o\).*alpha\.o"):
        _ = ar.members[0].data


def test_thin_member_changed_size(objs, tmp_path, monkeypatch):
    lib, paths = _thin_setup(objs, tmp_path, monkeypatch)
    paths[1].write_bytes(paths[1].read_bytes() + b"extra")
    ar = read_archive(lib)
    with pytest.raises(MalformedObjectError, match=r"libthin\.a\(\.\./objs/beta\.o\).*rebuild"):
        _ = ar.members[1].data


def test_thin_archive_from_bytes_resolves_against_name(objs, tmp_path, monkeypatch):
    lib, paths = _thin_setup(objs, tmp_path, monkeypatch)
    ar = read_archive(lib.read_bytes(), name=str(lib))
    assert bytes(ar.members[0].data) == paths[0].read_bytes()


def test_thin_archive_with_absolute_member_paths(objs, tmp_path):
    lib = build_gnu_archive(tmp_path / "libabs.a", objs.values(), thin=True)
    ar = read_archive(lib)
    assert [m.name for m in ar.members] == [str(p) for p in objs.values()]
    assert bytes(ar.definers("beta")[0].data) == objs["beta.o"].read_bytes()


def test_thin_indexless(objs, tmp_path, monkeypatch):
    lib, paths = _thin_setup(objs, tmp_path, monkeypatch)
    lib = build_gnu_archive(lib, paths, thin=True, index=False)
    ar = read_archive(lib, list_definitions=elf_definitions)
    assert ar.kind == "thin" and not ar.has_index
    assert ar.definers("alpha_data") == [ar.members[0]]


# --- BSD ---------------------------------------------------------------------


@pytest.mark.parametrize("use_64", [False, True], ids=["32", "64"])
@pytest.mark.parametrize("is_sorted", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("long_names", [False, True], ids=["short", "all-long"])
def test_bsd_archive(objs, tmp_path, use_64, is_sorted, long_names):
    members = [(p.name, p.read_bytes()) for p in objs.values()]
    members.append(
        (
            "alpha.o",
            compile_c("int alpha2(void){return 9;}", tmp_path / "x.o").read_bytes(),
        )
    )
    symdef = {"beta": 1, "long_one": 2, "alpha": 0, "alpha_data": 0, "alpha2": 3}
    lib = write_bsd_archive(
        tmp_path / "libbsd.a",
        members,
        symdef,
        sorted=is_sorted,
        use_64=use_64,
        long_names=long_names,
    )
    raw = lib.read_bytes()
    symdef_name = b"__.SYMDEF" + (b"_64" if use_64 else b"") + (b" SORTED" if is_sorted else b"")
    assert symdef_name in raw[:120]

    ar = read_archive(lib)
    assert ar.kind == "bsd" and ar.has_index
    assert [m.name for m in ar.members] == [n for n, _ in members]
    expected_order = sorted(symdef) if is_sorted else list(symdef)
    assert ar.symbols() == expected_order
    for symbol, position in symdef.items():
        (member,) = ar.definers(symbol)
        assert member is ar.members[position]
        assert bytes(member.data) == members[position][1]
        assert member.size == len(members[position][1])
    long_member = ar.members[2]
    assert long_member.name == "a_rather_long_member_name.o"
    assert raw[long_member.header_offset : long_member.header_offset + 3] == b"#1/"
    # ld64's layout: a #1/N name is padded so that the member data is 8-aligned.
    data_offset = long_member.header_offset + 60
    name_len = int(raw[long_member.header_offset + 3 : long_member.header_offset + 16])
    assert (data_offset + name_len) % 8 == 0


def test_bsd_without_index(objs, tmp_path):
    members = [(p.name, p.read_bytes()) for p in objs.values()]
    lib = write_bsd_archive(tmp_path / "libbsd.a", members, None)
    ar = read_archive(lib, list_definitions=elf_definitions)
    assert ar.kind == "bsd" and not ar.has_index
    assert ar.definers("long_one") == [ar.members[2]]
    assert bytes(ar.members[2].data) == members[2][1]


def test_bsd_shared_suffix_string_index():
    # ranlib may point two entries into one string: "_foo" and "foo" share bytes.
    head = len(_symdef([(0, 0), (1, 0)], b"_foo\0"))
    data = _symdef([(0, head), (1, head)], b"_foo\0") + ar_header("m.o", 8) + bytes(8)
    ar = read_archive(data, name="libsfx.a")
    assert ar.symbols() == ["_foo", "foo"]
    assert ar.definers("foo") == [ar.members[0]]


# --- a real archive ----------------------------------------------------------


@pytest.mark.skipif(not LIBZ.exists(), reason="zlib1g-dev is not installed")
def test_debian_libz():
    ar = read_archive(LIBZ)
    assert ar.kind == "gnu" and ar.has_index
    assert [m.name for m in ar.members] == _ar_names(LIBZ)
    assert sorted(_index_pairs(ar)) == sorted(_nm_index(LIBZ))
    (deflate,) = ar.definers("deflate")
    assert deflate.name == "deflate.o"
    assert deflate.display_name == "libz.a(deflate.o)"
    assert bytes(deflate.data[:4]) == b"\x7fELF"
    assert "deflate" in elf_definitions(deflate.data, deflate.display_name)


# --- the cache ---------------------------------------------------------------


def test_cache_parses_once_per_file_version(objs, tmp_path):
    lib = build_gnu_archive(tmp_path / "libc1.a", objs.values(), index=False)
    cache = ArchiveCache()
    first = cache.get(lib)
    assert cache.get(os.path.relpath(lib)) is first
    os.symlink(lib, tmp_path / "link.a")
    assert cache.get(tmp_path / "link.a") is first
    assert first.list_definitions is None
    assert cache.get(lib, list_definitions=elf_definitions) is first
    assert first.definers("beta") == [first.members[1]]

    build_gnu_archive(lib, [objs["beta.o"]])
    os.utime(lib, ns=(0, 10**18))
    second = cache.get(lib)
    assert second is not first
    assert [m.name for m in second.members] == ["beta.o"]
    assert second.has_index


def test_close(objs, tmp_path):
    lib = build_gnu_archive(tmp_path / "libclose.a", objs.values())
    with read_archive(lib) as ar:
        kept = ar.members[0].data
    assert ar.closed
    assert bytes(kept) == objs["alpha.o"].read_bytes()
    with pytest.raises(UsageError, match="closed"):
        _ = ar.members[1].data
    cache = ArchiveCache()
    cached = cache.get(lib)
    cached.close()
    assert cache.get(lib) is not cached


def test_members_outlive_their_archive_object(objs, tmp_path):
    # A member refers to its archive's bytes, not to the Archive that lists
    # it: the two make no reference cycle, so the archive goes (with its
    # bytes, once no member is left) as soon as nothing refers to it.
    lib = build_gnu_archive(tmp_path / "libkept.a", objs.values())
    ar = read_archive(lib)
    members = ar.members
    assert members[0].archive is ar
    gone = weakref.ref(ar)
    gc.disable()
    try:
        del ar
        assert gone() is None
    finally:
        gc.enable()
    assert members[0].archive is None
    assert members[0].display_name == "libkept.a(alpha.o)"
    assert bytes(members[0].data) == objs["alpha.o"].read_bytes()


# --- malformed archives ------------------------------------------------------


def _gnu(members, symbols=None, sym64=False) -> bytes:
    return gnu_archive_bytes(members, symbols, sym64)


def _bad(data: bytes, pattern: str, name: str = "libbad.a") -> None:
    with pytest.raises(MalformedObjectError, match=pattern):
        read_archive(data, name=name)


M1 = ("m1.o", b"0123456789")
M2 = ("m2.o", b"abcdefg")


def test_bad_magic(tmp_path):
    _bad(b"!<arxh>\n", r"libbad\.a: not an archive")
    _bad(b"", r"libbad\.a: not an archive")
    empty = tmp_path / "empty.a"
    empty.write_bytes(b"")
    with pytest.raises(MalformedObjectError, match=r"empty\.a: not an archive"):
        read_archive(empty)


def test_missing_archive(tmp_path):
    with pytest.raises(MalformedObjectError, match=r"nothere\.a: cannot read"):
        read_archive(tmp_path / "nothere.a")
    with pytest.raises(MalformedObjectError, match=r"nothere\.a: cannot read"):
        ArchiveCache().get(tmp_path / "nothere.a")
    folder = tmp_path / "folder.a"
    folder.mkdir()
    with pytest.raises(MalformedObjectError, match=r"folder\.a: cannot read the archive: Is a directory"):
        read_archive(folder)
    with pytest.raises(MalformedObjectError, match=r"folder\.a: cannot read the archive: Is a directory"):
        ArchiveCache().get(folder)


def test_large_archive_is_mapped(objs, tmp_path, monkeypatch):
    lib = build_gnu_archive(tmp_path / "libmapped.a", objs.values())
    read = read_archive(lib)
    monkeypatch.setattr(archive_module, "READ_WHOLE_LIMIT", 0)
    mapped = read_archive(lib)
    assert read._mapping is None and mapped._mapping is not None
    assert _index_pairs(mapped) == _index_pairs(read)
    assert [bytes(m.data) for m in mapped.members] == [bytes(m.data) for m in read.members]
    kept = mapped.members[0].data
    mapped.close()
    assert bytes(kept) == objs["alpha.o"].read_bytes()


def test_truncated_header():
    _bad(
        b"!<arch>\n" + ar_header("m1.o/", 0)[:30],
        r"libbad\.a: truncated member header at offset 0x8 \(30 of 60",
    )


def test_garbled_header_end():
    _bad(
        b"!<arch>\n" + ar_header("m1.o/", 0)[:58] + b"XX",
        r"libbad\.a: garbled member header at offset 0x8",
    )


@pytest.mark.parametrize("size", [b"12a", b"", b"-1", b"0x10"])
def test_non_numeric_size(size):
    header = bytearray(ar_header("m1.o/", 0))
    header[48:58] = size.ljust(10)
    _bad(
        b"!<arch>\n" + bytes(header),
        r"libbad\.a: member 'm1\.o/' at offset 0x8 has a non-numeric size",
    )


def test_member_size_past_end_names_the_member():
    data = _gnu([M1, M2])
    _bad(
        data[:-3],
        r"libbad\.a\(m2\.o\): member size 7 at offset 0x\w+ runs past the end",
    )
    long = _gnu([("a_very_long_member.o", b"xyz")])
    _bad(long[:-2], r"libbad\.a\(a_very_long_member\.o\): member size 3")


def test_long_name_past_table():
    data = bytearray(_gnu([("a_very_long_member.o", b"xyz")]))
    at = data.index(b"/0 ")
    data[at : at + 4] = b"/999"
    _bad(
        bytes(data),
        r"libbad\.a: member at offset 0x\w+ is named /999, past the end of the 22-byte long-name table",
    )
    _bad(
        b"!<arch>\n" + ar_header("/5", 1) + b"x\n",
        r"is named /5, but no long-name table",
    )


def test_unknown_special_name():
    _bad(b"!<arch>\n" + ar_header("/junk/", 0), r"unknown special name '/junk/'")


def test_bad_bsd_long_name():
    _bad(
        b"!<arch>\n" + ar_header("#1/20", 4) + b"abcd",
        r"bad BSD long name '#1/20' \(member size 4\)",
    )
    _bad(b"!<arch>\n" + ar_header("#1/x", 4) + b"abcd", r"bad BSD long name")


def _gnu_index(count: int, offsets: list[int], strtab: bytes, word: int = 4) -> bytes:
    payload = count.to_bytes(word, "big") + b"".join(o.to_bytes(word, "big") for o in offsets) + strtab
    name = "/SYM64/" if word == 8 else "/"
    return ar_header(name, len(payload)) + payload + b"\n" * (len(payload) & 1)


@pytest.mark.parametrize("sym64", [False, True], ids=["sym32", "sym64"])
def test_index_offset_at_no_member(sym64):
    data = _gnu([M1, M2], [("one", 0), ("two", 1)], sym64=sym64)
    ar = read_archive(data, name="libok.a")
    word = 8 if sym64 else 4
    second = 8 + 60 + 2 * word  # the index's second offset
    bogus = ar.members[1].header_offset + 2
    patched = data[:second] + bogus.to_bytes(word, "big") + data[second + word :]
    _bad(
        patched,
        rf"libbad\.a: symbol index at offset 0x8: the entry for 'two' points at "
        rf"offset {bogus:#x}, where no member header starts",
    )


@pytest.mark.parametrize("count", [3, SMALL_INDEX + 5], ids=["small-index", "large-index"])
def test_index_read_alike_at_every_size(count):
    # Small indexes map offsets to members through a dict, large ones with
    # numpy: the same positions, and the same message for the first bad entry.
    symbols = [(f"s{i}", i % 2) for i in range(count)]
    data = _gnu([M1, M2], symbols)
    ar = read_archive(data, name="libok.a")
    assert [(s, [m.name for m in ar.definers(s)]) for s in ar.symbols()] == [
        (f"s{i}", ["m2.o" if i % 2 else "m1.o"]) for i in range(count)
    ]
    bogus = ar.members[1].header_offset + 2
    for k in (count - 1, count - 2):
        at = 8 + 60 + 4 * (1 + k)
        data = data[:at] + bogus.to_bytes(4, "big") + data[at + 4 :]
    _bad(
        data,
        rf"libbad\.a: symbol index at offset 0x8: the entry for 's{count - 2}' points at "
        rf"offset {bogus:#x}, where no member header starts",
    )


def test_index_offset_at_special_member():
    data = _gnu([("a_very_long_member.o", b"xyz")], [("sym", 0)])
    table_at = data.index(b"//")
    patched = data.replace(data[8 + 60 + 4 : 8 + 60 + 8], table_at.to_bytes(4, "big"), 1)
    _bad(patched, rf"the entry for 'sym' points at offset {table_at:#x}")


@pytest.mark.parametrize("word", [4, 8])
def test_absurd_gnu_count(word):
    huge = (1 << (8 * word)) - 1
    _bad(
        b"!<arch>\n" + _gnu_index(huge, [], b"x\0", word),
        rf"symbol index at offset 0x8: claims {huge} entries but holds only",
    )


def test_gnu_index_with_too_few_names():
    data = _gnu([M1], [("one", 0)])
    ar = read_archive(data, name="libok.a")
    index = _gnu_index(2, [ar.members[0].header_offset] * 2, b"one\0tw")
    _bad(
        b"!<arch>\n" + index + ar_header("m1.o/", 10) + b"0123456789",
        r"the string table holds 1 names for 2 entries",
    )


def test_truncated_index():
    _bad(
        b"!<arch>\n" + ar_header("/", 2) + b"\0\0",
        r"symbol index at offset 0x8: truncated \(2 bytes\)",
    )
    _bad(
        b"!<arch>\n" + ar_header("__.SYMDEF_64", 4) + b"\0\0\0\0",
        r"symbol index at offset 0x8: truncated \(4 bytes\)",
    )


def _symdef(
    entries: list[tuple[int, int]],
    strtab: bytes,
    ranlib_bytes: int | None = None,
    strtab_size: int | None = None,
) -> bytes:
    body = b"".join(struct.pack("<II", s, o) for s, o in entries)
    payload = struct.pack("<I", len(body) if ranlib_bytes is None else ranlib_bytes) + body
    payload += struct.pack("<I", len(strtab) if strtab_size is None else strtab_size) + strtab
    return b"!<arch>\n" + ar_header("__.SYMDEF", len(payload)) + payload + b"\n" * (len(payload) & 1)


def test_bsd_string_index_past_table():
    _bad(
        _symdef([(0, 8), (9, 8)], b"foo\0bar\0"),
        r"symbol index at offset 0x8: entry 1 has string index 9, past the 8-byte string table",
    )


def test_bsd_unterminated_string():
    _bad(_symdef([(0, 8)], b"foo"), r"symbol index at offset 0x8: name at offset 0 is not NUL-terminated")


def test_absurd_bsd_counts():
    _bad(
        _symdef([], b"", ranlib_bytes=0xFFFFFFF8),
        r"claims 4294967288 bytes of entries but holds only 8 bytes",
    )
    _bad(_symdef([(0, 8)], b"", ranlib_bytes=12), r"claims 12 bytes of entries")
    _bad(
        _symdef([(0, 8)], b"a\0", strtab_size=0xFFFFFFFF),
        r"claims a 4294967295-byte string table but only 2 bytes follow",
    )


def test_bsd_index_offset_at_no_member():
    data = bsd_archive_bytes([M1, M2], {"one": 0, "two": 1})
    ar = read_archive(data, name="libok.a")
    bogus = ar.members[1].header_offset + 1
    patched = data.replace(
        ar.members[1].header_offset.to_bytes(4, "little"),
        bogus.to_bytes(4, "little"),
        1,
    )
    _bad(patched, rf"the entry for 'two' points at offset {bogus:#x}")


def test_malformed_errors_are_not_index_or_value_errors(objs, tmp_path):
    """Truncate and corrupt real archives: only MalformedObjectError may escape."""
    members = [(p.name, p.read_bytes()[:200]) for p in objs.values()]
    samples = [
        build_gnu_archive(tmp_path / "f.a", objs.values()).read_bytes()[:1200],
        gnu_archive_bytes(members, [("alpha", 0), ("long_one", 2)], sym64=True),
        bsd_archive_bytes(members, {"alpha": 0, "beta": 1}, sorted=True),
        bsd_archive_bytes(members, {"alpha": 0, "beta": 1}, use_64=True, long_names=True),
    ]
    rng = np.random.default_rng(1234)
    for sample in samples:
        head = sample[:400]
        variants = [head[:n] for n in range(len(head))]
        for _ in range(300):
            b = bytearray(sample)
            for at in rng.integers(0, min(len(b), 400), size=3):
                b[at] = int(rng.integers(0, 256))
            variants.append(bytes(b))
        for v in variants:
            try:
                ar = read_archive(v, name="fuzz.a", list_definitions=lambda d, n: [])
                ar.symbols()
                for m in ar.members:
                    _ = m.data
            except MalformedObjectError as e:
                assert str(e).startswith("fuzz.a")


def test_message_formats_are_one_line():
    with pytest.raises(MalformedObjectError) as info:
        read_archive(_symdef([(0, 8), (9, 8)], b"foo\0bar\0"), name="lib/dir/libx.a")
    assert re.fullmatch(r"lib/dir/libx\.a: [^\n]+", str(info.value))


# --- resource limits: sizes and counts checked against the file before use ----------------


def test_member_size_of_ten_gigabytes_on_disk(tmp_path):
    """A size field of 9999999999 in a mapped file: rejected, and the mapping let go."""
    data = bytearray(_gnu([M1, M2], [("one", 0), ("two", 1)]))
    at = data.index(b"m2.o/") + 48
    data[at : at + 10] = b"9999999999"
    path = tmp_path / "libhuge.a"
    path.write_bytes(bytes(data))
    with pytest.raises(
        MalformedObjectError,
        match=r"^.*libhuge\.a\(m2\.o\): member size 9999999999 at offset 0x\w+ runs past the end of the archive "
        rf"\({len(data)} bytes\)$",
    ):
        read_archive(path)


@pytest.mark.parametrize("word", [4, 8])
def test_absurd_bsd_entry_count(word):
    """A ranlib byte count in the billions: compared with the index's size, nothing read."""
    huge = (1 << (8 * word)) - 2 * word
    payload = huge.to_bytes(word, "little") + bytes(2 * word)
    name = "__.SYMDEF_64" if word == 8 else "__.SYMDEF"
    _bad(
        b"!<arch>\n" + ar_header(name, len(payload)) + payload,
        rf"libbad\.a: symbol index at offset 0x8: claims {huge} bytes of entries but holds only {len(payload)} bytes",
    )
