"""A link-cache entry whose checksums hold but whose content was tampered with.

A real link fills a cache; then each batch entry is packed again, with the
container's own ``pack`` so its checksums are right, around one mutated part:
a metadata value of the wrong type or out of range, a blob of the wrong
dtype or length, garbage where compressed or marshalled data belongs,
residual fixups aimed outside the batch.  A warm link in a new session must
then either miss (counted ``corrupt`` or ``stale``, the link done cold and
correct) or, for the parts a warm batch decodes only when first read, raise
:class:`~rtdyld.errors.CorruptCacheEntryError` naming the entry file — never
another exception, never a crash, never a write outside the batch.  The
tables of objects and the member tables of archives that a cold link reads
from the cache are tampered with likewise: each must be a miss, and the
input read again.
"""

from __future__ import annotations

import copy
import marshal
import shutil
import zlib
from pathlib import Path

import cffi
import numpy as np
import pytest
from archive_tools import build_gnu_archive, compile_c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtdyld import Linker, mapfile, symmap
from rtdyld.errors import CorruptCacheEntryError
from rtdyld.linkcache import LinkCache, container, digests, image
from rtdyld.linkcache.container import pack, unpack
from rtdyld.objfile import model
from rtdyld.x86_64.edges import Edge

CFLAGS = ("-O2", "-fPIC")

PROG = r"""
#include <stdlib.h>
extern int helper(int);
extern int user_value;
extern int *slots[];
int ctor_ran;
__attribute__((constructor)) static void boot(void) { ctor_ran = 42; }
int run(int x) { return helper(x) + *slots[1] + atoi("5") * 1000 + user_value + ctor_ran; }
"""

HELPER = r"""
int counter = 5;
int helper(int x) { return x * 3 + counter; }
"""

SLOTS = r"""
extern int counter;
static int local_a = 11, local_b = 22;
int *slots[] = { &local_a, &local_b, &counter };
"""

RESULT = 4 * 3 + 5 + 22 + 5000 + 7 + 42  # run(4)

_ffi = cffi.FFI()
_user_value = _ffi.new("int *", 7)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, Path]:
    src = tmp_path_factory.mktemp("src")
    prog = compile_c(PROG, src / "prog.o", *CFLAGS)
    members = [compile_c(HELPER, src / "helper.o", *CFLAGS), compile_c(SLOTS, src / "slots.o", *CFLAGS)]
    return prog, build_gnu_archive(src / "libsmall.a", members)


def _link(cache, sources):
    prog, ar = sources
    ln = Linker(link_cache=cache)
    ln.define("user_value", int(_ffi.cast("uintptr_t", _user_value)))
    ln.add_object(prog)
    ln.add_archive(ar)
    return ln, ln.finalize()


def _filled(tmp: Path, sources, grouped: bool, by_identity: bool = False) -> Path:
    """A cache directory a cold link filled; ``grouped``: its residual fixups
    stored as arrays (as a large batch's are), not listed in the metadata."""
    saved = image.FEW_LISTED, digests.SETTLE_NS
    image.FEW_LISTED = 0 if grouped else saved[0]
    if by_identity:  # the inputs count as settled although just written
        digests.SETTLE_NS = -(1 << 62)
    try:
        cache = LinkCache(tmp)
        ln, _ = _link(cache, sources)
        ln.close()
    finally:
        image.FEW_LISTED, digests.SETTLE_NS = saved
    assert cache.stats["batches"]["stores"] == 1
    return tmp


@pytest.fixture(scope="module")
def templates(tmp_path_factory, sources) -> dict[str, Path]:
    return {"listed": _filled(tmp_path_factory.mktemp("listed"), sources, grouped=False),
            "grouped": _filled(tmp_path_factory.mktemp("grouped"), sources, grouped=True)}


def _entry(cache_dir: Path, layer: str = "batches") -> Path:
    (entry,) = cache_dir.glob(f"{layer}/*.ent")
    return entry


def _read(entry: Path) -> tuple[dict, dict, bytes]:
    meta, blobs = unpack(entry.read_bytes(), bytes.fromhex(entry.stem))
    return copy.deepcopy(meta), {k: blobs[k] for k in blobs}, bytes(blobs.tail)


def _write(entry: Path, meta: dict, blobs: dict, tail: bytes) -> None:
    entry.write_bytes(pack(bytes.fromhex(entry.stem), meta, blobs, tail))


def _touch(ln, h) -> None:
    """Read every part of a linked batch that a warm load makes only when asked."""
    lb = h.batch
    assert h.objects
    names = sorted(h.symbols)
    assert all(ln.lookup(name) for name in names)
    assert len(list(lb.definitions.items())) == len(names)
    assert all(lb.objects[p.obj].sections[p.index].name for p in lb.sections)
    assert all(s.name for o in lb.objects for s in o.sections)
    assert all(p.member.display_name for p in dict(lb.pulls).values())
    assert all(e.name and e.source is not None for e in lb.externals)
    assert mapfile.format_map(mapfile.memory_map(lb))
    assert symmap.symbol_map(lb)


def _outcome(cache_dir: Path, sources, layer: str = "batches", hit_allowed: bool = False) -> tuple[str, str]:
    """What a warm link from a tampered entry gave, asserting it is one of the two allowed:
    ``(kind, why)`` of a miss (``corrupt`` or ``stale``), or ``("error", message)``;
    with ``hit_allowed`` (for a value the capture might have written), also ``("hit", "")``."""
    cache = LinkCache(cache_dir)
    entry = _entry(cache_dir, layer)
    ln, h = _link(cache, sources)
    try:
        stats = cache.stats[layer]
        if stats["hits"] == 0:
            ((where, kind, why),) = [e for e in cache.events if e[1] in ("corrupt", "stale")]
            assert where == layer and stats[kind] == 1 and stats["misses"] == 1
            assert stats["stores"] == 1  # linked cold and stored again
            assert ln.function("run", "int(int)")(4) == RESULT
            return kind, why
        try:
            _touch(ln, h)
        except CorruptCacheEntryError as e:
            assert str(entry) in str(e)
            assert not entry.exists()  # discarded: the next link is cold
            return "error", str(e)
        assert hit_allowed, "a tampered entry was used as it is"
        return "hit", ""
    finally:
        ln.close()


def _tampered(tmp_path: Path, template: Path, mutate, layer: str = "batches") -> Path:
    cache_dir = tmp_path / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    shutil.copytree(template, cache_dir)
    entry = _entry(cache_dir, layer)
    meta, blobs, tail = _read(entry)
    mutate(meta, blobs)
    _write(entry, meta, blobs, tail)
    return cache_dir


# --- the mutations --------------------------------------------------------------------

def _later(meta: dict) -> dict:
    return marshal.loads(meta["later"])


def _set_later(meta: dict, doc) -> None:
    meta["later"] = container.dumps(doc)


def _later_edit(part: str, edit, covers: str = ""):
    def mutate(meta, _blobs):
        doc = _later(meta)
        doc[part] = edit(doc[part], meta)
        _set_later(meta, doc)
    mutate.covers = covers or f"later.{part}"
    return mutate


def _column(part: str, column: str, value):
    """Set the first item of a column of the ``later`` part ``part`` (or the whole column, if ``value`` is a list)."""
    def edit(cols, _meta):
        cols[column] = value if isinstance(value, list) else [value, *cols[column][1:]]
        return cols
    return _later_edit(part, edit, f"later.{part}.{column}")


def _set(key, value):
    def mutate(meta, _blobs):
        meta[key] = value(meta) if callable(value) else value
    return mutate


def _item(key, path, value):
    """Set ``meta[key][path...]``."""
    def mutate(meta, _blobs):
        at = meta[key]
        for p in path[:-1]:
            at = at[p]
        at[path[-1]] = value(meta) if callable(value) else value
    return mutate


def _size(meta) -> int:
    return max(off + size for _n, off, size, _p, _z in meta["segments"])


def _blob(name: str, value):
    """Set the blob ``name`` to ``value(meta, blob)``."""
    def mutate(meta, blobs):
        blobs[name] = value(meta, blobs[name])
    return mutate


def _image_end(meta) -> int:
    return max(off + size for _n, off, size, _p, zero_fill in meta["segments"] if not zero_fill)


def _skeleton_docs(edit):
    def mutate(_meta, blobs):
        nested = zlib.decompress(blobs["skeletons"])
        inner, inner_blobs = unpack(nested, bytes(32))
        inner = copy.deepcopy(inner)
        edit(inner, {k: inner_blobs[k] for k in inner_blobs})
        blobs["skeletons"] = zlib.compress(pack(bytes(32), inner, {k: inner_blobs[k] for k in inner_blobs}))
    return mutate


def _first_section_doc(inner: dict) -> dict:
    return inner["docs"][0]["sections"]


# (id, form, mutate): form "listed", "grouped" or "any" (both templates).
MUTATIONS: list[tuple[str, str, object]] = [
    # residual fixups listed in the metadata: (where..., const...) int64s, and their groups
    ("rows-type", "residual_rows", "listed", "corrupt: TypeError", _set("residual_rows", "bogus")),
    ("rows-odd", "residual_rows", "listed", "corrupt: TypeError",
     _set("residual_rows", lambda m: m["residual_rows"][:-4])),
    ("rows-where-negative", "residual_rows", "listed", "corrupt: a residual fixup outside the batch's image",
     _set("residual_rows", lambda m: (-8).to_bytes(8, "little", signed=True) + m["residual_rows"][8:])),
    ("rows-where-beyond", "residual_rows", "listed", "corrupt: a residual fixup outside the batch's image",
     _set("residual_rows", lambda m: (_size(m) - 2).to_bytes(8, "little") + m["residual_rows"][8:])),
    ("rows-where-beyond-image", "residual_rows", "listed", "corrupt: a residual fixup outside the batch's image",
     _set("residual_rows", lambda m: (_image_end(m) - 2).to_bytes(8, "little") + m["residual_rows"][8:])),
    ("rows-where-far", "residual_rows", "listed", "corrupt: a residual fixup outside the batch's image",
     _set("residual_rows", lambda m: (1 << 40).to_bytes(8, "little") + m["residual_rows"][8:])),
    ("groups-type", "residual_groups", "any", "corrupt: ValueError", _set("residual_groups", {"a": 1})),
    ("groups-row-short", "residual_groups", "any", "corrupt: ValueError", _item("residual_groups", [0], [1, 2])),
    ("groups-kind-negative", "residual_groups", "any", "corrupt: that no capture makes",
     _item("residual_groups", [0, 0], -1)),
    ("groups-kind-beyond", "residual_groups", "any", "corrupt: that no capture makes",
     _item("residual_groups", [0, 0], 1000)),
    ("groups-kind-str", "residual_groups", "any", "corrupt: TypeError", _item("residual_groups", [0, 0], "Pointer64")),
    ("groups-cb", "residual_groups", "any", "corrupt: that no capture makes", _item("residual_groups", [0, 1], 7)),
    ("groups-target-negative", "residual_groups", "any", "corrupt: that no capture makes",
     _item("residual_groups", [-1, 2], -3)),
    ("groups-target-beyond", "residual_groups", "any", "corrupt: that no capture makes",
     _item("residual_groups", [-1, 2], lambda m: len(m["externals"]))),
    ("groups-count-negative", "residual_groups", "any", "corrupt: that no capture makes",
     _item("residual_groups", [0, 3], -1)),
    ("groups-count-more", "residual_groups", "any", "corrupt: residual groups do not cover the rows",
     _item("residual_groups", [0, 3], lambda m: m["residual_groups"][0][3] + 1)),
    ("groups-limits-str", "residual_groups", "any", "corrupt: TypeError", _item("residual_groups", [0, 4], "0")),
    ("quads-type", "residual_quads", "grouped", "corrupt: of the wrong type or out of range",
     _set("residual_quads", "yes")),
    ("quads-flipped", "residual_quads", "grouped", "corrupt: residual targets do not match the rows",
     _set("residual_quads", lambda m: not m["residual_quads"])),
    # residual fixups as arrays: their constants, and where they are written
    ("residual-dtype", "residual", "grouped", "corrupt: residual fixups of the wrong type",
     _blob("residual", lambda m, x: x.astype(np.int32))),
    ("residual-short", "residual", "grouped", "corrupt: residual groups do not cover the rows",
     _blob("residual", lambda m, x: x[:-1])),
    ("residual-2d", "residual", "grouped", "corrupt: residual fixups of the wrong type",
     _blob("residual", lambda m, x: x.reshape(1, -1))),
    ("residual-bytes", "residual", "grouped", "corrupt: AttributeError",
     _blob("residual", lambda m, x: b"\0" * 24)),
    ("targets-dtype", "residual_targets", "grouped", "corrupt: residual fixups of the wrong type",
     _blob("residual_targets", lambda m, x: x.astype(np.int64))),
    ("targets-short", "residual_targets", "grouped", "corrupt: residual targets do not match the rows",
     _blob("residual_targets", lambda m, x: x[:-1])),
    ("targets-negative", "residual_targets", "grouped", "corrupt: a residual fixup outside the batch's image",
     _blob("residual_targets", lambda m, x: np.concatenate([[-2], x[1:]]).astype(np.int32))),
    ("targets-beyond", "residual_targets", "grouped", "corrupt: a residual fixup outside the batch's image",
     _blob("residual_targets", lambda m, x: np.concatenate([x[:-1], [_size(m)]])
                                .astype(np.int32))),
    ("targets-beyond-image", "residual_targets", "grouped", "corrupt: a residual fixup outside the batch's image",
     _blob("residual_targets", lambda m, x: np.concatenate([[_image_end(m)], x[1:]])
                                .astype(np.int32))),
    ("targets-far", "residual_targets", "grouped", "corrupt: a residual fixup outside the batch's image",
     _blob("residual_targets", lambda m, x: np.full_like(x, 1 << 30))),
    # layout
    ("segments-type", "segments", "any", "corrupt: ValueError", _set("segments", "text")),
    ("segments-prot-wx", "segments", "any", "stale: writable and executable at once", _item("segments", [0, 3], 7)),
    ("segments-prot-beyond", "segments", "any", "corrupt: KeyError", _item("segments", [0, 3], 99)),
    ("segments-size-negative", "segments", "any", "stale: bad size", _item("segments", [0, 2], -4096)),
    ("segments-offset", "segments", "any", "stale: lays segments out differently", _item("segments", [-1, 1], 1 << 20)),
    ("segments-name", "segments", "any", "corrupt: of the wrong type or out of range", _item("segments", [0, 0], 5)),
    ("segments-none", "segments", "any", "corrupt: of the wrong type or out of range", _set("segments", [])),
    ("low-type", "low", "any", "corrupt: of the wrong type or out of range", _set("low", "no")),
    ("got_off-negative", "got_off", "any", "corrupt: of the wrong type or out of range", _set("got_off", -8)),
    ("got_off-beyond", "got_off", "any", "corrupt: lies outside the batch's segments",
     _set("got_off", lambda m: _size(m) + 8)),
    ("got_off-str", "got_off", "any", "corrupt: TypeError", _set("got_off", "0")),
    ("got-negative", "got", "any", "corrupt: lies outside the batch's segments", _item("got", [0, 1], -16)),
    ("got-beyond", "got", "any", "corrupt: lies outside the batch's segments",
     _item("got", [0, 1], lambda m: _size(m))),
    ("got-type", "got", "any", "corrupt: ValueError", _set("got", [[1]])),
    ("stubs-beyond", "stubs", "any", "corrupt: lies outside the batch's segments",
     _set("stubs", lambda m: [[0, _size(m) + 64]])),
    ("stubs-type", "stubs", "any", "corrupt: ValueError", _set("stubs", "x")),
    ("dso-negative", "dso_handle", "any", "corrupt: lies outside the batch's segments", _set("dso_handle", -1)),
    ("dso-beyond", "dso_handle", "any", "corrupt: lies outside the batch's segments",
     _set("dso_handle", lambda m: _size(m) + 1)),
    ("dso-str", "dso_handle", "any", "corrupt: __dso_handle of the wrong type", _set("dso_handle", "0")),
    ("eh_frame-negative", "eh_frame", "any", "corrupt: lies outside the batch's segments",
     _set("eh_frame", lambda m: [-64, 64, 0])),
    ("eh_frame-beyond", "eh_frame", "any", "corrupt: lies outside the batch's segments",
     _set("eh_frame", lambda m: [0, _size(m) + 1, 0])),
    ("eh_frame-short", "eh_frame", "any", "corrupt: ValueError", _set("eh_frame", [0, 8])),
    ("init-negative", "init", "any", "corrupt: lies outside the batch's segments", _item("init", [0, 2], -8)),
    ("init-beyond", "init", "any", "corrupt: lies outside the batch's segments",
     _item("init", [0, 3], lambda m: _size(m))),
    ("init-row-short", "init", "any", "corrupt: ValueError", _item("init", [0], [0, 0])),
    ("init-type", "init", "any", "corrupt: TypeError", _set("init", 5)),
    ("fini-beyond", "fini", "any", "corrupt: lies outside the batch's segments",
     _set("fini", lambda m: [[65535, 0, _size(m), 1, False, False]])),
    ("fini-str", "fini", "any", "corrupt: an fini array of the wrong shape",
     _set("fini", [["a", "b", "c", "d", "e", "f"]])),
    # names and counts
    ("names-type", "definition_names", "any", "corrupt: TypeError", _set("definition_names", 5)),
    ("names-ints", "definition_names", "any", "corrupt: TypeError",
     _set("definition_names", lambda m: list(range(len(m["definition_names"]))))),
    ("names-fewer", "definition_names", "any", "error: definitions",
     _set("definition_names", lambda m: m["definition_names"][:-1])),
    ("names-more", "definition_names", "any", "error: definitions",
     _set("definition_names", lambda m: [*m["definition_names"], "extra_name"])),
    ("names-twice", "definition_names", "any", "corrupt: a name defined twice",
     _set("definition_names", lambda m: [*m["definition_names"][:-1],
                                                                m["definition_names"][0]])),
    ("nsections-negative", "nsections", "any", "corrupt: of the wrong type or out of range", _set("nsections", -1)),
    ("nsections-more", "nsections", "any", "error: placed sections", _set("nsections", lambda m: m["nsections"] + 1)),
    ("nsections-str", "nsections", "any", "corrupt: of the wrong type or out of range", _set("nsections", "3")),
    ("nobjects-negative", "nobjects", "any", "corrupt: of the wrong type or out of range", _set("nobjects", -2)),
    ("nobjects-fewer", "nobjects", "any", "error: objects", _set("nobjects", lambda m: m["nobjects"] - 1)),
    ("nobjects-type", "nobjects", "any", "corrupt: of the wrong type or out of range", _set("nobjects", None)),
    ("prefix-type", "prefix", "any", "corrupt: of the wrong type or out of range", _set("prefix", 0)),
    ("kept-type", "kept", "any", "corrupt: names or archive pulls of the wrong shape", _set("kept", "group")),
    ("kept-items", "kept", "any", "corrupt: TypeError", _set("kept", [[1]])),
    # externals: name, role, origin, size, bind, type, reach, via_process
    ("externals-type", "externals", "any", "corrupt: ValueError", _set("externals", "x")),
    ("externals-row-short", "externals", "any", "corrupt: ValueError", _item("externals", [0], ["strtol", "resolved"])),
    ("externals-role", "externals", "any", "corrupt: of the wrong shape", _item("externals", [0, 1], "bogus")),
    ("externals-name", "externals", "any", "corrupt: of the wrong shape", _item("externals", [0, 0], 12)),
    ("externals-reach", "externals", "any", "corrupt: of the wrong shape", _item("externals", [0, 6], "x")),
    ("externals-fewer", "externals", "any", "corrupt: that no capture makes",
     _set("externals", lambda m: m["externals"][:-1])),
    # pulls checked at load: archive position, header offset, symbol
    ("pulls-type", "pulls", "any", "corrupt: TypeError", _set("pulls", [])),
    ("pulls-archive-negative", "pulls", "any", "corrupt: an archive pull out of range",
     _item("pulls", ["archive", 0], -1)),
    ("pulls-archive-beyond", "pulls", "any", "corrupt: an archive pull out of range",
     _item("pulls", ["archive", 0], 3)),
    ("pulls-archive-str", "pulls", "any", "corrupt: TypeError",
     _item("pulls", ["archive", 0], "0")),
    ("pulls-offset-str", "pulls", "any", "corrupt: TypeError",
     _item("pulls", ["header_offset", 0], "8")),
    ("pulls-symbol-type", "pulls", "any", "corrupt: TypeError",
     _item("pulls", ["symbol", 0], 3)),
    ("pulls-column-short", "pulls", "any", "corrupt: names or archive pulls of the wrong shape",
     _item("pulls", ["symbol"], [])),
    # the part decoded only when asked for
    ("later-type", "later", "any", "corrupt: of the wrong type or out of range", _set("later", 17)),
    ("later-garbage", "later", "any", "error: objects", _set("later", b"\xff\x00garbage")),
    ("later-truncated", "later", "any", "error: objects", _set("later", lambda m: m["later"][: len(m["later"]) // 2])),
    ("later-list", "later", "any", "error: objects", _set("later", container.dumps([1, 2]))),
    ("later-missing-part", "later", "any", "error: placed sections",
     _set("later", lambda m: container.dumps({k: v for k, v in _later(m).items()
                                                                           if k != "sections"}))),
    ("defs-column-short", "later", "any", "error: definitions", _column("definitions", "size", [])),
    ("defs-column-missing", "later", "any", "error: definitions",
     _later_edit("definitions", lambda c, m: {k: v for k, v in c.items()
                                                                           if k != "origin"})),
    ("defs-size-str", "later", "any", "error: definitions", _column("definitions", "size", "big")),
    ("defs-origin-int", "later", "any", "error: definitions", _column("definitions", "origin", 5)),
    ("defs-section-int", "later", "any", "error: definitions", _column("definitions", "section", 5)),
    ("defs-type-str", "later", "any", "error: definitions", _column("definitions", "type", "FUNC")),
    ("defs-bind-none", "later", "any", "error: definitions", _column("definitions", "bind", None)),
    ("defs-vis-list", "later", "any", "error: definitions", _column("definitions", "vis", {"a": 1})),
    ("defs-relative-str", "later", "any", "error: definitions", _column("definitions", "address_relative", "yes")),
    ("defs-offset-str", "later", "any", "error: definitions", _column("definitions", "address_offset", "0")),
    ("defs-offset-beyond", "later", "any", "error: definitions", _later_edit("definitions", lambda c, m: {
        **c, "address_offset": [_size(m) + 4096] * len(c["address_offset"]),
        "address_relative": [1] * len(c["address_offset"])})),
    ("defs-offset-negative", "later", "any", "error: definitions", _later_edit("definitions", lambda c, m: {
        **c, "address_offset": [-4096] * len(c["address_offset"]),
        "address_relative": [1] * len(c["address_offset"])})),
    ("sections-obj-beyond", "later", "any", "error: placed sections", _column("sections", "obj", 99)),
    ("sections-obj-negative", "later", "any", "error: placed sections", _column("sections", "obj", -1)),
    ("sections-index-beyond", "later", "any", "error: placed sections", _column("sections", "index", 999)),
    ("sections-index-negative", "later", "any", "error: placed sections", _column("sections", "index", -1)),
    ("sections-segment", "later", "any", "error: placed sections", _column("sections", "segment", "nowhere")),
    ("sections-work-negative", "later", "any", "error: placed sections", _column("sections", "work", -16)),
    ("sections-work-beyond", "later", "any", "error: placed sections", _column("sections", "work", 1 << 40)),
    ("sections-work-str", "later", "any", "error: placed sections", _column("sections", "work", "0")),
    ("sections-column-short", "later", "any", "error: placed sections", _column("sections", "index", [])),
    ("objects-type", "later", "any", "error: objects", _later_edit("objects", lambda c, m: 5)),
    ("objects-kind", "later", "any", "error: objects",
     _later_edit("objects", lambda c, m: [["stolen", 0, -1], *c[1:]])),
    ("objects-own-negative", "later", "any", "error: objects",
     _later_edit("objects", lambda c, m: [["own", -1, -1], *c[1:]])),
    ("objects-own-beyond", "later", "any", "error: objects",
     _later_edit("objects", lambda c, m: [["own", 9, -1], *c[1:]])),
    ("objects-member-negative", "later", "any", "error: objects",
     _later_edit("objects", lambda c, m: [*c[:-1], [c[-1][0], c[-1][1], -1]])),
    ("objects-member-beyond", "later", "any", "error: the tables of libsmall.a(",
     _later_edit("objects", lambda c, m: [*c[:-1], [c[-1][0], c[-1][1], 9]])),
    ("objects-member-name", "later", "any", "error: objects",
     _later_edit("objects", lambda c, m: [*c[:-1], [c[-1][0], 5, c[-1][2]]])),
    ("objects-row-short", "later", "any", "error: objects", _later_edit("objects", lambda c, m: [*c[:-1], ["member"]])),
    ("pulls-later-short", "later", "any", "error: archive pulls", _column("pulls", "index", [])),
    ("pulls-later-obj-negative", "later", "any", "error: archive pulls", _column("pulls", "obj", -1)),
    ("pulls-later-obj-beyond", "later", "any", "error: archive pulls", _column("pulls", "obj", 9)),
    ("pulls-later-index-negative", "later", "any", "error: archive pulls", _column("pulls", "index", -1)),
    ("pulls-later-name-int", "later", "any", "error: archive pulls", _column("pulls", "name", 4)),
    ("pulls-later-referrer-int", "later", "any", "error: archive pulls", _column("pulls", "referrer", 1)),
    ("pulls-later-size-str", "later", "any", "error: archive pulls", _column("pulls", "size", "4")),
    # the pulled members' skeletons: a compressed nested entry
    ("skeletons-garbage", "skeletons", "any", "error: the tables of libsmall.a(",
     _blob("skeletons", lambda m, x: b"not zlib at all")),
    ("skeletons-truncated", "skeletons", "any", "error: the tables of libsmall.a(",
     _blob("skeletons", lambda m, x: bytes(x)[:-9])),
    ("skeletons-not-an-entry", "skeletons", "any", "error: the tables of libsmall.a(",
     _blob("skeletons", lambda m, x: zlib.compress(b"RTDYLDLC" * 9))),
    ("skeletons-array", "skeletons", "any", "error: the tables of libsmall.a(",
     _blob("skeletons", lambda m, x: np.zeros(4, dtype=np.float64))),
    ("skeletons-nblobs", "skeletons", "any", "error: the tables of libsmall.a(",
     _skeleton_docs(lambda inner, bl: inner.__setitem__("nblobs", inner["nblobs"] + 1))),
    ("skeletons-docs-type", "skeletons", "any", "error: the tables of libsmall.a(",
     _skeleton_docs(lambda inner, bl: inner.__setitem__("docs", 3))),
    ("skeletons-docs-fewer", "skeletons", "any", "error: the tables of libsmall.a(",
     _skeleton_docs(lambda inner, bl: inner.__setitem__("docs", inner["docs"][:1]))),
    ("skeletons-class", "skeletons", "any", "error: the tables of libsmall.a(",
     _skeleton_docs(lambda inner, bl: inner["docs"][0].__setitem__("$d", "SEC_ABS"))),
    ("skeletons-class-unknown", "skeletons", "any", "error: the tables of libsmall.a(",
     _skeleton_docs(lambda inner, bl: inner["docs"][0].__setitem__("$d", "NoSuchClass"))),
    ("skeletons-columns-class", "skeletons", "any", "error: the tables of libsmall.a(",
     _skeleton_docs(lambda inner, bl: _first_section_doc(inner).__setitem__("$c", "Group"))),
    ("skeletons-column-short", "skeletons", "any", "error: the tables of libsmall.a(",
     _skeleton_docs(lambda inner, bl: _first_section_doc(inner).__setitem__("n", 99))),
    ("skeletons-blob-index", "skeletons", "any", "error: the tables of libsmall.a(",
     _skeleton_docs(lambda inner, bl: inner["docs"][0].__setitem__("symbols", {"$a": -1}))),
    ("skeletons-blob-beyond", "skeletons", "any", "error: the tables of libsmall.a(",
     _skeleton_docs(lambda inner, bl: inner["docs"][0].__setitem__("symbols", {"$a": 999}))),
    ("skeletons-sections-type", "skeletons", "any", "error: the tables of libsmall.a(",
     _skeleton_docs(lambda inner, bl: inner["docs"][0].__setitem__("sections", 4))),
    ("skeletons-field-unknown", "skeletons", "any", "error: the tables of libsmall.a(",
     _skeleton_docs(lambda inner, bl: inner["docs"][0].__setitem__("colour", 4))),
    # the image itself is the tail, checksummed where it lands: any mismatch is refused
]

_FORMS = ("listed", "grouped")
CASES = [pytest.param(form, expected, mutate, id=f"{name}-{form}")
         for name, _key, where, expected, mutate in MUTATIONS for form in _FORMS if where in (form, "any")]


@pytest.mark.parametrize(("form", "expected", "mutate"), CASES)
def test_a_tampered_batch_entry_misses_or_raises_a_link_error(tmp_path, sources, templates, form, expected, mutate):
    kind, why = _outcome(_tampered(tmp_path, templates[form], mutate), sources)
    want_kind, want_why = expected.split(": ", 1)
    assert kind == want_kind and want_why in why, why


def test_the_mutations_cover_every_part_of_a_batch_entry(tmp_path, sources, templates):
    """Derived from real entries, so that a part added to the format later
    fails here until tampering with it is tried."""
    parts = set()
    for form in _FORMS:
        meta, blobs, _tail = _read(_entry(templates[form]))
        assert sorted(meta) == sorted(_META_KEYS)  # where the junk test puts junk
        parts |= set(meta) | set(blobs)
        later = _later(meta)
        parts |= {f"later.{k}" for k in later} | {f"later.{k}.{c}" for k in later for c in later[k]
                                                    if isinstance(later[k], dict)}
    covered = {"inputs"}  # by-identity entries: below
    for _name, key, _where, _e, mutate in MUTATIONS:
        covered |= {key, getattr(mutate, "covers", key)}
    covered |= {c.rpartition(".")[0] for c in covered}  # a column tried: its part too
    assert parts - covered == set()


@pytest.mark.parametrize(("expected", "inputs"), [
    ("corrupt: TypeError", 5),
    ("corrupt: ValueError", {"objects": [], "archives": []}),  # fewer archives than the session searches
    ("corrupt: an input digest that is not a str", lambda i: {**i, "archives": [[*i["archives"][0][:2], 7]]}),
    ("corrupt: KeyError", lambda i: {"objects": i["objects"]}),
], ids=["type", "archives-fewer", "digest-int", "archives-missing"])
def test_a_tampered_by_identity_entry_falls_back_to_the_digest_keyed_one(tmp_path, tmp_path_factory, sources,
                                                                         monkeypatch, expected, inputs):
    monkeypatch.setattr(digests, "SETTLE_NS", -(1 << 62))  # the inputs count as settled although just written
    template = _filled(tmp_path_factory.mktemp("by_identity"), sources, grouped=False, by_identity=True)
    cache_dir = _tampered(tmp_path, template, _set("inputs", (lambda m: inputs(m["inputs"])) if callable(inputs)
                                                   else inputs), layer="inputs")
    cache = LinkCache(cache_dir)
    ln, _ = _link(cache, sources)
    try:
        ((layer, kind, why),) = [e for e in cache.events if e[1] in ("corrupt", "stale")]
        want_kind, want_why = expected.split(": ", 1)
        assert (layer, kind) == ("inputs", want_kind) and want_why in why, why
        assert cache.stats["batches"]["hits"] == 1 and cache.stats["inputs"]["stores"] == 1
        assert ln.function("run", "int(int)")(4) == RESULT
    finally:
        ln.close()


_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.text(max_size=3),
                  st.lists(st.integers(-3, 1 << 14), max_size=3), st.binary(max_size=9), st.just(-1), st.just(1 << 13))


@st.composite
def _junk_edits(draw, keys: list[str]):
    """A top-level key of the metadata, and where in its value (the whole,
    or an item of a list, or of a list in it) junk goes."""
    return draw(st.sampled_from(keys)), draw(st.lists(st.integers(0, 7), max_size=2)), draw(_JUNK)


def _put(meta: dict, key: str, path: list[int], junk) -> None:
    holder, at = meta, key
    for i in path:
        value = holder[at]
        if not isinstance(value, (list, dict)) or not value:
            break
        holder, at = value, (list(value)[i % len(value)] if isinstance(value, dict) else i % len(value))
    holder[at] = junk


_META_KEYS = ["dso_handle", "eh_frame", "definition_names", "externals", "fini", "got", "got_off", "init", "kept",
              "later", "low", "nobjects", "nsections", "prefix", "pulls", "residual_groups", "residual_quads",
              "residual_rows", "segments", "stubs"]


@settings(max_examples=80, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(edit=_junk_edits(_META_KEYS), form=st.sampled_from(_FORMS))
def test_junk_anywhere_in_a_batch_entry_is_never_a_bare_exception(tmp_path, sources, templates, edit, form):
    """Junk where the capture might have written the same value may be used
    as it is; anything else is a miss or a CorruptCacheEntryError."""
    key, path, junk = edit

    def mutate(meta, _blobs):
        if key in meta:
            _put(meta, key, path, junk)

    _outcome(_tampered(tmp_path, templates[form], mutate), sources, hit_allowed=True)


# --- the tables of objects (objects/), read when a batch is linked cold ------------------

def _table_rows(table: str, column: str, value):
    """Set ``column`` of every row but the first of each object's ``table`` blob (``symbols`` or ``relocs``)."""
    dtype = {"symbols": model.SYM_DTYPE, "relocs": model.RELOC_DTYPE}[table]

    def mutate(_meta, blobs):
        for name, blob in blobs.items():
            if getattr(blob, "dtype", None) == dtype and len(blob) > 1:
                blob = blob.copy()
                blob[column][1:] = value
                blobs[name] = blob
    return mutate


def _object_doc(field: str, value):
    def mutate(meta, blobs):
        meta["object"][field] = value(meta["object"], blobs) if callable(value) else value
    return mutate


OBJECT_MUTATIONS = [
    ("reloc-offset-far", _table_rows("relocs", "offset", 1 << 40)),
    ("reloc-offset-past-section", _table_rows("relocs", "offset", (1 << 64) - 2)),
    ("reloc-section", _table_rows("relocs", "section", 77)),
    ("reloc-section-negative", _table_rows("relocs", "section", -1)),
    ("reloc-kind", _table_rows("relocs", "kind", 250)),
    ("reloc-symbol-beyond", _table_rows("relocs", "sym", 1 << 20)),
    ("reloc-symbol-negative", _table_rows("relocs", "sym", -5)),  # was a crash
    ("reloc-subtrahend", _table_rows("relocs", "sym2", -7)),
    ("symbol-section", _table_rows("symbols", "section", 999)),
    ("symbol-section-negative", _table_rows("symbols", "section", -99)),
    ("symbols-dtype", lambda meta, blobs: _object_doc("symbols", {"$b": len(blobs) - 1})(meta, blobs)),
    ("names-fewer", _object_doc("names", ["only"])),
    ("sections-type", _object_doc("sections", 3)),
    ("format-type", _object_doc("format", 5)),
    ("groups-type", _object_doc("groups", [{"$d": "Group", "signature": "g", "sections": [99]}])),
    ("class", _object_doc("$d", "SEC_ABS")),
    ("blob-negative", _object_doc("symbols", {"$a": -1})),
]


@pytest.mark.parametrize("mutate", [pytest.param(m, id=name) for name, m in OBJECT_MUTATIONS])
def test_tampered_object_tables_are_a_miss_and_the_object_parsed_again(tmp_path, sources, templates, mutate):
    cache_dir = tmp_path / "cache"
    shutil.copytree(templates["listed"], cache_dir)
    _entry(cache_dir).unlink()  # the batch linked cold, from the objects' tables
    entries = sorted(cache_dir.glob("objects/*.ent"))
    for entry in entries:
        meta, blobs, tail = _read(entry)
        mutate(meta, blobs)
        _write(entry, meta, blobs, tail)
    cache = LinkCache(cache_dir)
    ln, _ = _link(cache, sources)
    try:
        assert cache.stats["objects"]["corrupt"] == len(entries) == 3, cache.events
        assert cache.stats["objects"]["stores"] == len(entries)  # parsed again and stored
        assert ln.function("run", "int(int)")(4) == RESULT
    finally:
        ln.close()


# --- an archive's member table and symbol index (archives/), read when it is opened ------

def _members(column: int, value):
    return _blob("at", lambda _m, at: np.concatenate([at[:, :column], np.full((len(at), 1), value, np.int64),
                                                      at[:, column + 1 :]], axis=1))


ARCHIVE_MUTATIONS = [
    ("header-negative", _members(0, -5)),
    ("data-before-header", _members(1, 20)),
    ("data-past-the-end", _members(1, 1 << 40)),
    ("size-negative", _members(2, -5)),
    ("size-past-the-end", _members(2, 1 << 40)),
    ("table-flat", _blob("at", lambda _m, at: at.reshape(-1))),
    ("table-dtype", _blob("at", lambda _m, at: at.astype(np.float64))),
    ("index-position-negative", _blob("p", lambda _m, p: p * 0 - 1)),
    ("kind-thin", _set("kind", "thin")),  # whose members would be read as files named by the entry
    ("kind-type", _set("kind", 5)),
    ("has_index-type", _set("has_index", "yes")),
    ("members-type", _set("members", 4)),
]


@pytest.mark.parametrize("mutate", [pytest.param(m, id=name) for name, m in ARCHIVE_MUTATIONS])
def test_a_tampered_archive_table_is_a_miss_and_the_archive_read_again(tmp_path, sources, templates, mutate):
    cache_dir = _tampered(tmp_path, templates["listed"], mutate, layer="archives")
    for entry in (*cache_dir.glob("batches/*.ent"), *cache_dir.glob("objects/*.ent")):
        entry.unlink()  # a cold link, which opens the archive
    cache = LinkCache(cache_dir)
    ln, _ = _link(cache, sources)
    try:
        assert cache.stats["archives"]["corrupt"] == 1 and cache.stats["archives"]["hits"] == 0, cache.events
        assert ln.function("run", "int(int)")(4) == RESULT
    finally:
        ln.close()


def test_a_pulled_member_recorded_at_no_position_of_the_archive_reports_the_archive_changed(tmp_path, sources,
                                                                                            templates):
    from rtdyld.errors import MalformedObjectError

    cache_dir = _tampered(tmp_path, templates["listed"], _column("pulls", "index", 99))
    cache = LinkCache(cache_dir)
    ln, h = _link(cache, sources)
    try:
        assert cache.stats["batches"]["hits"] == 1
        pull = next(p for p in h.batch.pulls.values() if p.member.index == 99)
        with pytest.raises(MalformedObjectError, match=r"libsmall\.a\(.*\): the archive changed since it was linked"):
            pull.member.data  # noqa: B018 - the property reads the archive
    finally:
        ln.close()


# --- residual fixups: every write position checked before any is written ---------------

def _pointer_rows(where: list[int]):
    n = len(where)
    res = image.Residual(np.array(where, dtype=np.int64), np.full(n, int(Edge.Pointer64), dtype=np.uint8),
                         np.arange(n, dtype=np.uint64), np.ones(n, dtype=np.int8), np.full(n, -1, dtype=np.int32))
    return image.grouped(res)


@pytest.mark.parametrize("bad", [-8, 4096, 4096 - 4, 1 << 20], ids=["negative", "past-the-image", "straddling",
                                                                     "past-the-memory"])
def test_listed_residual_fixups_outside_the_image_are_refused_before_any_is_written(bad):
    rec, groups = _pointer_rows([0, 8, 16])
    rows = np.frombuffer(image.listed(rec), dtype=np.int64).copy()
    rows[2] = bad  # the last row's position, written last
    mem = np.full(8192, 0xAA, dtype=np.uint8)  # the image: its first 4096 bytes
    with pytest.raises(ValueError, match="outside the batch's image"):
        image.apply_listed(rows.tobytes(), groups, mem, 1 << 40, [], 4096)
    assert (mem == 0xAA).all()


@pytest.mark.parametrize("bad", [-1, 4096 // 8, 1 << 20], ids=["negative", "past-the-image", "past-the-memory"])
def test_grouped_residual_fixups_outside_the_image_are_refused_before_any_is_written(bad):
    rec, groups = _pointer_rows([0, 8, 16])
    index, quads = image.targets(rec, groups)
    assert quads  # aligned 8-byte fields: written by word index
    index = index.copy()
    index[2] = bad
    mem = np.full(8192, 0xAA, dtype=np.uint8)
    with pytest.raises(ValueError, match="outside the batch's image"):
        image.apply_grouped(rec["const"], groups, mem, 1 << 40, np.zeros(0, dtype=np.uint64), (index, quads), 4096)
    assert (mem == 0xAA).all()


@pytest.mark.parametrize("first", ["misfit", "malformed"])
def test_listed_and_grouped_fixups_check_a_misfit_and_a_malformed_group_in_the_same_order(first):
    """Group by group, on both paths: a group whose row no longer fits its
    field answers False (a stale entry) before a later group no capture makes
    is looked at; the malformed group first is a ValueError (a corrupt one)."""
    res = image.Residual(np.zeros(1, np.int64), np.array([int(Edge.Pointer32)], np.uint8),
                         np.array([1 << 40], np.uint64), np.zeros(1, np.int8), np.full(1, -1, np.int32))
    rec, groups = image.grouped(res)
    index, quads = image.targets(rec, groups)
    malformed = [255, 0, -1, 0, 0, 0]  # no such kind; no rows, so the rows stay covered
    groups = groups + [malformed] if first == "misfit" else [malformed] + groups
    listed_mem, grouped_mem = (np.full(64, 0xAA, dtype=np.uint8) for _ in range(2))
    outcomes = []
    for apply in (lambda: image.apply_listed(image.listed(rec), groups, listed_mem, 0, [], 64),
                  lambda: image.apply_grouped(rec["const"], groups, grouped_mem, 0, np.zeros(0, np.uint64),
                                              (index, quads), 64)):
        try:
            outcomes.append(apply())
        except ValueError as e:
            outcomes.append(str(e))
    refused = "a residual group [255, 0, -1, 0] that no capture makes"
    assert outcomes == ([False, False] if first == "misfit" else [refused, refused])
    assert (listed_mem == 0xAA).all() and (grouped_mem == 0xAA).all()


@pytest.mark.parametrize("copied", [False, True], ids=["alone", "copied-by-input-identity"])
def test_after_a_corrupt_deferred_part_the_next_link_is_cold_and_the_one_after_warm(tmp_path, sources, templates,
                                                                                   monkeypatch, copied):
    # Settled inputs: the warm load also stores the entry under their identities, a copy the error deletes too.
    monkeypatch.setattr(digests, "SETTLE_NS", -(1 << 62) if copied else 1 << 62)
    cache_dir = _tampered(tmp_path, templates["listed"], _column("sections", "work", -16))
    cache = LinkCache(cache_dir)
    ln, h = _link(cache, sources)
    assert cache.stats["inputs"]["stores"] == copied
    with pytest.raises(CorruptCacheEntryError, match=r"batches/[0-9a-f]{64}\.ent: placed sections: ValueError: "
                                                     r"section .* outside its segment 'text'"):
        list(h.batch.sections)
    ln.close()
    assert not list(cache_dir.glob("batches/*.ent")) and not list(cache_dir.glob("inputs/*.ent"))
    for expected in ("misses", "hits"):
        cache = LinkCache(cache_dir)
        ln, h = _link(cache, sources)
        try:
            assert cache.stats["batches"][expected] == 1
            assert ln.function("run", "int(int)")(4) == RESULT
            _touch(ln, h)
        finally:
            ln.close()
