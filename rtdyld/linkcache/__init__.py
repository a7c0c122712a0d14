"""The link cache: link the same inputs again, in a new process, from disk.

``Linker(link_cache=DIR)`` (``rtdyld run --link-cache DIR``, or the
``RTDYLD_LINK_CACHE`` environment variable) keeps three kinds of entries in
``DIR``, each under a key that makes a stale entry impossible to use:

``objects/``
    the parsed tables of each object added, keyed by the sha256 of its bytes
    and the reader's identity, so ``add_object`` skips the reader;
``batches/``
    the image of each finalized batch (see :mod:`.image` and :mod:`.plan`):
    its bytes after every fixup that does not depend on where the batch or
    its outside symbols land, the layout, symbol table, init/fini lists,
    archive members pulled, and a table of residual fixups re-applied at
    load.  A warm finalize reads no archive and parses no member;
``stat/``
    the digest (and the magic number) of each archive under its file
    identity (:mod:`.digests`), so a warm link hashes nothing it has hashed
    before, and opens no archive;
``inputs/``
    each batch entry again, keyed by the file identities of its inputs
    rather than their digests (:mod:`.by_identity`): a warm finalize of
    inputs added by path reads this one file, and no input.

The reader's identity is the rtdyld version, the cache format, and the size
and mtime of every module of rtdyld and memmgr: editing the linker
invalidates everything.  Entries are written atomically (temporary file and
rename), so processes may share a directory; a truncated or damaged entry is
a miss, deleted and rewritten by the cold link that follows.  So is one
whose checksums hold but whose content no capture wrote (a value of the
wrong type, an offset outside the batch or the archive), as far as a load
checks it; in the parts of a warm batch decoded only when first read (its
objects, sections, definitions, pulls) that is a
:class:`~rtdyld.errors.CorruptCacheEntryError` naming the entry.  ``stats``
counts, per layer, hits, misses, stale entries (the session differed) and
corrupt ones; ``events`` says why, most recent last.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import warnings
from functools import cache

from ..archives import list_member_definitions
from ..cache_entry import TEMP_PREFIX, atomic_write
from ..errors import MalformedObjectError
from ..inputs import parse_object, read_input
from ..lazy_numpy import np
from ..link_cache_setting import ENV
from ..objfile.archive_layout import ARCH_MAGIC, HEADER_SIZE, RawMember
from ..objfile.model import ObjectFile
from . import by_identity, container, tables
from .by_identity import INPUT_ATTR, InputFile
from .container import FORMAT_VERSION, CorruptEntry, pack, read_file, unpack
from .deferred import DeferredArchive
from .digests import StatDigests, digest, key_hash
from .plan import DIGEST_ATTR, identity_plan, make_plan, session_of

_PACKAGE = sys.modules[__package__.rpartition(".")[0]]  # rtdyld, imported before its subpackages
ENTRY_SUFFIX = ".ent"
LAYERS = ("objects", "archives", "batches", by_identity.LAYER)

__all__ = ["ENV", "LinkCache", "open_link_cache"]


def open_link_cache(setting) -> LinkCache | None:
    """The cache a Linker's ``link_cache`` argument asks for: a LinkCache as
    is, a directory, None for the environment's choice, False for none."""
    if setting is False:
        return None
    if setting is None:
        setting = os.environ.get(ENV) or None
        if setting is None:
            return None
    if isinstance(setting, LinkCache):
        return setting
    return LinkCache(setting)


@cache
def _code_identity() -> str:
    import memmgr

    from .. import __file__ as rtdyld_init

    parts: list[str] = []

    def walk(directory: str, prefix: str) -> None:
        # scandir, not os.walk and relpath: a new process pays this in every warm run.
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.name.endswith(".py") and e.is_file():
                st = e.stat()
                parts.append(f"{prefix}{e.name}\0{st.st_size}\0{st.st_mtime_ns}\n")
            elif e.is_dir() and e.name != "__pycache__":
                walk(e.path, f"{prefix}{e.name}/")

    for top in (os.path.dirname(rtdyld_init), os.path.dirname(memmgr.__file__)):
        walk(top, "")
    return key_hash("".join(parts).encode()).hex()


@cache
def _prime() -> None:
    """Pay once per process, when a cache is opened, the lazy set-up a first
    warm link would otherwise pay inside the link: the code identity, cffi's
    parsing of the C types the host look-ups use, and the unwinder's entry
    points (libgcc_s found and opened, as an LLVM engine has it from the
    start).  numpy's set-up too, if the process has numpy: a warm link needs
    it only for a batch with many residual fixups, and does not import it
    for the others."""
    from memmgr import libc

    from .. import host, unwind

    _code_identity()
    host.describe_address(host.process_symbol("malloc"))
    libc.ffi.typeof("char *")
    # cffi makes a library function's accessor on its first use (~100 µs):
    # the in-flight allocation and its sealing call mprotect.
    libc.libc.mprotect  # noqa: B018 - the accessor is made when first read
    host.ffi.typeof("void *")
    unwind._functions()
    if "hashlib" in sys.modules:  # (as numpy below: set up if loaded, not loaded for this)
        digest(b"")
    if "numpy" in sys.modules:
        # numpy sets up each kind of operation on first use (tens of µs each in a
        # new process): re-apply two fixups of each width to scratch memory once.
        from . import image

        image.prime()
        # The dtypes of a batch entry's blobs: residual fixups' constants and targets, integer columns.
        container.prime((np.uint64, np.int32, np.int64))


@functools.lru_cache(maxsize=8)
def _identity_text(items: tuple) -> bytes:
    # The identity (sorted pairs of names and strings or integers), serialised
    # once rather than at every key; repr is exact for those, and escapes NUL.
    return repr(items).encode()


class LinkCache:
    """Link-cache entries in ``directory``, shared safely between processes."""

    def __init__(self, directory) -> None:
        self.directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
        for layer in LAYERS:
            os.makedirs(os.path.join(self.directory, layer), exist_ok=True)
        self.digests = StatDigests(os.path.join(self.directory, "stat"))
        self.stats = {layer: dict.fromkeys(("hits", "misses", "stale", "corrupt", "stores", "unstored"), 0)
                      for layer in LAYERS}
        self.events: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        _prime()
        self._key("object", "")  # serialises this identity for every key to come

    def __repr__(self) -> str:
        return f"<rtdyld.LinkCache {self.directory}>"

    def identity(self) -> dict:
        """What every key includes: the code that would make the entry."""
        # The package's attribute read at each call (a test may change it), without
        # the import machinery a ``from .. import`` statement runs each time.
        return {"rtdyld": _PACKAGE.__version__, "format": FORMAT_VERSION, "code": _code_identity()}

    def _key(self, what: str, content: str) -> bytes:
        """The key of the ``what`` (object, archive) whose bytes have sha256 ``content``.
        repr escapes NUL, so the separators keep the parts apart."""
        text = _identity_text(tuple(sorted(self.identity().items())))
        return key_hash(b"%s\0%s\0%s" % (text, what.encode(), content.encode()))

    # --- objects ------------------------------------------------------------------

    def add_object(self, src, name: str | None = None) -> ObjectFile:
        """The object ``Linker.add_object`` adds.  A path is only stat'ed: its
        bytes are read, and parsed or loaded from the cache, when a link or a
        caller first needs them (a warm batch found by identity never does),
        so errors in its contents are reported then."""
        if not isinstance(src, (str, os.PathLike)):
            return self.parse(*read_input(src, name))
        try:
            inp = InputFile(src)
        except OSError as e:
            raise MalformedObjectError(f"{src}: cannot read: {e.strerror}") from None
        display = name or str(src)
        obj = tables.LazyObject.deferred(display, functools.partial(self._load_input, inp, display))
        setattr(obj, INPUT_ATTR, inp)
        return obj

    def _load_input(self, inp: InputFile, name: str) -> ObjectFile:
        try:
            data = inp.read()
        except OSError as e:
            raise MalformedObjectError(f"{name}: cannot read: {e.strerror}") from None
        return self.parse(data, name)

    def parse(self, data: bytes, name: str) -> ObjectFile:
        """``parse_object(data, name)``; when these bytes were read before, an
        object whose tables are loaded from the cache only if something asks
        for them (a warm batch never does)."""
        content = digest(data)
        key = self._key("object", content)
        if os.path.exists(self._path("objects", key)):
            self._count("objects", "hits")
            obj = tables.LazyObject.deferred(name, functools.partial(self._load_object, key, data, name))
        else:
            self._count("objects", "misses")
            obj = parse_object(data, name)
            self._store_object(key, obj)
        setattr(obj, DIGEST_ATTR, content)
        return obj

    def _load_object(self, key: bytes, data: bytes, name: str) -> ObjectFile:
        entry = self.read_entry("objects", key)
        if entry is not None:
            meta, blobs = entry
            try:
                return tables.object_from_doc(meta["object"], tables.unnamed(blobs, "b", meta["nblobs"]), name)
            except (CorruptEntry, KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
                self.note("objects", "corrupt", str(e))
                self.discard("objects", key)
        obj = parse_object(data, name)
        self._store_object(key, obj)
        return obj

    def _store_object(self, key: bytes, obj: ObjectFile) -> None:
        blobs: list = []
        try:
            doc = tables.object_doc(obj, blobs)
        except (tables.Uncacheable, TypeError, ValueError) as e:
            self.note("objects", "unstored", f"{obj.name}: {e}")
            return
        self.write_entry("objects", key, pack(key, {"object": doc, "nblobs": len(blobs)},
                                              tables.named(blobs, "b")))

    # --- archives ----------------------------------------------------------------------

    def open_archive(self, archives, path) -> DeferredArchive:
        """An archive for ``archives`` (an ArchiveSet) read only if a cold link
        needs it: ``add_archive`` only stats the file, as ``add_object`` does.
        What kind of file it is (a thin archive's batches are not cached) and
        any error in it are found when it is opened or its digest taken."""
        try:
            source = InputFile(path)  # its path absolute, as InputFile spells it
        except OSError as e:
            raise MalformedObjectError(f"{os.path.abspath(path)}: cannot read the archive: {e.strerror or e}") from None
        archives.parse = self.parse
        return DeferredArchive(source.path, list_member_definitions, self, source)

    def _archive_key(self, content: str) -> bytes:
        return self._key("archive", content)

    def load_archive(self, content: str, size: int):
        """``(kind, has_index, raw members, index names, index positions)`` of the
        archive whose bytes (``size`` of them) have sha256 ``content``, or None."""
        key = self._archive_key(content)
        entry = self.read_entry("archives", key)
        if entry is None:
            return None
        meta, blobs = entry
        try:
            bl = tables.unnamed(blobs, "b", meta["nblobs"])
            names = tables.decode(meta["members"], bl)
            at = blobs["at"]
            if at.dtype != np.int64 or at.shape != (len(names), 3) or meta["kind"] not in ("gnu", "bsd") \
                    or type(meta["has_index"]) is not bool:  # (a thin archive's members are other files)
                raise ValueError("a member table of the wrong shape")
            offsets = at.tolist()
            # Each member's 60-byte header, then its data, within the archive.
            if any(not (len(ARCH_MAGIC) <= h and h + HEADER_SIZE <= d and 0 <= z and d + z <= size)
                   for h, d, z in offsets):
                raise ValueError("a member outside the archive")
            raw = [RawMember(n, h, d, z) for n, (h, d, z) in zip(names, offsets, strict=True)]
            index_names = positions = None
            if meta["index"] is not None:
                index_names = tables.decode(meta["index"], bl)
                positions = blobs["p"].tolist()
                if len(positions) != len(index_names) or any(not 0 <= p < len(raw) for p in positions):
                    raise ValueError("index positions out of range")
        except (CorruptEntry, KeyError, IndexError, TypeError, ValueError) as e:
            self.note("archives", "corrupt", str(e))
            self.discard("archives", key)
            return None
        self._count("archives", "hits")
        return meta["kind"], meta["has_index"], raw, index_names, positions

    def store_archive(self, ar) -> None:
        """Remember an opened archive's member table and symbol index."""
        key = self._archive_key(ar.content_digest)
        blobs: list = []
        index = ar._index
        # The index maps a name to its one definer's position, or a list of them.
        pairs = ([(name, p) for name, found in index.items() for p in ([found] if isinstance(found, int) else found)]
                 if index is not None else [])
        try:
            meta = {
                "kind": ar.kind,
                "has_index": ar.has_index,
                "members": tables.encode([m.name for m in ar.members], blobs),
                "index": tables.encode([n for n, _ in pairs], blobs) if index is not None else None,
            }
        except tables.Uncacheable as e:
            self.note("archives", "unstored", str(e))
            return
        meta["nblobs"] = len(blobs)
        named = tables.named(blobs, "b")
        named["at"] = np.array([(m.header_offset, m._data_offset, m.size) for m in ar.members] or
                               np.zeros((0, 3)), dtype=np.int64).reshape(-1, 3)
        named["p"] = np.array([p for _, p in pairs], dtype=np.int64)
        self.write_entry("archives", key, pack(key, meta, named))

    # --- batches -------------------------------------------------------------------------

    def hook_link(self, linker, dylib, objs, whole, done, new_archives, link_cold):
        """The batch from the cache, or ``link_cold()``'s, which is then stored."""
        session = session_of(linker, dylib, whole, done, new_archives)
        if session is None:
            return link_cold()
        quick = identity_plan(self, linker, dylib, objs, session)
        if quick is not None:
            lb = quick.load()
            if lb is not None:
                self._count(by_identity.LAYER, "hits")
                self._count("batches", "hits")
                return lb
        plan = make_plan(self, linker, dylib, objs, session)
        if plan is None:
            return link_cold()
        # The image is kept if the by-identity entry is to be written from this one.
        lb = plan.load(keep_image=quick is not None)
        if lb is not None:
            self._count("batches", "hits")
        else:
            lb = link_cold()
            plan.store(lb)
        if quick is not None and plan.entry is not None:
            quick.store_entry(plan)
        return lb

    # --- entries -------------------------------------------------------------------------

    def _path(self, layer: str, key: bytes) -> str:
        # Formatted rather than os.path.join'ed: the directory is absolute and the parts plain names.
        return f"{self.directory}/{layer}/{key.hex()}{ENTRY_SUFFIX}"

    def read_entry(self, layer: str, key: bytes) -> tuple[dict, dict] | None:
        """A verified entry's ``(meta, blobs)``, or None (a miss, counted)."""
        path = self._path(layer, key)
        try:
            blob = read_file(path)
        except OSError:
            self._count(layer, "misses")
            return None
        try:
            return unpack(blob, key)
        except CorruptEntry as e:
            self.note(layer, "corrupt", str(e))
            self.discard(layer, key)
            return None

    def open_entry(self, layer: str, key: bytes) -> container.OpenEntry | None:
        """:func:`.container.open_entry` of a verified entry's head, its tail
        left to read; or None (a miss, counted).  The caller closes it."""
        path = self._path(layer, key)
        try:
            return container.open_entry(path, key)
        except OSError:
            self._count(layer, "misses")
            return None
        except CorruptEntry as e:
            self.note(layer, "corrupt", str(e))
            self.discard(layer, key)
            return None

    def write_entry(self, layer: str, key: bytes, blob: bytes) -> None:
        try:
            # Not synced: entries are checked on every read, so one a crash damaged is just a miss.
            atomic_write(self._path(layer, key), blob, durable=False)
        except OSError as e:
            self.note(layer, "unstored", str(e))
            warnings.warn(f"link cache {self.directory}: cannot store an entry: {e}", RuntimeWarning, stacklevel=3)
            return
        self._count(layer, "stores")

    def discard(self, layer: str, key: bytes) -> None:
        try:
            os.unlink(self._path(layer, key))
        except OSError:
            pass

    def note(self, layer: str, what: str, why: str) -> None:
        """Count a miss of kind ``what`` (stale, corrupt, unstored) and keep the reason."""
        with self._lock:
            self.stats[layer][what] += 1
            if what in ("stale", "corrupt"):
                self.stats[layer]["misses"] += 1
            self.events.append((layer, what, why))

    def _count(self, layer: str, what: str) -> None:
        with self._lock:
            self.stats[layer][what] += 1

    def clear(self) -> int:
        """Delete every entry and stat record; returns the entries removed."""
        removed = 0
        for layer in (*LAYERS, "stat"):
            d = os.path.join(self.directory, layer)
            for fn in os.listdir(d) if os.path.isdir(d) else ():
                if fn.endswith((ENTRY_SUFFIX, ".json")) or fn.startswith(TEMP_PREFIX):
                    try:
                        os.unlink(os.path.join(d, fn))
                    except FileNotFoundError:
                        continue
                    removed += fn.endswith(ENTRY_SUFFIX)
        return removed
