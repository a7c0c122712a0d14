"""Dylib.resolve_many: a batch's outside names resolved together give, name
for name, what Dylib.resolve gives each alone, whatever the chain holds."""

from __future__ import annotations

import pytest

from rtdyld import host
from rtdyld.symbols import PROCESS, Dylib, Library, SymbolDef

NAMES = ["malloc", "_malloc", "_strlen", "strlen", "cos", "_cos", "mine", "_mine", "theirs", "pending_only",
         "_", "rtdyld_test_nowhere", "_rtdyld_test_nowhere", "\udcff_bad_utf8"]


def same(a: SymbolDef | None, b: SymbolDef | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.name, a.address, a.origin, a.size, a.bind) == (b.name, b.address, b.origin, b.size, b.bind)


@pytest.fixture(scope="module")
def libm() -> Library:
    handle, path = host.open_library("m")
    return Library("m", path, handle)


def chains(libm: Library):
    """Dylibs with every kind of source, in several orders, and a pending offer."""
    other = Dylib("other")
    other.define("theirs", 0x2000)
    other.published["_mine"] = SymbolDef("_mine", 0x3000, origin="other's batch")
    offered = {"pending_only": SymbolDef("pending_only", 0x4000, origin="in flight")}

    def pending(dylib, name):
        return offered.get(name) if dylib is other else None

    plain = Dylib("plain")
    yield plain, None
    own = Dylib("own")
    own.define("mine", 0x1000)
    own.define("cos", 0x1800)  # a user definition outranks the library's
    own.published["malloc"] = SymbolDef("malloc", 0x5000, origin="an earlier batch")
    own.add_library(libm)
    yield own, pending
    for order in ([other, PROCESS], [PROCESS, other], ["m", other], [libm.path, PROCESS], ["no-such-library", other]):
        d = Dylib("ordered")
        d.add_library(libm)
        d.define("_", 0x6000)
        d.link_order(order)
        yield d, pending
        yield d, None


@pytest.mark.parametrize("prefix", ["", "_"])
def test_resolve_many_is_resolve_name_by_name(libm, prefix):
    for dylib, pending in chains(libm):
        many = dylib.resolve_many(NAMES, prefix, pending)
        for name in NAMES:
            alone = dylib.resolve(name, prefix, pending)
            assert same(many.get(name), alone), (dylib.order(), prefix, name)
        assert all(d is not None for d in many.values())


def test_resolve_many_finds_what_each_source_holds(libm):
    d = Dylib()
    d.add_library(libm)
    d.define("mine", 0x1000)
    found = d.resolve_many(["mine", "_cos", "_strlen", "rtdyld_test_nowhere"], "_")
    assert found["mine"].address == 0x1000 and found["mine"].origin == "user definition"
    assert found["_cos"].name == "cos" and found["_cos"].origin == libm.path
    assert found["_strlen"].name == "strlen" and found["_strlen"].address == host.process_symbol("strlen")
    assert "rtdyld_test_nowhere" not in found


def test_a_process_definition_made_in_bulk_describes_itself_when_read():
    (d,) = Dylib().resolve_many(["malloc"]).values()
    assert (d.size, d.type, d.bind, d.vis, d.section, d.batch) == (0, 0, 1, 0, "", None)
    assert d.origin.startswith("libc.so")


MACHO_IR = """
@value_src = external global i8
define ptr @macho_addr() {
  ret ptr @value_src
}
"""

# An ELF object's names are taken as they are: no underscore is dropped for it.
ELF_IR = """
@_other_src = extern_weak global i8
define ptr @elf_addr() {
  ret ptr @_other_src
}
"""


def test_each_outside_name_is_resolved_with_its_referrers_prefix():
    import rtdyld

    ln = rtdyld.Linker()
    try:
        ln.define("value_src", 0x7000)
        ln.define("other_src", 0x8000)
        ln.add_module(MACHO_IR, name="macho.o", triple="x86_64-apple-macosx10.15")
        ln.add_module(ELF_IR, name="elf.o")
        handle = ln.finalize()
        assert ln.function("macho_addr", "uintptr_t(void)")() == 0x7000
        assert ln.function("elf_addr", "uintptr_t(void)")() == 0
        sources = {e.name: e.source for e in handle.batch.externals}
        assert sources == {"_value_src": "user definition", "_other_src": "weak undefined"}
    finally:
        ln.close()
