"""One batch's trip through the link cache: its key, the warm load, the store.

The key covers what the batch's bytes are made of: the digests and names of
its objects, the digests of every archive it may pull from (with the members
the session already loaded from them), the COMDAT groups the session already
kept, the rtdyld version and code, and the cache format.  What the key cannot
cover is the rest of the session, which decides where outside names resolve
and which archive members get pulled; the entry records those decisions and
:meth:`BatchPlan.load` checks each of them again:

- every name the batch resolved outside itself resolves to a provider with
  the same origin, size, binding and type (only its address may differ), and
  lies within 32-bit reach of the batch's memory exactly when it did, so the
  GOT, stub and relaxation decisions are unchanged; a name the process
  provided must be the process's again (see :mod:`.resolutions`), and which
  library of the process holds it is described only if asked for, since no
  byte of the image depends on it;
- a weak reference left undefined is still undefined;
- every symbol that pulled an archive member is still not defined by
  anything that outranks archives;
- no name the batch defines has been published by another batch since;
- every residual fixup still fits its field at the new addresses.

Any difference is a miss, and the batch is linked cold.
"""

from __future__ import annotations

import functools
import gc
import warnings
import zlib

from memmgr import MemMgrError, Prot, SegmentRequest

from .. import unwind
from ..archives import Pull
from ..lazy_numpy import np
from ..linked import External, LinkedBatch
from ..symbols import ProcessSymbolDef, SymbolDef
from ..x86_64.edges import REACH
from . import by_identity, container, resolutions, tables
from .container import FORMAT_VERSION, OpenEntry, pack, unpack
from .deferred import CachedMember, DeferredArchive
from .definitions import warm_definitions
from .entry_checks import check_meta
from .listed import apply_listed
from .placed import FirstRead, WarmExternals, WarmPulls, placed_sections

DIGEST_ATTR = "_link_cache_digest"  # set on objects the cache read, to their bytes' sha256
# Every protection a segment may have, made once: the enum's constructor costs
# two Python calls per segment on the way to a warm batch's memory.
_PROT = {int(p): p for p in map(Prot, range(8))}
_tuple_new = tuple.__new__
_IMAGE = "image"  # the blob _capture makes of the batch's bytes, stored as the entry's tail
_SYMBOL_FIELDS = tuple(f for f in SymbolDef.FIELDS if f not in ("address", "batch"))


def batch_key(identity: dict, parts: dict) -> bytes:
    import hashlib  # (a batch found by its inputs' identities needs neither)
    import json

    h = hashlib.sha256(b"rtdyld link cache: batch\0")
    h.update(json.dumps({**identity, **parts}, sort_keys=True).encode())
    return h.digest()


class BatchPlan:
    """Construct with :func:`make_plan` or :func:`identity_plan`; then :meth:`load`, or :meth:`store` after a cold link."""

    def __init__(self, cache, linker, dylib, objs, search, archives, pending, key: bytes,
                 planned_digests: list[str] | None = None) -> None:
        self.cache = cache
        self.linker = linker
        self.dylib = dylib
        self.objs = objs
        self.search = search
        self.archives = archives
        self.pending = pending
        self.key = key
        self.planned_digests = planned_digests  # the archives' digests in the key (None: keyed by identity)
        self.layer = "batches" if planned_digests is not None else by_identity.LAYER
        # (meta, blobs, image) read or stored under the key; image None if not kept.
        self.entry: tuple[dict, dict, bytes | None] | None = None
        # The files holding the entry a load read: its own, then copies stored from it (store_entry).
        self.files: list[str] = []

    # --- warm -------------------------------------------------------------------------

    def load(self, keep_image: bool = False) -> LinkedBatch | None:
        """The batch from the cache, allocated and fixed up but not finalized;
        None on a miss (the reason is counted).  The image is read straight into
        the batch's memory; with ``keep_image`` it is also kept as bytes, in
        :attr:`entry`, to be stored again (:meth:`store_entry`)."""
        opened = self.cache.open_entry(self.layer, self.key)
        if opened is None:
            return None
        # Restoring makes many small acyclic objects; a collection in the middle
        # of it (a full one, in a young process) would cost more than the rest.
        collecting = gc.isenabled()
        gc.disable()
        try:
            with opened:
                meta, blobs = opened.meta, opened.blobs
                lb, image_bytes = self._restore(opened, keep_image)
            self.entry = (meta, blobs, image_bytes)
            return lb
        except _Stale as e:
            self.cache.note(self.layer, "stale", str(e))
            return None
        except Exception as e:  # noqa: BLE001 - an entry that does not restore is a miss, whatever the cause
            self.cache.note(self.layer, "corrupt", f"{type(e).__name__}: {e}")
            self.cache.discard(self.layer, self.key)
            return None
        finally:
            if collecting:
                gc.enable()

    def _restore(self, opened: OpenEntry, keep_image: bool) -> tuple[LinkedBatch, bytes | None]:
        meta, blobs = opened.meta, opened.blobs
        names = meta["definition_names"]
        if not self.dylib.published.keys().isdisjoint(names):
            raise _Stale("a name the batch defines is now published by another batch")
        ext_addr, externals, outside = self._externals(meta)
        pulls = meta["pulls"]
        self._check_pulls(meta, pulls)
        listed = meta["residual_rows"]
        if listed is None:
            residual = blobs["residual"]
            targets = blobs["residual_targets"]
            if residual.dtype != np.uint64 or residual.ndim != 1 or targets.dtype != np.int32 or targets.ndim != 1:
                raise ValueError("residual fixups of the wrong type")
        lb = self._allocate(meta)
        try:
            alloc = lb.allocation
            check_meta(meta, alloc.size, len(self.search))
            base = alloc.target_base
            # Bytes, not a numpy array: a batch with few residual fixups loads without numpy.
            mem = alloc.buffer
            image_bytes = None
            if keep_image:
                image_bytes = opened.tail_bytes()
                mem[: len(image_bytes)] = image_bytes
            else:
                opened.read_tail_into(mem)
            if listed is not None:
                fits = apply_listed(listed, meta["residual_groups"], mem, base, ext_addr, opened.tail_length)
            else:
                from . import image

                fits = image.apply_grouped(residual, meta["residual_groups"], alloc.memory, base,
                                           np.array(ext_addr, dtype=np.uint64), (targets, bool(meta["residual_quads"])),
                                           opened.tail_length)
            if not fits:
                raise _Stale("a residual fixup no longer fits at the new addresses")
            self.files = [opened.path]
            self._finish(lb, meta, blobs, names, pulls, base, externals, outside, self.files)
            if self.planned_digests is None:
                by_identity.adopt(meta, self.search)
        except BaseException:
            lb.allocation.release()  # a miss leaves no batch behind
            raise
        return lb, image_bytes

    def _externals(self, meta: dict) -> tuple[list[int], list, list[SymbolDef]]:
        """The externals' addresses; what :func:`.resolutions.made` makes them
        from (None for the batch's own); and the definitions outside the
        process they resolved to: each resolved again and checked against the entry."""
        prefix = meta["prefix"]
        recorded = meta["externals"]
        resolutions.check_recorded(recorded)
        # One walk of the resolver chain for all of them (one dlsym each, for the process).
        found = self.dylib.resolve_many([row[0] for row in recorded if row[1] in ("resolved", "none")], prefix,
                                        self.pending, resolutions.found_in_process)
        addr = [0] * len(recorded)
        out: list = []
        outside: list[SymbolDef] = []
        check = []
        for j, (name, role, origin, size, bind, stype, reach, via_process) in enumerate(recorded):
            if role in ("got", "dso"):
                out.append(None)  # made once the batch has an address
                continue
            d = found.get(name)
            if type(d) is tuple:  # the process's (resolutions.found_in_process)
                if via_process:
                    # Still the process's: its origin is described only if asked
                    # for, since the image depends on the address alone (and its
                    # reach, below).
                    addr[j] = d[1]
                    out.append(d)
                    check.append((d[1], reach))
                    continue
                d = ProcessSymbolDef(*d)  # now the process's: checked below as any definition
            if role == "none":
                if d is not None:
                    raise _Stale(f"weak reference {name!r} is now defined ({d.origin})")
                out.append(External(name, 0, "weak undefined"))
                continue
            if d is None:
                raise _Stale(f"{name!r} no longer resolves")
            if (d.origin, d.size, d.bind, d.type) != (origin, size, bind, stype):
                raise _Stale(f"{name!r} now resolves to {d.origin}, not {origin}")
            addr[j] = d.address
            out.append(External(name, d.address, d.origin, d.size, d))
            outside.append(d)
            check.append((d.address, reach))
        if check:
            # A handful of addresses: plain integers, with scan.in_reach's interval.
            for bit, low in ((1, False), (2, True)):
                lo, hi = self.linker.memory.reach_range(low=low)
                above, below = max(lo, hi) - REACH, min(lo, hi) + REACH
                for a, reach in check:
                    if (above < a < below) != bool(reach & bit):
                        raise _Stale("an outside symbol moved in or out of 32-bit reach")
        return addr, out, outside

    def _check_pulls(self, meta: dict, pulls: dict) -> None:
        # Each dylib that outranks archives asked once for all the names.
        symbols = [s for s in pulls["symbol"] if s]  # "" for a whole-archive member
        for d in self.linker.archive_outrankers(self.dylib):
            symbol = d.first_defined(symbols, meta["prefix"])
            if symbol is not None:
                raise _Stale(f"{symbol!r}, which pulled an archive member, is now defined elsewhere")

    def _allocate(self, meta: dict) -> LinkedBatch:
        # tuple.__new__ is what SegmentRequest(...) calls, minus a Python-level frame per segment.
        requests = [_tuple_new(SegmentRequest, (name, size, _PROT[prot], zf)) for name, _off, size, prot, zf in
                    meta["segments"]]
        try:
            alloc = self.linker.memory.allocate(requests, low=meta["low"])
        except MemMgrError as e:
            raise _Stale(f"cannot allocate: {e}") from None
        if [s.offset for s in alloc.segments] != [s[1] for s in meta["segments"]]:
            alloc.release()
            raise _Stale("the memory manager lays segments out differently")
        return LinkedBatch(objects=[], allocation=alloc, sections=[], definitions={}, externals=[], got={},
                           stubs={}, got_base=0)

    def _finish(self, lb: LinkedBatch, meta: dict, blobs: dict, names: list[str], pulls: dict, base: int,
                externals: list, outside: list[SymbolDef], files: list[str]) -> None:
        got_base = base + meta["got_off"]
        lb.got_base = got_base
        if meta["dso_handle"] is not None:
            lb.dso_handle = base + meta["dso_handle"]
        # The GOT symbol and __dso_handle move with the batch.
        own = {"got": (got_base, "the batch's GOT"), "dso": (lb.dso_handle, "the batch's DSO handle")}
        lb.externals = WarmExternals(functools.partial(resolutions.made, meta["externals"], externals, own),
                                     len(externals), outside, files)
        later = _Later(meta["later"])
        lb.objects = FirstRead(functools.partial(_objects, self.objs, later, blobs, files), meta["nobjects"], files,
                               "objects")
        lb.sections = placed_sections(functools.partial(later.get, "sections"), meta["nsections"], base, files,
                                      lb.allocation.segments, lb.objects)
        lb.definitions = warm_definitions(names, functools.partial(later.get, "definitions"), base, files,
                                          lb.allocation.size)
        lb.got = {t: base + o for t, o in meta["got"]}
        lb.stubs = {t: base + o for t, o in meta["stubs"]}
        lb.initializers = [tuple(x) for x in meta["init"]]
        lb.finalizers = [tuple(x) for x in meta["fini"]]
        lb.kept_groups = set(meta["kept"])
        if meta["eh_frame"] is not None:
            work, size, segment_offset = meta["eh_frame"]
            lb.eh_frame = unwind.EhFrameImage(work, base + work, size, segment_offset)
        lb.segments = {seg.name: seg for seg in lb.allocation.segments}
        search = self.search
        lb.pulls = WarmPulls(functools.partial(_pulls, lb.objects, search, pulls, later),
                             # ArchiveSet.key of each member, written out: a call per member costs a warm link
                             [(id(search[ar]), off) for ar, off in zip(pulls["archive"], pulls["header_offset"])],
                             files)

    # --- cold -------------------------------------------------------------------------

    def store(self, lb: LinkedBatch) -> None:
        """Remember a batch just linked cold (before it is finalized)."""
        if [a.content_digest for a in self.search] != self.planned_digests:
            self.cache.note(self.layer, "unstored", "an archive changed while the batch was linked")
            return
        try:
            meta, blobs = self._capture(lb)
        except tables.Uncacheable as e:
            self.cache.note(self.layer, "unstored", str(e))
            return
        except Exception as e:  # noqa: BLE001 - failing to cache must never fail a link that worked
            self.cache.note(self.layer, "unstored", f"{type(e).__name__}: {e}")
            warnings.warn(f"link cache {self.cache.directory}: cannot capture the batch: {e}", RuntimeWarning,
                          stacklevel=2)
            return
        image_bytes = blobs.pop(_IMAGE)
        self.entry = (meta, blobs, image_bytes)
        self.cache.write_entry(self.layer, self.key, pack(self.key, meta, blobs, image_bytes))

    def store_entry(self, keyed: BatchPlan) -> None:
        """Store, under this plan's by-identity key, the entry ``keyed`` (the
        same batch's digest-keyed plan) read or stored, when every input's
        digest may be recorded under its identity (:mod:`.by_identity`)."""
        inputs = by_identity.recorded_inputs(self.cache, self.objs, self.search, keyed.planned_digests)
        if inputs is None:
            self.cache.note(self.layer, "unstored", "an input had not settled when it was hashed")
            return
        meta, blobs, image_bytes = keyed.entry
        if image_bytes is None:
            self.cache.note(self.layer, "unstored", "the image was not kept")
            return
        self.cache.write_entry(self.layer, self.key,
                               pack(self.key, {**meta, "inputs": inputs}, dict(blobs.items()), image_bytes))
        keyed.files.append(self.cache._path(self.layer, self.key))  # a copy, of a batch perhaps not yet read

    def _capture(self, lb: LinkedBatch) -> tuple[dict, dict]:
        from ..x86_64 import scan
        from . import image

        alloc = lb.allocation
        base = alloc.target_base
        prefixes = {o.symbol_prefix for o in lb.objects}
        if len(prefixes) > 1:
            raise tables.Uncacheable("objects of different formats in one batch")
        # A TLS module is loaded and IFUNC resolvers run anew in every process:
        # neither is a fixed-up byte the image could hold.
        if lb.tls is not None:
            raise tables.Uncacheable("the batch has thread-local storage")
        if lb.ifunc is not None:
            raise tables.Uncacheable("the batch defines IFUNC symbols")
        roles = image.external_roles(lb)
        res = image.capture(lb, roles)
        residual, residual_groups = image.grouped(res)
        blobs: dict = {}
        if len(residual) <= image.FEW_LISTED:
            residual_rows, residual_quads = image.listed(residual), False
        else:
            residual_rows = None
            blobs["residual"] = np.ascontiguousarray(residual["const"])  # the groups hold the rest of each row
            blobs["residual_targets"], residual_quads = image.targets(residual, residual_groups)
        end = max([s.offset + s.size for s in alloc.segments if not s.zero_fill] or [0])
        # The entry's tail: read at load straight into the batch's new memory.
        blobs[_IMAGE] = alloc.memory[:end].tobytes()
        # Per resolved external: bit 1 if in 32-bit reach of the main range, bit 2 of the low one.
        resolved = np.array([e.definition.address for e in lb.externals if e.definition is not None], dtype=np.uint64)
        reach = np.zeros(len(resolved), dtype=np.int64)
        if len(resolved):
            for bit, low in ((1, False), (2, True)):
                lo, hi = self.linker.memory.reach_range(low=low)
                reach |= bit * scan.in_reach(resolved, lo, hi)
        reaches = iter(reach.tolist())
        externals = []
        for e, role in zip(lb.externals, roles):
            d = e.definition
            if d is not None:
                via = isinstance(d, ProcessSymbolDef)  # the chain reached the process, which defined it
                externals.append([e.name, role, d.origin, d.size, d.bind, d.type, next(reaches), via])
            else:
                externals.append([e.name, role, "", 0, 0, 0, 0, False])
        own = {id(o): i for i, o in enumerate(self.objs)}
        skel: list = []
        docs = []
        objects = []
        for o in lb.objects:
            if id(o) in own:
                objects.append(["own", own[id(o)], -1])
            else:
                objects.append(["member", o.name, len(docs)])
                docs.append(tables.object_doc(tables.skeleton(o), skel))
        # One nested entry, unpacked only if a member's sections are asked for:
        # the outer entry's metadata stays a few dozen blobs long.  Compressed
        # (to a tenth: the members' tables repeat one shape), since every warm
        # load reads and checks it and few ever unpack it.
        blobs["skeletons"] = zlib.compress(
            pack(_NESTED_KEY, {"docs": docs, "nblobs": len(skel)}, tables.named(skel, "o")), 1)
        position = {id(a): i for i, a in enumerate(self.search)}
        pulled = []
        for oi, o in enumerate(lb.objects):
            p = lb.pulls.get(id(o))
            if p is None:
                continue
            m = p.member
            ar = position.get(id(m.archive))
            if ar is None:
                raise tables.Uncacheable(f"{m.display_name} comes from an archive outside the search order")
            pulled.append((oi, ar, m.header_offset, m.index, m.name, m.size, p.symbol, p.referrer))
        # Table columns as plain lists: marshal reads them back faster than numpy would.
        columns = {f: [_plain(row[i]) for row in pulled] for i, f in enumerate(_PULL_FIELDS)}
        # What a warm load checks and publishes; the rest only maps and traces read.
        pulls = {f: columns.pop(f) for f in _PULLS_CHECKED}
        defs = list(lb.definitions.values())
        rel = np.array([d.section != "" for d in defs], dtype=bool)
        off = np.array([d.address for d in defs], dtype=np.uint64)
        off[rel] -= np.uint64(base)
        if np.any(rel & (off > np.uint64(alloc.size))):
            raise tables.Uncacheable("a definition outside the batch's memory")
        definitions = {f: [_plain(getattr(d, f)) for d in defs] for f in _SYMBOL_FIELDS if f != "name"}
        # The address: an offset into the batch's memory, or absolute (as int64 bits).
        definitions["address_offset"] = off.view(np.int64).tolist()
        definitions["address_relative"] = rel.astype(np.int64).tolist()
        sections = {
            "obj": [int(p.obj) for p in lb.sections],
            "index": [int(p.index) for p in lb.sections],
            "segment": [str(p.segment) for p in lb.sections],
            "work": [int(p.work) for p in lb.sections],
        }
        meta = {
            "residual_rows": residual_rows,
            "residual_groups": residual_groups,
            "residual_quads": residual_quads,
            "segments": [[s.name, s.offset, s.size, int(s.prot), bool(s.zero_fill)] for s in alloc.segments],
            "low": bool(alloc.low),
            "got_off": lb.got_base - base,
            "got": [[int(t), a - base] for t, a in lb.got.items()],
            "stubs": [[int(t), a - base] for t, a in lb.stubs.items()],
            "definition_names": [d.name for d in defs],
            "nsections": len(lb.sections),
            # What only maps, listings and look-ups read, decoded when first asked for.
            "later": container.dumps({"definitions": definitions, "sections": sections, "objects": objects,
                                      "pulls": columns}),
            "externals": externals,
            "prefix": next(iter(prefixes), ""),
            "nobjects": len(objects),
            "pulls": pulls,
            "init": [list(x) for x in lb.initializers],
            "fini": [list(x) for x in lb.finalizers],
            "kept": sorted(lb.kept_groups),
            "eh_frame": ([lb.eh_frame.work, lb.eh_frame.size, lb.eh_frame.segment_offset]
                         if lb.eh_frame is not None else None),
            "dso_handle": lb.dso_handle - base if lb.dso_handle else None,
        }
        if any(p.address != base + p.work for p in lb.sections):
            raise tables.Uncacheable("a section placed outside the batch's memory")
        return meta, blobs


_PULL_FIELDS = ("obj", "archive", "header_offset", "index", "name", "size", "symbol", "referrer")
_PULLS_CHECKED = ("archive", "header_offset", "symbol")


def _objects(own: list, later: _Later, blobs, files: list[str]) -> list:
    """A warm batch's objects: the batch's own, then its members, each known by
    name and decoded from the entry's skeletons only if asked for more."""
    skeletons = None
    out = []
    for kind, value, k in later.get("objects"):
        if kind == "own" and 0 <= value < len(own):
            out.append(own[value])
            continue
        if kind != "member" or type(value) is not str or k < 0:
            raise ValueError(f"an object {[kind, value, k]!r} of the wrong shape")
        if skeletons is None:
            skeletons = _Skeletons(blobs["skeletons"])
        out.append(tables.LazyObject.deferred(value, skeletons.loader(k), files))
    return out


def _pulls(objects, search: list, pulls: dict, later: _Later) -> dict:
    """A warm batch's ``pulls`` (id(object) -> Pull) from the entry's columns."""
    more = later.get("pulls")
    out = {}
    for oi, ar, off, index, name, size, symbol, referrer in zip(
            more["obj"], pulls["archive"], pulls["header_offset"], more["index"], more["name"], more["size"],
            pulls["symbol"], more["referrer"], strict=True):
        if not (0 <= oi < len(objects) and type(index) is int and index >= 0 and type(name) is str
                and type(size) is int and size >= 0 and type(referrer) is str):
            raise ValueError(f"an archive pull of {name!r} of the wrong shape")
        out[id(objects[oi])] = Pull(CachedMember(search[ar], off, index, name, size), symbol, referrer)
    return out


def _plain(v):
    # numpy and enum integers are stored as the ints they are.
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else v


# The key of the nested skeletons entry: the same entry is stored under a
# batch's digest key and its by-identity key, and the outer key already
# says which entry this is.
_NESTED_KEY = bytes(32)


class _Skeletons:
    """The pulled members' skeletons of one entry (a compressed nested entry), unpacked when first asked for."""

    def __init__(self, packed) -> None:
        self.packed = packed
        self.docs = self.blobs = None

    def loader(self, k: int):
        def load():
            if self.docs is None:
                # The outer entry's checksum covered these bytes: not checked again.
                meta, blobs = unpack(zlib.decompress(self.packed), _NESTED_KEY, checked=True)
                self.blobs = tables.unnamed(blobs, "o", meta["nblobs"])
                self.docs = meta["docs"]
            return tables.object_from_doc(self.docs[k], self.blobs, "")

        return load


class _Later:
    """The part of an entry's metadata decoded only if asked for (:func:`.container.dumps`)."""

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._doc: dict | None = None

    def get(self, name: str):
        if self._doc is None:
            self._doc = container.loads(self._raw)
        return self._doc[name]


class _Stale(Exception):
    """The session differs from the one the entry was made in."""


def session_of(linker, dylib, whole, done, new_archives) -> tuple | None:
    """What the batch's plans are made from (:func:`_session`), or None when
    the batch must not use the cache (validators, pinned sections, whole archives)."""
    if linker.validators or linker.pinned or any(d is dylib for _, _, d in whole):
        return None
    return _session(linker, dylib, done, new_archives)


def make_plan(cache, linker, dylib, objs, session) -> BatchPlan | None:
    """The plan for linking ``objs`` into ``dylib`` in ``session``
    (:func:`session_of`), or None when an input was not read by the cache."""
    try:
        digests = [_object_digest(o) for o in objs]
    except OSError:
        return None  # the cold link reports the unreadable input
    if None in digests:
        return None
    archives, search, loaded, kept, pending = session
    arch = []
    for a, offsets in zip(search, loaded):
        try:
            dg = a.content_digest if isinstance(a, DeferredArchive) else None
        except OSError:
            return None
        if dg is None:
            return None
        arch.append([a.name, dg, offsets])
    key = batch_key(cache.identity(), {
        "objects": [[o.name, dg] for o, dg in zip(objs, digests)],
        "archives": arch,
        "kept": kept,
        "memory": type(linker.memory).__name__,
        "format": FORMAT_VERSION,
    })
    return BatchPlan(cache, linker, dylib, objs, search, archives, pending, key, [a[1] for a in arch])


def identity_plan(cache, linker, dylib, objs, session) -> BatchPlan | None:
    """The plan of the batch's by-identity entry (:mod:`.by_identity`) in
    ``session`` (:func:`session_of`), or None when an input was not added by path."""
    archives, search, loaded, kept, pending = session
    key = by_identity.key(cache.identity(), objs, search, loaded, kept, type(linker.memory).__name__,
                          FORMAT_VERSION)
    if key is None:
        return None
    return BatchPlan(cache, linker, dylib, objs, search, archives, pending, key)


def _object_digest(o) -> str | None:
    inp = by_identity.input_of(o)
    return inp.digest() if inp is not None else getattr(o, DIGEST_ATTR, None)


def _session(linker, dylib, done, new_archives):
    """What a batch key covers of the session: the archives searched, in order,
    with the member offsets already loaded from each; the COMDAT groups kept;
    and the look-up of definitions made earlier in the same finalize."""
    archives = linker._archives(dylib)
    search = [a for a in archives.archives if a not in new_archives] + list(new_archives)
    loaded = [sorted(off for aid, off in archives.loaded if aid == id(a)) for a in search]
    kept = set(linker.kept_groups)
    for _, lb in done:
        kept |= lb.kept_groups
    in_flight = {d: lb for d, lb in done}

    def pending(other, name: str):
        lb = in_flight.get(other)
        return lb.definitions.get(name) if lb else None

    return archives, search, loaded, sorted(kept), pending
