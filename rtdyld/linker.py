"""The linker session: add inputs, finalize batches, look up and call, remove."""

from __future__ import annotations

import atexit
import os
import threading
import weakref

from . import host, initfini
from .archives import ArchiveSet
from .batch_runtime import BatchRuntime
from .errors import LinkError, UndefinedSymbolError, UsageError, ValidationError
from .inputs import parse_object, read_input
from .link_cache_setting import open_link_cache
from .symbols import Dylib, Library, SymbolDef

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    from typing import Self

    from .archives import Pull
    from .linked import LinkedBatch
    from .objfile.model import ObjectFile

_default_memory = None
_default_lock = threading.Lock()


def default_memory():
    """The process-wide memory manager: every session shares one reservation,
    placed near libc so PIE code reaches host data with 32-bit displacements."""
    global _default_memory
    with _default_lock:
        if _default_memory is None:
            from memmgr import MemoryManager

            _default_memory = MemoryManager(near=host.process_symbol("stdout") or None)
        return _default_memory


class Handle:
    """A finalized batch.  Stays loaded until removed (never by garbage collection)."""

    def __init__(self, linker: Linker, parts: list[tuple[Dylib, LinkedBatch]], number: int):
        self._linker = linker
        self.parts = parts
        self.number = number
        self.removed = False
        self.dependents: set[Handle] = set()  # live batches that refer into this one

    @property
    def batch(self) -> LinkedBatch:
        return self.parts[0][1]

    @property
    def symbols(self) -> dict[str, SymbolDef]:
        out: dict[str, SymbolDef] = {}
        for _, b in self.parts:
            out.update(b.definitions.items())
        return out

    @property
    def objects(self) -> list[str]:
        return [o.name for _, b in self.parts for o in b.objects]

    def remove(self, force: bool = False) -> None:
        """Run finalizers, unpublish the symbols and give the memory back."""
        self._linker.remove(self, force=force)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        if not self.removed:
            self.remove()

    def __repr__(self) -> str:
        state = "removed" if self.removed else "loaded"
        return f"<rtdyld.Handle #{self.number} {state}: {', '.join(self.objects)}>"


class Linker:
    """A linking session.

    Objects, modules and archives added since the last :meth:`finalize` form
    one batch.  ``finalize`` links it all-or-nothing: on any error the batch
    is discarded and the session is exactly as it was before the batch began.

    ``debugger`` and ``perf_map`` register each batch with GDB's JIT interface
    and append it to perf's map file; ``None`` reads ``RTDYLD_GDB`` and
    ``RTDYLD_PERF_MAP`` (and turns the debugger on when the process is
    traced).  See :mod:`rtdyld.batch_runtime`.

    Thread safe: one re-entrant lock (:attr:`lock`) serialises every change to
    the session (adding inputs, ``define``, ``finalize``, ``abort``,
    ``remove``, ``close``) and every look-up, so a look-up sees a batch either
    fully published or not at all, and one racing ``remove`` either finds the
    symbol or raises UndefinedSymbolError.  Parsing and compiling inputs
    happen outside the lock.  Initializers and finalizers of linked code run
    under it: they may call back into the linker from their own thread, but
    must not wait for another thread that uses it.  The memory manager has
    its own lock, always taken inside this one.
    """

    def __init__(self, memory=None, resolver: Dylib | None = None, run_initializers: bool = True,
                 debugger: bool | None = None, perf_map: bool | None = None, link_cache=None):
        self.memory = memory if memory is not None else default_memory()
        # A directory (or LinkCache) to link repeated batches from disk; None: $RTDYLD_LINK_CACHE.
        self.link_cache = open_link_cache(link_cache)
        self.main = resolver if resolver is not None else Dylib("main")
        self.run_initializers = run_initializers
        self.pending: list[tuple[ObjectFile, Dylib]] = []
        self.pending_pulls: list[tuple[ObjectFile, Pull, Dylib]] = []
        self.pending_archives: list[tuple[object, Dylib]] = []  # registered when the batch lands
        self.handles: list[Handle] = []
        self.kept_groups: set[str] = set()
        self.library_dirs: list[str] = []
        self.pinned: dict[tuple[str, str], int] = {}
        self.validators: list = []
        self.caches: list = []  # object caches used, to explain missing symbols
        self.dylibs: dict[str, Dylib] = {self.main.name: self.main}
        self._lock = threading.RLock()
        self._batches = 0
        self.runtime = BatchRuntime(debugger=debugger, perf_map=perf_map)  # unwinder, C++ ABI, gdb, perf
        self._reserve()
        _live_linkers.add(self)

    def _reserve(self) -> None:
        """Reserve address space now, so that no batch, failed or not, is the
        one that changes the session's reservations."""
        # The package, not names from it: a from-import of a package runs
        # Python-level import code.
        import memmgr

        # Whether batches land in this process's memory (not VirtualMemory): fixed with the memory.
        self._lands_in_process = isinstance(self.memory, memmgr.MemoryManager)
        for low in (False, True):
            try:
                self.memory.reach_range(low=low)
            except memmgr.MemMgrError:
                pass  # reported by the batch that needs it

    @property
    def lock(self) -> threading.RLock:
        """The session's lock.  Hold it around ``add_*`` … ``finalize`` so that no
        other thread's inputs join the batch, or around look-ups that must agree."""
        return self._lock

    @property
    def resolver(self) -> Dylib:
        return self.main

    def _dylib(self, dylib: Dylib | None) -> Dylib:
        return self.main if dylib is None else dylib

    @staticmethod
    def _archives(dylib: Dylib) -> ArchiveSet:
        if not hasattr(dylib, "archives"):
            dylib.archives = ArchiveSet()
        return dylib.archives

    # --- namespaces ----------------------------------------------------------------

    def create_dylib(self, name: str) -> Dylib:
        """A new, independent namespace; set its search order with ``link_order``."""
        with self._lock:
            if name in self.dylibs:
                raise UsageError(f"a dylib named {name!r} already exists")
            d = Dylib(name)
            self.dylibs[name] = d
            return d

    # --- inputs ---------------------------------------------------------------

    def add_object(self, src, name: str | None = None, dylib: Dylib | None = None) -> ObjectFile:
        """Add a relocatable object (path, bytes or binary file) to the batch."""
        if self.link_cache:
            obj = self.link_cache.add_object(src, name)
        else:
            obj = parse_object(*read_input(src, name))
        with self._lock:
            self.pending.append((obj, self._dylib(dylib)))
        return obj

    def add_module(self, module, name: str | None = None, reloc: str = "pic", code_model: str = "small",
                   opt: int = 2, triple: str | None = None, dylib: Dylib | None = None,
                   cache=None, lazy: bool = False) -> ObjectFile:
        """Compile LLVM IR (text, bitcode or llvmlite module) and add the object.
        With ``cache`` (an ObjectCache), llvmlite compiles only on a miss.
        With ``lazy``, each function is compiled and linked when first called
        (see :mod:`rtdyld.lazy_module`); the globals are added now."""
        if lazy:
            from .lazy_module import add_lazy_module

            return add_lazy_module(self, module, name, reloc=reloc, code_model=code_model, opt=opt,
                                   triple=triple, dylib=dylib)
        if cache is not None:
            with self._lock:
                if cache not in self.caches:
                    self.caches.append(cache)
            data, display, _hit = cache.compile(module, name, reloc=reloc, code_model=code_model, opt=opt,
                                                triple=triple)
        else:
            from .irmodule import compile_module

            data, display = compile_module(module, name, reloc=reloc, code_model=code_model, opt=opt,
                                           triple=triple)
        return self.add_object(data, name=display, dylib=dylib)

    def add_archive(self, path, whole: bool = False, dylib: Dylib | None = None) -> None:
        """Register a static archive: members are loaded at finalize only when
        they define a symbol still undefined (all of them with ``whole=True``)."""
        d = self._dylib(dylib)
        with self._lock:
            archives = self._archives(d)
            ar = self.link_cache.open_archive(archives, path) if self.link_cache else archives.open(path)
            self.pending_archives.append((ar, d))
            if whole:
                self.pending_pulls.extend((o, p, d) for o, p in archives.whole(ar))

    def add_file(self, path: str, triple: str | None = None, dylib: Dylib | None = None, cache=None) -> None:
        """Add an input the way the command line does, by its kind:
        LLVM IR (.ll/.bc), assembly (.s), an archive, or an object."""
        ext = os.path.splitext(str(path))[1]
        if ext in (".ll", ".bc"):
            data, _ = read_input(path)
            self.add_module(data if ext == ".bc" else data.decode(), name=str(path), triple=triple, dylib=dylib,
                            cache=cache)
        elif ext in (".s", ".S"):
            from .asm import assemble

            with open(path) as f:
                data, name = assemble(f.read(), name=str(path), triple=triple)
            self.add_object(data, name=name, dylib=dylib)
        else:
            with open(path, "rb") as f:
                magic = f.read(8)
            if magic in (b"!<arch>\n", b"!<thin>\n"):
                self.add_archive(path, dylib=dylib)
            else:
                self.add_object(path, dylib=dylib)

    def link_library(self, name: str, static: bool = False, dylib: Dylib | None = None) -> str:
        """``-l NAME``: dlopen libNAME.so, or link libNAME.a lazily when only the
        archive exists or ``static`` is set.  Returns the path used."""
        from .libsearch import find_library

        kind, where = find_library(name, self.library_dirs, static)
        if kind == "archive":
            self.add_archive(where, dylib=dylib)
            return where
        return self.load_library(where, dylib=dylib)

    def load_library(self, name: str, dylib: Dylib | None = None) -> str:
        """dlopen a shared library (``"m"`` like ``-lm``) as a symbol source; returns its path."""
        handle, path = host.open_library(name, self.library_dirs)
        with self._lock:
            self._dylib(dylib).add_library(Library(name, path, handle))
        return path

    def define(self, name: str, target, dylib: Dylib | None = None) -> None:
        """Make ``name`` resolve to an address or a cffi callback (kept alive)."""
        with self._lock:
            self._dylib(dylib).define(name, target)

    # --- indirection: stubs, hot swap, lazy compilation -----------------------------

    @property
    def stubs(self):
        """The session's indirect stubs (:class:`rtdyld.lazy.StubsManager`)."""
        from .lazy import stubs_of

        return stubs_of(self)

    def replace(self, name: str, new, keep_old: bool = False, dylib: Dylib | None = None) -> Handle:
        """Hot swap: link a new definition of ``name`` (object or module) and
        re-point its stub; the old batch goes once unreferenced unless ``keep_old``."""
        from .hotswap import replace

        return replace(self, name, new, keep_old=keep_old, dylib=dylib)

    def add_lazy(self, name: str, compile_fn, signature: str | None = None, fallback=None,
                 dylib: Dylib | None = None):
        """Publish ``name`` now; ``compile_fn()`` runs on its first call and returns
        an address or what defines ``name`` (object, IR, llvmlite module).
        Returns the stub's address, or a cffi callable with ``signature``."""
        from .compile_callbacks import add_lazy

        return add_lazy(self, name, compile_fn, signature=signature, fallback=fallback, dylib=dylib)

    def add_validator(self, fn) -> None:
        """``fn(view)`` sees each linked batch before it is published or made
        executable (see :mod:`rtdyld.validators`); raising rejects the batch."""
        with self._lock:
            self.validators.append(fn)

    # --- linking ----------------------------------------------------------------

    def finalize(self) -> Handle:
        """Link the pending batch and publish its symbols; returns its handle.

        All-or-nothing: if any step fails (including a validator), the batch's
        memory is released, nothing is published, and the pending inputs are
        discarded, leaving the session as it was before they were added.
        """
        with self._lock:
            objects, self.pending = self.pending, []
            whole, self.pending_pulls = self.pending_pulls, []
            new_archives, self.pending_archives = self.pending_archives, []
            groups: dict[Dylib, list[ObjectFile]] = {}
            for obj, d in objects:
                groups.setdefault(d, []).append(obj)
            for _, _, d in whole:
                groups.setdefault(d, [])
            for _, d in new_archives:
                groups.setdefault(d, [])
            if not groups:
                groups[self.main] = []
            if len(groups) > 1:  # one dylib has no other to come first
                groups = _providers_first(groups)
            linked: list[tuple[Dylib, LinkedBatch]] = []
            try:
                for d, objs in groups.items():
                    mine = [a for a, owner in new_archives if owner is d]
                    linked.append((d, self._link_group(d, objs, whole, linked, mine)))
            except BaseException as e:
                for _, lb in linked:
                    lb.allocation.release()
                if isinstance(e, UndefinedSymbolError) and self.caches:
                    from .cache import explain_undefined

                    raise explain_undefined(e, self.caches) from None
                raise
            handle = self._publish(linked)
            for ar, d in new_archives:
                self._archives(d).register(ar)
            return handle

    def pending_objects(self, dylib: Dylib | None = None) -> list[ObjectFile]:
        """The objects the next finalize would link into ``dylib`` (default: the
        main one): those added and the archive members they would pull in.
        Nothing is loaded or registered."""
        d = self._dylib(dylib)
        with self._lock:
            objs = [o for o, owner in self.pending if owner is d]
            new_archives = [a for a, owner in self.pending_archives if owner is d]
            return objs + [o for o, _ in self._pulls(d, objs, self.pending_pulls, new_archives)]

    def _pulls(self, dylib: Dylib, objs: list[ObjectFile], whole, new_archives) -> list[tuple[ObjectFile, Pull]]:
        mine = [(o, p) for o, p, d in whole if d is dylib]
        archives = self._archives(dylib)
        return mine + archives.pull(objs + [o for o, _ in mine], self._outranks_archives(dylib), new_archives)

    def _link_group(self, dylib: Dylib, objs: list[ObjectFile], whole, done, new_archives) -> LinkedBatch:
        if self.link_cache is not None:
            return self.link_cache.hook_link(self, dylib, objs, whole, done, new_archives,
                                             lambda: self._link_group_cold(dylib, objs, whole, done, new_archives))
        return self._link_group_cold(dylib, objs, whole, done, new_archives)

    def _link_group_cold(self, dylib: Dylib, objs: list[ObjectFile], whole, done, new_archives) -> LinkedBatch:
        pulls = self._pulls(dylib, objs, whole, new_archives)
        kept = set(self.kept_groups)
        for _, lb in done:
            kept |= lb.kept_groups
        in_flight = {d: lb for d, lb in done}

        def pending(other: Dylib, name: str):
            lb = in_flight.get(other)
            return lb.definitions.get(name) if lb else None

        # The linker's phases (and numpy) load with the first batch linked cold.
        from .batch import BatchLinker

        lb = BatchLinker(objs + [o for o, _ in pulls], dylib, self.memory, kept, self.pinned, pending).link()
        lb.pulls = {id(o): p for o, p in pulls}
        try:
            self._validate(lb)
        except BaseException:
            lb.allocation.release()
            raise
        return lb

    @staticmethod
    def archive_outrankers(dylib: Dylib) -> list[Dylib]:
        """The dylibs whose definitions come before archives in ``dylib``'s
        chain: itself (earlier batches, user definitions) and the dylibs of its
        link order; libraries and the process come after archives."""
        return [dylib, *(d for d in dylib.order() if isinstance(d, Dylib))]

    @staticmethod
    def _outranks_archives(dylib: Dylib):
        """``defined(name, prefix)``: does one of :meth:`archive_outrankers` define it."""
        _, *others = Linker.archive_outrankers(dylib)
        if not others:  # the usual link order: libraries and the process only
            return dylib.defines

        def defined(name: str, prefix: str) -> bool:
            return dylib.defines(name, prefix) or any(d.defines(name, prefix) for d in others)

        return defined

    def _validate(self, lb: LinkedBatch) -> None:
        if not self.validators:
            return
        from .validators import batch_view

        view = batch_view(lb)
        for fn in self.validators:
            try:
                fn(view)
            except ValidationError:
                raise
            except Exception as e:
                name = getattr(fn, "__name__", repr(fn))
                objects = ", ".join(o.name for o in lb.objects)
                raise ValidationError(f"validator {name} rejected the batch of {objects}: {e}") from e

    def abort(self) -> None:
        """Discard everything added since the last finalize."""
        with self._lock:
            self.pending = []
            self.pending_pulls = []
            self.pending_archives = []

    def _publish(self, parts: list[tuple[Dylib, LinkedBatch]]) -> Handle:
        executable = self._executable()
        try:
            for _, lb in parts:
                if lb.ifunc is not None:
                    from . import ifunc

                    ifunc.bind(lb, executable, run_code=self.run_initializers)
                lb.allocation.finalize()
        except Exception as e:
            for _, lb in parts:
                lb.allocation.release()
            if isinstance(e, LinkError):
                raise
            raise LinkError(f"cannot apply memory protections: {e}") from None
        self._batches += 1
        handle = Handle(self, parts, self._batches)
        for dylib, lb in parts:
            lb.definitions.set_batch(handle)
            # A warm batch names the definitions its externals resolved to without making them.
            definitions = getattr(lb.externals, "outside_definitions", None)
            for d in definitions if definitions is not None else [e.definition for e in lb.externals]:
                owner = d.batch if d is not None else None
                if isinstance(owner, Handle) and owner is not handle:
                    owner.dependents.add(handle)
            if executable:
                self.runtime.loaded(lb)
                if self.run_initializers and lb.initializers:
                    initfini.call_all(initfini.initializer_order(lb.allocation.buffer, lb.initializers))
            dylib.published.update(lb.definitions)
            self.kept_groups |= lb.kept_groups
            if lb.pulls:
                archives = self._archives(dylib)
                archives.loaded.update(archives.member_keys(lb.pulls))
        self.handles.append(handle)
        return handle

    def _executable(self) -> bool:
        """Whether batches land in this process's memory (not VirtualMemory): code may run."""
        return self._lands_in_process

    def remove(self, handle: Handle, force: bool = False) -> None:
        """Unload a batch.  Refused while live batches refer to it, unless ``force``."""
        with self._lock:
            if handle.removed:
                return
            users = [h for h in handle.dependents if not h.removed]
            if getattr(self, "_stubs_manager", None) is not None:
                self._stubs_manager.before_remove(handle, force)
            if users and not force:
                names = "; ".join(f"#{h.number} ({', '.join(h.objects)})" for h in users)
                raise UsageError(
                    f"cannot remove batch #{handle.number} ({', '.join(handle.objects)}): still referenced by "
                    f"{names}; remove those first or pass force=True"
                )
            executable = self._executable()
            for dylib, lb in reversed(handle.parts):
                if executable:
                    self.runtime.unloading(lb)
                    if self.run_initializers:
                        initfini.call_all(initfini.finalizer_order(lb.allocation.buffer, lb.finalizers))
                    self.runtime.unloaded(lb)
                dylib.published.withdraw(lb.definitions)
                self.kept_groups -= lb.kept_groups
                archives = self._archives(dylib)
                archives.loaded.difference_update(archives.member_keys(lb.pulls))
                lb.allocation.release()
                lb.definitions.detach()
            handle.removed = True
            # (A batch that referred into this one holds its Handle through the
            # definitions it resolved to; this one need not keep holding theirs,
            # so no reference cycle outlives the removal.)
            handle.dependents = set()
            self.handles.remove(handle)

    def close(self) -> None:
        """Remove every batch, newest first, then release indirect stubs and lazy trampolines."""
        with self._lock:
            for h in reversed(list(self.handles)):
                h.remove(force=True)
            if "_stubs_manager" in self.__dict__ or "_compile_callbacks" in self.__dict__:
                from .lazy import release_indirection

                release_indirection(self)

    # --- look-ups -------------------------------------------------------------------

    def symbol(self, name: str, dylib: Dylib | None = None) -> SymbolDef:
        with self._lock:
            d = self._dylib(dylib).lookup(name)
            if d is None:
                from .suggest import lookup_hint  # (only for the message)

                hint = lookup_hint(name, self._dylib(dylib), self.dylibs.values())
        if d is None:
            where = f" in dylib {dylib.name!r}" if dylib is not None else ""
            raise UndefinedSymbolError(
                f"symbol {name!r} is not defined by any finalized batch{where}{hint}", {name: []}
            )
        return d

    def lookup(self, name: str, dylib: Dylib | None = None) -> int:
        """Address of a symbol published by a finalized batch."""
        return self.symbol(name, dylib).address

    def function(self, name: str, signature: str, dylib: Dylib | None = None):
        """A cffi callable for ``name`` with a C signature such as ``"int(int, int)"``."""
        addr = self.lookup(name, dylib)
        paren = signature.find("(")
        if paren <= 0:
            raise UsageError(f"bad signature {signature!r}: expected e.g. 'int(int, int)'")
        ptype = f"{signature[:paren]}(*){signature[paren:]}"
        try:
            return host.function_pointer(ptype, addr)
        except Exception as e:  # noqa: BLE001 - cffi reports a bad C type through several exception classes
            raise UsageError(f"bad signature {signature!r}: {e}") from None

    def snapshot(self) -> dict:
        """What a failed batch must leave unchanged: symbols, memory, mappings."""
        from memmgr import read_maps

        with self._lock:
            return {
                "symbols": {d.name: {n: s.address for n, s in d.published.items()} for d in self.dylibs.values()},
                "handles": [h.number for h in self.handles],
                "allocations": sorted((a.target_base, a.size) for a in self.memory.live_allocations()),
                "reservations": sorted(self.memory.reservations()),
                "maps": [(m.start, m.end, m.perms) for m in read_maps() if self.memory.contains(m.start)],
                "kept_groups": sorted(self.kept_groups),
                "archives": {d.name: [a.name for a in self._archives(d).archives] for d in self.dylibs.values()},
            }


def _providers_first(groups: dict) -> dict:
    """Order per-dylib groups so a dylib in another's link order links first:
    its in-flight definitions are then known when the consumer resolves."""
    ordered: dict = {}

    def visit(d, seen=()):
        if d in ordered or d in seen:
            return
        for dep in d.order():
            if isinstance(dep, Dylib) and dep in groups:
                visit(dep, (*seen, d))
        ordered[d] = groups[d]

    for d in groups:
        visit(d)
    return ordered


_live_linkers: weakref.WeakSet[Linker] = weakref.WeakSet()


@atexit.register
def _run_finalizers_at_exit() -> None:
    for ln in list(_live_linkers):
        try:
            ln.close()
        except Exception:  # noqa: BLE001, S110 - at exit, one linker failing to close must not keep the others open
            pass
    host.flush_stdio()
