"""Section headers that contradict each other are reported by section and field.

Each case is a real gcc object with one header field changed, as the fuzzer
found them.  The header table itself (its size, bounds, counts and name
table) is covered by test_elf_headers.py.
"""

from __future__ import annotations

import re
import struct

import pytest
from fixtures_build import C_FLAG_SETS

from rtdyld.errors import MalformedObjectError
from rtdyld.objfile.elf import read_elf

SOURCE = "extern int ext;\nint get(void) { return ext; }\nint data[4] = {1, 2, 3, 4};\n"


@pytest.fixture(scope="module")
def obj(build) -> bytes:
    return build.cc_text(SOURCE, *C_FLAG_SETS["O2-pie"], stem="precheck").read_bytes()


def header(data: bytes, name: str) -> int:
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shnum, shstrndx = struct.unpack_from("<HH", data, 0x3C)
    (names,) = struct.unpack_from("<Q", data, shoff + 64 * shstrndx + 24)
    for i in range(shnum):
        (n,) = struct.unpack_from("<I", data, shoff + 64 * i)
        if data[names + n : data.index(b"\0", names + n)] == name.encode():
            return shoff + 64 * i
    raise KeyError(name)


def patched(data: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def rejected(data: bytes, pattern: str) -> None:
    with pytest.raises(MalformedObjectError) as exc:
        read_elf(data, "bad.o")
    assert re.fullmatch(pattern, str(exc.value)), str(exc.value)


def test_section_offset_past_the_end_is_named(obj):
    rejected(
        patched(obj, header(obj, ".rela.text") + 24, "<Q", 1 << 63),
        r"bad\.o: section \[\d+\] '\.rela\.text' extends past the end of the file "
        r"\(offset 0x8000000000000000 \+ size 0x\w+ > 0x\w+\)",
    )


def test_relocation_entry_size_is_named(obj):
    rejected(
        patched(obj, header(obj, ".rela.text") + 56, "<Q", 0),
        r"bad\.o: section \[\d+\] '\.rela\.text' \(SHT_RELA\) has entry size 0 and size \d+; "
        r"SHT_RELA entries are 24 bytes",
    )


def test_table_links_are_named(obj):
    rejected(
        patched(obj, header(obj, ".symtab") + 40, "<I", 1),
        r"bad\.o: section \[\d+\] '\.symtab' links to section \[1\] of type 1 \(sh_link 1\), not to its string table",
    )
    rejected(
        patched(obj, header(obj, ".rela.text") + 40, "<I", 9999),
        r"bad\.o: section \[\d+\] '\.rela\.text' links to no section \(sh_link 9999\), not to a symbol table",
    )


def test_compressed_section_too_small(obj):
    # pyelftools read the 24-byte header past such a section when it looked at
    # it ("expected 4, found 0"), so the object is rejected whichever it is.
    h = header(obj, ".comment")
    (flags,) = struct.unpack_from("<Q", obj, h + 8)
    data = patched(patched(obj, h + 8, "<Q", flags | 0x800), h + 32, "<Q", 3)
    rejected(
        data,
        r"bad\.o: section \[\d+\] '\.comment' is compressed \(SHF_COMPRESSED\) but too small \(3 bytes\) "
        r"for its 24-byte compression header",
    )
