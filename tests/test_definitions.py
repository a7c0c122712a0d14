"""A batch's definitions: made from its tables on first use, published by reference.

The batch below defines functions that return their own number, a
data object, a tentative (COMMON) definition and a read-only array, more
names than are ever made one at a time, so both ways of making SymbolDefs
(one name, all of them) run and must agree with what the code does.
"""

from __future__ import annotations

import pytest
from cffi import FFI

import rtdyld
from rtdyld import definitions
from rtdyld.symbols import PublishedSymbols, SymbolDef

ffi = FFI()

FUNCTIONS = 20
SOURCE = "".join(f"int f{i}(void) {{ return {i} + bias; }}\n" for i in range(FUNCTIONS))
SOURCE = "int bias = 1000;\nint tentative;\nconst char greeting[] = \"hi\";\n" + SOURCE
NAMES = {"bias", "tentative", "greeting", *(f"f{i}" for i in range(FUNCTIONS))}


@pytest.fixture
def obj(build):
    return build.cc_text(SOURCE, "-O2", "-fPIC", "-fcommon", stem="definitions")


@pytest.fixture
def ln():
    linker = rtdyld.Linker()
    yield linker
    linker.close()


def call(address: int) -> int:
    return ffi.cast("int (*)(void)", address)()


def check(defs, name: str, handle, obj_name: str) -> SymbolDef:
    d = defs[name]
    assert d.name == name and d.batch is handle and d.origin == obj_name
    if name.startswith("f"):
        assert call(d.address) == int(name[1:]) + 1000
        assert d.section == ".text" and d.size > 0
    elif name == "bias":
        assert ffi.cast("int *", d.address)[0] == 1000
        assert d.section == ".data" and d.size == 4
    elif name == "tentative":
        assert d.section == "COMMON" and d.size == 4
        assert ffi.cast("int *", d.address)[0] == 0
    elif name == "greeting":
        assert ffi.string(ffi.cast("char *", d.address)) == b"hi" and d.size == 3
    return d


def test_linking_makes_no_symbol_def_for_the_batch(ln, obj, monkeypatch):
    made = []

    def counting(*args):
        made.append(args[0])
        return SymbolDef(*args)

    monkeypatch.setattr(definitions, "SymbolDef", counting)
    ln.add_object(obj)
    h = ln.finalize()
    assert made == []
    assert set(ln.main.published) == NAMES and len(h.batch.definitions) == len(NAMES)
    assert ln.lookup("f3") == h.batch.definitions["f3"].address
    assert made == ["f3"]


def test_one_at_a_time_and_all_at_once_agree(ln, obj):
    ln.add_object(obj)
    h = ln.finalize()
    defs = h.batch.definitions
    assert isinstance(defs, definitions.BatchDefinitions)
    early = {name: check(defs, name, h, str(obj)) for name in ("f7", "tentative", "greeting", "bias")}
    everything = dict(defs.items())
    assert list(everything) == list(defs) == list(defs.keys())
    for name, d in everything.items():
        assert check(defs, name, h, str(obj)) is d
    for name, d in early.items():
        assert everything[name] is d
    assert list(defs.values()) == list(everything.values())


def test_look_ups_symbols_and_published_give_the_same_objects(ln, obj):
    ln.add_object(obj)
    h = ln.finalize()
    d = ln.symbol("f2")
    assert d is h.batch.definitions["f2"] is ln.main.published["f2"] is ln.main.published.get("f2")
    assert h.symbols["f2"] is d and set(h.symbols) == NAMES
    assert "f2" in ln.main.published and "nope" not in ln.main.published
    assert ln.main.published.get("nope") is None and h.batch.definitions.get("nope", 5) == 5
    with pytest.raises(KeyError):
        h.batch.definitions["nope"]


def test_a_definition_made_before_publication_gets_its_batch(ln, obj):
    ln.add_object(obj)
    made_early = []
    real = rtdyld.Linker._publish

    def publish(self, parts):
        made_early.append(parts[0][1].definitions["f1"])
        return real(self, parts)

    ln._publish = publish.__get__(ln)
    h = ln.finalize()
    assert made_early[0].batch is h and ln.symbol("f1") is made_early[0]


def test_a_later_batch_resolves_against_the_table_and_depends_on_it(ln, obj, build):
    ln.add_object(obj)
    first = ln.finalize()
    user = build.cc_text("int f5(void);\nint use(void) { return f5() * 2; }\n", "-O2", "-fPIC", stem="defs_user")
    ln.add_object(user)
    second = ln.finalize()
    assert ln.function("use", "int(void)")() == 2 * 1005
    assert second in first.dependents
    assert [e.definition for e in second.batch.externals if e.name == "f5"] == [first.batch.definitions["f5"]]


def test_remove_unpublishes_only_what_the_batch_still_owns(ln, obj):
    ln.add_object(obj)
    h = ln.finalize()
    ln.main.published["f4"] = replacement = SymbolDef("f4", 0x1234, origin="test")
    h.remove()
    assert dict(ln.main.published) == {"f4": replacement}


def test_published_symbols_behave_as_a_dict():
    p = PublishedSymbols()
    a, b = SymbolDef("a", 1), SymbolDef("b", 2)
    batch = {"a": a, "b": b}
    p.update(batch)
    assert p == {"a": a, "b": b} and len(p) == 2 and list(p) == ["a", "b"]
    newer = SymbolDef("b", 3)
    p.update(b=newer)
    assert p["b"] is newer
    p.withdraw(batch)
    assert p == {"b": newer}
    del p["b"]
    assert p == {} and not p


class _Batch(dict):
    """A batch's definitions as PublishedSymbols takes them: by reference, through ``holders``."""

    def holders(self) -> dict:
        return dict.fromkeys(self, self)


def test_batches_published_by_reference_in_order_and_withdrawn():
    p = PublishedSymbols()
    a1, b1, b2, c2 = SymbolDef("a", 1), SymbolDef("b", 1), SymbolDef("b", 2), SymbolDef("c", 2)
    first, second = _Batch(a=a1, b=b1), _Batch(b=b2, c=c2)
    p.update(first)  # into an empty table
    p["d"] = d = SymbolDef("d", 4)
    p.update(second)
    assert list(p) == ["a", "b", "d", "c"] and [p[n] for n in p] == [a1, b2, d, c2]
    p.withdraw(first)  # b is the second batch's now
    assert dict(p) == {"b": b2, "d": d, "c": c2}
    p.withdraw(second)
    del p["d"]
    assert not p
    p.update(second)
    assert dict(p) == {"b": b2, "c": c2}
