"""Resource limits: absurd sizes and counts fail clearly, before any allocation.

A header that claims a 2^60-byte .bss, billions of relocations or symbols,
or a section larger than the whole memory reservation is rejected with a
LinkError naming the object, the section and the numbers; nothing is
reserved, allocated or published.  (Mach-O and archive limits are tested in
their reader modules.)
"""

from __future__ import annotations

import re
import struct

import pytest
from fixtures_build import C_FLAG_SETS

import rtdyld
from memmgr import VirtualMemory

PIE = C_FLAG_SETS["O2-pie"]
SH_FIELDS = {"offset": (24, "<Q"), "size": (32, "<Q"), "addralign": (48, "<Q")}
BIG_BSS = "static char big[64];\nint touch(void) { big[3] = 1; return big[0]; }\n"


def section_header(data: bytes, name: str) -> int:
    """Offset of the section header of ``name`` in an ELF64 object."""
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shnum, shstrndx = struct.unpack_from("<HH", data, 0x3C)
    (strtab_off,) = struct.unpack_from("<Q", data, shoff + 64 * shstrndx + 24)
    for i in range(shnum):
        h = shoff + 64 * i
        (n,) = struct.unpack_from("<I", data, h)
        end = data.index(b"\0", strtab_off + n)
        if data[strtab_off + n : end].decode() == name:
            return h
    raise KeyError(name)


def with_field(data: bytes, section: str, field: str, value: int) -> bytes:
    off, fmt = SH_FIELDS[field]
    out = bytearray(data)
    struct.pack_into(fmt, out, section_header(data, section) + off, value)
    return bytes(out)


def assert_rejected(data: bytes, name: str, error, pattern: str, memory=None) -> None:
    ln = rtdyld.Linker(memory=memory, run_initializers=False)
    before = ln.snapshot()
    with pytest.raises(error) as exc:
        ln.add_object(data, name=name)
        ln.finalize()
    assert re.search(pattern, str(exc.value)), str(exc.value)
    assert ln.snapshot() == before


@pytest.fixture(scope="module")
def bss_object(build) -> bytes:
    return build.cc_text(BIG_BSS, *PIE, stem="bss").read_bytes()


def test_bss_of_2_to_the_60_is_rejected_by_the_reader(bss_object):
    data = with_field(bss_object, ".bss", "size", 1 << 60)
    assert_rejected(
        data,
        "huge-bss.o",
        rtdyld.MalformedObjectError,
        r"^huge-bss\.o: section \[\d+\] '\.bss' claims 1152921504606846976 bytes of zero-fill$",
    )


def test_bss_larger_than_the_reservation_names_the_section(bss_object):
    # 8 GiB: plausible for a header, more than the 1 GiB reservation holds.
    data = with_field(bss_object, ".bss", "size", 8 << 30)
    assert_rejected(
        data,
        "big-bss.o",
        rtdyld.LayoutError,
        r"^big-bss\.o: section '\.bss' needs 0x200000000 bytes aligned to 0x\w+, more than the whole "
        r"0x40000000-byte memory reservation",
    )


def test_bss_larger_than_a_virtual_reservation(bss_object):
    """VirtualMemory backs working memory with buffers: the check comes before any."""
    memory = VirtualMemory(reserve_size=1 << 20)
    data = with_field(bss_object, ".bss", "size", 2 << 20)
    assert_rejected(
        data,
        "vbss.o",
        rtdyld.LayoutError,
        r"^vbss\.o: section '\.bss' needs 0x200000 bytes .* more than the whole 0x100000-byte memory reservation",
        memory=memory,
    )
    assert memory.live_allocations() == []


def test_batch_larger_than_the_reservation(build, bss_object):
    memory = VirtualMemory(reserve_size=1 << 20)
    data = with_field(bss_object, ".bss", "size", (1 << 20) - 64)
    ln = rtdyld.Linker(memory=memory, run_initializers=False)
    ln.add_object(data, name="one.o")
    ln.add_object(build.cc_text("int other(void) { return 7; }\n", *PIE, stem="other"), name="two.o")
    with pytest.raises(rtdyld.LayoutError, match=r"^the batch needs 0x\w+ bytes, more than the whole 0x100000-byte"):
        ln.finalize()
    assert memory.live_allocations() == []


def test_absurd_alignment_is_rejected_before_allocation(bss_object):
    data = with_field(bss_object, ".bss", "addralign", 1 << 62)
    assert_rejected(
        data,
        "aligned.o",
        rtdyld.LayoutError,
        r"^aligned\.o: section '\.bss' needs 0x40 bytes aligned to 0x4000000000000000, more than the whole",
    )


def test_common_larger_than_the_reservation(build):
    obj = build.cc_text(
        "int huge_common[16];\nint *hc(void) { return huge_common; }\n", *PIE, "-fcommon", stem="common"
    ).read_bytes()
    # st_size of the common symbol: find it through the symbol table.
    import io

    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(obj))
    symtab = elf.get_section_by_name(".symtab")
    index = next(i for i, s in enumerate(symtab.iter_symbols()) if s.name == "huge_common")
    out = bytearray(obj)
    struct.pack_into("<Q", out, symtab["sh_offset"] + 24 * index + 16, 1 << 40)
    assert_rejected(
        bytes(out),
        "common.o",
        rtdyld.LayoutError,
        r"^common symbol 'huge_common' needs 0x10000000000 bytes aligned to 0x\w+, more than the whole",
    )


def test_billions_of_relocations(build):
    obj = build.cc_text("extern int x;\nint get(void) { return x; }\n", *PIE, stem="reloc").read_bytes()
    data = with_field(obj, ".rela.text", "size", 24 * 3_000_000_000)
    assert_rejected(
        data,
        "relocs.o",
        rtdyld.MalformedObjectError,
        r"^relocs\.o: section \[\d+\] '\.rela\.text' extends past the end of the file "
        r"\(offset 0x\w+ \+ size 0x10c388d000 > 0x\w+\)$",
    )


def test_billions_of_symbols(bss_object):
    data = with_field(bss_object, ".symtab", "size", 24 * 2_000_000_000)
    assert_rejected(
        data,
        "symbols.o",
        rtdyld.MalformedObjectError,
        r"^symbols\.o: section \[\d+\] '\.symtab' extends past the end of the file",
    )
