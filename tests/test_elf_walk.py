"""The reader's one walk over the section headers, which also makes the
loaded sections: a zero-fill section too big for any memory is named only
after the checks that came before it (the section tables, the symbol
table), whatever the size its header claims, and as the first such section."""

from __future__ import annotations

import struct

import pytest
from test_limits import BIG_BSS, PIE, section_header, with_field

import rtdyld
from rtdyld.inputs import parse_member, parse_object


@pytest.fixture(scope="module")
def bss_object(build) -> bytes:
    return build.cc_text(BIG_BSS, *PIE, stem="walk_bss").read_bytes()


@pytest.mark.parametrize("parse", [parse_object, parse_member])
def test_a_zero_fill_size_past_2_to_the_63_is_named_not_overflowed(bss_object, parse):
    data = with_field(bss_object, ".bss", "size", (1 << 64) - 1)
    with pytest.raises(rtdyld.MalformedObjectError) as exc:
        parse(data, "max-bss.o")
    assert str(exc.value).startswith("max-bss.o: section [")
    assert str(exc.value).endswith("'.bss' claims 18446744073709551615 bytes of zero-fill")


@pytest.mark.parametrize("parse", [parse_object, parse_member])
def test_a_bad_symbol_table_is_named_before_an_oversized_zero_fill(bss_object, parse):
    data = bytearray(with_field(bss_object, ".bss", "size", 1 << 60))
    # The symbol table's entry size made wrong: the section tables are checked first.
    struct.pack_into("<Q", data, section_header(bytes(data), ".symtab") + 56, 23)
    with pytest.raises(rtdyld.MalformedObjectError) as exc:
        parse(bytes(data), "both.o")
    message = str(exc.value)
    assert "'.symtab' (SHT_SYMTAB) has entry size 23" in message
    assert "zero-fill" not in message


def test_the_first_oversized_zero_fill_section_is_named(build):
    data = build.cc_text(
        "static char a[64], b[64];\nint touch(void) { a[1] = b[2] = 1; return a[0] + b[0]; }\n",
        *PIE,
        "-fdata-sections",
        stem="walk_two_bss",
    ).read_bytes()
    data = with_field(with_field(data, ".bss.a", "size", 1 << 61), ".bss.b", "size", 1 << 62)
    first = min((section_header(data, n), n) for n in (".bss.a", ".bss.b"))[1]
    with pytest.raises(rtdyld.MalformedObjectError, match=rf"'{first}' claims \d+ bytes of zero-fill$"):
        parse_object(data, "two.o")


@pytest.mark.parametrize(
    "source",
    [
        # ASCII names: found with the names, in one loop (elf_small.names_and_pull_names).
        (
            "extern int need(int);\nextern int weak_need(int) __attribute__((weak));\nstatic int local_helper(int x)"
            " { return x + 1; }\nint defined_here(int x) { return need(local_helper(x)) + weak_need(x); }\n"
            "int common_one;\n"
        ),
        # A UTF-8 name: the string table is not ASCII, the pull names are worked out afterwards.
        "extern int need(int);\nint d\u00e9fini(int x) { return need(x); }\n",
    ],
)
def test_a_members_pull_names_are_what_extraction_would_compute(build, source):
    from rtdyld import archives

    data = build.cc_text(source, *PIE, "-fcommon", stem=f"walk_pull_{len(source)}").read_bytes()
    member, plain = parse_member(data, "m.o"), parse_object(data, "m.o")
    assert member.names == plain.names
    assert member.pull_names == (archives.defined_globals(plain), archives.strong_undefined(plain))
    assert "need" in member.pull_names[1]
    assert "weak_need" not in member.pull_names[1]
    assert any(n.startswith("d") for n in member.pull_names[0])
